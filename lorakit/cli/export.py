"""``lorakit export``: an adapter for llama.cpp and Ollama (a LoRA GGUF file, or the merged model as one GGUF)."""

from __future__ import annotations

import argparse
from typing import Any

from lorakit.cli.common import base_quantization, quantize_flag, trust_remote_code_flag


def add_parser(sub: Any) -> None:
    p = sub.add_parser("export", help="adapter -> llama.cpp LoRA GGUF (or --merge: one merged GGUF), with a Modelfile")
    p.add_argument("--adapter", required=True, help="adapter folder")
    p.add_argument("--format", choices=["gguf"], default="gguf", help="output format (default: gguf)")
    p.add_argument("--output", required=True, metavar="FILE.gguf", help="the GGUF file (a Modelfile goes beside it)")
    p.add_argument(
        "--model",
        help="base model (default: the one the adapter records): the built-in model, a folder, a .gguf file",
    )
    p.add_argument("--merge", action="store_true", help="write base + adapter merged, as one GGUF model")
    p.add_argument(
        "--dtype",
        choices=["fp32", "fp16", "bf16", "q8_0"],
        help="tensor precision (default: fp32 for a LoRA file, fp16 for --merge); norms stay fp32",
    )
    quantize_flag(p)
    trust_remote_code_flag(p)
    p.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    from lorakit.export.gguf import export_lora_gguf, export_merged_gguf

    if args.merge:
        done = export_merged_gguf(
            args.adapter,
            args.output,
            model=args.model,
            dtype=args.dtype or "fp16",
            quantize=base_quantization(args.adapter, args.quantize),  # type: ignore[arg-type]  # a SCHEMES entry
            trust_remote_code=args.trust_remote_code,
        )
        print(f"merged model written to {done.path} (llama-cli -m {done.path})")
    else:
        done = export_lora_gguf(args.adapter, args.output, model=args.model, dtype=args.dtype or "fp32")
        print(f"LoRA adapter written to {done.path} (alpha {done.alpha:g}); base: {done.base.reference}")
        print(f"  llama-cli -m {done.base.gguf or '<base>.gguf'} --lora {done.path}")
    print(f"Ollama Modelfile written to {done.modelfile} (ollama create NAME -f {done.modelfile})")
    return 0
