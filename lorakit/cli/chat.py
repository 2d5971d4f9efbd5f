"""``lorakit chat``: a streaming chat in the terminal with a model, with or without an adapter."""

from __future__ import annotations

import argparse
from typing import Any

from lorakit.cli.common import (
    ADAPTER_HELP,
    MODEL_HELP,
    SYSTEM_HELP,
    device_flag,
    model_with_adapter,
    positive,
    precision_flag,
    quantize_flag,
    system_prompt_for,
    trust_remote_code_flag,
)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("chat", help="a streaming terminal chat")
    p.add_argument("--model", help=MODEL_HELP)
    p.add_argument("--adapter", help=ADAPTER_HELP)
    p.add_argument("--system", help=SYSTEM_HELP)
    p.add_argument("--max-new-tokens", type=positive, default=256, help="the longest reply, in tokens")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    device_flag(p)
    precision_flag(p)
    quantize_flag(p)
    trust_remote_code_flag(p)
    p.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    from lorakit.eval.chat import chat

    model, tokenizer = model_with_adapter(
        args.model, args.adapter, args.quantize, args.trust_remote_code, args.device, args.precision
    )
    chat(model, tokenizer, system_prompt_for(args.system, args.adapter), args.max_new_tokens, args.temperature)
    return 0
