"""Training step: lorakit vs peft vs full fine-tuning, each configuration in its own process.

    python -m bench.train_speed [--steps 3] [--repeats 2] [--quick] [--configs a,b] [--data chat|dense]

Same model (built-in SmolLM2-135M, fp32 weights as loaded), same batch (``--data chat``: 4 contacts examples,
<= 256 tokens, labels on the replies; ``--data dense``: 4 x 256-token rows with labels on all but a 16-token prompt,
``bench.common.workload``), same LoRA (r=16, alpha=32, all 7 projections, no dropout), AdamW. Each run: 1 warm-up
step counted by torch's FlopCounterMode (the matmul FLOPs really executed, backward and recomputation included),
one more untimed step (where ``lorakit --compile`` compiles), then ``--steps`` timed steps; peak RSS is the child's
own (VmHWM; ru_maxrss would carry the parent's). Configurations alternate (order reversed on odd repeats) and the
table shows medians over repeats, so a busy machine slows them alike.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.common import (
    DATA,
    DENSE_PROMPT,
    RESULTS,
    matmul_gflops,
    median,
    peak_rss_mb,
    run_child,
    workload,
    write_result,
)

# name -> (method, precision, activation checkpointing, torch.compile of the decoder layers)
CONFIGS: dict[str, tuple[str, str, bool, bool]] = {
    "lorakit (defaults)": ("lorakit", "auto", False, False),
    "lorakit fp32": ("lorakit", "fp32", False, False),
    "peft fp32": ("peft", "fp32", False, False),
    "peft bf16 autocast": ("peft", "bf16", False, False),
    "full FT fp32": ("full", "fp32", False, False),
    "full FT bf16 autocast": ("full", "bf16", False, False),
    "lorakit (defaults) + ckpt": ("lorakit", "auto", True, False),
    "lorakit fp32 + ckpt": ("lorakit", "fp32", True, False),
    "peft fp32 + ckpt": ("peft", "fp32", True, False),
    "peft bf16 autocast + ckpt": ("peft", "bf16", True, False),
    "full FT fp32 + ckpt": ("full", "fp32", True, False),
    "full FT bf16 autocast + ckpt": ("full", "bf16", True, False),
}
# Measured on request (--configs), not by default: --compile pays only on long runs (docs/speed-and-memory.md).
EXTRA: dict[str, tuple[str, str, bool, bool]] = {"lorakit --compile": ("lorakit", "auto", False, True)}
KNOWN = {**CONFIGS, **EXTRA}
R, ALPHA = 16, 32


def _hf_checkpointing(model: Any) -> None:
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def setup(
    method: str, precision: str, ckpt: bool, compile: bool, quick: bool, data: str = "chat"
) -> tuple[Callable[[], None], int, str, int]:
    """(one training step, tokens per step, compute dtype name, trainable parameters)."""
    from torch.nn.utils import clip_grad_norm_

    model, batch = workload(quick, data)
    tokens = int(batch["attention_mask"].sum())
    autocast: torch.dtype | None = torch.bfloat16 if precision == "bf16" else None
    if method == "lorakit":  # lorakit train's own step: lorakit.Trainer.step
        from lorakit.train.config import TrainConfig
        from lorakit.train.trainer import Trainer

        config = TrainConfig(precision=precision, gradient_checkpointing=ckpt, r=R, lora_alpha=ALPHA,  # type: ignore[arg-type]
                             max_steps=10**6, warmup_steps=0, compile=compile)  # fmt: skip
        trainer = Trainer(model, None, config)

        def trainer_step() -> None:
            trainer.step(batch)

        return trainer_step, tokens, "bf16" if trainer.autocast else "fp32", trainer.trainable
    else:
        if compile:
            raise ValueError("compile is a lorakit configuration only")
        if ckpt:
            _hf_checkpointing(model)
        if method == "peft":
            import peft

            lora = peft.LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules="all-linear",
                                   task_type="CAUSAL_LM")  # fmt: skip
            model = peft.get_peft_model(model, lora)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def loss_fn() -> torch.Tensor:
            return model(**batch).loss  # transformers' loss: logits at every position, mean over labels

    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in params)

    def step() -> None:
        with torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
            loss = loss_fn()
        loss.backward()
        clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, tokens, "bf16" if autocast is not None else "fp32", trainable


def count_flops(step: Callable[[], None]) -> int:
    """The matmul FLOPs of one ``step`` (which is run, eagerly: compiled code would hide its matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.compiler.set_stance("force_eager"), FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def child(name: str, steps: int, quick: bool, data: str) -> dict[str, Any]:
    step, tokens, dtype, trainable = setup(*KNOWN[name], quick=quick, data=data)
    flops = count_flops(step)  # also the warm-up
    start = time.perf_counter()
    step()  # a compiled configuration compiles here
    first = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"config": name, "seconds": times, "tokens": tokens, "dtype": dtype, "trainable": trainable,
            "flops": flops, "first": first, "peak_rss_mb": peak_rss_mb()}  # fmt: skip


def _previous(path: Path, exclude: set[str]) -> tuple[dict[str, list[dict[str, Any]]], dict[str, float]]:
    """Runs (one per configuration, from its row) and matmul peaks of an existing train_speed.json."""
    if not path.exists():
        return {}, {}
    data = json.loads(path.read_text(encoding="utf-8"))
    col = {c: i for i, c in enumerate(data["columns"])}
    runs = {}
    for row in data["rows"]:
        if row[0] in exclude or row[0] not in KNOWN:
            continue
        sec = row[col["s/step"]]
        runs[row[0]] = [{
            "seconds": [sec], "tokens": round(row[col["tokens/s"]] * sec), "dtype": row[col["computes in"]],
            "trainable": row[col["trainable params"]], "flops": row[col["GFLOP/step"]] * 1e9,
            "peak_rss_mb": row[col["peak RSS MB"]],
        }]  # fmt: skip
    found = re.search(r"fp32 (\d+) GFLOP/s, bf16 (\d+) GFLOP/s", data["notes"])
    peaks = {"fp32": float(found[1]), "bf16": float(found[2])} if found else {}
    return runs, peaks


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="tiny random model (checks the harness, for CI)")
    parser.add_argument("--configs", default="", help="comma-separated subset of the configuration names")
    parser.add_argument("--data", choices=DATA, default="chat", help="the batch: contacts chat or dense labels")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--keep", action="store_true", help="keep the existing rows of configurations not run now")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.quick, args.data)))
        return args.out
    names = [n.strip() for n in args.configs.split(",") if n.strip()] or list(CONFIGS)
    unknown = set(names) - set(KNOWN)
    if unknown:
        parser.error(f"unknown configurations {sorted(unknown)}; known: {list(KNOWN)}")
    size = 256 if args.quick else 2048
    peaks = {"fp32": matmul_gflops(torch.float32, size), "bf16": matmul_gflops(torch.bfloat16, size)}
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in KNOWN if n in names}
    if args.keep:  # rows of configurations not run now come from the existing file (e.g. after a code change)
        kept, kept_peaks = _previous(args.out / f"{result_name(args.data)}.json", exclude=set(names))
        runs = {n: kept.get(n, []) for n in KNOWN if n in names or n in kept}
        args.kept = [n for n in kept if n not in names]
        peaks = {k: max(v, kept_peaks.get(k, 0.0)) for k, v in peaks.items()}
    for rep in range(args.repeats):
        for name in names if rep % 2 == 0 else names[::-1]:
            extra = ["--quick"] if args.quick else []
            result = run_child("bench.train_speed",
                               ["--child", name, "--steps", str(args.steps), "--data", args.data, *extra])  # fmt: skip
            runs[name].append(result)
            print(f"{name}: {median(result['seconds']):.2f} s/step, {result['peak_rss_mb']:.0f} MB", flush=True)
            _write(runs, peaks, args)  # after every run: an interrupted suite still leaves its rows
        for key, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):  # the best seen in the run
            peaks[key] = max(peaks[key], matmul_gflops(dtype, size))
    return _write(runs, peaks, args)


def _write(runs: dict[str, list[dict[str, Any]]], peaks: dict[str, float], args: argparse.Namespace) -> Path:
    summary = {}
    for name, results in runs.items():
        if not results:
            continue
        sec = median([median(r["seconds"]) for r in results])
        summary[name] = {**results[0], "s_step": sec, "tok_s": results[0]["tokens"] / sec,
                         "rss": median([r["peak_rss_mb"] for r in results])}  # fmt: skip
    columns = ["configuration", "computes in", "s/step", "tokens/s", "vs peft fp32", "vs peft bf16", "peak RSS MB",
               "RSS vs peft fp32", "RSS vs full FT fp32", "trainable params", "GFLOP/step", "GFLOP/s",
               "% of matmul peak"]  # fmt: skip
    rows = []
    for name, s in summary.items():
        suffix = " + ckpt" if name.endswith("+ ckpt") else ""  # compare at the same checkpointing setting
        refs = {key: summary.get(key + suffix) for key in ("peft fp32", "peft bf16 autocast", "full FT fp32")}
        gflops = s["flops"] / 1e9

        def vs(key: str, field: str, s: dict[str, Any] = s, refs: dict[str, Any] = refs) -> str:
            ref = refs[key]
            return _ratio(s[field], ref[field]) if ref else "-"

        rows.append([
            name, s["dtype"], round(s["s_step"], 3), round(s["tok_s"], 1), vs("peft fp32", "tok_s"),
            vs("peft bf16 autocast", "tok_s"), round(s["rss"]), vs("peft fp32", "rss"), vs("full FT fp32", "rss"),
            s["trainable"], round(gflops, 1), round(gflops / s["s_step"], 1),
            f"{100 * gflops / s['s_step'] / peaks[s['dtype']]:.0f}%",
        ])  # fmt: skip
    tokens = next(iter(summary.values()))["tokens"]
    model = "a tiny random Llama (--quick)" if args.quick else "SmolLM2-135M-Instruct"
    notes = (
        f"{model}, {describe_data(args.data, tokens)}, LoRA r={R} alpha={ALPHA} on all 7 projections. "
        f"Medians of {args.steps} timed steps per run, {min(len(r) for r in runs.values() if r)} run(s) per "
        "configuration, alternating. "
        f"Matmul peak measured in the same run: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s "
        "(best 2048^3 product). GFLOP/step counts the matmuls really executed (torch FlopCounterMode, backward and "
        "checkpoint recomputation included), so lorakit's skipped work (head only on label positions, shared "
        "prompt prefix once per batch) is not counted as work done. 'vs' columns compare at the "
        "same checkpointing setting (a '+ ckpt' row against the '+ ckpt' reference). lorakit rows run "
        "lorakit.Trainer.step (lorakit train's step); peft and full FT use transformers' loss with a plain torch loop."
    )
    for name, s in summary.items():
        if KNOWN[name][3] and "first" in s:
            notes += f" {name}: its first step, which compiles, took {s['first']:.0f} s."
    if getattr(args, "kept", None):
        notes += f" Rows kept from an earlier run of this script (--keep): {', '.join(args.kept)}."
    title = "Training step: lorakit vs peft vs full fine-tuning" + DATA_TITLE[args.data]
    return write_result(result_name(args.data), title, _command(args), columns, rows, notes, args.out)


def result_name(data: str, name: str = "train_speed") -> str:
    """The results file of ``data``'s rows: ``train_speed`` for chat (as before), ``train_speed_dense``."""
    return name if data == "chat" else f"{name}_{data}"


DATA_TITLE = {"chat": "", "dense": ", dense labels"}


def describe_data(data: str, tokens: int) -> str:
    if data == "dense":
        return (f"one batch of 4 rows x 256 tokens of the knowledge task's text ({tokens} tokens), labels on all but "
                f"the first {DENSE_PROMPT} of each row (dense labels: no position or prefix to skip)")  # fmt: skip
    return f"one batch of 4 contacts examples ({tokens} tokens, labels on the replies)"


def _command(args: argparse.Namespace) -> str:
    parts = ["python -m bench.train_speed", f"--steps {args.steps}", f"--repeats {args.repeats}"]
    if args.data != "chat":
        parts.append(f"--data {args.data}")
    if args.quick:
        parts.append("--quick")
    if args.keep:
        parts.append("--keep")
    if args.configs:
        parts.append(f"--configs '{args.configs}'")
    return " ".join(parts)


if __name__ == "__main__":
    main()
