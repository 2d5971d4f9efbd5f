"""``lorakit serve``: an OpenAI-compatible server for the base model and its adapters."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from lorakit.cli.common import device_flag, positive, precision_flag, trust_remote_code_flag
from lorakit.errors import LorakitError
from lorakit.runs.folder import CONFIG as RUN_CONFIG

API_KEY_ENV = "LORAKIT_API_KEY"
DEFAULT_MAX_REQUEST_BYTES = 4 * 1024 * 1024  # lorakit.serve.security's default (not imported: it loads starlette)


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
    p.add_argument("--adapter-dir", help="folder whose adapters POST /v1/load_lora_adapter may load (nothing outside)")
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
    p.add_argument(
        "--quantize",
        choices=["nf4", "int8", "none"],
        help="quantise the base's Linear weights as QLoRA training did (default: what the --adapter adapters' "
        f"{RUN_CONFIG} says; none: a float base); an adapter trained on another kind of base is refused",
    )
    p.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV) or None,
        help=f"require 'Authorization: Bearer KEY' on every /v1 route (default: ${API_KEY_ENV})",
    )
    p.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="serve a non-loopback --host without an API key (anyone who reaches the port may use it)",
    )
    p.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="let web pages from ORIGIN (e.g. https://app.example.com) call the API; none by default",
    )
    p.add_argument(
        "--max-request-bytes",
        type=positive,
        default=DEFAULT_MAX_REQUEST_BYTES,
        help="larger request bodies are refused (413) before they are read",
    )
    trust_remote_code_flag(p)
    p.set_defaults(func=command)


def served_quantization(adapters: dict[str, Path], quantize: str | None) -> str | None:
    """``--quantize`` as given ("none": a float base); unset, the kind of base the ``--adapter`` adapters were trained
    on (their runs' settings), which must then be one kind."""
    from lorakit.runs.origin import trained_base

    if quantize is not None:
        return None if quantize == "none" else quantize
    kinds = {name: trained_base(folder) for name, folder in adapters.items()}
    known = {kind for kind in kinds.values() if kind is not None}
    if len(known) > 1:
        listed = ", ".join(f"{name}: {kind}" for name, kind in kinds.items() if kind)
        raise LorakitError(
            f"--adapter: these adapters were trained on different kinds of base ({listed}); "
            "serve each kind from its own server"
        )
    scheme = next(iter(known), None)
    if scheme in ("nf4", "int8"):
        print(
            f"lorakit serve: the adapters were trained by QLoRA on a {scheme} base ({RUN_CONFIG}): the base is "
            "quantised the same way (--quantize none for a float base)",
            file=sys.stderr,
        )
        return scheme
    return None


def command(args: argparse.Namespace) -> int:
    from lorakit.serve.security import check_exposure
    from lorakit.serve.server import Access, parse_adapter_flags, serve

    check_exposure(args.host, args.api_key, args.allow_unauthenticated)  # before anything is loaded
    adapters = parse_adapter_flags(args.adapter)
    quantize = served_quantization(adapters, args.quantize)
    access = Access(args.api_key, tuple(args.cors_origin), args.max_request_bytes, args.allow_unauthenticated)
    serve(args.model, adapters, args.adapter_dir, args.host, args.port, args.max_batch, args.max_new_tokens,
          args.max_input_tokens, args.precision, args.trust_remote_code, quantize=quantize,  # type: ignore[arg-type]
          access=access, device=args.device)  # fmt: skip
    return 0
