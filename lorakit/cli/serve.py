"""``lorakit serve``: an OpenAI-compatible server for the base model and its adapters."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from lorakit.cli.common import device_flag, positive, precision_flag, trust_remote_code_flag


class _DeprecatedDtype(argparse.Action):
    """``--dtype``: the old name of ``--precision``, still taken (with a note on stderr)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:  # fmt: skip
        print("lorakit serve: --dtype is deprecated, use --precision", file=sys.stderr)
        namespace.precision = values


def add_parser(sub: Any) -> None:
    p = sub.add_parser("serve", help="an OpenAI-compatible server for the base model and its adapters")
    p.add_argument(
        "--model",
        help="base model: a folder, .gguf file or Hub id (default: the base the --adapter "
        "adapters record, else the built-in SmolLM2-135M-Instruct); adapters of another base are refused",
    )
    p.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="serve this adapter as NAME (repeatable); requests without a system message get the one it "
        "was trained with",
    )
    p.add_argument("--adapter-dir", help="folder whose adapters POST /v1/adapters/load may load, by name")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback: no authentication)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--max-batch", type=positive, default=8, help="requests decoded together (1: no batching)")
    p.add_argument("--max-new-tokens", type=positive, default=256, help="the largest max_tokens a request may ask")
    p.add_argument("--max-input-tokens", type=positive, default=2048, help="longer prompts are refused (400)")
    device_flag(p)
    precision_flag(p, "weights and compute (adapters stay fp32)")
    p.add_argument("--dtype", choices=["auto", "fp32", "bf16", "fp16"], action=_DeprecatedDtype, dest="precision",
                   default=argparse.SUPPRESS,
                   help="deprecated: the old name of --precision (default: unset, --precision decides)")  # fmt: skip
    trust_remote_code_flag(p)
    p.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    from lorakit.serve.server import parse_adapter_flags, serve

    serve(args.model, parse_adapter_flags(args.adapter), args.adapter_dir, args.host, args.port, args.max_batch,
          args.max_new_tokens, args.max_input_tokens, args.precision, args.trust_remote_code, args.device)  # fmt: skip
    return 0
