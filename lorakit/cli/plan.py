"""``lorakit plan``: trainable parameters and training memory per method, from the model's config alone."""

from __future__ import annotations

import argparse
import json
from typing import Any

from lorakit.cli.common import positive
from lorakit.config import METHODS
from lorakit.errors import LorakitError


def add_parser(sub: Any) -> None:
    p = sub.add_parser("plan", help="trainable parameters and training memory per method, from the config alone")
    p.add_argument("--model", help="preset (smollm2-135m, llama-3-8b, llama-2-70b, gpt3-175b), config.json or folder")
    p.add_argument(
        "--method", choices=METHODS, default="lora", help="the method --json reports counts for (the table shows all)"
    )
    p.add_argument("--r", type=positive, default=16, help="LoRA rank")
    p.add_argument("--target-modules", default="all-linear", help="comma list, regex or all-linear")
    p.add_argument("--batch-size", type=positive, default=8, help="examples per micro-batch")
    p.add_argument("--seq-len", type=positive, default=384, help="tokens per example (padded length)")
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16", "fp16", "autocast"],
        default="autocast",
        help="base weights and compute; autocast = fp32 weights, bf16 compute (lorakit train on a CPU)",
    )
    p.add_argument("--label-fraction", type=float, default=1.0, help="share of tokens with a label (chat data < 1)")
    p.add_argument("--checkpointing", action="store_true", help="assume gradient checkpointing per layer")
    p.add_argument("--json", action="store_true", help="print one JSON object (bytes)")
    p.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    from lorakit.plan import PlanSettings, plan_json, plan_methods, plan_table

    try:
        settings = PlanSettings(
            r=args.r, target_modules=args.target_modules, batch_size=args.batch_size, seq_len=args.seq_len,
            precision=args.precision, label_fraction=args.label_fraction, checkpointing=args.checkpointing,
        )  # fmt: skip
    except ValueError as err:
        raise LorakitError(str(err)) from None
    name, _, plans = plan_methods(args.model, settings)
    print(json.dumps(plan_json(name, args.method, plans), indent=2) if args.json else plan_table(name, plans, settings))
    return 0
