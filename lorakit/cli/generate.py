"""``lorakit generate``: one reply to ``--prompt`` from a model, with or without an adapter."""

from __future__ import annotations

import argparse
from typing import Any

from lorakit.cli.common import conversation, load_flags, model_flags, model_with_adapter, reply_flags, system_prompt_for


def add_parser(sub: Any) -> None:
    p = sub.add_parser("generate", help="one reply to --prompt")
    model_flags(p, system=True)
    p.add_argument("--prompt", required=True, help="the user message to reply to")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: keep the top tokens of this mass")
    p.add_argument("--seed", type=int, default=0, help="seed for sampling (--temperature > 0)")
    reply_flags(p)
    load_flags(p)
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
