"""``lorakit eval``: task metrics (the built-in contacts task) or loss of a model, with or without an adapter."""

from __future__ import annotations

import argparse
from typing import Any

from lorakit.cli.common import (
    device_flag,
    model_with_adapter,
    positive,
    precision_flag,
    quantize_flag,
    trust_remote_code_flag,
)
from lorakit.errors import LorakitError


def add_parser(sub: Any) -> None:
    p = sub.add_parser("eval", help="task metrics or loss of a model (+ adapter) on a dataset")
    p.add_argument("--task", choices=["contacts", "loss"], default="contacts")
    p.add_argument("--model", help="base model (default: the built-in SmolLM2-135M-Instruct)")
    p.add_argument("--adapter", help="adapter folder")
    p.add_argument("--data", help="JSONL dataset (default for contacts: the built-in held-out split)")
    p.add_argument("--output", help="write metrics and every prediction to this JSON file")
    p.add_argument("--limit", type=positive, help="only the first N examples")
    p.add_argument("--batch-size", type=positive, default=50)
    device_flag(p)
    precision_flag(p)
    quantize_flag(p)
    trust_remote_code_flag(p)
    p.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    from lorakit.eval.run import evaluate_contacts, evaluate_loss, markdown_table, summary, write_json

    model, tokenizer = model_with_adapter(
        args.model, args.adapter, args.quantize, args.trust_remote_code, args.device, args.precision
    )
    if args.task == "contacts":
        metrics = evaluate_contacts(model, tokenizer, args.data, args.limit, args.batch_size)
        shown = summary(metrics)
    else:
        if not args.data:
            raise LorakitError("eval --task loss needs --data FILE.jsonl")
        metrics = evaluate_loss(model, tokenizer, args.data, limit=args.limit, batch_size=args.batch_size)
        shown = {k: metrics[k] for k in ("n", "tokens", "loss", "perplexity")}
    print(markdown_table([shown]))
    if args.output:
        write_json(args.output, metrics)
        print(f"metrics and predictions written to {args.output}")
    return 0
