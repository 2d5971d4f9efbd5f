"""(IA)^3 (Liu et al. 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context
Learning"): one learned vector per adapted layer that rescales activations.

- attention-type targets (keys, values): ``y = l * (W x + b)``, ``l`` (out, 1) in the file;
- feed-forward targets (the down projection): ``y = W (l * x) + b``, ``l`` (1, in) in the file.

Vectors of several active adapters multiply. Merging folds ``l`` into the weight's rows (and the bias) or
columns; unmerging divides it out again. Parameter names and shapes are peft's (``ia3_l.<adapter>``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lorakit.layers import LoraLayer, _accumulation_dtype, _adapter_dtype, linear_shape, weight_of


class IA3Linear(LoraLayer):
    """(IA)^3 on ``nn.Linear`` / GPT-2 ``Conv1D``: ``l * base(x)``, or ``base(l * x)`` for feed-forward layers."""

    adapter_param_names = ("ia3_l",)

    def __init__(self, base_layer: nn.Module, fan_in_fan_out: bool, feedforward: bool) -> None:
        super().__init__(base_layer)
        self.fan_in_fan_out, self.in_features, self.out_features = linear_shape(base_layer, fan_in_fan_out)
        self.is_feedforward = feedforward
        self.ia3_l = nn.ParameterDict()

    @property
    def adapter_names(self) -> list[str]:
        return list(self.ia3_l)

    def add_ia3(self, name: str, init: bool) -> None:
        if name in self.ia3_l:
            raise ValueError(f"adapter {name!r} already exists on this layer")
        weight = weight_of(self.base_layer)
        shape = (1, self.in_features) if self.is_feedforward else (self.out_features, 1)
        options: dict[str, Any] = {"dtype": _adapter_dtype(weight), "device": weight.device}
        self.ia3_l[name] = nn.Parameter(torch.ones(shape, **options) if init else torch.randn(shape, **options))

    def _scale(self, names: list[str]) -> torch.Tensor | None:
        scale: torch.Tensor | None = None
        for name in names:
            vector = self.ia3_l[name].flatten()  # (in,) or (out,)
            scale = vector if scale is None else scale * vector
        return scale

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        names = [n for n in self.active_adapters if n in self.ia3_l and n not in self.merged_adapters]
        scale = None if self.disabled else self._scale(names)
        if scale is None:
            return self.base_layer(x, *args, **kwargs)
        if self.is_feedforward:
            return self.base_layer((x.to(scale.dtype) * scale).to(x.dtype), *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        return (result * scale).to(result.dtype)

    def _fold(self, names: list[str], divide: bool) -> None:
        scale = self._scale(names)
        if scale is None:
            return
        weight = weight_of(self.base_layer)
        acc = _accumulation_dtype(weight)
        scale = scale.detach().to(acc)
        factor = 1 / scale if divide else scale
        # Weight (out, in) scales rows for outputs, columns for inputs; Conv1D's (in, out) the other way round.
        along_rows = self.is_feedforward == self.fan_in_fan_out
        shaped = factor[:, None] if along_rows else factor[None, :]
        with torch.no_grad():
            weight.copy_((weight.detach().to(acc) * shaped).to(weight.dtype))
            bias = getattr(self.base_layer, "bias", None)
            if bias is not None and not self.is_feedforward:
                bias.copy_((bias.detach().to(acc) * factor).to(bias.dtype))

    def merge(self, names: list[str], safe: bool = False) -> None:
        new = [n for n in names if n in self.ia3_l and n not in self.merged_adapters]
        if safe:
            scale = self._scale(new)
            if scale is not None and not (torch.isfinite(scale).all() and (scale != 0).all()):
                raise ValueError(f"adapters {new} have non-finite or zero scales; refusing to merge")
        self._fold(new, divide=False)
        self.merged_adapters.extend(new)

    def unmerge(self) -> None:
        self._fold(list(self.merged_adapters), divide=True)
        self.merged_adapters.clear()
