"""Constrained decoding in ``lorakit serve``, measured side by side in one run.

    .venv/bin/python -m bench.serve_structured [--adapter /work/artifacts/demo-adapter] [--limit N]
        [--clients 32] [--adapters 16] [--requests 128] [--max-tokens 32] [--skip-mask] [--skip-contacts]
        [--skip-load]

0. What a grammar adds to one decode step: the forward of a batch of 1 and 16 rows, and the masks of as many
   constrained rows (in-process, no server).
1. Contacts held-out (the built-in eval split, all 200 unless ``--limit``): json_valid / exact_match /
   field_accuracy (``lorakit.tasks.contacts_metrics``) for the base model and the adapter (``--adapter``, e.g. the
   demo's, trained by ``python -m lorakit train --output DIR``), each without and with ``response_format``
   ``json_schema`` (the contacts schema: the five keys, each a string or null). One server serves both; 16 client
   threads send the messages greedily, with ``max_tokens`` = the longest reference reply + 16 tokens, as
   ``lorakit.tasks.contacts_eval.evaluate_contacts`` does. Generated tokens/s is the cost of the grammar.
2. Load on loopback: ``--adapters`` random adapters, ``--clients`` concurrent client threads sending ``--requests``
   chat requests round-robin over the adapters (sampled, a seed per request), once free text and once each request
   with a ``json_schema`` (a fresh server each): requests/s, tokens/s, p50/p99 latency, errors and the server's
   peak RSS.

Writes bench/results/serve_grammar_cost.json, serve_structured.json and serve_structured_load.json (rendered by
``python -m bench.report``).
"""

from __future__ import annotations

import argparse
import inspect
import json
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import openai

from bench.common import RESULTS, print_table
from bench.mixed_adapters import write_result
from bench.serve_load import PROMPTS, launch, make_adapters
from lorakit.models import BUILTIN_NAME
from lorakit.tasks.contacts import KEYS, load, reference_of
from lorakit.tasks.contacts_metrics import score_all

CONTACT_SCHEMA = {
    "type": "object",
    "properties": {key: {"type": ["string", "null"]} for key in KEYS},
    "required": list(KEYS),
    "additionalProperties": False,
}
CONTACTS_CLIENTS = 16


def start_server(flags: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    return launch(flags, wait_s=600)


def peak_rss_mb(pid: int) -> float:
    """The process's high-water resident size (VmHWM), read while it still runs."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(timeout=60)


def response_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "contact", "schema": schema, "strict": True}}


def contacts(url: str, model: str, constrained: bool, limit: int | None) -> dict[str, Any]:
    """Score greedy replies to the held-out messages; wall time and generated tokens for tokens/s."""
    from transformers import AutoTokenizer

    from lorakit.models import builtin_model_dir

    records = load("eval")[:limit] if limit else load("eval")
    tokenizer = AutoTokenizer.from_pretrained(str(builtin_model_dir()))
    longest = max(len(tokenizer(r["messages"][-1]["content"], add_special_tokens=False)["input_ids"]) for r in records)
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=3600)
    extra = {"response_format": response_format(CONTACT_SCHEMA)} if constrained else {}

    def ask(record: dict[str, Any]) -> tuple[str, int]:
        reply = client.chat.completions.create(model=model, messages=record["messages"][:-1], temperature=0,
                                               max_tokens=longest + 16, **extra)  # type: ignore[arg-type]  # fmt: skip
        return reply.choices[0].message.content or "", reply.usage.completion_tokens if reply.usage else 0

    started = time.perf_counter()
    with ThreadPoolExecutor(CONTACTS_CLIENTS) as pool:
        answers = list(pool.map(ask, records))
    wall = time.perf_counter() - started
    scores = score_all([text for text, _ in answers], [reference_of(r) for r in records])
    return {**scores, "seconds": wall, "tokens": sum(t for _, t in answers)}


def run_load(url: str, models: list[str], clients: int, requests: int, max_tokens: int,
             constrained: bool) -> dict[str, Any]:  # fmt: skip
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=3600)
    lock = threading.Lock()
    latencies: list[float] = []
    tokens = [0]
    errors: list[str] = []
    invalid = [0]
    next_request = [0]
    extra = {"response_format": response_format(CONTACT_SCHEMA)} if constrained else {}

    def worker() -> None:
        while True:
            with lock:
                i = next_request[0]
                next_request[0] += 1
            if i >= requests:
                return
            start = time.perf_counter()
            try:
                reply = client.chat.completions.create(
                    model=models[i % len(models)], messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                    max_tokens=max_tokens, temperature=0.7, seed=i, **extra,  # type: ignore[arg-type]
                )  # fmt: skip
            except openai.OpenAIError as err:
                with lock:
                    errors.append(f"{type(err).__name__}: {err}")
                continue
            with lock:
                latencies.append(time.perf_counter() - start)
                tokens[0] += reply.usage.completion_tokens if reply.usage else 0
                if constrained and reply.choices[0].finish_reason == "stop":
                    try:
                        json.loads(reply.choices[0].message.content or "")
                    except ValueError:
                        invalid[0] += 1

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(worker) for _ in range(clients)]:
            future.result()
    wall = time.perf_counter() - started
    lat = np.array(latencies or [float("nan")])
    return {"wall": wall, "done": len(latencies), "tokens": tokens[0], "p50": float(np.percentile(lat, 50)),
            "p99": float(np.percentile(lat, 99)), "errors": errors, "invalid": invalid[0]}  # fmt: skip


def mask_cost(rows: int, steps: int) -> dict[str, float]:
    """Milliseconds per decode step of the built-in model's forward for ``rows`` rows, and of filling and applying
    the contacts grammar's masks for all of them (what a fully constrained batch adds to each step)."""
    import torch

    from lorakit.models import load_model, resolve_precision
    from lorakit.serve.grammar import Grammars, mask_logits, matcher

    model, tokenizer = load_model()
    if resolve_precision("auto", torch.device("cpu")) == torch.bfloat16:
        model.to(torch.bfloat16)
    grammars = Grammars(tokenizer, model.config.vocab_size)
    grammar = grammars.compile(CONTACT_SCHEMA)
    matchers = [matcher(grammar, [tokenizer.eos_token_id]) for _ in range(rows)]
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 1000, (rows, 64), generator=generator)
    forward = masking = 0.0
    kwarg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"  # as the engine
    with torch.no_grad():
        out = model(ids, use_cache=True)
        cache = out.get("cache") if out.get("cache") is not None else out.get("past_key_values")
        token = ids[:, -1:]
        for _ in range(steps):
            start = time.perf_counter()
            logits = model(token, use_cache=True, **{kwarg: cache}).logits[:, -1].float()  # (rows, vocab)
            middle = time.perf_counter()
            mask_logits(logits, matchers)  # type: ignore[arg-type]
            choice = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)  # (rows, 1)
            for row, m in zip(choice[:, 0].tolist(), matchers, strict=True):
                m.accept_token(row)
            masking += time.perf_counter() - middle
            forward += middle - start
            if any(m.is_terminated() for m in matchers):
                matchers = [matcher(grammar, [tokenizer.eos_token_id]) for _ in range(rows)]
            token = choice
    return {"forward_ms": 1000 * forward / steps, "mask_ms": 1000 * masking / steps}


def write(name: str, title: str, columns: list[str], rows: list[list[Any]], notes: str) -> Path:
    """``bench.mixed_adapters.write_result``, with this script's command line (it writes several results files)."""
    path = write_result(name, title, columns, rows, notes)
    data = json.loads(path.read_text(encoding="utf-8"))
    data["command"] = " ".join(["python -m bench.serve_structured", *sys.argv[1:]])
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


def kept_base_rows() -> list[list[Any]]:
    """The base model's rows of the existing serve_structured results (for --skip-base)."""
    path = RESULTS / "serve_structured.json"
    rows = json.loads(path.read_text(encoding="utf-8"))["rows"] if path.exists() else []
    return [row for row in rows if str(row[0]).startswith("base")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--adapter", help="a contacts adapter folder (the demo's); without it, the base rows only")
    parser.add_argument("--limit", type=int, help="score only the first N held-out messages (default: all 200)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--adapters", type=int, default=16)
    parser.add_argument("--requests", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--skip-contacts", action="store_true")
    parser.add_argument("--skip-load", action="store_true")
    parser.add_argument("--skip-mask", action="store_true")
    parser.add_argument(
        "--skip-base",
        action="store_true",
        help="adapter rows only; the base rows are kept from the existing results file",
    )
    args = parser.parse_args(argv)

    if not args.skip_mask:
        rows = []
        for batch in (1, CONTACTS_CLIENTS):
            r = mask_cost(batch, 40)
            rows.append([batch, round(r["forward_ms"], 1), round(r["mask_ms"], 2),
                         f"{r['mask_ms'] / r['forward_ms']:.1%}"])  # fmt: skip
            print(rows[-1], flush=True)
        columns = ["constrained rows", "forward ms / step", "masks ms / step", "masks vs forward"]
        print_table(columns, rows)
        notes = ("One decode step of the built-in SmolLM2-135M (dtype auto, a 64-token KV cache) and, for the same "
                 "step, filling and applying the contacts schema's token masks for every row (xgrammar matchers, "
                 "one (rows, vocab/32) bitmask) plus accepting the sampled tokens; means over 40 steps.")  # fmt: skip
        path = write("serve_grammar_cost", "lorakit serve: what a grammar mask adds to a decode step",
                            columns, rows, notes)  # fmt: skip
        print(f"written to {path}")

    if not args.skip_contacts:
        flags = ["--max-batch", str(CONTACTS_CLIENTS), "--max-new-tokens", "256"]
        if args.adapter:
            flags += ["--adapter", f"contacts={args.adapter}"]
        proc, url = start_server(flags)
        rows: list[list[Any]] = []
        free: dict[str, float] = {}
        try:
            models = [] if args.skip_base and args.adapter else [BUILTIN_NAME]
            for model in [*models, *(["contacts"] if args.adapter else [])]:
                for constrained in (False, True):
                    r = contacts(url, model, constrained, args.limit)
                    rate = r["tokens"] / r["seconds"]
                    label = ("base" if model == BUILTIN_NAME else "adapter") + (" + json_schema" if constrained else "")
                    free.setdefault(model, rate)
                    rows.append([label, r["n"], round(r["json_valid"], 3), round(r["exact_match"], 3),
                                 round(r["field_accuracy"], 3), round(r["seconds"], 1), round(rate, 1),
                                 f"{rate / free[model]:.2f}x"])  # fmt: skip
                    print(rows[-1], flush=True)
        finally:
            stop(proc)
        columns = ["model", "messages", "json_valid", "exact_match", "field_accuracy", "seconds",
                   "generated tokens/s", "tokens/s vs free text"]  # fmt: skip
        print_table(columns, rows)
        notes = (f"lorakit serve on the built-in SmolLM2-135M (dtype auto, --max-batch {CONTACTS_CLIENTS}); "
                 f"{CONTACTS_CLIENTS} client threads send the contacts held-out messages (system + user) greedily; "
                 "json_schema = the contacts schema (name, email, phone, company, city: each a string or null, all "
                 f"required, no others) enforced by xgrammar. Adapter: {args.adapter or 'none given'}. "
                 "Scores by lorakit.tasks.contacts_metrics.")  # fmt: skip
        if args.skip_base and args.adapter:
            rows = [*kept_base_rows(), *rows]
            notes += (" The base rows come from an earlier run of this script (--skip-base): compare seconds and "
                      "tokens/s within a model, not across.")  # fmt: skip
        path = write("serve_structured", "lorakit serve: what response_format json_schema adds to contacts "
                            "extraction, and what it costs", columns, rows, notes)  # fmt: skip
        print(f"written to {path}")

    if not args.skip_load:
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            adapters = make_adapters(Path(tmp), args.adapters)
            flags = [f"--adapter={name}={folder}" for name, folder in adapters.items()]
            flags += ["--max-batch", str(args.max_batch), "--max-new-tokens", str(args.max_tokens)]
            for constrained in (False, True):
                proc, url = start_server(flags)
                try:
                    r = run_load(url, list(adapters), args.clients, args.requests, args.max_tokens, constrained)
                    rss = peak_rss_mb(proc.pid)
                finally:
                    stop(proc)
                for error in r["errors"][:3]:
                    print("error:", error)
                rows.append(["json_schema" if constrained else "free text", args.adapters, args.clients, r["done"],
                             round(r["wall"], 1), round(r["done"] / r["wall"], 2), round(r["tokens"] / r["wall"], 1),
                             round(r["p50"], 2), round(r["p99"], 2), len(r["errors"]), r["invalid"],
                             round(rss)])  # fmt: skip
                print(rows[-1], flush=True)
        columns = ["requests", "adapters", "clients", "answered", "seconds", "requests/s", "generated tokens/s",
                   "p50 latency s", "p99 latency s", "errors", "invalid JSON at stop",
                   "server peak RSS MB"]  # fmt: skip
        print_table(columns, rows)
        notes = (f"lorakit serve on the built-in SmolLM2-135M (dtype auto, --max-batch {args.max_batch}) with "
                 f"{args.adapters} random adapters (r=8/16); {args.clients} client threads on 127.0.0.1 send "
                 f"{args.requests} chat requests in all, round-robin over the adapters, max_tokens={args.max_tokens}, "
                 "temperature 0.7 with a seed per request; 'json_schema' adds the contacts schema to every request. "
                 "A fresh server per row; peak RSS is its VmHWM.")  # fmt: skip
        path = write("serve_structured_load", "lorakit serve under load: 16 adapters, 32 clients, "
                            "constrained decoding on and off", columns, rows, notes)  # fmt: skip
        print(f"written to {path}")


if __name__ == "__main__":
    main()
