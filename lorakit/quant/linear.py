"""``QuantLinear``: a frozen Linear whose weight is stored quantised; the base layer LoRA wraps in QLoRA.

``y = x dequant(W)^T + b``. The weight never trains (QLoRA trains adapters beside it, in full precision).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

Scheme = Literal["nf4", "int8"]
SCHEMES: tuple[Scheme, ...] = ("nf4", "int8")


def dequantize(weight: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A plain tensor of ``weight``'s values: exactly what the quantised forward multiplies by."""
    if hasattr(weight, "get_original_weight"):  # torchao NF4Tensor
        plain = weight.get_original_weight()
    elif hasattr(weight, "dequantize") and type(weight) is not torch.Tensor:  # torchao Int8Tensor
        plain = weight.dequantize()
    else:
        plain = weight.detach()
    return plain if dtype is None else plain.to(dtype)


def quantized_bytes(weight: torch.Tensor) -> int:
    """Bytes a (quantised) tensor holds: the sum over its inner tensors (codes, scales, lookup table)."""
    flatten = getattr(type(weight), "__tensor_flatten__", None)
    if flatten is None or type(weight) is torch.Tensor or type(weight) is nn.Parameter:
        return weight.numel() * weight.element_size()
    names, _ = flatten(weight)
    inner = (getattr(weight, n) for n in names)
    return sum(quantized_bytes(t) for t in inner if isinstance(t, torch.Tensor))


class _FrozenQuantLinear(torch.autograd.Function):
    """``y = x W^T`` through the quantised weight's own linear, with ``W`` frozen.

    Backward: ``dL/dx = dL/dy W`` (``y = x W^T`` is linear in x); W is de-quantised again for it, and there
    is no ``dL/dW`` since W never trains. Saving the quantised W rather than a de-quantised copy is the point:
    autograd through torchao's int8 linear would keep a float copy of every weight alive until backward,
    which costs more memory than the bf16 model QLoRA is meant to undercut.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(weight)
        ctx.x_dtype = x.dtype
        return F.linear(x, weight)  # (..., out); dispatched to torchao's NF4 / int8 linear

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor) -> tuple[torch.Tensor | None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None
        (weight,) = ctx.saved_tensors
        grad_x = grad_y @ dequantize(weight, grad_y.dtype)  # (..., out) @ (out, in) -> (..., in)
        return grad_x.to(ctx.x_dtype), None


class QuantLinear(nn.Module):
    """A frozen ``nn.Linear`` with its weight stored as NF4 or int8: ``y = x dequant(W)^T + b``.

    ``weight`` is the quantised tensor (shape (out, in) and the nominal dtype of the weight it replaced), a
    parameter that never requires grad, so ``.to(device)`` moves it and the parameter count stays honest.
    The bias (if any) stays in full precision.
    """

    def __init__(self, weight: torch.Tensor, bias: nn.Parameter | None, scheme: Scheme) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = bias
        self.scheme = scheme
        self.out_features, self.in_features = weight.shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _FrozenQuantLinear.apply(x, self.weight)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, scheme={self.scheme}"
