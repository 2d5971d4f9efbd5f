"""A model made ready for generation: its adapters merged, its weights stored in the precision it runs in."""

from __future__ import annotations

from typing import Any

import torch


def prepare_for_inference(model: Any, precision: str = "auto") -> Any:
    """Merge the active adapters (no extra cost per token) and store float32 weights in ``precision``'s dtype on
    the device the model is on (auto: bf16 where the device runs it natively, else fp16 on CUDA, else fp32).
    Weights stored in bf16 beat bf16 autocast here, which re-casts every weight at every decode step."""
    from lorakit.adapters import adapter_configs, merge_adapters
    from lorakit.models import resolve_precision

    if adapter_configs(model):
        merge_adapters(model)
    weight = next(model.parameters())
    dtype = resolve_precision(precision, weight.device)
    if weight.dtype == torch.float32 and dtype is not None:
        model.to(dtype)
    return model.eval()
