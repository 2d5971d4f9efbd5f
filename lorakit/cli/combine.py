"""``lorakit combine``: adapter folders -> one new adapter folder (``lorakit.combine_adapters`` on files).

Every check that needs no model (flags, folders, adapter kinds, the output folder) runs before the base is
loaded, so a mistake costs no loading time and leaves nothing written.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorakit.adapters import adapter_configs
from lorakit.cli.common import base_model_for, positive, trust_remote_code_flag
from lorakit.config import IA3Config, LoraConfig
from lorakit.errors import LorakitError
from lorakit.io import CONFIG_NAME, WEIGHTS_NAME, find_adapter_folder, load_adapter, read_adapter_config, save_adapter
from lorakit.methods.combine import CombineMethod, combine_adapters, max_rank, not_combinable, unequal_ranks
from lorakit.models import load_model

COMBINED = "default"  # save_adapter writes the "default" adapter straight into the output folder


@dataclass(frozen=True)
class Combined:
    """What ``combine_to_folder`` wrote: the folder, the method actually used and the new adapter's rank."""

    folder: Path
    method: CombineMethod
    rank: int


def parse_weights(text: str) -> list[float]:
    """``"0.7,0.3"`` -> ``[0.7, 0.3]``; anything else is a one-line error naming ``--weights``."""
    weights: list[float] = []
    for part in text.split(","):
        try:
            weight = float(part)
        except ValueError:
            raise LorakitError(f"--weights: {part.strip()!r} is not a number (expected e.g. 0.7,0.3)") from None
        if not math.isfinite(weight):
            raise LorakitError(f"--weights: {part.strip()!r} is not a finite number")
        weights.append(weight)
    return weights


def _check_combinable(folders: list[Path], method: CombineMethod) -> None:
    """Refuse adapters ``combine_adapters`` cannot combine, naming the folder (not an internal adapter name)."""
    configs = [read_adapter_config(f) for f in folders]
    kinds = ["IA3" if isinstance(c, IA3Config) else "LoRA" for c in configs]
    if len(set(kinds)) > 1:
        listed = ", ".join(f"{f} ({kind})" for f, kind in zip(folders, kinds, strict=True))
        raise LorakitError(f"--adapter: cannot combine adapters of different kinds: {listed}")
    for folder, config in zip(folders, configs, strict=True):
        problem = not_combinable(config)
        if problem is not None:
            raise LorakitError(f"{folder}: {problem}")
    ranks = [max_rank(c) for c in configs if isinstance(c, LoraConfig)]  # all are, after the loop above
    if unequal_ranks(ranks, method):
        listed = ", ".join(f"r={r} ({f})" for f, r in zip(folders, ranks, strict=True))
        raise LorakitError(f"--method linear needs adapters of one rank, got {listed}; use --method cat or svd")


def combine_to_folder(
    model_name: str | None,
    adapters: Sequence[str],
    weights: Sequence[float],
    output: str,
    method: CombineMethod = "svd",
    rank: int | None = None,
    overwrite: bool = False,
    trust_remote_code: bool = False,
) -> Combined:
    """Load the base once, each adapter folder under its own name, combine them (weights ``weights``) and save
    only the combination, in peft's format, to ``output``.

    One adapter is legitimate, as in peft's ``add_weighted_adapter``: it is rescaled by its weight (peft's
    "linear" method, whatever ``method`` says), so ``rank`` cannot apply and is refused.
    """
    if not adapters:
        raise LorakitError("combine needs at least one --adapter")
    if len(weights) != len(adapters):
        raise LorakitError(f"--weights has {len(weights)} value(s) for {len(adapters)} --adapter folder(s)")
    if rank is not None and method != "svd":
        raise LorakitError(f"--rank applies to --method svd only (got --method {method})")
    if rank is not None and rank < 1:
        raise LorakitError(f"--rank must be a positive integer, got {rank}")
    if rank is not None and len(adapters) == 1:
        raise LorakitError("--rank: a single adapter is only rescaled by its weight (as peft does) and keeps its rank")
    folder = Path(output)
    if folder.exists() and not folder.is_dir():
        raise LorakitError(f"{folder}: --output exists and is not a folder")
    if not overwrite and any((folder / n).exists() for n in (CONFIG_NAME, WEIGHTS_NAME)):
        raise LorakitError(f"{folder}: already holds an adapter; pass --overwrite to replace it")
    folders = [find_adapter_folder(a) for a in adapters]
    _check_combinable(folders, method if len(folders) > 1 else "linear")

    model, _ = load_model(model_name, trust_remote_code=trust_remote_code)
    names = [f"input{i}" for i in range(len(folders))]
    for name, adapter_folder in zip(names, folders, strict=True):
        load_adapter(model, adapter_folder, name)
    used: CombineMethod = "linear" if len(names) == 1 else method  # as combine_adapters (and peft) do
    combine_adapters(model, names, weights, COMBINED, used, rank=rank)
    written = save_adapter(model, folder, COMBINED)
    config = adapter_configs(model)[COMBINED]
    assert isinstance(config, LoraConfig)
    return Combined(written, used, config.r)


def common_base(model: str | None, adapters: Sequence[str]) -> str | None:
    """``--model``, else the base the adapters record (they must agree: adapters of different bases do not add)."""
    from lorakit.runs.origin import adapter_origin, same_base

    if model:
        return model
    known = [(a, base) for a in adapters if (base := adapter_origin(a).base_model) is not None]
    for adapter, base in known[1:]:
        if not same_base(base, known[0][1]):
            raise LorakitError(f"{adapter} was trained on {base}, {known[0][0]} on {known[0][1]}: they do not combine")
    return base_model_for(None, known[0][0], announce=False) if known else None


def add_parser(sub: Any) -> None:
    p = sub.add_parser("combine", help="weighted adapters -> one new adapter (cat, linear or svd, as peft)")
    p.add_argument("--model", help="base model (default: the base the adapters record, else the built-in)")
    p.add_argument("--adapter", action="append", required=True, metavar="DIR", help="an adapter folder (repeat)")
    p.add_argument("--weights", required=True, help="one weight per --adapter, comma-separated: 0.7,0.3")
    p.add_argument(
        "--method",
        choices=["cat", "linear", "svd"],
        default="svd",
        help="cat: exact sum (rank = sum of ranks); svd: best rank --rank; linear: peft's, equal ranks",
    )
    p.add_argument("--rank", type=positive, help="--method svd only: the new rank (default: the largest input rank)")
    p.add_argument("--output", required=True, help="folder for the combined adapter")
    p.add_argument("--overwrite", action="store_true", help="replace an adapter already in --output")
    trust_remote_code_flag(p)
    p.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    base = common_base(args.model, args.adapter)
    done = combine_to_folder(base, args.adapter, parse_weights(args.weights), args.output, args.method,
                             args.rank, args.overwrite, args.trust_remote_code)  # fmt: skip
    recorded = f" (base model {base}, recorded with the adapters)" if base and not args.model else ""
    print(
        f"combined {len(args.adapter)} adapter(s) with method {done.method} into a rank-{done.rank} adapter "
        f"in {done.folder}/{recorded}"
    )
    return 0
