"""``make demo`` / ``lorakit demo``: teach the built-in SmolLM2-135M-Instruct to answer in JSON.

Evaluate the base model on the held-out contacts split, train with ``lorakit train``'s defaults, evaluate the
adapter on the whole split, and print the before/after table and where everything is. On a CPU with a C++ compiler
the training compiles its decoder layers (``--compile``): the demo's 240 steps repay the compile several times over
(docs/speed-and-memory.md); ``--no-compile`` trains eagerly.
"""

from __future__ import annotations

import argparse
import shlex
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from lorakit.cli.common import device_flag, model_with_adapter, positive, precision_flag
from lorakit.cli.process import TRAIN_HOOKS
from lorakit.eval.report import markdown_table
from lorakit.models import resolve_device
from lorakit.runs.config import RunConfig
from lorakit.runs.folder import CARD, DEMO_EVAL, METRICS, PLOT, RunFolder
from lorakit.runs.job import train_run
from lorakit.tasks.contacts import SYSTEM_PROMPT
from lorakit.tasks.contacts_eval import evaluate_contacts, summary
from lorakit.train.compile import cpp_compiler


def run_demo(
    output: str | None = None, base_limit: int = 100, device: str = "auto", precision: str = "auto",
    compile: bool | None = None,
) -> dict[str, dict[str, float]]:  # fmt: skip
    """``compile``: compile the decoder layers for training; None: where it is measured to pay (a CPU with a C++
    compiler)."""
    started = time.perf_counter()
    output = output or str(Path("runs") / f"demo-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    print("lorakit demo: extracting contact details as JSON with SmolLM2-135M-Instruct + LoRA\n")

    print(f"1/3 the base model on {base_limit} held-out examples")
    model, tokenizer = model_with_adapter(None, None, None, False, device, precision)
    base = evaluate_contacts(model, tokenizer, limit=base_limit, desc="base model")
    del model

    if compile is None:
        compile = resolve_device(device).type == "cpu" and cpp_compiler() is not None
    print("\n2/3 training (lorakit train's defaults" + (" + --compile)" if compile else ")"))
    # no data: the built-in task's settings
    settings = {"output": output, "device": device, "precision": precision, "compile": compile}
    result = train_run(RunConfig.from_dict(settings), TRAIN_HOOKS)

    print("\n3/3 the adapter on the whole held-out split")
    model, tokenizer = model_with_adapter(None, str(result.output), None, False, device, precision)
    tuned = evaluate_contacts(model, tokenizer, desc="with adapter")

    out = Path(result.output)
    run = RunFolder(out)
    run.write_demo_eval({"base": base, "adapter": tuned})
    rows = {"base model": summary(base), "with adapter": summary(tuned)}
    table = markdown_table([{"model": name, **scores} for name, scores in rows.items()])
    run.add_to_card(f"\n## Held-out contacts scores (lorakit demo)\n\n{table}\n")
    minutes = (time.perf_counter() - started) / 60
    print(f"\n{table}\n")
    print(f"done in {minutes:.1f} min. In {out}/:")
    print("  adapter_config.json, adapter_model.safetensors   the adapter (peft's format)")
    print(f"  {CARD:<50}model card: settings, scores, how to load it")
    print(f"  {PLOT + ', ' + METRICS:<50}the training curve and per-step metrics")
    print(f"  {DEMO_EVAL:<50}every held-out prediction beside its reference")
    command = [".venv/bin/lorakit", "generate", "--adapter", str(out), "--system", SYSTEM_PROMPT, "--prompt",
               "Met Ana Souza from Blue Fern Analytics in Lisbon, ana@bluefern.io"]  # fmt: skip
    print(f"try it: {shlex.join(command)}")
    return rows


def add_parser(sub: Any) -> None:
    p = sub.add_parser("demo", help="evaluate, train and evaluate again on the built-in contacts task")
    p.add_argument("--output", help="run folder (default: runs/demo-<timestamp>)")
    p.add_argument("--base-limit", type=positive, default=100, help="held-out examples for the base model")
    device_flag(p)
    precision_flag(p, "training and evaluation")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="compile the decoder layers for training (default: on a CPU with a C++ compiler)")  # fmt: skip
    p.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    run_demo(output=args.output, base_limit=args.base_limit, device=args.device, precision=args.precision,
             compile=args.compile)  # fmt: skip
    return 0
