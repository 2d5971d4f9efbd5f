"""Load test of ``lorakit serve``: N concurrent clients over several adapters, with batching on and off.

    .venv/bin/python -m bench.serve_load [--clients 8] [--requests 48] [--max-tokens 32] [--max-batch 8]

Starts the server (built-in SmolLM2-135M, 4 random adapters) on a free loopback port, once with
``--max-batch N`` and once with ``--max-batch 1`` (no batching). Each client thread sends chat requests
(round-robin over the base model and the adapters, sampled with a per-request seed) until ``--requests`` have
been sent in all; the run then stops by itself. Reports requests/s, generated tokens/s, p50/p99 latency and
errors, and writes bench/results/serve_load.json.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.request import urlopen

import numpy as np
import openai
import torch

import lorakit
from bench.common import print_table
from bench.mixed_adapters import TARGETS, write_result

PROMPTS = [
    "Summarise why the sky is blue in two sentences.",
    "Write a short poem about a lighthouse.",
    "Give three tips for learning a new language.",
    "Explain what a hash table is to a child.",
    "What should I pack for a weekend hike?",
    "Describe the taste of a lemon without using the word sour.",
]


def make_adapters(folder: Path, count: int, model_name: str | None = None) -> dict[str, Path]:
    model, _ = lorakit.load_model(model_name)
    adapters = {}
    for i in range(count):
        name = f"a{i}"
        torch.manual_seed(i)
        lorakit.add_adapter(model, lorakit.LoraConfig(r=8 * (1 + i % 2), lora_alpha=16, target_modules=TARGETS), name)
        with torch.no_grad():  # small random B: the replies change but stay text-like
            for key, param in model.named_parameters():
                if f"lora_B.{name}." in key:
                    param.normal_(0, 0.02)
        adapters[name] = lorakit.save_adapter(model, folder, name)
    del model
    gc.collect()
    return adapters


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(
    adapters: dict[str, Path], max_batch: int, max_tokens: int, extra: tuple[str, ...] = ()
) -> tuple[subprocess.Popen[bytes], str]:
    """``lorakit serve`` with ``adapters`` on a free loopback port (``extra``: more flags, e.g. --model, --device)."""
    flags = [f"--adapter={name}={folder}" for name, folder in adapters.items()]
    return launch([*flags, "--max-batch", str(max_batch), "--max-new-tokens", str(max_tokens), *extra])


def launch(flags: list[str], wait_s: float = 300) -> tuple[subprocess.Popen[bytes], str]:
    """``lorakit serve FLAGS`` on a free loopback port, once its /health answers (at most ``wait_s``)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "lorakit", "serve", *flags, "--port", str(port)])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with code {proc.returncode}")
        try:
            with urlopen(url + "/health", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise SystemExit(f"the server did not come up within {wait_s:.0f} s")


def run_load(url: str, models: list[str], clients: int, requests: int, max_tokens: int) -> dict[str, Any]:
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)
    counter = itertools.count()
    lock = threading.Lock()
    latencies: list[float] = []
    tokens = [0]
    errors: list[str] = []

    def worker() -> None:
        while True:
            with lock:
                i = next(counter)
            if i >= requests:
                return
            start = time.perf_counter()
            try:
                reply = client.chat.completions.create(
                    model=models[i % len(models)], messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                    max_tokens=max_tokens, temperature=0.7, seed=i,
                )  # fmt: skip
            except openai.OpenAIError as err:
                with lock:
                    errors.append(f"{type(err).__name__}: {err}")
                continue
            with lock:
                latencies.append(time.perf_counter() - start)
                tokens[0] += reply.usage.completion_tokens if reply.usage else 0

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(worker) for _ in range(clients)]:
            future.result()
    wall = time.perf_counter() - started
    lat = np.array(latencies or [float("nan")])
    return {"wall": wall, "done": len(latencies), "tokens": tokens[0], "p50": float(np.percentile(lat, 50)),
            "p99": float(np.percentile(lat, 99)), "errors": errors}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--adapters", type=int, default=4)
    args = parser.parse_args()
    columns = ["server", "clients", "requests", "seconds", "requests/s", "generated tokens/s", "p50 latency s",
               "p99 latency s", "errors"]  # fmt: skip
    rows: list[list[Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        adapters = make_adapters(Path(tmp), args.adapters)
        models = [lorakit.models.BUILTIN_NAME, *adapters]
        for max_batch in (args.max_batch, 1):
            proc, url = start_server(adapters, max_batch, args.max_tokens)
            try:
                result = run_load(url, models, args.clients, args.requests, args.max_tokens)
            finally:
                proc.terminate()
                proc.wait(timeout=60)
            for error in result["errors"][:3]:
                print("error:", error)
            rows.append([f"--max-batch {max_batch}", args.clients, result["done"], f"{result['wall']:.1f}",
                         f"{result['done'] / result['wall']:.2f}", f"{result['tokens'] / result['wall']:.1f}",
                         f"{result['p50']:.2f}", f"{result['p99']:.2f}", len(result["errors"])])  # fmt: skip
    print_table(columns, rows)
    notes = (f"lorakit serve on the built-in SmolLM2-135M (dtype auto) with {args.adapters} random adapters (r=8/16); "
             f"{args.clients} client threads on loopback send {args.requests} chat requests in all, round-robin over "
             f"the base model and the adapters, max_tokens={args.max_tokens}, temperature 0.7 with a seed per "
             "request. '--max-batch 1' decodes one request at a time: what batching buys.")  # fmt: skip
    path = write_result("serve_load", "lorakit serve under load: continuous batching across adapters vs none",
                        columns, rows, notes)  # fmt: skip
    print(f"written to {path}")


if __name__ == "__main__":
    main()
