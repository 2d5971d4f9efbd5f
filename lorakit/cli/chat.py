"""``lorakit chat``: a streaming chat in the terminal with a model, with or without an adapter."""

from __future__ import annotations

import argparse
from typing import Any

from lorakit.cli.common import load_flags, model_flags, model_with_adapter, reply_flags, system_prompt_for


def add_parser(sub: Any) -> None:
    p = sub.add_parser("chat", help="a streaming terminal chat")
    model_flags(p, system=True)
    reply_flags(p)
    load_flags(p)
    p.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    from lorakit.eval.chat import chat

    model, tokenizer = model_with_adapter(
        args.model, args.adapter, args.quantize, args.trust_remote_code, args.device, args.precision
    )
    chat(model, tokenizer, system_prompt_for(args.system, args.adapter), args.max_new_tokens, args.temperature)
    return 0
