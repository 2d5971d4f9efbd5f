"""Whole-model operations: quantise the Linear layers of a model, or turn them back into float Linears."""

from __future__ import annotations

import torch
from torch import nn

from lorakit.memory import return_free_memory
from lorakit.quant.backends import can_quantize, quantize_weight
from lorakit.quant.linear import SCHEMES, QuantLinear, Scheme, dequantize


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _output_head(model: nn.Module) -> nn.Module | None:
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    return head if isinstance(head, nn.Module) else None


def quantize_model(model: nn.Module, scheme: Scheme) -> list[str]:
    """Replace every ``nn.Linear`` except the output head by a ``QuantLinear``; returns the names replaced.

    The output head and embeddings stay in full precision (as in QLoRA: they are small next to the blocks, and
    a tied head shares its weight with the embedding). A Linear whose size NF4 cannot pack (not a multiple of
    64 weights) stays as it is. Quantise before adding adapters: their own Linears must stay in float.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantisation {scheme!r}; use one of {', '.join(SCHEMES)}")
    head = _output_head(model)
    names = [
        name
        for name, module in model.named_modules()
        if type(module) is nn.Linear and module is not head and can_quantize(module.weight, scheme)
    ]
    if any(".lora_A." in n or ".lora_B." in n for n in names):
        raise ValueError("quantise the model before adding LoRA adapters (their Linears must stay in float)")
    for name in names:
        linear: nn.Linear = model.get_submodule(name)  # type: ignore[assignment]
        _set_submodule(model, name, QuantLinear(quantize_weight(linear.weight, scheme), linear.bias, scheme))
        del linear  # the float weight is freed as soon as the last reference goes
    return_free_memory()  # the freed float weights: else the training step's peak sits on top of them
    return names


def quantized_modules(model: nn.Module) -> dict[str, QuantLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantLinear)}


def dequantized_linear(layer: QuantLinear, dtype: torch.dtype | None = None) -> nn.Linear:
    """A float ``nn.Linear`` holding exactly the de-quantised weight (cast to ``dtype``, default the nominal
    dtype of the quantised weight), sharing the bias. Merging into this never re-quantises the sum."""
    weight = dequantize(layer.weight, dtype or layer.weight.dtype)  # (out, in)
    linear = nn.Linear(layer.in_features, layer.out_features, bias=False, device="meta")
    linear.weight = nn.Parameter(weight, requires_grad=False)
    linear.bias = layer.bias  # type: ignore[assignment]  # None when the layer has no bias, as nn.Linear allows
    return linear


def dequantize_model(model: nn.Module, dtype: torch.dtype | None = None) -> list[str]:
    """Replace every ``QuantLinear`` (wrapped by LoRA or not) by its de-quantised ``nn.Linear``."""
    names = list(quantized_modules(model))
    for name in names:
        _set_submodule(model, name, dequantized_linear(model.get_submodule(name), dtype))  # type: ignore[arg-type]
    return names
