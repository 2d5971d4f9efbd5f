"""``lorakit generate``: one reply to ``--prompt`` from a model, with or without an adapter."""

from __future__ import annotations

import argparse
from typing import Any

from lorakit.cli.common import (
    ADAPTER_HELP,
    MODEL_HELP,
    SYSTEM_HELP,
    conversation,
    device_flag,
    model_with_adapter,
    positive,
    precision_flag,
    quantize_flag,
    system_prompt_for,
    trust_remote_code_flag,
)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("generate", help="one reply to --prompt")
    p.add_argument("--model", help=MODEL_HELP)
    p.add_argument("--adapter", help=ADAPTER_HELP)
    p.add_argument("--system", help=SYSTEM_HELP)
    p.add_argument("--prompt", required=True, help="the user message to reply to")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: keep the top tokens of this mass")
    p.add_argument("--seed", type=int, default=0, help="seed for sampling (--temperature > 0)")
    p.add_argument("--max-new-tokens", type=positive, default=256, help="the longest reply, in tokens")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    device_flag(p)
    precision_flag(p)
    quantize_flag(p)
    trust_remote_code_flag(p)
    p.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    import torch

    from lorakit.eval.generate import generate_batch, prompt_ids

    torch.manual_seed(args.seed)  # the command's process: sampling draws from the global generator
    model, tokenizer = model_with_adapter(
        args.model, args.adapter, args.quantize, args.trust_remote_code, args.device, args.precision
    )
    ids = prompt_ids(tokenizer, conversation(system_prompt_for(args.system, args.adapter), args.prompt))
    print(generate_batch(model, tokenizer, [ids], args.max_new_tokens, args.temperature, args.top_p)[0])
    return 0
