"""Shared pieces of the benchmark suite: the machine's description, the matmul peak, the workload, the results
file format, and running one configuration in its own process.

Every bench script writes ``bench/results/<name>.json`` = {"name", "title", "command", "machine", "columns",
"rows", "notes"}; ``python -m bench.report`` renders them all into docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"
SEQ_LEN, BATCH = 256, 4  # the workload: batch 4 x 256 tokens
QUICK_SEQ_LEN = 48


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """One line: CPU (or GPU), cores, threads torch uses, memory, torch version."""
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory = f", {pages / 2**30:.0f} GiB RAM"
    except (ValueError, OSError):
        memory = ""
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (
        f"{cpu_model()}, {os.cpu_count()} cores ({torch.get_num_threads()} torch threads){memory}{gpu}; "
        f"torch {torch.__version__}, Python {platform.python_version()}"
    )


def matmul_gflops(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """Best GFLOP/s of a (size x size) @ (size x size) product in ``dtype``: the peak the steps are held to."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    a @ b  # warm-up: oneDNN picks and builds its kernel
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def peak_rss_mb() -> float:
    """This process's own peak resident set (``lorakit.memory.peak_rss_mb``: not the parent's, which Linux carries
    into a child's ru_maxrss)."""
    from lorakit.memory import peak_rss_mb as own_peak

    return own_peak() or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


DATA = ("chat", "dense")
DENSE_PROMPT = 16  # label-free tokens at the start of each dense row; the other 240 of 256 carry a loss


def workload(quick: bool, data: str = "chat") -> tuple[Any, dict[str, torch.Tensor]]:
    """(fp32 model, one batch) of the ``data`` kind: the built-in SmolLM2-135M with

    - ``chat``: 4 built-in contacts examples (<= 256 tokens; labels on the assistant's reply only, a system prompt
      shared by every row), the data lorakit's fast paths were built for;
    - ``dense``: 4 rows of exactly 256 tokens cut from the built-in knowledge task's text, a 16-token prompt then
      labels on every other token (a completion that fills the row), so no fast path can skip any work;

    or a tiny random Llama and random tokens (``quick``: labels on the second half for chat, after 4 tokens for
    dense)."""
    if data not in DATA:
        raise ValueError(f"data must be one of {DATA}, got {data!r}")
    torch.manual_seed(0)
    if quick:
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(
            vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True,
        )  # fmt: skip
        model = LlamaForCausalLM(config).eval()
        ids = torch.randint(0, 512, (BATCH, QUICK_SEQ_LEN))
        labels = ids.clone()
        labels[:, : QUICK_SEQ_LEN // 2 if data == "chat" else 4] = -100
        return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    import lorakit

    model, tokenizer = lorakit.load_model()
    if data == "dense":
        return model, dense_batch(tokenizer)
    from lorakit.data.batching import collate
    from lorakit.data.jsonl import read_jsonl
    from lorakit.data.tokenize import tokenize_dataset
    from lorakit.tasks.contacts import builtin_path

    # Tokenising the whole set costs each child seconds: the first child of a suite run caches the batch.
    cached = Path(tempfile.gettempdir()) / f"lorakit-bench-batch-{os.getppid()}.pt"
    if cached.exists():
        return model, torch.load(cached)
    examples, _ = tokenize_dataset(tokenizer, read_jsonl(builtin_path("train")), SEQ_LEN)
    longest = sorted(examples, key=lambda e: -len(e.input_ids))[:BATCH]  # little padding, the most tokens
    batch = collate(longest, tokenizer.pad_token_id)
    torch.save(batch, cached)
    return model, batch


def dense_batch(tokenizer: Any, rows: int = BATCH, length: int = SEQ_LEN) -> dict[str, torch.Tensor]:
    """``rows`` x ``length`` tokens of the built-in knowledge task's conversations (user and assistant turns as
    plain text, in file order), consecutive windows, so no two rows share a prefix; labels on all but the first
    ``DENSE_PROMPT`` tokens of each row. The same tokens on every machine (shipped file, no download)."""
    from lorakit.tasks.knowledge import BUILTIN

    lines = (BUILTIN / "knowledge_train.jsonl").read_text(encoding="utf-8").splitlines()
    text = "\n".join(m["content"] for line in lines for m in json.loads(line)["messages"])
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][: rows * length]
    if len(ids) < rows * length:
        raise ValueError(f"the knowledge text has {len(ids)} tokens, fewer than {rows} x {length}")
    input_ids = torch.tensor(ids, dtype=torch.long).view(rows, length)  # (B, T)
    labels = input_ids.clone()
    labels[:, :DENSE_PROMPT] = -100
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}


ROOT = Path(__file__).resolve().parents[1]


def child_env() -> dict[str, str]:
    """This environment with the repository first on PYTHONPATH, so child processes import this lorakit."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def run_child(module: str, args: list[str]) -> dict[str, Any]:
    """Run ``python -m module args`` in a fresh process; its last stdout line is a JSON object."""
    argv = [sys.executable, "-m", module, *args]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=child_env())
    if proc.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def print_table(columns: list[str], rows: list[list[Any]]) -> None:
    """A markdown table on stdout (what the results file holds, for the terminal)."""
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(v) for v in row) + " |")


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def write_result(
    name: str, title: str, command: str, columns: list[str], rows: list[list[Any]], notes: str, out: Path = RESULTS
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    if os.environ.get("OMP_NUM_THREADS"):  # the thread count is part of how to reproduce the numbers
        command = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} {command}"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    notes += f" Machine load when written: 1-minute load average {load:.1f} on {os.cpu_count()} cores."
    data = {"name": name, "title": title, "command": command, "machine": machine(), "columns": columns,
            "rows": rows, "notes": notes.strip()}  # fmt: skip
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path
