"""DoRA (Liu et al. 2024, "Weight-Decomposed Low-Rank Adaptation"): magnitude times direction.

For a DoRA adapter on a Linear layer with base weight ``W`` (out, in)::

    V = W + s B A                      the LoRA-updated weight, s = scaling
    n = ||V||_row                      (out,) the norm of each output row, treated as a constant (detached)
    y = (m / n) * (V x) + b            m (out,) trained, initialised to n so a fresh adapter changes nothing
      = base(x) + (m/n - 1) * (W x) + (m/n) * s B A x

The last line is how it is computed: the base layer's output is reused, and the norm is the only place the
full weight enters. Detaching ``n`` is the paper's section 4.3 (it saves the memory of a weight-sized gradient)
and what peft does, so gradients and outputs match peft's.

Several adapters on one layer each see the unmerged base weight ``W``: adapter ``a`` adds
``(c_a - 1) W x + c_a s_a B_a A_a x`` with ``c_a = m_a / n_a``. The merged weight is then
``W (1 + sum_a (c_a - 1)) + sum_a c_a s_a B_a A_a`` (plain LoRA adapters add ``s B A``), a row scaling plus
low-rank terms, so merging and unmerging are exact up to float rounding and need one weight-sized temporary.
(peft differs only for several DoRA adapters active at once without merging: there its later adapters see the
earlier ones' output as "base". lorakit's forward and merge agree with each other.)

This lives apart from ``layers.py``: ``DoraLinear`` is a ``Linear`` wrapper with a magnitude vector per DoRA
adapter; plain LoRA adapters on the same layer behave exactly as in ``Linear``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.layers import Linear, LoraLayer, _accumulation_dtype, weight_of


class DoraLinear(Linear):
    """``Linear`` plus ``lora_magnitude_vector[name]`` (out,) for each DoRA adapter (peft's parameter name)."""

    adapter_param_names = ("lora_A", "lora_B", "lora_magnitude_vector")  # type: ignore[assignment]  # wider tuple
    lora_magnitude_vector: nn.ParameterDict

    @classmethod
    def from_layer(cls, layer: LoraLayer) -> DoraLinear:
        """``layer`` as a DoraLinear (its adapters, tables and base kept as they are)."""
        if isinstance(layer, DoraLinear):
            return layer
        if type(layer) is not Linear:
            raise TypeError(f"DoRA is implemented for Linear layers only, not {type(layer.base_layer).__name__}")
        new = cls.__new__(cls)
        # nn.Module keeps its parameters, sub-modules and hooks in __dict__: moving it moves the whole layer.
        new.__dict__.update(layer.__dict__)
        new.lora_magnitude_vector = nn.ParameterDict()
        new._norm_cache = {}
        new._merged_norms = {}
        return new

    _norm_cache: dict[str, tuple[tuple[int, ...], torch.Tensor]]
    _merged_norms: dict[str, torch.Tensor]

    def add_magnitude(self, name: str) -> None:
        """Make adapter ``name`` a DoRA adapter: ``m = ||W + s B A||_row``, so the output is unchanged."""
        self.lora_magnitude_vector[name] = nn.Parameter(self.weight_norm(name).clone())

    def remove(self, name: str) -> None:
        super().remove(name)
        self._norm_cache.pop(name, None)

    def _base_weight_oi(self) -> torch.Tensor:
        """The unmerged base weight ``W`` as (out, in): a view, or rebuilt when adapters are merged into it."""
        weight = weight_of(self.base_layer)
        if self.merged_adapters:
            rows, terms = self._low_rank_terms(self.merged_adapters)
            weight = weight.detach().to(rows.dtype, copy=True)
            weight_oi = weight.T if self.fan_in_fan_out else weight
            for b, a in terms:
                weight_oi.addmm_(b, a, alpha=-1)
            return weight_oi.div_(rows[:, None])
        return weight.T if self.fan_in_fan_out else weight  # (out, in)

    def weight_norm(self, name: str) -> torch.Tensor:
        """``||W + s B A||`` per output row, (out,), detached; cached until W, A or B change in place."""
        a, b = weight_of(self.lora_A[name]), weight_of(self.lora_B[name])
        weight = weight_of(self.base_layer)
        key = (weight._version, weight.data_ptr(), a._version, a.data_ptr(), b._version, b.data_ptr())
        cached = self._norm_cache.get(name)
        if cached is not None and cached[0] == key:
            return cached[1]
        norm = self._row_norm(self._base_weight_oi(), name)
        self._norm_cache[name] = (key, norm)
        return norm

    def _row_norm(self, weight_oi: torch.Tensor, name: str) -> torch.Tensor:
        a, b = weight_of(self.lora_A[name]), weight_of(self.lora_B[name])
        dtype = _accumulation_dtype(a)
        with torch.no_grad():
            # The one weight-sized temporary: a float copy of W, then W + s B A accumulated into it by the GEMM.
            updated = weight_oi.detach().to(dtype, copy=True)  # (out, in)
            updated.addmm_(b.detach().to(dtype), a.detach().to(dtype), alpha=self.scaling[name])
            norm = torch.linalg.vector_norm(updated, dim=1)  # (out,)
        return norm.to(a.dtype)

    def _dora_factor(self, name: str) -> torch.Tensor:
        return self.lora_magnitude_vector[name] / self.weight_norm(name)  # (out,), grads flow into m only

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        dora = [n for n in self.active_adapters if n in self.lora_magnitude_vector and n not in self.merged_adapters]
        if self.disabled or not dora:
            return super().forward(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        bias = getattr(self.base_layer, "bias", None)
        base_out = result if bias is None else result - bias  # (..., out): W x, reused by every DoRA adapter
        if self.merged_adapters:
            # Some adapters are merged into the weight: take them out again, the unmerged ones see the plain W.
            rows, terms = self._low_rank_terms(self.merged_adapters)
            base_out = base_out.to(rows.dtype)
            for b, a in terms:
                base_out = base_out - (x.to(a.dtype) @ a.T) @ b.T  # (..., out)
            base_out = base_out / rows
        for name in self.active_adapters:
            if name in self.merged_adapters:
                continue
            if name not in self.lora_magnitude_vector:
                result = result + self.lora_delta(x, name).to(result.dtype)
                continue
            result = result + self._dora_delta(x, base_out, name).to(result.dtype)
        return result

    def lora_delta(self, x: torch.Tensor, name: str) -> torch.Tensor:
        if name not in self.lora_magnitude_vector:
            return super().lora_delta(x, name)
        base_out = F.linear(x.to(self.weight.dtype), self._base_weight_oi())  # (..., out); forward() reuses base(x)
        return self._dora_delta(x, base_out, name)

    def _dora_delta(self, x: torch.Tensor, base_out: torch.Tensor, name: str) -> torch.Tensor:
        lora_A, lora_B = self.lora_A[name], self.lora_B[name]
        dropout = self.lora_dropout[name]
        x = x.to(weight_of(lora_A).dtype)
        if self.training and not isinstance(dropout, nn.Identity):
            # As peft: with dropout the base term sees the same dropped-out input as the LoRA term.
            x = dropout(x)
            base_out = F.linear(x.to(self.weight.dtype), self._base_weight_oi())  # (..., out)
        factor = self._dora_factor(name)  # (out,)
        lora = lora_B(lora_A(x)) * self.scaling[name]  # (..., out)
        return (factor - 1) * base_out.to(factor.dtype) + factor * lora

    def _low_rank_terms(self, names: list[str]) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """The merged weight as ``W * rows[:, None] + sum(B' @ A)``: (rows (out,), [(B' (out, r), A (r, in))])."""
        weight = weight_of(self.base_layer)
        dtype = _accumulation_dtype(weight)
        rows = torch.ones(self.out_features, dtype=dtype, device=weight.device)
        terms: list[tuple[torch.Tensor, torch.Tensor]] = []
        for name in names:
            a = weight_of(self.lora_A[name]).detach().to(dtype)
            b = weight_of(self.lora_B[name]).detach().to(dtype) * self.scaling[name]  # (out, r)
            if name in self.lora_magnitude_vector:
                factor = self.lora_magnitude_vector[name].detach().to(dtype) / self._merged_norms[name].to(dtype)
                rows += factor - 1
                b = b * factor[:, None]
            terms.append((b, a))
        return rows, terms

    def merge(self, names: list[str], safe: bool = False) -> None:
        """Merge exactly: all merged adapters are re-applied to the unmerged ``W`` (see the module docstring)."""
        new = [n for n in names if n in self.r and n not in self.merged_adapters]
        if not new:
            return
        order = self.merged_adapters + new
        if not any(n in self.lora_magnitude_vector for n in order):
            super().merge(names, safe=safe)
            return
        self.unmerge()
        for name in order:
            if name in self.lora_magnitude_vector:
                self._merged_norms[name] = self.weight_norm(name)  # from the unmerged W, as the forward sees it
        rows, terms = self._low_rank_terms(order)
        weight = weight_of(self.base_layer)
        merged = weight.detach().to(rows.dtype, copy=True)
        merged_oi = merged.T if self.fan_in_fan_out else merged  # (out, in) view
        merged_oi.mul_(rows[:, None])
        for b, a in terms:
            merged_oi.addmm_(b, a)
        if safe and not torch.isfinite(merged).all():
            self._merged_norms.clear()
            raise ValueError(f"adapters {new} give non-finite weights when merged; refusing to merge")
        with torch.no_grad():
            weight.copy_(merged.to(weight.dtype))
        self.merged_adapters.extend(order)

    def unmerge(self) -> None:
        if not any(n in self.lora_magnitude_vector for n in self.merged_adapters):
            super().unmerge()
            return
        rows, terms = self._low_rank_terms(self.merged_adapters)
        weight = weight_of(self.base_layer)
        restored = weight.detach().to(rows.dtype, copy=True)
        restored_oi = restored.T if self.fan_in_fan_out else restored  # (out, in) view
        for b, a in terms:
            restored_oi.addmm_(b, a, alpha=-1)
        restored_oi.div_(rows[:, None])
        with torch.no_grad():
            weight.copy_(restored.to(weight.dtype))
        self.merged_adapters.clear()
        self._merged_norms.clear()
