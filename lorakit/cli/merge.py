"""``lorakit merge``: base + adapter -> a plain transformers model folder."""

from __future__ import annotations

import argparse
from typing import Any

from lorakit.cli.common import base_model_for, base_quantization, load_flags, model_flags


def add_parser(sub: Any) -> None:
    p = sub.add_parser("merge", help="base + adapter -> a plain transformers model folder")
    model_flags(p, required=True)
    p.add_argument("--output", required=True, help="folder for the merged model (must be empty or new)")
    p.add_argument("--safe", action="store_true", help="refuse to merge non-finite weights")
    # --device: where the sums run; they are float32 sums whatever the device, so there is no --precision
    load_flags(p, precision=False)
    p.add_argument(
        "--dtype",
        choices=["fp32", "fp16", "bf16"],
        default="fp32",
        help="precision of the saved weights (the merge is summed in float32 and rounded once)",
    )
    p.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    from lorakit.export.merge import merge_to_folder

    quantize = base_quantization(args.adapter, args.quantize)
    folder = merge_to_folder(
        base_model_for(args.model, args.adapter),
        args.adapter,
        args.output,
        safe=args.safe,
        quantize=quantize,  # type: ignore[arg-type]  # one of lorakit.quant.SCHEMES
        trust_remote_code=args.trust_remote_code,
        device=args.device,
        dtype=args.dtype,
    )
    if quantize:
        print(
            f"the base was quantised ({quantize}): the adapter was merged into a de-quantised float32 copy of "
            "its weights (the weights it was trained against), not re-quantised"
        )
    print(f"merged model written to {folder}/ (loads with AutoModelForCausalLM.from_pretrained, no lorakit needed)")
    return 0
