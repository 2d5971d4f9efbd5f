"""The command line: thin subcommands, each mapping flags onto a config and calling one function.

A mistake of the user's (a missing file, a bad flag, a broken dataset line) prints one line,
``lorakit: error: ...``, and exits with code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import functools
import inspect
import itertools
import os
import shutil
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from lorakit.errors import LorakitError
from lorakit.train.config import TrainConfig

EXIT_USER_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors that suggest the closest valid flag."""

    def error(self, message: str) -> NoReturn:
        if message.startswith("unrecognized arguments:"):
            parsers = [self] + [
                p for a in self._actions if isinstance(a, argparse._SubParsersAction) for p in a.choices.values()
            ]
            flags = [s for p in parsers for a in p._actions for s in a.option_strings if s.startswith("--")]
            unknown = message.split(":", 1)[1].split()
            first = next((u for u in unknown if u.startswith("-")), unknown[0] if unknown else "")
            close = difflib.get_close_matches(first.split("=")[0], flags, n=1)
            message = f"unknown flag {first}" + (f" (did you mean {close[0]}?)" if close else "")
        raise LorakitError(f"{self.prog.removeprefix('lorakit ')}: {message}" if " " in self.prog else message)


def _train_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file whose keys mirror these flags")
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        doc = _field_doc(field.name)
        if field.type in ("bool",):
            parser.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=doc)
            continue
        kind = {"int": int, "float": float}.get(str(field.type), str)
        parser.add_argument(flag, type=kind, default=argparse.SUPPRESS, metavar=field.name.upper(), help=doc)


@functools.cache
def _field_docs() -> dict[str, str]:
    """Each TrainConfig field's docstring line (the line under it in the class body), for --help."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(TrainConfig)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, after in itertools.pairwise(body):
        doc = after.value.value if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) else None
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(doc, str):
            docs[node.target.id] = doc
    return docs


def _field_doc(name: str) -> str:
    return f"{_field_docs().get(name, '')} (default: {getattr(TrainConfig, name, None)})"


def train_config_from(args: argparse.Namespace) -> TrainConfig:
    """Flags over the YAML file over the defaults."""
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        import yaml

        path = Path(args.config)
        if not path.is_file():
            raise LorakitError(f"{path}: no such config file")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise LorakitError(f"{path}: not valid YAML ({err})") from None
        if not isinstance(loaded, dict):
            raise LorakitError(f"{path}: expected a mapping of flag names to values")
        values.update({str(k).replace("-", "_"): v for k, v in loaded.items()})
        source = str(path)
    else:
        source = "flags"
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values.update({k: v for k, v in vars(args).items() if k in names})
    try:
        return TrainConfig.from_dict(values, source=source)
    except (ValueError, TypeError) as err:
        raise LorakitError(str(err)) from None


def cmd_train(args: argparse.Namespace) -> int:
    from lorakit.train.loop import CONFIG_FILE, output_path, train

    config = train_config_from(args)
    main_process = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 writes the run's files
    if config.output is None and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        config = dataclasses.replace(config, output=str(output_path(config)))
    output = Path(config.output) if config.output else None
    fresh = output is not None and not output.exists()
    try:
        result = train(config)
    except LorakitError:
        # A mistake found before training wrote anything of value leaves no folder behind.
        if (
            main_process
            and fresh
            and output
            and output.is_dir()
            and {p.name for p in output.iterdir()} <= {CONFIG_FILE}
        ):
            shutil.rmtree(output, ignore_errors=True)
        raise
    if main_process:
        print(f"adapter, loss.png, metrics.jsonl and README.md in {result.output}/")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from lorakit.eval.run import evaluate_contacts, evaluate_loss, markdown_table, summary, write_json

    model, tokenizer = _model_with_adapter(args.model, args.adapter, args.quantize, args.trust_remote_code)
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


def _model_with_adapter(
    model_name: str | None, adapter: str | None, quantize: str | None, trust_remote_code: bool
) -> tuple[Any, Any]:
    """Base model (``quantize``d as in QLoRA training, if given) plus adapter, merged and in the fastest
    precision for inference."""
    import lorakit
    from lorakit.eval.run import prepare_for_inference
    from lorakit.io import find_adapter_folder

    if adapter:
        find_adapter_folder(adapter)  # a wrong path fails before the model is loaded
    model, tokenizer = lorakit.load_model(
        model_name,
        quantize=_base_quantization(adapter, quantize),  # type: ignore[arg-type]  # one of lorakit.quant.SCHEMES
        trust_remote_code=trust_remote_code,
    )
    if adapter:
        lorakit.load_adapter(model, adapter)
    return prepare_for_inference(model), tokenizer


def _base_quantization(adapter: str | None, quantize: str | None) -> str | None:
    """``--quantize`` as given ("none": a float base); unset, the scheme a QLoRA adapter was trained on, as its
    run's train_config.json says (an adapter fits best the weights it was trained against)."""
    from lorakit.train.config import trained_quantization

    if quantize == "none":
        return None
    if quantize or not adapter:
        return quantize
    trained = trained_quantization(adapter)
    if trained:
        print(
            f"{adapter}: trained by QLoRA on a {trained} base (its train_config.json): the base is quantised the "
            "same way (--quantize none for a float base)",
            file=sys.stderr,
        )
    return trained


def _conversation(system: str | None, prompt: str) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system}] if system else []
    return [*messages, {"role": "user", "content": prompt}]


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from lorakit.eval.generate import generate_batch, prompt_ids

    torch.manual_seed(args.seed)
    model, tokenizer = _model_with_adapter(args.model, args.adapter, args.quantize, args.trust_remote_code)
    ids = prompt_ids(tokenizer, _conversation(args.system, args.prompt))
    print(generate_batch(model, tokenizer, [ids], args.max_new_tokens, args.temperature, args.top_p)[0])
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from lorakit.eval.chat import chat

    model, tokenizer = _model_with_adapter(args.model, args.adapter, args.quantize, args.trust_remote_code)
    chat(model, tokenizer, args.system, args.max_new_tokens, args.temperature)
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from lorakit.export.merge import merge_to_folder

    quantize = _base_quantization(args.adapter, args.quantize)
    folder = merge_to_folder(
        args.model,
        args.adapter,
        args.output,
        safe=args.safe,
        quantize=quantize,  # type: ignore[arg-type]  # one of lorakit.quant.SCHEMES
        trust_remote_code=args.trust_remote_code,
    )
    if quantize:
        print(
            f"the base was quantised ({quantize}): the adapter was merged into a de-quantised float32 copy of "
            "its weights (the weights it was trained against), not re-quantised"
        )
    print(f"merged model written to {folder}/ (loads with AutoModelForCausalLM.from_pretrained, no lorakit needed)")
    return 0


def cmd_combine(args: argparse.Namespace) -> int:
    from lorakit.cli.combine import combine_to_folder, parse_weights

    done = combine_to_folder(args.model, args.adapter, parse_weights(args.weights), args.output, args.method,
                             args.rank, args.overwrite, args.trust_remote_code)  # fmt: skip
    print(f"combined {len(args.adapter)} adapter(s) with method {done.method} into a rank-{done.rank} adapter "
          f"in {done.folder}/")  # fmt: skip
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from lorakit.cli.demo import run_demo

    run_demo(output=args.output, base_limit=args.base_limit)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from lorakit.serve.server import parse_adapter_flags, serve

    serve(args.model, parse_adapter_flags(args.adapter), args.adapter_dir, args.host, args.port, args.max_batch,
          args.max_new_tokens, args.max_input_tokens, args.dtype, args.trust_remote_code)  # fmt: skip
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    import json

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


def cmd_compare(args: argparse.Namespace) -> int:
    import shlex
    from pathlib import Path

    from lorakit.cli.compare import Task, parse_methods, run_compare

    tasks: list[Task] = ["knowledge", "format"] if args.task == "both" else [args.task]
    output = Path(args.output or ("runs/compare-quick" if args.quick else "runs/compare"))
    command = "lorakit " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else "lorakit compare"
    methods = parse_methods(args.methods)
    report = run_compare(tasks, methods, args.steps, args.quick, output, args.model, command, args.limit)
    print(f"report and plots in {report.parent}/ ({report.name})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from lorakit import __version__

    parser = _Parser(prog="lorakit", description="LoRA fine-tuning with peft-format adapters.")
    parser.add_argument("--version", action="version", version=f"lorakit {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train a LoRA adapter (no flags: the built-in demo's training)")
    _train_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="task metrics or loss of a model (+ adapter) on a dataset")
    p.add_argument("--task", choices=["contacts", "loss"], default="contacts")
    p.add_argument("--model", help="base model (default: the built-in SmolLM2-135M-Instruct)")
    p.add_argument("--adapter", help="adapter folder")
    p.add_argument("--data", help="JSONL dataset (default for contacts: the built-in held-out split)")
    p.add_argument("--output", help="write metrics and every prediction to this JSON file")
    p.add_argument("--limit", type=_positive, help="only the first N examples")
    p.add_argument("--batch-size", type=_positive, default=50)
    _quantize_flag(p)
    p.set_defaults(func=cmd_eval)

    for name, helptext in (("generate", "one reply to --prompt"), ("chat", "a streaming terminal chat")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--model")
        p.add_argument("--adapter")
        p.add_argument("--system", help="system prompt")
        if name == "generate":
            p.add_argument("--prompt", required=True)
            p.add_argument("--top-p", type=float, default=1.0)
            p.add_argument("--seed", type=int, default=0)
        p.add_argument("--max-new-tokens", type=_positive, default=256)
        p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
        _quantize_flag(p)
        p.set_defaults(func=cmd_generate if name == "generate" else cmd_chat)

    p = sub.add_parser("merge", help="base + adapter -> a plain transformers model folder")
    p.add_argument("--model")
    p.add_argument("--adapter", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--safe", action="store_true", help="refuse to merge non-finite weights")
    _quantize_flag(p)
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("plan", help="trainable parameters and training memory per method, from the config alone")
    p.add_argument("--model", help="preset (smollm2-135m, llama-3-8b, llama-2-70b, gpt3-175b), config.json or folder")
    p.add_argument("--method", choices=["lora", "dora", "qlora", "ia3", "full"], default="lora",
                   help="the method --json reports counts for (the table shows all)")  # fmt: skip
    p.add_argument("--r", type=_positive, default=16, help="LoRA rank")
    p.add_argument("--target-modules", default="all-linear", help="comma list, regex or all-linear")
    p.add_argument("--batch-size", type=_positive, default=8)
    p.add_argument("--seq-len", type=_positive, default=384, help="tokens per example (padded length)")
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16", "fp16", "autocast"],
        default="autocast",
        help="base weights and compute; autocast = fp32 weights, bf16 compute (lorakit train on a CPU)",
    )
    p.add_argument("--label-fraction", type=float, default=1.0, help="share of tokens with a label (chat data < 1)")
    p.add_argument("--checkpointing", action="store_true", help="assume gradient checkpointing per layer")
    p.add_argument("--json", action="store_true", help="print one JSON object (bytes)")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("compare", help="LoRA vs full fine-tuning: task score, forgetting, size, memory, time")
    p.add_argument("--task", choices=["format", "knowledge", "both"], default="both")
    p.add_argument("--methods", default="full,lora:r=8,lora:r=64", help="comma list: full, lora:r=N[:lr=X]")
    p.add_argument("--steps", type=_positive, help="optimiser steps per method (default: per task)")
    p.add_argument("--quick", action="store_true", help="a few steps on tiny subsets (for tests)")
    p.add_argument("--limit", type=_positive, help="score only the first N test items of each task")
    p.add_argument("--output", help="folder for report.md, plots and runs (default runs/compare)")
    p.add_argument("--model", help="base model (default: the built-in SmolLM2-135M-Instruct)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("combine", help="weighted adapters -> one new adapter (cat, linear or svd, as peft)")
    p.add_argument("--model", help="base model (default: the built-in SmolLM2-135M-Instruct)")
    p.add_argument("--adapter", action="append", required=True, metavar="DIR", help="an adapter folder (repeat)")
    p.add_argument("--weights", required=True, help="one weight per --adapter, comma-separated: 0.7,0.3")
    p.add_argument(
        "--method",
        choices=["cat", "linear", "svd"],
        default="svd",
        help="cat: exact sum (rank = sum of ranks); svd: best rank --rank; linear: peft's, equal ranks",
    )
    p.add_argument("--rank", type=_positive, help="--method svd only: the new rank (default: the largest input rank)")
    p.add_argument("--output", required=True, help="folder for the combined adapter")
    p.add_argument("--overwrite", action="store_true", help="replace an adapter already in --output")
    p.set_defaults(func=cmd_combine)

    p = sub.add_parser("demo", help="evaluate, train and evaluate again on the built-in contacts task")
    p.add_argument("--output", help="run folder (default runs/demo-<timestamp>)")
    p.add_argument("--base-limit", type=_positive, default=100, help="held-out examples for the base model")
    p.set_defaults(func=cmd_demo)
    for name in ("eval", "generate", "chat", "merge", "combine"):  # train has it as a TrainConfig field
        sub.choices[name].add_argument(
            "--trust-remote-code", action="store_true", help="let the model folder run its own Python code"
        )

    p = sub.add_parser("serve", help="an OpenAI-compatible server for the base model and its adapters")
    p.add_argument("--model", help="base model (default: the built-in SmolLM2-135M-Instruct)")
    p.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR", help="serve this adapter as NAME")
    p.add_argument("--adapter-dir", help="folder whose adapters POST /v1/adapters/load may load, by name")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=_positive, default=8, help="requests decoded together (1: no batching)")
    p.add_argument("--max-new-tokens", type=_positive, default=256, help="the largest max_tokens a request may ask")
    p.add_argument("--max-input-tokens", type=_positive, default=2048, help="longer prompts are refused (400)")
    p.add_argument("--dtype", choices=["auto", "fp32", "bf16"], default="auto", help="auto: bf16 where fast")
    p.add_argument("--trust-remote-code", action="store_true", help="let the model folder run its own Python code")
    p.set_defaults(func=cmd_serve)
    for command in sub.choices.values():  # --debug also after the subcommand
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    return parser


def _quantize_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quantize", choices=["nf4", "int8", "none"],
        help="quantise the base's Linear weights as QLoRA training did (train --method qlora --bits 4: nf4, 8: int8;"
        " the default for an adapter whose train_config.json says so; none: a float base)",
    )  # fmt: skip


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args))
    except LorakitError as err:
        if debug:
            raise
        print(f"lorakit: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("lorakit: interrupted", file=sys.stderr)
        return 130
