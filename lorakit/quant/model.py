"""Whole-model operations: quantise the Linear layers of a model, or turn them back into float Linears."""

from __future__ import annotations

import torch
from torch import nn

from lorakit.layers import output_head
from lorakit.quant.backends import can_quantize, quantize_weight
from lorakit.quant.linear import SCHEMES, QuantLinear, Scheme, Scratch


def quantize_model(model: nn.Module, scheme: Scheme, device: torch.device | None = None) -> list[str]:
    """Replace every ``nn.Linear`` except the output head by a ``QuantLinear``; returns the names replaced.

    ``device``: where each quantised weight goes (default: where its float weight is). A model held on the host
    is quantised one weight at a time on the device, so the device never holds the whole float model.

    The output head and embeddings stay in full precision (as in QLoRA: they are small next to the blocks, and
    a tied head shares its weight with the embedding). A Linear whose size NF4 cannot pack (not a multiple of
    64 weights) stays as it is. Quantise before adding adapters: their own Linears must stay in float.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantisation {scheme!r}; use one of {', '.join(SCHEMES)}")
    head = output_head(model)
    names = [
        name
        for name, module in model.named_modules()
        if type(module) is nn.Linear and module is not head and can_quantize(module.weight, scheme)
    ]
    if any(".lora_A." in n or ".lora_B." in n for n in names):
        raise ValueError("quantise the model before adding LoRA adapters (their Linears must stay in float)")
    scratch = Scratch()  # one set of de-quantisation buffers for the whole model
    for name in names:
        linear: nn.Linear = model.get_submodule(name)  # type: ignore[assignment]
        weight = linear.weight if device is None else linear.weight.to(device)
        quantized = QuantLinear(quantize_weight(weight, scheme), linear.bias, scheme, scratch)
        model.set_submodule(name, quantized)
        del linear, weight  # the float weight is freed as soon as the last reference goes
    return names


def quantized_modules(model: nn.Module) -> dict[str, QuantLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantLinear)}


def dequantized_linear(layer: QuantLinear, dtype: torch.dtype | None = None) -> nn.Linear:
    """``layer.dequantized(dtype)``: a float ``nn.Linear`` of exactly the de-quantised weight."""
    return layer.dequantized(dtype)


def dequantize_model(model: nn.Module, dtype: torch.dtype | None = None) -> list[str]:
    """Replace every ``QuantLinear`` (wrapped by LoRA or not) by its de-quantised ``nn.Linear``."""
    names = list(quantized_modules(model))
    for name in names:
        model.set_submodule(name, dequantized_linear(model.get_submodule(name), dtype))  # type: ignore[arg-type]
    return names
