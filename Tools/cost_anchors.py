#!/usr/bin/env python3
"""Token counts per labeled and scored feature for saelabel and its two anchors, all with one tokenizer.

Read by `saelabel-bench cost`, which writes the input (the demo features' windows and saelabel's own
requests, taken from its explainer and scorers) and prices the output. Usage:

    python3 Tools/cost_anchors.py --input features.json --tokenizer Datasets/demo/tokenizer.json \
        --openai-git /work/.mirror/openai+automated-interpretability/repo \
        --delphi-git /work/.mirror/EleutherAI+delphi/repo > counts.json

The anchors' prompts are built by their own code, read at run time from the git snapshots given
(`git archive HEAD`; nothing of theirs is copied into this repository): OpenAI's neuron-explainer
(TokenActivationPairExplainer, ExplanationNeuronSimulator, LogprobFreeExplanationTokenSimulator, with
their default few-shot sets) and EleutherAI's delphi (DefaultExplainer's prompt builder and its
highlighting, the detection and fuzzing prompts and sample highlighting). Modules they import that
prompt building never uses (HTTP clients, blob storage, torch) are stubbed.

Counting rules, the same for every contender:
* tokens: the --tokenizer (Hugging Face tokenizers), no special tokens added;
* a chat request: its messages' contents plus 3 tokens per message and 3 for the reply (OpenAI's
  published rule for its chat format); a completions request: its prompt;
* answers are modeled from the true activations (the answer a perfect model gives in that
  contender's format): explanations are the same label for every contender in its own wrapper;
* shared prefix: for each request, the longest token prefix it shares with any earlier request of
  the run (what a provider's prompt cache could serve).
Equal scoring coverage: every contender scores the same held-out windows of each feature.
"""

import argparse
import ast
import importlib
import io
import json
import math
import subprocess
import sys
import tarfile
import tempfile
import types
from collections import deque
from itertools import groupby
from pathlib import Path

from tokenizers import Tokenizer

# Contender names; "defaults" marks each anchor's default configuration (the bench's aim compares with those).
LOGPROB_DEFAULT = "neuron-explainer defaults (all-at-once logprob simulator; needs echo logprobs, which gpt-4.1-mini lacks)"
OPENAI_CHAT = "neuron-explainer, its chat-model simulator (LogprobFreeExplanationTokenSimulator)"
DELPHI_DEFAULT = "delphi defaults (detection + fuzzing)"
DELPHI_DETECTION = "delphi, detection only"

CHAT_TOKENS_PER_MESSAGE = 3
CHAT_TOKENS_PER_REPLY = 3


class Counter:
    def __init__(self, path):
        self.tokenizer = Tokenizer.from_file(path)

    def ids(self, text):
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def count(self, text):
        return len(self.ids(text))

    def request_ids(self, request):
        """Token ids of a request as a prompt cache sees it: role markers and contents in order."""
        if isinstance(request, str):
            return self.ids(request)
        ids = []
        for message in request:
            ids += [-1 - ["system", "user", "assistant"].index(message["role"])] * CHAT_TOKENS_PER_MESSAGE
            ids += self.ids(message["content"])
        return ids + [-9] * CHAT_TOKENS_PER_REPLY


def git_snapshot(git_dir, subdir, into):
    """Extracts `subdir` of HEAD from a bare git dir into `into`; returns the commit."""
    commit = subprocess.run(["git", "--git-dir", git_dir, "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()
    archive = subprocess.run(["git", "--git-dir", git_dir, "archive", "HEAD", subdir], capture_output=True,
                             check=True).stdout
    tarfile.open(fileobj=io.BytesIO(archive)).extractall(into)
    return commit


def git_file(git_dir, path):
    return subprocess.run(["git", "--git-dir", git_dir, "show", "HEAD:" + path], capture_output=True, text=True,
                          check=True).stdout


class Stub(types.ModuleType):
    """A module whose every attribute is a placeholder class (for imports prompt building never uses)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (Exception,), {})


def stub(name, **attributes):
    module = Stub(name)
    for key, value in attributes.items():
        setattr(module, key, value)
    sys.modules[name] = module
    return module


def functions_from(source, names, namespace):
    """The named top-level or method functions of `source`, compiled into `namespace`."""
    tree = ast.parse(source)
    # Module constants the functions use (e.g. the highlight marks), as the source sets them.
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            exec(compile(ast.Module(body=[node], type_ignores=[]), "<anchor>", "exec"), namespace)
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name in names and node.name not in found:
            node.decorator_list = []
            node.returns = None  # annotations name types of modules not loaded here
            for arg in node.args.args + node.args.kwonlyargs:
                arg.annotation = None
            code = ast.Module(body=[node], type_ignores=[])
            exec(compile(ast.fix_missing_locations(code), "<anchor>", "exec"), namespace)
            found[node.name] = namespace[node.name]
    missing = set(names) - set(found)
    if missing:
        raise SystemExit("cost_anchors: %s not found in the anchor source" % sorted(missing))
    return found


# --- OpenAI's neuron-explainer -------------------------------------------------------------------

class OpenAIAnchor:
    def __init__(self, git_dir, workdir, counter):
        self.commit = git_snapshot(git_dir, "neuron-explainer/neuron_explainer", workdir)
        encoding = types.SimpleNamespace(encode=lambda text, **_: counter.ids(text))
        stub("tiktoken", get_encoding=lambda name: encoding)
        for name in ["httpx", "blobfile", "boostedblob"]:
            stub(name)
        sys.path.insert(0, str(Path(workdir) / "neuron-explainer"))
        # Their API client needs a key at import; prompt building never calls it.
        stub("neuron_explainer.api_client", ApiClient=type("ApiClient", (), {"__init__": lambda self, *a, **k: None}))
        self.activations = importlib.import_module("neuron_explainer.activations.activations")
        self.records = importlib.import_module("neuron_explainer.activations.activation_records")
        self.explainer = importlib.import_module("neuron_explainer.explanations.explainer")
        self.simulator = importlib.import_module("neuron_explainer.explanations.simulator")
        self.prompt_builder = importlib.import_module("neuron_explainer.explanations.prompt_builder")
        # At this commit their chat simulator passes `allow_extra_system_messages` to PromptBuilder(), whose
        # __init__ takes no arguments (only build() does): it cannot run as published. The builder it
        # gets here accepts the argument and hands it to build(); the prompt is otherwise theirs.
        base = self.prompt_builder.PromptBuilder

        class TolerantPromptBuilder(base):
            def __init__(self, allow_extra_system_messages=False):
                super().__init__()
                self.allow_extra = allow_extra_system_messages

            def build(self, prompt_format, *, allow_extra_system_messages=False):
                return super().build(prompt_format, allow_extra_system_messages=allow_extra_system_messages or self.allow_extra)

        self.simulator.PromptBuilder = TolerantPromptBuilder

    def record(self, window):
        return self.activations.ActivationRecord(tokens=window["tokens"], activations=window["activations"])

    def explain_prompt(self, windows):
        """Their demo's explainer: gpt-4 chat format, the ORIGINAL few-shot set, 5 top windows."""
        records = [self.record(w) for w in windows]
        explainer = self.explainer.TokenActivationPairExplainer(model_name="gpt-4",
                                                                prompt_format=self.prompt_builder.PromptFormat.HARMONY_V4)
        return explainer.make_explanation_prompt(all_activation_records=records,
                                                 max_activation=self.records.calculate_max_activation(records),
                                                 max_tokens_for_completion=60)

    def logprob_simulation_prompt(self, label, window):
        """Their demo's simulator: all at once, completions prompt, echo + logprobs, no answer tokens."""
        simulator = self.simulator.ExplanationNeuronSimulator(
            "text-davinci-003", label, prompt_format=self.prompt_builder.PromptFormat.INSTRUCTION_FOLLOWING)
        return simulator.make_simulation_prompt(window["tokens"])

    def chat_simulation_prompt(self, label, window):
        """Their simulator for chat models without logprobs (the NEWER few-shot set, chat format)."""
        simulator = self.simulator.LogprobFreeExplanationTokenSimulator("gpt-4", label)
        return simulator._make_simulation_prompt(window["tokens"], label)

    def chat_simulation_answer(self, window, maximum):
        values = [min(10, math.floor(10 * max(a, 0) / maximum)) if maximum > 0 else 0 for a in window["activations"]]
        return "".join("%s\t%d\u0f17\n" % (t, v) for t, v in zip(window["tokens"], values))

    def explanation_answer(self, label):
        return " %s." % label


# --- EleutherAI's delphi -------------------------------------------------------------------------

class DelphiAnchor:
    def __init__(self, git_dir, workdir, counter):
        self.commit = subprocess.run(["git", "--git-dir", git_dir, "rev-parse", "HEAD"], capture_output=True,
                                     text=True, check=True).stdout.strip()
        package = Path(workdir) / "delphi_prompts"
        package.mkdir()
        (package / "__init__.py").write_text("")
        for name, path in [("prompts", "delphi/explainers/default/prompts.py"),
                           ("prompt_builder", "delphi/explainers/default/prompt_builder.py"),
                           ("detection_prompt", "delphi/scorers/classifier/prompts/detection_prompt.py"),
                           ("fuzz_prompt", "delphi/scorers/classifier/prompts/fuzz_prompt.py")]:
            (package / (name + ".py")).write_text(git_file(git_dir, path))
        sys.path.insert(0, str(workdir))
        self.builder = importlib.import_module("delphi_prompts.prompt_builder")
        self.detection = importlib.import_module("delphi_prompts.detection_prompt")
        self.fuzz = importlib.import_module("delphi_prompts.fuzz_prompt")
        explainer = functions_from(git_file(git_dir, "delphi/explainers/explainer.py"),
                                   ["_highlight", "_join_activations"], {})
        self.explainer_self = types.SimpleNamespace(threshold=0.3)  # DefaultExplainer(threshold=0.3) in __main__
        self.explainer_highlight = explainer["_highlight"]
        self.join_activations = explainer["_join_activations"]
        self.sample_highlight = functions_from(git_file(git_dir, "delphi/scorers/classifier/sample.py"), ["_highlight"],
                                               {"deque": deque, "groupby": groupby})["_highlight"]

    def explain_prompt(self, windows):
        """DefaultExplainer (activations shown, no chain of thought): 40 windows, highlighted + activations."""
        maximum = max(max(w["activations"]) for w in windows)
        parts = []
        for w in windows:
            parts.append(self.explainer_highlight(self.explainer_self, w["tokens"], w["activations"]))
            normalized = [math.ceil(10 * max(a, 0) / maximum) if maximum > 0 else 0 for a in w["activations"]]
            parts.append(self.join_activations(self.explainer_self, w["tokens"], w["activations"], normalized))
        return self.builder.build_prompt(examples="\n".join(parts), activations=True, cot=False)

    def classifier_prompts(self, kind, label, windows, per_prompt=5):
        """Detection or fuzzing prompts of `per_prompt` windows each (their default), in window order."""
        texts = []
        activating = [w for w in windows if w["kind"] != "random"]
        mean_active = math.ceil(sum(sum(1 for a in w["activations"] if a > 0) for w in activating) / max(1, len(activating)))
        for w in windows:
            if kind == "detection":
                texts.append("".join(w["tokens"]))
            elif w["kind"] != "random":
                threshold = 0.3 * max(w["activations"])
                texts.append(self.sample_highlight(w["tokens"], lambda i, w=w, t=threshold: w["activations"][i] >= t))
            else:  # a non-activating window with n_incorrect tokens marked (positions do not change the count much)
                marked = set(range(len(w["tokens"]) - len(w["tokens"]) // 4, len(w["tokens"])))
                marked = set(sorted(marked)[:max(1, mean_active)])
                texts.append(self.sample_highlight(w["tokens"], lambda i, m=marked: i in m))
        build = self.detection.prompt if kind == "detection" else self.fuzz.prompt
        prompts = []
        for start in range(0, len(texts), per_prompt):
            batch = texts[start:start + per_prompt]
            examples = "\n".join("Example %d: %s" % (i, t) for i, t in enumerate(batch))
            prompts.append((build(examples=examples, explanation=label), "[" + ",".join("1" for _ in batch) + "]"))
        return prompts

    def explanation_answer(self, label):
        return "[EXPLANATION]: %s" % label


# --- counting ------------------------------------------------------------------------------------

class Tally:
    """Requests of one contender and stage: prompt tokens, the prefix shared with earlier requests, answers."""

    def __init__(self, counter):
        self.counter = counter
        self.requests = 0
        self.prompt = 0
        self.answer = 0
        self.prefixes = []  # per request: (prompt tokens, shared-prefix tokens)
        self.seen = []

    def add(self, request, answer):
        ids = self.counter.request_ids(request)
        shared = 0
        for earlier in self.seen:
            n = 0
            limit = min(len(ids), len(earlier))
            while n < limit and ids[n] == earlier[n]:
                n += 1
            shared = max(shared, n)
        self.seen.append(ids)
        self.requests += 1
        self.prompt += len(ids)
        self.answer += self.counter.count(answer) if answer else 0
        self.prefixes.append((len(ids), shared))

    def summary(self, features):
        return {"requests": self.requests / features, "prompt_tokens": self.prompt / features,
                "answer_tokens": self.answer / features, "prefixes": self.prefixes}


def saelabel_messages(body):
    request = json.loads(body)
    if "messages" in request:
        return [{"role": m["role"], "content": m["content"]} for m in request["messages"]]
    return request["prompt"]


def cycle(windows, n):
    return [windows[i % len(windows)] for i in range(n)] if windows else []


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--input", required=True)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--openai-git", required=True)
    p.add_argument("--delphi-git", required=True)
    args = p.parse_args()
    data = json.load(open(args.input))
    counter = Counter(args.tokenizer)
    work = tempfile.mkdtemp(prefix="cost-anchors-")
    openai = OpenAIAnchor(args.openai_git, work, counter)
    delphi = DelphiAnchor(args.delphi_git, work, counter)
    label = data["label"]

    contenders = {}

    def tally(name, stage):
        return contenders.setdefault(name, {}).setdefault(stage, Tally(counter))

    features = data["features"]
    for feature in features:
        explain, heldout = feature["explain"], feature["heldout"]
        maximum = max(max(w["activations"]) for w in heldout)
        for variant in feature["saelabel"]:
            name = "saelabel, " + variant["name"]
            for body in variant["explain"]:
                tally(name, "explain").add(saelabel_messages(body), label)
            for body, answer in zip(variant["score"], variant["score_answers"]):
                tally(name, "score").add(saelabel_messages(body), answer)
        # OpenAI: explain on the 5 strongest top windows; simulate every held-out window.
        top = sorted([w for w in explain if w["kind"] == "top"], key=lambda w: -max(w["activations"]))[:5]
        for name in [LOGPROB_DEFAULT, OPENAI_CHAT]:
            tally(name, "explain").add(openai.explain_prompt(top), openai.explanation_answer(label))
        for w in heldout:
            tally(LOGPROB_DEFAULT, "score").add(openai.logprob_simulation_prompt(label, w), "")
            tally(OPENAI_CHAT, "score").add(openai.chat_simulation_prompt(label, w),
                                                                    openai.chat_simulation_answer(w, maximum))
        # delphi: explain on 40 windows (the feature's explain windows, repeated to 40); its default scorers.
        delphi_explain = delphi.explain_prompt(cycle(explain, 40))
        for name in [DELPHI_DEFAULT, DELPHI_DETECTION]:
            tally(name, "explain").add(delphi_explain, delphi.explanation_answer(label))
        for kind in ["detection", "fuzzing"]:
            for prompt, answer in delphi.classifier_prompts(kind, label, heldout):
                tally(DELPHI_DEFAULT, "score").add(prompt, answer)
                if kind == "detection":
                    tally(DELPHI_DETECTION, "score").add(prompt, answer)

    n = len(features)
    output = {"features": n, "heldout_windows": sum(len(f["heldout"]) for f in features) / max(1, n),
              "openai_commit": openai.commit, "delphi_commit": delphi.commit,
              "contenders": {name: {stage: t.summary(n) for stage, t in stages.items()} for name, stages in contenders.items()}}
    json.dump(output, sys.stdout)


if __name__ == "__main__":
    main()
