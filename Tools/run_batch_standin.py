#!/usr/bin/env python3
"""A stand-in for vLLM's offline `python -m vllm.entrypoints.openai.run_batch -i IN -o OUT`, for tests.

It reads the same batch input JSONL (one {"custom_id", "method", "url", "body"} per line), answers each line by
POSTing its body to an OpenAI-compatible server (here: the mock) in place of vLLM's engine, and writes the output
lines in run_batch's shape: {"id": "vllm-…", "custom_id", "response": {"status_code", "request_id", "body"},
"error"}. Lines are written in reverse input order, since a reader must match them by custom_id.
"""
import argparse
import json
import urllib.error
import urllib.request
import uuid


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("-i", "--input-file", required=True)
    p.add_argument("-o", "--output-file", required=True)
    p.add_argument("--server", required=True, help="root URL of the server that answers, e.g. http://127.0.0.1:8000")
    args = p.parse_args()
    out = []
    with open(args.input_file, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            item = json.loads(line)
            request_id = "vllm-batch-" + uuid.uuid4().hex
            entry = {"id": "vllm-" + uuid.uuid4().hex, "custom_id": item["custom_id"], "response": None, "error": None}
            if item.get("method") != "POST" or item.get("url") not in ("/v1/chat/completions", "/v1/completions"):
                entry["error"] = "Only POST /v1/chat/completions and /v1/completions are supported"
                out.append(entry)
                continue
            request = urllib.request.Request(args.server.rstrip("/") + item["url"], data=json.dumps(item["body"]).encode(),
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    entry["response"] = {"status_code": 200, "request_id": request_id, "body": json.load(response)}
            except urllib.error.HTTPError as error:
                entry["response"] = {"status_code": error.code, "request_id": request_id, "body": None}
                entry["error"] = error.read().decode("utf-8", "replace")
            out.append(entry)
    with open(args.output_file, "w", encoding="utf-8") as f:
        for entry in reversed(out):
            f.write(json.dumps(entry) + "\n")


if __name__ == "__main__":
    main()
