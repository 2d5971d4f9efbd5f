"""What the subcommands share: the parser with one-line errors, flags derived from config dataclasses, and loading
a base model with an adapter for inference."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import inspect
import itertools
import sys
import textwrap
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from lorakit.errors import LorakitError
from lorakit.train.config import TrainConfig

C = TypeVar("C", bound=TrainConfig)


class Parser(argparse.ArgumentParser):
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


def config_flags(parser: argparse.ArgumentParser, cls: type[TrainConfig]) -> None:
    """``--config FILE.yaml`` and one flag per field of ``cls``, with the field's docstring line as help."""
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file whose keys mirror these flags")
    docs = _field_docs(cls)
    for field in dataclasses.fields(cls):
        flag = "--" + field.name.replace("_", "-")
        doc = f"{docs.get(field.name, '')} (default: {getattr(cls, field.name, None)})"
        if field.type in ("bool",):
            parser.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=doc)
            continue
        kind = {"int": int, "float": float}.get(str(field.type), str)
        parser.add_argument(flag, type=kind, default=argparse.SUPPRESS, metavar=field.name.upper(), help=doc)


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
    """Base model (``quantize``d as in QLoRA training, if given) plus adapter, merged, on ``device`` in
    ``precision`` (auto: the fastest the device runs natively); says where on stderr."""
    from lorakit.eval.run import prepare_for_inference
    from lorakit.io import find_adapter_folder, load_adapter
    from lorakit.models import load_dtype, load_model, resolve_device, resolve_precision

    if adapter:
        find_adapter_folder(adapter)  # a wrong path fails before the model is loaded
    target = resolve_device(device)
    model, tokenizer = load_model(
        model_name,
        dtype=load_dtype(target, resolve_precision(precision, target)),
        quantize=base_quantization(adapter, quantize),  # type: ignore[arg-type]  # one of lorakit.quant.SCHEMES
        trust_remote_code=trust_remote_code,
        device=target,
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
        "--device", default="auto", metavar="DEVICE",
        help="auto (CUDA, then MPS, then the CPU), cpu, cuda, cuda:N or mps (default: auto)",
    )  # fmt: skip


def precision_flag(parser: argparse.ArgumentParser, what: str = "weights and compute") -> None:
    parser.add_argument(
        "--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
        help=f"{what}: auto = bf16 where the device runs it natively, else fp16 on CUDA, else fp32 (default: auto)",
    )  # fmt: skip


def base_quantization(adapter: str | None, quantize: str | None) -> str | None:
    """``--quantize`` as given ("none": a float base); unset, the scheme a QLoRA adapter was trained on, as its
    run's train_config.json says (an adapter fits best the weights it was trained against)."""
    from lorakit.cli.run_folder import trained_quantization

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


def quantize_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quantize", choices=["nf4", "int8", "none"],
        help="quantise the base's Linear weights as QLoRA training did (train --method qlora --bits 4: nf4, 8: int8;"
        " the default for an adapter whose train_config.json says so; none: a float base)",
    )  # fmt: skip


def trust_remote_code_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trust-remote-code", action="store_true", help="let the model folder run its own Python code")


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
