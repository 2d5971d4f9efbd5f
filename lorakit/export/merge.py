"""``lorakit merge``: base + adapter -> a plain transformers folder that loads without lorakit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lorakit.adapters import merge_adapters, unload
from lorakit.errors import LorakitError
from lorakit.files import atomic_folder
from lorakit.io import load_adapter
from lorakit.models import load_model
from lorakit.quant import Scheme, dequantize_model

SAVE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def merge_to_folder(
    model_name: str | None,
    adapter: str,
    output: str,
    safe: bool = False,
    quantize: Scheme | None = None,
    trust_remote_code: bool = False,
    device: str | torch.device | None = None,
    dtype: str = "fp32",
) -> Path:
    """Merge ``adapter`` into the base weights (float32 sums) and save model, config and tokenizer.

    ``dtype`` ("fp32", "fp16" or "bf16"): the precision the merged weights are saved in. The sum is formed in
    float32 first and rounded once, so an fp16/bf16 folder holds the float32 merge rounded, not a bf16 sum.

    With ``quantize`` (a QLoRA adapter), the base is quantised as in training and then de-quantised to a float32
    copy: the merge adds the adapter to exactly the weights it was trained against, and the sum is never
    re-quantised (re-quantising it would round away most of what the adapter learned). ``device`` is where the
    sums are computed (``lorakit.models.resolve_device``; None: the CPU).
    """
    if dtype not in SAVE_DTYPES:
        raise LorakitError(f"merge: unknown --dtype {dtype!r}; use one of {', '.join(SAVE_DTYPES)}")
    folder = Path(output)
    if folder.exists() and any(folder.iterdir()):
        raise LorakitError(f"{folder}: output folder is not empty")
    plain, tokenizer = merged_model(model_name, adapter, safe, quantize, trust_remote_code, device)
    plain.to(SAVE_DTYPES[dtype])
    # Written beside the destination and renamed into place: a failure (a full disk) leaves no half model.
    with atomic_folder(folder, what="the merged model") as tmp:
        plain.save_pretrained(tmp)  # type: ignore[operator]  # safetensors
        tokenizer.save_pretrained(tmp)  # includes the chat template
    return folder


def merged_model(
    model_name: str | None,
    adapter: str,
    safe: bool = False,
    quantize: Scheme | None = None,
    trust_remote_code: bool = False,
    device: str | torch.device | None = None,
) -> tuple[Any, Any]:
    """(plain model with the adapter merged into its weights, tokenizer); see ``merge_to_folder``."""
    model, tokenizer = load_model(model_name, quantize=quantize, trust_remote_code=trust_remote_code, device=device)
    if quantize:
        dequantize_model(model, torch.float32)
        model.to(torch.float32)
    load_adapter(model, adapter)
    merge_adapters(model, safe=safe)
    return unload(model, merge=True), tokenizer
