#!/usr/bin/env python3
"""Deterministic mock of an OpenAI-compatible LLM server, for saelabel's tests and benchmarks.

Python 3 standard library only. Usage:

    python3 Tools/mock_llm_server.py --port 0 --latency-ms 200 \
        [--fault-rate-500 0.1 --fault-rate-429 0.05 --fault-rate-malformed 0.02 \
         --fault-rate-hang 0.01 --fault-rate-reset 0 --seed 1 --hang-seconds 30]

With --port 0 a free port is bound; the server prints exactly one line `LISTENING <port>` to stdout.
HTTP/1.1 keep-alive; one daemon thread per connection; each /v1 request sleeps --latency-ms in its
own thread, so concurrent requests overlap.

Answers are deterministic: the same request always gets the same answer.

--dialect picks which server the mock behaves as (default `lenient`: accepts every request):
  openai            OpenAI's API: request fields outside its published spec (openai/openai-openapi,
                    CreateChatCompletionRequest / CreateCompletionRequest / ResponseFormat*) → 400
                    unknown_parameter (param like `response_format.schema`); `json_schema` with strict
                    needs additionalProperties false and every property required on every object, and only
                    strict-mode keywords; `json_object` needs "json" in the messages; reasoning models
                    (gpt-5*, o1/o3/o4*) refuse max_tokens, a temperature other than 1 and logprobs, and spend
                    --reasoning-tokens (200) hidden tokens out of max_completion_tokens (too few → empty content,
                    finish_reason "length"); /v1/completions refuses echo with logprobs.
  vllm              vLLM: json_schema, guided_json, json_object (a `schema` beside it is ignored, and the
                    answer is then unconstrained), echo + logprobs and prompt_logprobs on /v1/completions;
                    unknown fields are ignored.
  ollama            Ollama's /v1: the fields of its docs/openai.md (max_tokens, not max_completion_tokens);
                    json_schema or json_object; others ignored; /v1/completions returns no logprobs.
  llama-server      llama.cpp's C++ server: json_schema or json_object(+schema); /v1/completions refuses echo;
                    --slots N serves N requests at once and queues the rest, as `-np N` does.
  llama-cpp-python  llama-cpp-python's server: json_schema → HTTP 500; json_object + schema works.
Fields a server ignores are listed in /_stats `ignored`; refused requests in `refused` (one line each).

mock_activation(t) -- the mock "model's" activation for a token string t:

    def mock_activation(t):                  # FNV-1a 32-bit over the UTF-8 bytes, modulo 11
        h = 0x811c9dc5
        for b in t.encode("utf-8"):
            h ^= b
            h = (h * 0x01000193) & 0xFFFFFFFF
        return h % 11

Kinds of request (detected from the content, checked in this order):

* detect (chat; the LAST user message contains `<examples count=N>`): the answer is a JSON list of
  N integers, e.g. `[1, 0, 0, 1, 0]`. The examples are the texts between `<example K>` and
  `</example>` (any K), taken in order of appearance; entry i is 1 if example i's text, split on
  whitespace, holds a token t with mock_activation(t) >= 8, else 0 (missing examples give 0).
* simulate (chat with a `response_format` of type json_object or json_schema, or vLLM's `guided_json`;
  the LAST user message holds a
  JSON array of token strings between `<tokens>` and `</tokens>`): the answer is
  `{"activations":[{"token":t,"activation":mock_activation(t)}, ...]}`, one entry per token.
  The `wrong_length` fault drops the last entry (of a detect answer too).
  Sparse simulate (the schema's `activations` items have an `index`; the tokens are `[index, token]`
  pairs, or lines `index token` with `\\`, `\n`, `\r`, `\t` escaped inside the token):
  `{"activations":[{"index":i,"activation":mock_activation(t)}, ...]}` listing only the tokens
  whose mock_activation is above 0; `wrong_length` adds an entry whose index names no token.
  Several-window sparse simulate (the schema has a `windows` property; the last user message has
  `Window K: <tokens>[[index, token], ...]</tokens>`, or a line `Window K:` followed by `index token`
  lines): `{"windows":[[[index, activation], ...], ...]}`, by position: one list per such line, in
  order, of [index, mock_activation(t)] pairs for its active tokens; `wrong_length` leaves out the last
  window (the count is wrong), `bad_index` adds to the last window's list a pair whose index names no token.
* every chat answer's usage reports OpenAI's automatic prompt caching as
  `usage.prompt_tokens_details.cached_tokens`: the prompt is the sequence of its messages' tokens (each
  whitespace-split word, tagged with its message's role); a prompt of at least --prompt-cache-min (1024)
  tokens gets as cached the longest prefix, in whole steps of --prompt-cache-step (128) tokens and at
  least --prompt-cache-min long, that an earlier prompt of the same model also began with (OpenAI:
  "cache hits in increments of 128 tokens" for prompts of 1,024 tokens or more). Shorter prompts are
  never cached and are not remembered.
* explain (chat without response_format; the LAST user message has lines `token<TAB>N`, N an
  integer 0..10, or marks `<<token|N>>` in running text): the answer is `the token "X"` where X is
  the token (surrounding whitespace stripped) with the highest total N over all such lines and marks;
  ties go to the lexicographically smallest token. Without either the answer is `nothing in particular`.
* check (chat, or completions without echo, with a one-token limit or the message `Reply with OK.`:
  saelabel's endpoint check before
  a run): answered like chat or completion,
  but it takes no entry of the fault script and is counted in `checks`, not in `requests`.
* chat (any other chat request): `mock answer <8 hex digits of FNV-1a of the last message>`.
* logprobs (completions with `echo: true` and `logprobs: k`): the prompt is split with the regex
  `\\S+|\\s+` (whitespace runs are tokens too); `max_tokens` extra tokens "\\n" are generated.
  Following OpenAI's convention, entry i of `top_logprobs` is the distribution of token i given the
  tokens before it, and entry 0 (and `token_logprobs[0]`) is null. At a position whose token is
  `unknown`, the distribution is over the strings "0".."10": with p = mock_activation of the
  nearest previous non-whitespace token, logit(v) = -1.5*|v - p|, log-softmaxed over 0..10; the k
  most likely are returned (k capped at 11). So for a line `tok<TAB>unknown`, the expected value is
  close to mock_activation("tok"). Elsewhere the entry is {token: -0.1}. `text_offset` holds each
  token's character offset.
* completion (any other completions request): text `mock completion`.

Usage counts: prompt_tokens = whitespace-split words of all message contents (or of the prompt),
completion_tokens = whitespace-split words of the answer.

Faults. POST /_control with `{"script": ["ok","500","429:2","malformed","truncated","reset",
"hang","wrong_length","400",...]}` replaces the fault script: the next /v1 requests consume its
entries in order; after it runs out, random faults per the --fault-rate-* options, else ok.
  NNN          HTTP status NNN with a JSON error body (e.g. 400, 401, 500, 503)
  429:S        HTTP 429 with `Retry-After: S` (plain `429` means Retry-After 1)
  malformed    200 with a body that is not valid JSON
  truncated    200 whose Content-Length exceeds the body sent; then the connection is closed
  reset        the socket is closed abruptly (SO_LINGER 0 → RST) without a response
  hang         sleep --hang-seconds, then answer normally
  wrong_length simulate and detect answer one entry too few (other kinds answer normally)
  bad_index    sparse simulate answers list an index that names no token (several windows: the last one only)

Access. --api-key KEY answers 401 to a /v1 request whose Authorization is not `Bearer KEY`;
--models a,b answers 404 (model_not_found) to a request for any other model. Both are checked
after the fault script entry is taken and counted.

GET /_stats → {"requests": N (work requests, checks excluded), "checks": N, "by_kind": {...}, "by_outcome": {...}, "auth_seen": [distinct
Authorization header values], "connections": accepted connections, "max_in_flight": most /v1
requests inside their latency at once, "refused": one line per refused request, "ignored": fields the
dialect's server would ignore}; POST /_reset_stats zeroes it.
"""

import argparse
import hashlib
import json
import math
import random
import re
import signal
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def mock_activation(token):
    h = 0x811C9DC5
    for b in token.encode("utf-8"):
        h ^= b
        h = (h * 0x01000193) & 0xFFFFFFFF
    return h % 11


def fnv_hex(text):
    h = 0x811C9DC5
    for b in text.encode("utf-8"):
        h ^= b
        h = (h * 0x01000193) & 0xFFFFFFFF
    return "%08x" % h


def words(text):
    return len(text.split())


class State:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.rng = random.Random(args.seed)
        self.script = []
        self.files = {}    # Batch API files: id -> {"bytes", "filename", "purpose", "created_at"}
        self.batches = {}  # id -> the Batch object plus "_created" (monotonic) and "_lines"
        self.reset_stats()

    def reset_stats(self):
        self.requests = 0
        self.checks = 0
        self.by_kind = {}
        self.by_outcome = {}
        self.auth_seen = set()
        self.connections = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.refused = []
        self.ignored = set()
        self.prompt_cache = set()  # digests of remembered prompt prefixes (see cached_prefix_tokens)
        self.uploads = 0          # POST /v1/files
        self.batches_created = 0  # POST /v1/batches
        self.batch_lines = 0      # request lines answered (or failed) inside batches
        self.batch_polls = 0      # GET /v1/batches/{id}
        self.batch_custom_ids = []  # every custom_id of every created batch, to count repeats

    def next_fault(self):
        with self.lock:
            if self.script:
                return self.script.pop(0)
            a = self.args
            r = self.rng.random()
            for name, rate in (("500", a.fault_rate_500), ("429:1", a.fault_rate_429),
                               ("malformed", a.fault_rate_malformed), ("hang", a.fault_rate_hang),
                               ("reset", a.fault_rate_reset)):
                if r < rate:
                    return name
                r -= rate
            return "ok"


def last_user(messages):
    for m in reversed(messages):
        if m.get("role") == "user":
            return str(m.get("content") or "")
    return str(messages[-1].get("content") or "") if messages else ""


EXPLAIN_LINE = re.compile(r"^(.*)\t(\d+)\s*$")
EXPLAIN_MARK = re.compile(r"<<(.*?)\|(\d+)>>")
LISTED_TOKEN = re.compile(r"^(\d+) (.*)$")


def unescape_listed(text):
    """A token of an `index token` line: `\\`, `\n`, `\r`, `\t` back to what they stand for."""
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "r": "\r", "t": "\t"}.get(m.group(1), m.group(1)), text)


def listed_pairs(text):
    """[index, token] pairs from a sparse simulator's token list: JSON pairs or `index token` lines."""
    if text.startswith("\n"):  # the list starts on a line of its own
        lines = [LISTED_TOKEN.match(line) for line in text[1:-1].split("\n")]
        return [[int(m.group(1)), unescape_listed(m.group(2))] for m in lines if m]
    try:
        pairs = json.loads(text)
    except ValueError:
        return []
    return [p for p in pairs if isinstance(p, list) and len(p) == 2] if isinstance(pairs, list) else []


def classify(path, req):
    if path.endswith("/chat/completions"):
        msgs = req.get("messages") or []
        user = last_user(msgs)
        # saelabel's endpoint check: one token (a reasoning model gets its allowance on top).
        if req.get("max_tokens") == 1 or req.get("max_completion_tokens") == 1 or user == "Reply with OK.":
            return "check"
        if re.search(r"<examples count=\d+>", user):
            return "detect"
        rf = req.get("response_format")
        structured = (isinstance(rf, dict) and rf.get("type") in ("json_object", "json_schema")) or "guided_json" in req
        if structured and ("<tokens>" in user or is_sparse_windows(req)):
            return "simulate"
        if rf is None and (any(EXPLAIN_LINE.match(l) for l in user.split("\n")) or EXPLAIN_MARK.search(user)):
            return "explain"
        return "chat"
    if req.get("echo") and req.get("logprobs"):
        return "logprobs"
    if req.get("max_tokens") == 1 and not req.get("echo"):
        return "check"
    return "completion"


def answer_chat(kind, req, fault):
    user = last_user(req.get("messages") or [])
    if kind == "detect":
        n = int(re.search(r"<examples count=(\d+)>", user).group(1))
        texts = [m.group(1) for m in re.finditer(r"<example [^>]*>(.*?)</example>", user, re.S)]
        out = []
        for i in range(n):
            text = texts[i] if i < len(texts) else ""
            out.append(1 if any(mock_activation(t) >= 8 for t in text.split()) else 0)
        if fault == "wrong_length" and out:
            out = out[:-1]
        return json.dumps(out)
    if kind == "simulate":
        # A numbered list starts and ends on a line of its own, so a token "</tokens>" does not end it.
        m = re.search(r"<tokens>(\n.*?\n|.*?)</tokens>", user, re.S)
        try:
            tokens = json.loads(m.group(1)) if m else []
            if not isinstance(tokens, list):
                tokens = []
        except ValueError:
            tokens = []
        if is_sparse_windows(req):
            # saelabel's several-window sparse simulator: "Window K: <tokens>…</tokens>"; one entry per
            # window, listing only its active tokens.
            found = re.findall(r"Window (\d+): <tokens>(.*?)</tokens>", user, re.S)
            if not found:  # numbered lines under a "Window K:" line, up to the next such line
                parts = re.split(r"^Window (\d+):$", user, flags=re.M)
                found = [(parts[i], "\n" + parts[i + 1].strip("\n") + "\n") for i in range(1, len(parts) - 1, 2)]
            # The answer is positional: one list of [index, activation] pairs per window, in order.
            windows, last_length = [], 0
            for number, listed in found:
                pairs = listed_pairs(listed)
                windows.append([[int(i), mock_activation(str(t))] for i, t in pairs if mock_activation(str(t)) > 0])
                last_length = len(pairs)
            if fault == "bad_index" and windows:
                windows[-1].append([last_length, 1])  # names no token of the last window: that window is unusable
            if fault == "wrong_length" and windows:
                windows = windows[:-1]  # one window too few: positions mean nothing, every window unusable
            return json.dumps({"windows": windows}, ensure_ascii=False)
        if is_sparse(req):
            # saelabel's sparse simulator: tokens come numbered; only active ones are listed.
            pairs = listed_pairs(m.group(1)) if m else []
            active = [{"index": int(i), "activation": mock_activation(str(t))} for i, t in pairs
                      if mock_activation(str(t)) > 0]
            if fault == "wrong_length":
                active.append({"index": len(pairs), "activation": 1})  # names no token: unusable
            return json.dumps({"activations": active}, ensure_ascii=False)
        entries = [{"token": str(t), "activation": mock_activation(str(t))} for t in tokens]
        if fault == "wrong_length" and entries:
            entries = entries[:-1]
        return json.dumps({"activations": entries}, ensure_ascii=False)
    if kind == "explain":
        totals = {}
        marks = [m for line in user.split("\n") for m in [EXPLAIN_LINE.match(line)] if m] + list(EXPLAIN_MARK.finditer(user))
        for m in marks:
            if 0 <= int(m.group(2)) <= 10:
                tok = m.group(1).strip()
                totals[tok] = totals.get(tok, 0) + int(m.group(2))
        if not totals:
            return "nothing in particular"
        best = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
        return 'the token "%s"' % best
    return "mock answer " + fnv_hex(user)


def request_schema(req):
    """The JSON schema a chat request carries (json_schema, json_object + schema, or vLLM's guided_json)."""
    rf = req.get("response_format")
    schema = ((rf or {}).get("json_schema") or {}).get("schema") if isinstance(rf, dict) else None
    schema = schema or (rf or {}).get("schema") or req.get("guided_json") or {}
    return schema if isinstance(schema, dict) else {}


def is_sparse(req):
    """A sparse simulation request: its schema's entries are {index, activation}."""
    items = ((request_schema(req).get("properties") or {}).get("activations") or {}).get("items") or {}
    return isinstance(items, dict) and "index" in (items.get("properties") or {})


def is_sparse_windows(req):
    """A several-window sparse simulation request: its schema lists `windows`."""
    return "windows" in (request_schema(req).get("properties") or {})


def cached_prefix_tokens(cache, model, messages, minimum, step):
    """OpenAI's automatic prompt caching: the longest prefix of this prompt, in whole `step`s of tokens and
    at least `minimum` long, that an earlier prompt of the same model began with; this prompt's prefixes
    are then remembered. `cache` holds digests of remembered prefixes (one per step boundary)."""
    tokens = [str(m.get("role")) + "\x00" + w for m in messages for w in str(m.get("content") or "").split()]
    if len(tokens) < minimum:
        return 0
    digest = hashlib.sha256(model.encode("utf-8"))
    cached, matching = 0, True
    for end in range(step, len(tokens) + 1, step):
        for token in tokens[end - step:end]:
            digest.update(b"\x01" + token.encode("utf-8"))
        if end < minimum:
            continue
        key = digest.hexdigest()
        # A longer remembered prefix implies every shorter one: the match ends at the first miss.
        matching = matching and key in cache
        if matching:
            cached = end
        cache.add(key)
    return cached


def logprobs_choice(req):
    prompt = str(req.get("prompt") or "")
    k = max(1, min(11, int(req.get("logprobs") or 1)))
    n_gen = max(0, int(req.get("max_tokens") or 0))
    tokens = re.findall(r"\S+|\s+", prompt) + ["\n"] * n_gen
    token_lps, tops, offsets = [], [], []
    offset = 0
    prev_word = ""
    for i, tok in enumerate(tokens):
        offsets.append(offset)
        offset += len(tok)
        if i == 0:
            token_lps.append(None)
            tops.append(None)
        elif tok == "unknown":
            p = mock_activation(prev_word)
            logits = [-1.5 * abs(v - p) for v in range(11)]
            mx = max(logits)
            z = mx + math.log(sum(math.exp(l - mx) for l in logits))
            lps = sorted(((str(v), logits[v] - z) for v in range(11)), key=lambda x: (-x[1], int(x[0])))
            tops.append({t: round(lp, 6) for t, lp in lps[:k]})
            token_lps.append(-5.0)
        else:
            tops.append({tok: -0.1})
            token_lps.append(-0.1)
        if tok.strip():
            prev_word = tok
    text = prompt + "\n" * n_gen
    logprobs = {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops, "text_offset": offsets}
    return text, logprobs, words("\n" * n_gen)


# Fields of OpenAI's published spec (openai/openai-openapi, openapi.yaml, read 2026-12 at f85dbe2).
OPENAI_CHAT_FIELDS = {
    "audio", "frequency_penalty", "function_call", "functions", "logit_bias", "logprobs", "max_completion_tokens",
    "max_tokens", "messages", "metadata", "modalities", "model", "moderation", "n", "parallel_tool_calls",
    "prediction", "presence_penalty", "prompt_cache_key", "prompt_cache_options", "prompt_cache_retention",
    "reasoning_effort", "response_format", "safety_identifier", "seed", "service_tier", "stop", "store", "stream",
    "stream_options", "temperature", "tool_choice", "tools", "top_logprobs", "top_p", "user", "verbosity",
    "web_search_options"}
OPENAI_COMPLETION_FIELDS = {
    "best_of", "echo", "frequency_penalty", "logit_bias", "logprobs", "max_tokens", "model", "n",
    "presence_penalty", "prompt", "seed", "stop", "stream", "stream_options", "suffix", "temperature", "top_p", "user"}
OPENAI_RESPONSE_FORMAT_FIELDS = {"text": {"type"}, "json_object": {"type"}, "json_schema": {"type", "json_schema"},
                                 "grammar": {"type", "grammar"}, "python": {"type"}}
OPENAI_JSON_SCHEMA_FIELDS = {"name", "description", "schema", "strict"}
# Keywords strict mode accepts (OpenAI's structured-outputs guide, "Supported schemas").
OPENAI_STRICT_KEYWORDS = {"type", "properties", "required", "additionalProperties", "items", "enum", "const",
                          "anyOf", "description", "title", "$defs", "definitions", "$ref", "minItems", "maxItems",
                          "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
                          "pattern", "format"}
REASONING_MODEL = re.compile(r"^(?:.*/)?(?:gpt-5|o1|o3|o4)(?:$|[-.])")

# vLLM's extra sampling and guided-decoding fields beside OpenAI's (vllm/entrypoints/openai/protocol.py).
VLLM_EXTRA_FIELDS = {"guided_json", "guided_regex", "guided_choice", "guided_grammar", "guided_decoding_backend",
                     "structured_outputs", "top_k", "min_p", "repetition_penalty", "min_tokens", "echo",
                     "prompt_logprobs", "skip_special_tokens", "add_generation_prompt", "chat_template",
                     "chat_template_kwargs", "ignore_eos", "stop_token_ids", "include_stop_str_in_output"}
# Ollama's docs/openai.md, "Supported request fields".
OLLAMA_CHAT_FIELDS = {"model", "messages", "frequency_penalty", "presence_penalty", "response_format", "seed", "stop",
                      "stream", "stream_options", "temperature", "top_p", "max_tokens", "tools", "tool_choice",
                      "reasoning_effort", "reasoning", "logprobs", "top_logprobs"}
OLLAMA_COMPLETION_FIELDS = {"model", "prompt", "frequency_penalty", "presence_penalty", "seed", "stop", "stream",
                            "stream_options", "temperature", "top_p", "max_tokens", "suffix"}
# llama.cpp's server and llama-cpp-python read these (plus their own sampling fields, which saelabel never sends).
LLAMA_CPP_FIELDS = OPENAI_CHAT_FIELDS | OPENAI_COMPLETION_FIELDS | {"grammar", "n_predict", "top_k", "min_p",
                                                                    "repeat_penalty", "json_schema", "mirostat_mode"}


class Refusal(Exception):
    def __init__(self, status, message, code=None, param=None, kind="invalid_request_error"):
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": kind, "param": param, "code": code}}


def unknown_parameter(param):
    return Refusal(400, "Unrecognized request argument supplied: %s" % param, code="unknown_parameter", param=param)


def strict_schema_problem(schema, where="schema"):
    """The first reason OpenAI's strict mode refuses `schema`, or None."""
    if not isinstance(schema, dict):
        return "%s is not an object" % where
    for key in schema:
        if key not in OPENAI_STRICT_KEYWORDS:
            return "%s: keyword '%s' is not supported in strict mode" % (where, key)
    if schema.get("type") == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        if schema.get("additionalProperties") is not False:
            return "%s: 'additionalProperties' is required to be supplied and to be false" % where
        if sorted(schema.get("required") or []) != sorted(props):
            return "%s: 'required' must list every key in 'properties'" % where
        for name, sub in props.items():
            problem = strict_schema_problem(sub, "%s.%s" % (where, name))
            if problem:
                return problem
    if "items" in schema:
        problem = strict_schema_problem(schema["items"], where + ".items")
        if problem:
            return problem
    for i, sub in enumerate(schema.get("anyOf") or []):
        problem = strict_schema_problem(sub, "%s.anyOf[%d]" % (where, i))
        if problem:
            return problem
    return None


def check_openai(path, req):
    chat = path.endswith("/chat/completions")
    allowed = OPENAI_CHAT_FIELDS if chat else OPENAI_COMPLETION_FIELDS
    for key in sorted(req):
        if key not in allowed:
            raise unknown_parameter(key)
    model = str(req.get("model") or "")
    if not chat:
        if req.get("echo") and req.get("logprobs") is not None:
            raise Refusal(400, "echo is not supported with logprobs for this model", code="unsupported_value",
                          param="echo")
        return
    rf = req.get("response_format")
    if rf is not None:
        if not isinstance(rf, dict) or rf.get("type") not in OPENAI_RESPONSE_FORMAT_FIELDS:
            raise Refusal(400, "Invalid value for 'response_format.type'", code="invalid_value", param="response_format.type")
        for key in sorted(rf):
            if key not in OPENAI_RESPONSE_FORMAT_FIELDS[rf["type"]]:
                raise unknown_parameter("response_format." + key)
        if rf["type"] == "json_object":
            text = " ".join(str(m.get("content") or "") for m in req.get("messages") or [])
            if "json" not in text.lower():
                raise Refusal(400, "'messages' must contain the word 'json' in some form, to use 'response_format' of "
                              "type 'json_object'.", param="messages")
        if rf["type"] == "json_schema":
            js = rf.get("json_schema")
            if not isinstance(js, dict):
                raise Refusal(400, "Missing required parameter: 'response_format.json_schema'.",
                              code="missing_required_parameter", param="response_format.json_schema")
            for key in sorted(js):
                if key not in OPENAI_JSON_SCHEMA_FIELDS:
                    raise unknown_parameter("response_format.json_schema." + key)
            if not re.match(r"^[A-Za-z0-9_-]{1,64}$", str(js.get("name") or "")):
                raise Refusal(400, "Invalid 'response_format.json_schema.name'", code="invalid_value",
                              param="response_format.json_schema.name")
            if js.get("strict"):
                problem = strict_schema_problem(js.get("schema"))
                if problem:
                    raise Refusal(400, "Invalid schema for response_format '%s': %s" % (js.get("name"), problem),
                                  code="invalid_json_schema", param="response_format")
    if REASONING_MODEL.match(model):
        if "max_tokens" in req:
            raise Refusal(400, "Unsupported parameter: 'max_tokens' is not supported with this model. Use "
                          "'max_completion_tokens' instead.", code="unsupported_parameter", param="max_tokens")
        if "temperature" in req and req["temperature"] != 1:
            raise Refusal(400, "Unsupported value: 'temperature' does not support %s with this model. Only the "
                          "default (1) value is supported." % req["temperature"], code="unsupported_value",
                          param="temperature")
        for key in ("logprobs", "top_logprobs"):
            if req.get(key):
                raise Refusal(400, "Unsupported parameter: '%s' is not supported with this model." % key,
                              code="unsupported_parameter", param=key)


def check_request(dialect, path, req):
    """Raises Refusal when the server would refuse the request; returns the fields it would ignore."""
    chat = path.endswith("/chat/completions")
    rf = req.get("response_format") if chat else None
    rf_type = rf.get("type") if isinstance(rf, dict) else None
    if dialect == "openai":
        check_openai(path, req)
        return []
    if dialect == "vllm":
        ignored = [k for k in sorted(req) if k not in OPENAI_CHAT_FIELDS | OPENAI_COMPLETION_FIELDS | VLLM_EXTRA_FIELDS]
        if rf_type == "json_object" and "schema" in rf:
            ignored.append("response_format.schema")
        return ignored
    if dialect == "ollama":
        allowed = OLLAMA_CHAT_FIELDS if chat else OLLAMA_COMPLETION_FIELDS
        return [k for k in sorted(req) if k not in allowed]
    if dialect in ("llama-server", "llama-cpp-python"):
        if dialect == "llama-cpp-python" and rf_type == "json_schema":
            raise Refusal(500, "Internal Server Error", kind="server_error")
        if dialect == "llama-server" and not chat and req.get("echo"):
            raise Refusal(400, "Only no echo is supported")
        return [k for k in sorted(req) if k not in LLAMA_CPP_FIELDS]
    return []


def honours_schema(dialect, req):
    """Whether the server holds this chat request to the JSON schema it carries."""
    rf = req.get("response_format")
    rf_type = rf.get("type") if isinstance(rf, dict) else None
    if dialect == "lenient":
        return True
    if "guided_json" in req and dialect == "vllm":
        return True
    if rf_type == "json_schema":
        return isinstance(rf.get("json_schema"), dict) and "schema" in rf["json_schema"]
    if rf_type == "json_object":
        return "schema" in rf and dialect in ("llama-server", "llama-cpp-python")
    return False


def parse_multipart(content_type, raw):
    """multipart/form-data fields: name -> (filename, bytes); None when the body is not multipart."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not content_type.startswith("multipart/form-data") or not match:
        return None
    fields = {}
    for part in raw.split(b"--" + match.group(1).encode())[1:]:
        if part.startswith(b"--"):
            break
        head, _, body = part.partition(b"\r\n\r\n")
        disposition = head.decode("utf-8", "replace")
        name = re.search(r'name="([^"]*)"', disposition)
        filename = re.search(r'filename="([^"]*)"', disposition)
        if name:
            fields[name.group(1)] = (filename.group(1) if filename else None, body[:-2] if body.endswith(b"\r\n") else body)
    return fields


def public_batch(batch):
    return {k: v for k, v in batch.items() if not k.startswith("_")}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "MockLLM/1.0"
    # Buffered writes: headers and body leave in one segment when the handler returns (an
    # unbuffered header write followed by a body write meets Nagle + delayed ACK: ~40 ms stalls).
    wbufsize = -1

    def log_message(self, fmt, *args):  # quiet
        pass

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        st = self.server.state
        with st.lock:
            st.connections += 1

    def finish(self):
        try:
            super().finish()
        except (OSError, ValueError):
            pass

    def send_json(self, status, obj, extra_headers=()):
        body = json.dumps(obj).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra_headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def answer_object(self, path, req, raw, kind, dialect, fault):
        """The completion a request gets (shared by the synchronous endpoints and batch lines)."""
        model = str(req.get("model") or "mock")
        if path.endswith("/chat/completions"):
            if kind == "simulate" and not honours_schema(dialect, req):
                content = '{"answer": "the activations are low"}'  # unconstrained: the schema was not applied
            else:
                content = answer_chat(kind, req, fault)
            prompt_tokens = sum(words(str(m.get("content") or "")) for m in (req.get("messages") or []))
            completion_tokens, finish = words(content), "stop"
            usage_details = {}
            st = self.server.state
            with st.lock:
                cached = cached_prefix_tokens(st.prompt_cache, model, req.get("messages") or [],
                                              self.server.args.prompt_cache_min, self.server.args.prompt_cache_step)
            if cached:
                usage_details["prompt_tokens_details"] = {"cached_tokens": cached}
            if dialect == "openai" and REASONING_MODEL.match(model):
                # Hidden reasoning is paid out of max_completion_tokens; too small a limit leaves no answer.
                limit = req.get("max_completion_tokens")
                reasoning = self.server.args.reasoning_tokens
                completion_tokens += reasoning
                if limit is not None and completion_tokens > int(limit):
                    content, completion_tokens, finish = "", int(limit), "length"
                usage_details["completion_tokens_details"] = {"reasoning_tokens": min(reasoning, completion_tokens)}
            obj = {"id": "chatcmpl-mock-" + fnv_hex(raw.decode("utf-8", "replace")), "object": "chat.completion",
                   "created": 0, "model": model,
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                "finish_reason": finish}],
                   "usage": dict({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                  "total_tokens": prompt_tokens + completion_tokens}, **usage_details)}
        else:
            prompt = str(req.get("prompt") or "")
            if kind == "logprobs" and dialect != "ollama":  # Ollama ignores echo and logprobs
                text, logprobs, gen = logprobs_choice(req)
            else:
                text, logprobs, gen = "mock completion", None, 2
            obj = {"id": "cmpl-mock-" + fnv_hex(raw.decode("utf-8", "replace")), "object": "text_completion",
                   "created": 0, "model": model,
                   "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": "length"}],
                   "usage": {"prompt_tokens": words(prompt), "completion_tokens": gen,
                             "total_tokens": words(prompt) + gen}}
        return obj

    # --- OpenAI Batch API (openai-openapi: createFile, createBatch, retrieveBatch, cancelBatch, downloadFile) ---

    def batch_auth_ok(self):
        args = self.server.args
        if args.api_key is not None and self.headers.get("Authorization") != "Bearer " + args.api_key:
            self.send_json(401, {"error": {"message": "Incorrect API key provided (mock)", "type": "invalid_request_error",
                                           "code": "invalid_api_key"}})
            return False
        return True

    def batch_api_post(self, raw):
        st = self.server.state
        if not self.batch_auth_ok():
            return
        if self.path == "/v1/files":
            fields = parse_multipart(self.headers.get("Content-Type") or "", raw)
            if fields is None or "file" not in fields or fields.get("purpose", (None, b""))[1] != b"batch":
                return self.send_json(400, {"error": {"message": "expected multipart/form-data with purpose=batch and file",
                                                      "type": "invalid_request_error"}})
            filename, content = fields["file"]
            with st.lock:
                st.uploads += 1
                fid = "file-mock-%d" % (len(st.files) + 1)
                st.files[fid] = {"bytes": content, "filename": filename or "upload.jsonl", "purpose": "batch",
                                 "created_at": int(time.time())}
            return self.send_json(200, {"id": fid, "object": "file", "bytes": len(content), "created_at": int(time.time()),
                                        "filename": filename or "upload.jsonl", "purpose": "batch", "status": "processed"})
        if self.path == "/v1/batches":
            try:
                req = json.loads(raw)
            except ValueError:
                req = None
            if not isinstance(req, dict):
                return self.send_json(400, {"error": {"message": "request body is not a JSON object"}})
            unknown = sorted(set(req) - {"input_file_id", "endpoint", "completion_window", "metadata"})
            if unknown:
                return self.send_json(400, {"error": {"message": "Unrecognized request argument supplied: " + unknown[0],
                                                      "code": "unknown_parameter", "param": unknown[0]}})
            if req.get("endpoint") not in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses") \
                    or req.get("completion_window") != "24h":
                return self.send_json(400, {"error": {"message": "endpoint or completion_window not supported"}})
            with st.lock:
                source = st.files.get(req.get("input_file_id"))
                if source is None:
                    return self.send_json(404, {"error": {"message": "No such File object: %s" % req.get("input_file_id")}})
                st.batches_created += 1
                bid = "batch_mock_%d" % (len(st.batches) + 1)
                lines = [l for l in source["bytes"].split(b"\n") if l.strip()]
                for l in lines:
                    try:
                        st.batch_custom_ids.append(json.loads(l).get("custom_id"))
                    except ValueError:
                        st.batch_custom_ids.append(None)
                now = int(time.time())
                st.batches[bid] = {"id": bid, "object": "batch", "endpoint": req["endpoint"], "errors": None,
                                   "input_file_id": req["input_file_id"], "completion_window": "24h",
                                   "status": "validating", "output_file_id": None, "error_file_id": None,
                                   "created_at": now, "in_progress_at": None, "expires_at": now + 86400,
                                   "finalizing_at": None, "completed_at": None, "failed_at": None, "expired_at": None,
                                   "cancelling_at": None, "cancelled_at": None,
                                   "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
                                   "metadata": req.get("metadata"), "_created": time.monotonic(), "_lines": lines}
                obj = public_batch(st.batches[bid])
            return self.send_json(200, obj)
        parts = self.path.split("/")  # /v1/batches/{id}/cancel
        if len(parts) == 5 and parts[4] == "cancel":
            with st.lock:
                batch = st.batches.get(parts[3])
                if batch is None:
                    return self.send_json(404, {"error": {"message": "No such Batch object"}})
                if batch["status"] in ("validating", "in_progress"):
                    batch["status"] = "cancelling"
                    batch["cancelling_at"] = int(time.time())
                obj = public_batch(batch)
            return self.send_json(200, obj)
        self.send_json(404, {"error": {"message": "unknown path " + self.path}})

    def batch_api_get(self):
        st = self.server.state
        if not self.batch_auth_ok():
            return
        parts = self.path.split("/")
        if len(parts) == 5 and parts[2] == "files" and parts[4] == "content":
            with st.lock:
                f = st.files.get(parts[3])
            if f is None:
                return self.send_json(404, {"error": {"message": "No such File object: " + parts[3]}})
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(f["bytes"])))
            self.end_headers()
            self.wfile.write(f["bytes"])
            return
        if len(parts) == 4 and parts[2] == "batches":
            with st.lock:
                st.batch_polls += 1
                batch = st.batches.get(parts[3])
            if batch is None:
                return self.send_json(404, {"error": {"message": "No such Batch object: " + parts[3]}})
            while True:  # every step whose time has come (a late poll sees the batch finished)
                before = batch["status"]
                self.advance_batch(batch)
                if batch["status"] == before:
                    break
            with st.lock:
                obj = public_batch(batch)
            return self.send_json(200, obj)
        self.send_json(404, {"error": {"message": "unknown path " + self.path}})

    def advance_batch(self, batch):
        """validating → in_progress → finalizing → completed (or expired / cancelled), driven by polls and
        --batch-delay; the answers are made when the batch finalizes."""
        args, st = self.server.args, self.server.state
        now = int(time.time())
        age = time.monotonic() - batch["_created"]
        status = batch["status"]
        if status == "validating" and age >= args.batch_delay * 0.25:
            batch["status"], batch["in_progress_at"] = "in_progress", now
        elif status == "in_progress" and age >= args.batch_delay:
            self.run_batch_lines(batch, limit=None if not args.batch_expire else len(batch["_lines"]) // 2,
                                 unfinished="batch_expired")
            batch["status"], batch["finalizing_at"] = "finalizing", now
        elif status == "cancelling":
            self.run_batch_lines(batch, limit=0, unfinished="batch_cancelled")
            batch["status"], batch["cancelled_at"] = "cancelled", now
        elif status == "finalizing":
            if args.batch_expire:
                batch["status"], batch["expired_at"] = "expired", now
            else:
                batch["status"], batch["completed_at"] = "completed", now

    def run_batch_lines(self, batch, limit, unfinished):
        """Answers each input line as the synchronous endpoint would (every --batch-fail-every'th line fails with
        HTTP 500, every --batch-drop-every'th is missing from both files); lines past `limit` get `unfinished`."""
        args, st = self.server.args, self.server.state
        dialect = args.dialect
        output, errors = [], []
        completed = failed = 0
        for n, line in enumerate(batch["_lines"], start=1):
            try:
                item = json.loads(line)
                custom_id, body = item["custom_id"], item["body"]
            except (ValueError, KeyError, TypeError):
                continue
            rid = "batch_req_%s_%d" % (batch["id"], n)
            if limit is not None and n > limit:
                errors.append({"id": rid, "custom_id": custom_id, "response": None,
                               "error": {"code": unfinished, "message": "This request could not be executed before the batch ended."}})
                failed += 1
                continue
            if args.batch_drop_every and n % args.batch_drop_every == 0:
                continue
            with st.lock:
                st.batch_lines += 1
            if args.batch_fail_every and n % args.batch_fail_every == 0:
                errors.append({"id": rid, "custom_id": custom_id,
                               "response": {"status_code": 500, "request_id": rid,
                                            "body": {"error": {"message": "mock batch line failure", "type": "server_error"}}},
                               "error": None})
                failed += 1
                continue
            url = item.get("url") or batch["endpoint"]
            try:
                check_request(dialect, url, body)
            except Refusal as refusal:
                with st.lock:
                    st.refused.append("batch %s %s: %d %s" % (batch["id"], url, refusal.status, refusal.body["error"]["message"]))
                errors.append({"id": rid, "custom_id": custom_id,
                               "response": {"status_code": refusal.status, "request_id": rid, "body": refusal.body}, "error": None})
                failed += 1
                continue
            raw = json.dumps(body, sort_keys=True).encode("utf-8")
            obj = self.answer_object(url, body, raw, classify(url, body), dialect, "ok")
            output.append({"id": rid, "custom_id": custom_id, "response": {"status_code": 200, "request_id": rid, "body": obj},
                           "error": None})
            completed += 1
        # Output order is not input order (as OpenAI documents): match by custom_id.
        output.reverse()
        with st.lock:
            for key, lines in (("output_file_id", output), ("error_file_id", errors)):
                if lines:
                    fid = "file-mock-%d" % (len(st.files) + 1)
                    st.files[fid] = {"bytes": b"".join(json.dumps(l).encode("utf-8") + b"\n" for l in lines),
                                     "filename": "batch_%s_%s.jsonl" % (batch["id"], key[:-8]), "purpose": "batch_output",
                                     "created_at": int(time.time())}
                    batch[key] = fid
            batch["request_counts"] = {"total": len(batch["_lines"]), "completed": completed, "failed": failed}

    def do_GET(self):
        st = self.server.state
        if self.path == "/_stats":
            with st.lock:
                obj = {"requests": st.requests, "checks": st.checks, "by_kind": dict(st.by_kind), "by_outcome": dict(st.by_outcome),
                       "auth_seen": sorted(st.auth_seen), "connections": st.connections,
                       "max_in_flight": st.max_in_flight, "refused": list(st.refused),
                       "ignored": sorted(st.ignored), "uploads": st.uploads, "batches_created": st.batches_created,
                       "batch_lines": st.batch_lines, "batch_polls": st.batch_polls,
                       "batch_custom_ids": len(st.batch_custom_ids), "batch_custom_ids_distinct": len(set(st.batch_custom_ids))}
            self.send_json(200, obj)
        elif self.path.startswith("/v1/files/") or self.path.startswith("/v1/batches"):
            self.batch_api_get()
        else:
            self.send_json(404, {"error": {"message": "not found"}})

    def do_POST(self):
        st = self.server.state
        raw = self.read_body()
        if self.path == "/_control":
            try:
                script = json.loads(raw or b"{}").get("script") or []
            except ValueError:
                return self.send_json(400, {"error": {"message": "bad control JSON"}})
            with st.lock:
                st.script = [str(s) for s in script]
            return self.send_json(200, {"ok": True, "script": len(script)})
        if self.path == "/_reset_stats":
            with st.lock:
                st.reset_stats()
            return self.send_json(200, {"ok": True})
        if self.path == "/v1/files" or self.path.startswith("/v1/batches"):
            return self.batch_api_post(raw)
        if not self.path.startswith("/v1/") or not self.path.endswith("completions"):
            return self.send_json(404, {"error": {"message": "unknown path " + self.path}})

        auth = self.headers.get("Authorization")
        try:
            req = json.loads(raw)
            if not isinstance(req, dict):
                raise ValueError("not an object")
        except ValueError:
            req = None
        kind = classify(self.path, req) if req is not None else "invalid"
        # Endpoint checks (saelabel's preflight) neither take a fault nor count as work requests.
        fault = "ok" if kind == "check" else st.next_fault()
        with st.lock:
            if kind == "check":
                st.checks += 1
            else:
                st.requests += 1
            st.by_kind[kind] = st.by_kind.get(kind, 0) + 1
            st.by_outcome[fault] = st.by_outcome.get(fault, 0) + 1
            if auth:
                st.auth_seen.add(auth)

        # Requests inside their latency at once: shows that a client overlaps its calls. With --slots, at
        # most that many are served at once and the rest wait their turn (llama-server's `-np N`).
        slots = self.server.slots
        if slots:
            slots.acquire()
        with st.lock:
            st.in_flight += 1
            st.max_in_flight = max(st.max_in_flight, st.in_flight)
        try:
            if self.server.args.latency_ms > 0:
                time.sleep(self.server.args.latency_ms / 1000.0)
        finally:
            with st.lock:
                st.in_flight -= 1
            if slots:
                slots.release()

        if req is None:
            return self.send_json(400, {"error": {"message": "request body is not a JSON object"}})
        args = self.server.args
        if args.api_key is not None and auth != "Bearer " + args.api_key:
            return self.send_json(401, {"error": {"message": "Incorrect API key provided (mock)", "type": "invalid_request_error",
                                                  "code": "invalid_api_key"}})
        if args.models and str(req.get("model")) not in args.models.split(","):
            return self.send_json(404, {"error": {"message": "The model `%s` does not exist (mock)" % req.get("model"),
                                                  "type": "invalid_request_error", "code": "model_not_found"}})
        dialect = self.server.args.dialect
        try:
            ignored = check_request(dialect, self.path, req)
        except Refusal as refusal:
            with st.lock:
                st.refused.append("%s %s: %d %s" % (self.path, kind, refusal.status, refusal.body["error"]["message"]))
            return self.send_json(refusal.status, refusal.body)
        if ignored:
            with st.lock:
                st.ignored.update(ignored)
        if fault == "reset":
            self.close_connection = True
            try:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
            except OSError:
                pass
            return
        if fault == "hang":
            time.sleep(self.server.args.hang_seconds)
        if fault.startswith("429"):
            retry = fault.split(":", 1)[1] if ":" in fault else "1"
            return self.send_json(429, {"error": {"message": "rate limited (mock)", "type": "rate_limit"}},
                                  [("Retry-After", retry)])
        if fault.isdigit():
            return self.send_json(int(fault), {"error": {"message": "mock fault %s" % fault}})
        if fault == "malformed":
            body = b'{"choices": [{"message": {"content": "oops'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return

        obj = self.answer_object(self.path, req, raw, kind, dialect, fault)
        if fault == "truncated":
            body = json.dumps(obj).encode("utf-8")
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body) + 100))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.send_json(200, obj)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256


def main():
    p = argparse.ArgumentParser(description="Deterministic mock OpenAI-compatible server")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--latency-ms", type=float, default=0)
    p.add_argument("--fault-rate-500", type=float, default=0)
    p.add_argument("--fault-rate-429", type=float, default=0)
    p.add_argument("--fault-rate-malformed", type=float, default=0)
    p.add_argument("--fault-rate-hang", type=float, default=0)
    p.add_argument("--fault-rate-reset", type=float, default=0)
    p.add_argument("--hang-seconds", type=float, default=30)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--reasoning-tokens", type=int, default=200)
    p.add_argument("--slots", type=int, default=0, help="serve at most N requests at once (0: no limit)")
    p.add_argument("--dialect", default="lenient",
                   choices=["lenient", "openai", "vllm", "ollama", "llama-server", "llama-cpp-python"])
    p.add_argument("--api-key", default=None,
                   help="answer 401 to /v1 requests without `Authorization: Bearer KEY`")
    p.add_argument("--models", default="",
                   help="comma list of served model names; a request for another model gets 404 (default: any)")
    p.add_argument("--batch-delay", type=float, default=0,
                   help="seconds from creating a batch until it can finish (polls before then see validating/in_progress)")
    p.add_argument("--batch-expire", action="store_true",
                   help="batches expire: only the first half of their lines is answered, the rest fail with batch_expired")
    p.add_argument("--batch-fail-every", type=int, default=0, help="every Nth batch line fails with HTTP 500 (error file)")
    p.add_argument("--batch-drop-every", type=int, default=0, help="every Nth batch line is missing from both files")
    p.add_argument("--prompt-cache-min", type=int, default=1024, help="shortest prompt (tokens) the prompt cache serves")
    p.add_argument("--prompt-cache-step", type=int, default=128, help="cached prefixes are whole multiples of this many tokens")
    args = p.parse_args()
    # A parent may spawn us with signals blocked (Foundation's Process on Linux does): unblock them
    # so SIGTERM/SIGINT stop the server.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = Server((args.host, args.port), Handler)
    server.args = args
    server.slots = threading.BoundedSemaphore(args.slots) if args.slots > 0 else None
    server.state = State(args)
    sys.stdout.write("LISTENING %d\n" % server.server_address[1])
    sys.stdout.flush()
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
