"""The LoRA product ``scaling * (x A^T) B^T`` as one autograd function that keeps only x, A and B.

Written as two ``nn.Linear`` calls, autograd saves the input of each: a copy of ``x`` cast to the adapter's
dtype (one (tokens, in) tensor per adapted projection, on top of the ``x`` the base layer already holds) and
the (tokens, r) product. Here the function saves the caller's ``x`` itself (the base layer's input, already
alive for the base layer's backward or the previous layer's), plus the two small matrices, and recomputes
``x A^T`` in the backward (2·tokens·in·r FLOPs: r/out of the base layer's forward, ~3% for r=16). There is no
dropout inside: with ``lora_dropout == 0`` there is nothing to save for it; with dropout the layer keeps the
plain autograd path.

Derivation. Forward, for x (N, in), A (r, in), B (out, r), s = scaling::

    h = x A^T          (N, r)
    y = s · h B^T      (N, out)

Backward, given G = dL/dy (N, out)::

    dL/dB = s · G^T h              (out, r)    since y_nk = s Σ_j h_nj B_kj
    dL/dh = s · G B                (N, r)
    dL/dA = (dL/dh)^T x            (r, in)     since h_nj = Σ_i x_ni A_ji
    dL/dx = (dL/dh) A              (N, in)

The scalar s is applied to the r-wide tensors (h, dL/dh), never to an (N, out) one: same result, out/r fewer
multiplications.

All products run in the compute dtype: the autocast dtype when autocast is on, else the adapter's dtype (as the
two Linear calls after ``x.to(A.dtype)`` did). Gradients are returned in the dtype of the tensor they belong to
(fp32 for adapter weights).
"""

from __future__ import annotations

from typing import Any

import torch


def compute_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype the LoRA products run in: autocast's when it is on for x's device, else the adapter's."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type) and weight.dtype in (torch.float32, torch.bfloat16, torch.float16):
        return torch.get_autocast_dtype(device_type)
    return weight.dtype


class LoraProduct(torch.autograd.Function):
    """``y = scaling * (x A^T) B^T`` saving (x, A, B); see the module docstring for the backward."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float, dtype: torch.dtype
    ) -> torch.Tensor:
        ctx.scaling, ctx.dtype = scaling, dtype
        ctx.save_for_backward(x, a, b)
        with torch.autocast(x.device.type, enabled=False):  # the casts below are explicit
            h = (x.to(dtype) @ a.to(dtype).T) * scaling  # (..., r): scaled here, r wide, not on the (..., out) side
            return h @ b.to(dtype).T  # (..., out)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        x, a, b = ctx.saved_tensors
        dtype, scaling = ctx.dtype, ctx.scaling
        need_x, need_a, need_b = ctx.needs_input_grad[:3]
        with torch.autocast(grad.device.type, enabled=False):
            xs = x.to(dtype).reshape(-1, x.shape[-1])  # (N, in)
            g = grad.to(dtype).reshape(-1, grad.shape[-1])  # (N, out)
            ac, bc = a.to(dtype), b.to(dtype)
            grad_b = None
            if need_b:
                h = (xs @ ac.T) * scaling  # (N, r) = s·h, recomputed instead of saved
                grad_b = (g.T @ h).to(b.dtype)  # (out, r)
            grad_h = (g @ bc) * scaling  # (N, r)
            grad_a = (grad_h.T @ xs).to(a.dtype) if need_a else None  # (r, in)
            grad_x = (grad_h @ ac).reshape(x.shape).to(x.dtype) if need_x else None  # (..., in)
        return grad_x, grad_a, grad_b, None, None


def lora_product(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float) -> torch.Tensor:
    """``scaling * x A^T B^T`` for x (..., in), A (r, in), B (out, r); (..., out) in the compute dtype."""
    return LoraProduct.apply(x, a, b, scaling, compute_dtype(x, a))  # type: ignore[no-any-return]
