"""``lorakit eval``: a model, or an adapter beside its base, on a task the data implies or one named.

Tasks: ``contacts`` (the built-in task's metrics, the default without ``--data``), ``generation`` (greedy replies to
chat or completion records scored against their references: exact match, token F1, ROUGE-L, and JSON validity and
field accuracy when the references are JSON objects) and ``loss`` (mean loss and perplexity; the default for text
records). With ``--adapter``, the adapter's base runs too and both appear in one table, with a few examples where
their replies differ.
"""

from __future__ import annotations

import argparse
import gc
from typing import Any

from lorakit.cli.common import (
    ADAPTER_HELP,
    base_model_for,
    base_quantization,
    load_base,
    load_flags,
    model_flags,
    offline_unless_hub_reachable,
    positive,
)
from lorakit.data.formats import FORMATS
from lorakit.errors import LorakitError
from lorakit.eval.replies import REPLY_MARGIN

TASKS = ("auto", "contacts", "generation", "loss")
SHOWN = ("n", "exact_match", "token_f1", "rouge_l", "json_valid", "field_accuracy", "tokens", "loss", "perplexity")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("eval", help="a model, or an adapter beside its base, on held-out data")
    p.add_argument(
        "--task",
        choices=TASKS,
        default="auto",
        help="auto: contacts without --data, loss for text records, generation for chat/completion records",
    )
    model_flags(p, ADAPTER_HELP + "; evaluated beside its base")
    p.add_argument(
        "--data",
        help="held-out data, any format lorakit train reads (default for contacts: the built-in held-out split)",
    )
    p.add_argument("--data-format", choices=("auto", *FORMATS), default="auto",
                   help="record format of --data; auto: read from the first record's keys")  # fmt: skip
    p.add_argument("--output", help="write metrics and every prediction to this JSON file")
    p.add_argument("--limit", type=positive, help="only the first N examples")
    p.add_argument("--batch-size", type=positive, default=50, help="examples generated (or scored) together")
    p.add_argument(
        "--max-new-tokens", type=positive, help=f"the longest reply (default: the longest reference + {REPLY_MARGIN})"
    )
    p.add_argument("--no-base", action="store_true", help="with --adapter: skip the base model's run")
    load_flags(p)
    p.set_defaults(func=command)


def pick_task(task: str, data: str | None, data_format: str) -> tuple[str, list[dict] | None]:
    """The task to run and, for generation and loss, the checked records (read before any model is loaded)."""
    from lorakit.data.formats import record_kind
    from lorakit.data.sources import read_data

    if task == "contacts" or (task == "auto" and not data):
        return "contacts", None
    if not data:
        raise LorakitError(f"eval --task {task} needs --data (a held-out file)")
    records = read_data(data, data_format).records
    if task == "auto":
        task = "loss" if record_kind(records[0]) == "text" else "generation"
    if task == "generation" and record_kind(records[0]) == "text":
        raise LorakitError(f"{data}: text records have no reference replies to generate; use --task loss")
    return task, records


def evaluate(
    args: argparse.Namespace, task: str, records: list[dict] | None, model: Any, tokenizer: Any, desc: str
) -> dict[str, Any]:
    from lorakit.eval.perplexity import evaluate_loss
    from lorakit.eval.replies import evaluate_generation
    from lorakit.tasks.contacts_eval import evaluate_contacts

    if task == "contacts":
        return evaluate_contacts(model, tokenizer, args.data, args.limit, args.batch_size, desc=desc)
    assert records is not None
    records = records[: args.limit] if args.limit else records
    if task == "loss":
        return evaluate_loss(model, tokenizer, records, batch_size=args.batch_size)
    return evaluate_generation(model, tokenizer, records, args.batch_size, args.max_new_tokens, desc=desc)


def command(args: argparse.Namespace) -> int:
    from lorakit.eval.inference import prepare_for_inference
    from lorakit.eval.report import markdown_table, write_json
    from lorakit.io import load_adapter

    offline_unless_hub_reachable(args.data)
    task, records = pick_task(args.task, args.data, args.data_format)
    base = base_model_for(args.model, args.adapter)
    quantize = base_quantization(args.adapter, args.quantize)
    runs = [("with adapter", args.adapter)] if args.adapter else [("model", None)]
    if args.adapter and not args.no_base:
        runs.append(("base model", None))  # after the adapter: a broken adapter fails before any long run
    results: dict[str, dict[str, Any]] = {}
    for name, adapter in runs:
        model, tokenizer = load_base(base, args.adapter, quantize, args.trust_remote_code, args.device, args.precision)
        if adapter:
            load_adapter(model, adapter)
        results[name] = evaluate(args, task, records, prepare_for_inference(model, args.precision), tokenizer, name)
        del model
        gc.collect()
    order = [n for n in ("base model", "with adapter", "model") if n in results]
    print(markdown_table([{"model": n, **{k: results[n][k] for k in SHOWN if k in results[n]}} for n in order]))
    if task != "loss" and len(results) == 2:
        print(differences(results["base model"]["predictions"], results["with adapter"]["predictions"]))
    if args.output:
        payload = results[order[0]] if len(order) == 1 else {"task": task, "data": args.data, **{
            "base" if n == "base model" else "adapter": results[n] for n in order}}  # fmt: skip
        write_json(args.output, {"task": task, **payload} if len(order) == 1 else payload)
        print(f"metrics and predictions written to {args.output}")
    return 0


def differences(base: list[dict[str, Any]], tuned: list[dict[str, Any]], shown: int = 3) -> str:
    """A few examples where base and adapter replied differently, the largest gain in score first."""
    key = "exact_match"
    pairs = [(b, t) for b, t in zip(base, tuned, strict=True) if b["reply"] != t["reply"]]
    if not pairs:
        return "\nthe base model and the adapter gave the same reply to every example"
    score = "rouge_l" if "rouge_l" in pairs[0][1] else key
    pairs.sort(key=lambda p: p[1].get(score, 0) - p[0].get(score, 0), reverse=True)
    lines = [f"\n{len(pairs)} of {len(base)} replies differ; for example:"]
    for b, t in pairs[:shown]:
        prompt = b.get("prompt", b.get("message", ""))
        lines += [f"\n  prompt:    {_clip(prompt)}", f"  reference: {_clip(str(b['reference']))}",
                  f"  base:      {_clip(b['reply'])}", f"  adapter:   {_clip(t['reply'])}"]  # fmt: skip
    return "\n".join(lines)


def _clip(text: str, width: int = 160) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"
