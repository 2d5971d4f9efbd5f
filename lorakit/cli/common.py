"""What the subcommands share: the parser with one-line errors, flags derived from config dataclasses, and loading
a base model with an adapter for inference."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import inspect
import itertools
import os
import sys
import textwrap
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, NoReturn, TypeVar

from lorakit.errors import LorakitError
from lorakit.runs.folder import CONFIG as RUN_CONFIG
from lorakit.train.config import TrainConfig

C = TypeVar("C", bound=TrainConfig)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors that suggest the closest flag of the command being run."""

    _argv: list[str] | None = None

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:  # type: ignore[override]
        if self._argv is None:
            self._argv = list(sys.argv[1:] if args is None else args)  # for error(): which subcommand was asked for
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        prog = self.prog
        if message.startswith("unrecognized arguments:"):
            unknown = message.split(":", 1)[1].split()
            first = next((u for u in unknown if u.startswith("-")), unknown[0] if unknown else "")
            message, chosen = self._unknown_flag(first.split("=")[0])
            prog = f"{prog} {chosen}" if chosen and " " not in prog else prog
        raise LorakitError(f"{prog.removeprefix('lorakit ')}: {message}" if " " in prog else message)

    def _unknown_flag(self, flag: str) -> tuple[str, str | None]:
        """("unknown flag --x" with the commands that take it, or the closest flag of the subcommand run, or of the
        whole tool without one; the subcommand run)."""
        commands = {
            name: p for a in self._actions if isinstance(a, argparse._SubParsersAction) for name, p in a.choices.items()
        }
        chosen = next((t for t in self._argv or [] if t in commands), None)
        others = [n for n, p in commands.items() if n != chosen and any(flag in a.option_strings for a in p._actions)]
        if chosen and others:
            return f"unknown flag {flag}: lorakit {chosen} has no {flag} ({', '.join(others)} take it)", chosen
        parsers = [self, commands[chosen]] if chosen else [self, *commands.values()]
        flags = [s for p in parsers for a in p._actions for s in a.option_strings if s.startswith("--")]
        close = difflib.get_close_matches(flag, flags, n=1)
        return f"unknown flag {flag}" + (f" (did you mean {close[0]}?)" if close else ""), chosen


# The names TRL, peft and transformers' TrainingArguments use for lorakit's flags, accepted as aliases.
ALIASES: dict[str, tuple[str, ...]] = {
    "r": ("--lora-r", "--lora-rank"),
    "lr": ("--learning-rate",),
    "batch_size": ("--per-device-train-batch-size",),
    "epochs": ("--num-train-epochs",),
    "grad_accum": ("--gradient-accumulation-steps",),
    "target_modules": ("--lora-target-modules",),
    "seq_len": ("--max-seq-length", "--max-length"),
    "lr_schedule": ("--lr-scheduler-type",),
    "model": ("--model-name-or-path",),
    "output": ("--output-dir",),
    "save_every": ("--save-steps",),
    "eval_every": ("--eval-steps",),
    "data": ("--dataset-name",),
}


def config_flags(parser: argparse.ArgumentParser, cls: type[TrainConfig]) -> None:
    """``--config FILE.yaml`` and one flag per field of ``cls`` (plus its TRL/peft aliases), with the field's
    docstring line, its default and, for a ``Literal``, the allowed values as help."""
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file whose keys mirror these flags")
    docs = _field_docs(cls)
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        flags = ["--" + field.name.replace("_", "-"), *ALIASES.get(field.name, ())]
        kind, choices = _flag_type(hints[field.name])
        default = getattr(cls, field.name, None)
        allowed = f"; one of {', '.join(map(str, choices))}" if choices else ""
        doc = f"{docs.get(field.name, '')} (default: {_shown(default)}{allowed})"
        if kind is bool:
            parser.add_argument(*flags, dest=field.name, action="store_true", default=argparse.SUPPRESS, help=doc)
            continue
        parser.add_argument(
            *flags, dest=field.name, type=kind, default=argparse.SUPPRESS, metavar=field.name.upper(), help=doc
        )


def _flag_type(hint: Any) -> tuple[type, tuple[Any, ...]]:
    """The argparse type of a field's annotation (``X | None`` is X; ``bool | str`` is text) and its Literal values."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        hint = args[0]
    if typing.get_origin(hint) is Literal:
        return str, typing.get_args(hint)
    return (hint if hint in (int, float, bool) else str), ()


def _shown(value: Any) -> str:
    return "unset" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def explain_defaults(parser: argparse.ArgumentParser) -> None:
    """Each flag's help ends with its default and allowed values, where argparse knows them and the text does not
    say them yet (config-derived flags say theirs already)."""
    for action in parser._actions:
        if not action.option_strings or action.help in (None, argparse.SUPPRESS):
            continue
        extra = []
        if action.choices is not None and not all(str(c) in str(action.help) for c in action.choices):
            extra.append(f"one of {', '.join(map(str, action.choices))}")
        default = action.default
        shown = default not in (None, False, [], argparse.SUPPRESS) and "default" not in str(action.help)
        if shown:
            extra.append(f"default: {default}")
        if extra:
            action.help = f"{action.help} ({'; '.join(extra)})"


def _field_docs(cls: Any) -> dict[str, str]:
    """Each dataclass field's docstring line (the line under it in the class body), through the base classes."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))  # type: ignore[arg-type]
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, after in itertools.pairwise(body):
            doc = after.value.value if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) else None
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(doc, str):
                docs[node.target.id] = doc
    return docs


def train_config_from(args: argparse.Namespace, cls: type[C]) -> C:
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
    aliases = {a.lstrip("-").replace("-", "_"): name for name, flags in ALIASES.items() for a in flags}
    values = {aliases.get(k, k): v for k, v in values.items()}  # YAML written for TRL: learning_rate, ...
    names = {f.name for f in dataclasses.fields(cls)}
    values.update({k: v for k, v in vars(args).items() if k in names})
    try:
        return cls.from_dict(values, source=source)  # type: ignore[return-value]
    except (ValueError, TypeError) as err:
        raise LorakitError(str(err)) from None


def model_with_adapter(
    model_name: str | None, adapter: str | None, quantize: str | None, trust_remote_code: bool,
    device: str = "auto", precision: str = "auto",
) -> tuple[Any, Any]:  # fmt: skip
    """The adapter's own base model (``--model`` overrides it; ``quantize``d as in QLoRA training, if given) plus the
    adapter, merged, on ``device`` in ``precision`` (auto: the fastest the device runs natively); says where on
    stderr."""
    from lorakit.eval.inference import prepare_for_inference
    from lorakit.io import load_adapter

    base = base_model_for(model_name, adapter)  # a wrong adapter path fails before the model is loaded
    model, tokenizer = load_base(
        base, adapter, base_quantization(adapter, quantize), trust_remote_code, device, precision
    )
    if adapter:
        load_adapter(model, adapter)
    model = prepare_for_inference(model, precision)
    say_where(model)
    return model, tokenizer


def say_where(model: Any) -> None:
    """One stderr line: the device the model runs on and the dtype of its weights."""
    from lorakit.models import describe_device

    weight = next(model.parameters())
    where = f"{describe_device(weight.device)} in {str(weight.dtype).removeprefix('torch.')}"
    print(f"lorakit: running on {where}", file=sys.stderr)


def device_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default="auto",
        metavar="DEVICE",
        help="auto (CUDA, then MPS, then the CPU), cpu, cuda, cuda:N or mps (default: auto)",
    )


def precision_flag(parser: argparse.ArgumentParser, what: str = "weights and compute") -> None:
    parser.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        default="auto",
        help=f"{what}: auto = bf16 where the device runs it natively, else fp16 on CUDA, else fp32 (default: auto)",
    )


def base_model_for(model: str | None, adapter: str | None, announce: bool = True) -> str | None:
    """``--model`` if given, else the base the adapter records (lorakit.runs.origin, said on stderr when ``announce``),
    else the built-in."""
    from lorakit.runs.origin import adapter_origin

    if not adapter or model:
        return model
    base = adapter_origin(adapter).base_model
    if base is not None and announce:
        print(f"lorakit: {adapter}: base model {base} (recorded with the adapter; --model overrides)", file=sys.stderr)
    return base


def load_base(
    base: str | None, adapter: str | None, quantize: str | None, trust_remote_code: bool, device: str = "auto",
    precision: str = "auto",
) -> tuple[Any, Any]:  # fmt: skip
    """``load_model`` on ``device`` in the dtype ``precision`` stores weights in there; its error says which adapter
    asked for the base."""
    from lorakit.errors import ModelError
    from lorakit.models import load_dtype, load_model, resolve_device, resolve_precision

    target = resolve_device(device)
    dtype = load_dtype(target, resolve_precision(precision, target))
    try:
        return load_model(base, dtype=dtype, quantize=quantize, trust_remote_code=trust_remote_code, device=target)  # type: ignore[arg-type]
    except ModelError as err:
        if adapter is None:
            raise
        raise ModelError(f"{err} (the base model of {adapter}; pass --model to use another copy)") from None


def system_prompt_for(system: str | None, adapter: str | None) -> str | None:
    """``--system`` as given ("" for none), else the system prompt the adapter was trained under, if any."""
    from lorakit.runs.origin import adapter_origin

    if system is not None or not adapter:
        return system or None
    prompt = adapter_origin(adapter).system_prompt
    if prompt:
        print(
            f"lorakit: {adapter}: using the system prompt it was trained with (--system '' for none)", file=sys.stderr
        )
    return prompt


def offline_unless_hub_reachable(*sources: str | None) -> None:
    """Where a source names a Hub dataset and the Hub cannot be reached, turn the Hub libraries' offline mode on
    (the CLI may change the process): the load then fails at once with a one-line error instead of retrying for
    ~20 s. Does nothing when the user set either variable, or no source is a Hub name."""
    import socket
    from urllib.parse import urlparse

    from lorakit.data.sources import looks_like_hub_name

    if not any(s and looks_like_hub_name(s) for s in sources):
        return
    if "HF_HUB_OFFLINE" in os.environ or "HF_DATASETS_OFFLINE" in os.environ:
        return
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError:
        os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"


def base_quantization(adapter: str | None, quantize: str | None) -> str | None:
    """``--quantize`` as given ("none": a float base); unset, the scheme a QLoRA adapter was trained on, as its
    run's settings say (an adapter fits best the weights it was trained against)."""
    from lorakit.runs.origin import trained_quantization

    if quantize == "none":
        return None
    if quantize or not adapter:
        return quantize
    trained = trained_quantization(adapter)
    if trained:
        print(
            f"{adapter}: trained by QLoRA on a {trained} base (its {RUN_CONFIG}): the base is quantised the "
            "same way (--quantize none for a float base)",
            file=sys.stderr,
        )
    return trained


def quantize_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quantize",
        choices=["nf4", "int8", "none"],
        help="quantise the base's Linear weights as QLoRA training did (train --method qlora --bits 4: nf4, 8: int8;"
        f" the default for an adapter whose {RUN_CONFIG} says so; none: a float base)",
    )


def trust_remote_code_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trust-remote-code", action="store_true", help="let the model folder run its own Python code")


MODEL_HELP = "base model: a folder, .gguf file or Hub id (default: the adapter's recorded base, else the built-in)"
ADAPTER_HELP = "adapter folder (a lorakit run folder or any peft adapter); its base model is loaded with it"
SYSTEM_HELP = "system prompt (default: the one the adapter was trained with, if any; '' for none)"


def model_flags(
    parser: argparse.ArgumentParser, adapter_help: str = ADAPTER_HELP, required: bool = False, system: bool = False
) -> None:
    """``--model`` and ``--adapter`` (``required``: an adapter must be given), and ``--system`` for a command that
    chats: what a command that runs a base model with an adapter is given."""
    parser.add_argument("--model", help=MODEL_HELP)
    parser.add_argument("--adapter", required=required, help=adapter_help)
    if system:
        parser.add_argument("--system", help=SYSTEM_HELP)


def load_flags(parser: argparse.ArgumentParser, precision: bool = True) -> None:
    """``--device``, ``--precision`` (where the command computes in one), ``--quantize`` and ``--trust-remote-code``:
    how such a command loads the base model."""
    device_flag(parser)
    if precision:
        precision_flag(parser)
    quantize_flag(parser)
    trust_remote_code_flag(parser)


def reply_flags(parser: argparse.ArgumentParser) -> None:
    """``--max-new-tokens`` and ``--temperature``: how long a reply may be and how it is sampled."""
    parser.add_argument("--max-new-tokens", type=positive, default=256, help="the longest reply, in tokens")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def conversation(system: str | None, prompt: str) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system}] if system else []
    return [*messages, {"role": "user", "content": prompt}]
