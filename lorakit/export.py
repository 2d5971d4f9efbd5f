"""``lorakit merge``: base + adapter -> a plain transformers folder that loads without lorakit."""

from __future__ import annotations

from pathlib import Path

import torch

import lorakit
from lorakit.errors import LorakitError
from lorakit.quant import Scheme, dequantize_model


def merge_to_folder(
    model_name: str | None, adapter: str, output: str, safe: bool = False, quantize: Scheme | None = None
) -> Path:
    """Merge ``adapter`` into the base weights (float32 sums) and save model, config and tokenizer.

    With ``quantize`` (a QLoRA adapter), the base is quantised as in training and then de-quantised to a float32
    copy: the merge adds the adapter to exactly the weights it was trained against, and the sum is never
    re-quantised (re-quantising it would round away most of what the adapter learned).
    """
    folder = Path(output)
    if folder.exists() and any(folder.iterdir()):
        raise LorakitError(f"{folder}: output folder is not empty")
    model, tokenizer = lorakit.load_model(model_name, quantize=quantize)
    if quantize:
        dequantize_model(model, torch.float32)
        model.to(torch.float32)
    lorakit.load_adapter(model, adapter)
    lorakit.merge_adapters(model, safe=safe)
    plain = lorakit.unload(model, merge=True)
    folder.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(folder)  # type: ignore[operator]  # safetensors
    tokenizer.save_pretrained(folder)  # includes the chat template
    return folder
