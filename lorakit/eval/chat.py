"""``lorakit chat``: a terminal chat that streams the reply as it is generated and keeps the history."""

from __future__ import annotations

import threading
from typing import Any

import torch

from lorakit.eval.generate import prompt_ids


def chat(model: Any, tokenizer: Any, system: str | None, max_new_tokens: int, temperature: float) -> None:
    from transformers import TextIteratorStreamer

    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    print("lorakit chat: type a message; /reset clears the history, /exit or Ctrl-D quits.")
    while True:
        try:
            text = input("you> ").strip()
        except EOFError:
            print()
            return
        if text in ("/exit", "/quit"):
            return
        if text == "/reset":
            history = history[:1] if system else []
            continue
        if not text:
            continue
        history.append({"role": "user", "content": text})
        ids = torch.tensor([prompt_ids(tokenizer, history)], device=next(model.parameters()).device)
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        sampling: dict[str, Any] = {"do_sample": temperature > 0}
        if temperature > 0:
            sampling["temperature"] = temperature
        kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "max_new_tokens": max_new_tokens,
                  "streamer": streamer, "pad_token_id": tokenizer.pad_token_id, **sampling}  # fmt: skip
        worker = threading.Thread(target=model.generate, kwargs=kwargs, daemon=True)
        worker.start()
        print("assistant> ", end="", flush=True)
        reply = ""
        for piece in streamer:
            reply += piece
            print(piece, end="", flush=True)
        worker.join()
        print()
        history.append({"role": "assistant", "content": reply})
