"""The LoRA down-projection ``s · x A^T`` as one autograd function, shared by projections that read one input.

A LoRA update is ``y = s · (x A^T) B^T``. The up-projection ``h B^T`` (h is (N, r)) is a plain ``F.linear``; the
down-projection is this module's function, for two reasons:

* **What it keeps.** Written as ``nn.Linear`` calls, autograd saves a copy of ``x`` cast to the adapter's dtype
  per adapted projection. Here the function saves the caller's ``x`` itself (the base layer's input, alive for
  the base layer's backward anyway) and the A matrices in the compute dtype. The up-projection saves h, which
  is r/in of x's size (~3% for r=16): recomputing it in the backward would cost a GEMM per projection.
* **Projections that share an input share one product.** A transformer calls q/k/v_proj on the same hidden
  states and gate/up_proj on the same MLP input. With their A matrices stacked, one (N, in) @ (in, Σr) GEMM
  replaces k skinny ones in the forward, and in the backward one GEMM gives dL/dx and one all the dL/dA_i (and
  autograd adds one gradient into x instead of k). On a CPU a (668 x 576) @ (576 x 48) bf16 product costs about
  what one with 16 columns does. ``SharedInput`` coordinates the sibling layers; the parameters stay separate
  (``lora_A.<adapter>.weight`` per module), so nothing about the file format changes.

Derivation. Forward, for x (N, in) and k adapters A_i (r_i, in) with scalings s_i::

    h_i = s_i · x A_i^T                      (N, r_i);   as one product: [h_1 .. h_k] = x [A_1; ..; A_k]^T, scaled

Backward, given G_i = dL/dh_i (N, r_i)::

    dL/dA_i = s_i · G_i^T x                  (r_i, in)   since h_ij = s_i Σ_m x_im (A_i)_jm
    dL/dx   = Σ_i s_i · G_i A_i              (N, in)     = [s_1 G_1 .. s_k G_k] [A_1; ..; A_k]

so with G = [s_1 G_1 .. s_k G_k] (N, Σr) and A = [A_1; ..; A_k] (Σr, in): dL/dx = G A and [dL/dA_i]_i = G^T x,
split by rows. The scalings are applied to the r-wide tensors, never to an (N, in) or (N, out) one.

All products run in the compute dtype: the autocast dtype when autocast is on, else the adapter's dtype (as the
two Linear calls after ``x.to(A.dtype)`` did). Gradients are returned in the dtype of the tensor they belong to
(fp32 for adapter weights).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F


def compute_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype the LoRA products run in: autocast's when it is on for x's device, else the adapter's."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type) and weight.dtype in (torch.float32, torch.bfloat16, torch.float16):
        return torch.get_autocast_dtype(device_type)
    return weight.dtype


class LoraDown(torch.autograd.Function):
    """``(h_1, .., h_k)`` with ``h_i = s_i · x A_i^T`` from one stacked product; see the module docstring."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: torch.Tensor, scalings: tuple[float, ...], dtype: torch.dtype, *weights: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        ranks = [w.shape[0] for w in weights]
        with torch.autocast(x.device.type, enabled=False):  # the casts below are explicit
            a = torch.cat([w.to(dtype) for w in weights]) if len(weights) > 1 else weights[0].to(dtype)  # (R, in)
            h = x.to(dtype) @ a.T  # (..., R), R = Σ r_i
            if len(set(scalings)) == 1:
                parts = h.mul_(scalings[0]).split(ranks, dim=-1)  # (..., r_i) views of one product
            else:
                parts = tuple(p * s for p, s in zip(h.split(ranks, dim=-1), scalings, strict=True))
        # A is saved as cast and stacked (R x in, small): the backward needs no cast or cat of its own.
        ctx.save_for_backward(x, a)
        ctx.scalings, ctx.ranks, ctx.weight_dtypes = scalings, ranks, [w.dtype for w in weights]
        return parts

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        x, a = ctx.saved_tensors
        scalings: tuple[float, ...] = ctx.scalings
        need_x, need_weights = ctx.needs_input_grad[0], ctx.needs_input_grad[3:]
        with torch.autocast(x.device.type, enabled=False):
            flat = [g.to(a.dtype).reshape(-1, g.shape[-1]) for g in grads]  # (N, r_i) each
            if len(set(scalings)) == 1:
                g = (torch.cat(flat, dim=1) if len(flat) > 1 else flat[0]) * scalings[0]  # (N, R)
            else:
                g = torch.cat([f * s for f, s in zip(flat, scalings, strict=True)], dim=1)  # (N, R)
            grad_x = (g @ a).reshape(x.shape).to(x.dtype) if need_x else None  # (..., in)
            grad_weights: list[torch.Tensor | None] = [None] * len(grads)
            if any(need_weights):
                grad_a = g.T @ x.to(a.dtype).reshape(-1, x.shape[-1])  # (R, in): all dL/dA_i in one product
                for i, part in enumerate(grad_a.split(ctx.ranks, dim=0)):
                    grad_weights[i] = part.to(ctx.weight_dtypes[i]) if need_weights[i] else None  # (r_i, in)
        return grad_x, None, None, *grad_weights


def lora_down(x: torch.Tensor, weights: list[torch.Tensor], scalings: list[float]) -> tuple[torch.Tensor, ...]:
    """``s_i · x A_i^T`` for x (..., in) and each A_i (r_i, in): (..., r_i) tensors in the compute dtype."""
    return LoraDown.apply(x, tuple(scalings), compute_dtype(x, weights[0]), *weights)  # type: ignore[no-any-return]


def lora_product(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float) -> torch.Tensor:
    """``scaling * x A^T B^T`` for x (..., in), A (r, in), B (out, r); (..., out) in the compute dtype."""
    (h,) = lora_down(x, [a], [scaling])
    return F.linear(h, b.to(h.dtype))  # (..., out)


class SharedInputMember(Protocol):
    """A layer of a ``SharedInput`` group: its down-projection weight and scaling for an adapter, when the
    adapter is active on it and takes the plain path (no dropout, not merged)."""

    def down_weight(self, name: str) -> tuple[torch.Tensor, float] | None: ...


@dataclass
class _Pending:
    """The group's product for one input, waiting for the members that have not taken their part yet."""

    x: torch.Tensor
    version: int  # x._version: an in-place change of x after the product makes it stale
    key: tuple[torch.dtype, bool]  # compute dtype and grad mode it was made under
    parts: list[torch.Tensor | None]  # members' h_i; None once taken
    weights: list[torch.Tensor]


class SharedInput:
    """Sibling LoRA layers that a model calls with the same input tensor (q/k/v_proj; gate/up_proj).

    The first member called with ``x`` computes every member's ``s_i x A_i^T`` in one product and keeps the
    others' parts; each sibling called with the very same tensor (``is``, same version, dtype and grad mode)
    takes its part. A member called on another input (cross-attention's k/v), or in a state that does not fit
    (another adapter set, dropout, a merged adapter, tracing by torch.compile), computes its own: always correct,
    at worst one wasted part. Membership never changes at run time: activation checkpointing recomputes a layer
    in the backward and needs the same products as its forward.
    """

    def __init__(self, members: list[SharedInputMember]) -> None:
        self.members = members
        self.pending: dict[str, _Pending] = {}

    def down(self, member: SharedInputMember, x: torch.Tensor, name: str) -> torch.Tensor | None:
        """``member``'s ``s x A^T`` for adapter ``name`` (..., r), or None when the member computes it itself."""
        if torch.compiler.is_compiling():
            return None
        i = next((k for k, m in enumerate(self.members) if m is member), None)
        if i is None:
            return None
        pending = self.pending.get(name)
        if pending is not None and pending.parts[i] is not None:
            part, pending.parts[i] = pending.parts[i], None
            if all(p is None for p in pending.parts):
                del self.pending[name]
            own = member.down_weight(name)
            same_input = pending.x is x and x._version == pending.version
            fits = own is not None and own[0] is pending.weights[i] and same_input
            if fits and pending.key == (compute_dtype(x, pending.weights[i]), torch.is_grad_enabled()):
                return part
            return None
        # No part waits for this member: one product for the whole group on this input.
        entries = [m.down_weight(name) for m in self.members]
        if any(e is None for e in entries):
            return None
        weights = [e[0] for e in entries if e is not None]
        scalings = [e[1] for e in entries if e is not None]
        if any(w.dtype != weights[0].dtype or w.device != weights[0].device for w in weights):
            return None
        parts: list[torch.Tensor | None] = list(lora_down(x, weights, scalings))
        mine, parts[i] = parts[i], None
        key = (compute_dtype(x, weights[0]), torch.is_grad_enabled())
        self.pending[name] = _Pending(x, x._version, key, parts, weights)
        return mine
