"""``QuantLinear``: a frozen Linear whose weight is stored quantised; the base layer LoRA wraps in QLoRA.

``y = x dequant(W)^T + b``. The weight never trains (QLoRA trains adapters beside it, in full precision).
"""

from __future__ import annotations

import threading
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

Scheme = Literal["nf4", "int8"]
SCHEMES: tuple[Scheme, ...] = ("nf4", "int8")


class Scratch:
    """De-quantisation buffers shared by the ``QuantLinear`` layers of one model: one per (role, shape, dtype,
    device) and thread, reused by every call, and freed with the model (nothing is kept for the process)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def buffer(self, role: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """An uninitialised tensor, the same one for every call with these arguments on this thread."""
        buffers: dict[tuple[Any, ...], torch.Tensor] = self._local.__dict__.setdefault("buffers", {})
        key = (role, shape, dtype, device)
        if key not in buffers:
            buffers[key] = torch.empty(shape, dtype=dtype, device=device)
        return buffers[key]

    def __deepcopy__(self, memo: dict[int, Any]) -> Scratch:
        return Scratch()  # a copied model gets buffers of its own

    def __reduce__(self) -> tuple[type[Scratch], tuple[()]]:
        return Scratch, ()


def _buffer(
    role: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, scratch: Scratch | None
) -> torch.Tensor:
    """An uninitialised tensor: from ``scratch`` (reused), or a new one."""
    if scratch is None:
        return torch.empty(shape, dtype=dtype, device=device)
    return scratch.buffer(role, shape, dtype, device)


def _nf4_values(weight: Any, scratch: Scratch | None) -> torch.Tensor:
    """torchao ``NF4Tensor.get_original_weight()``, bit for bit: each packed byte looks up its pair of NF4 values
    (high nibble first, torchao's order) in a 256-row table, then each block of 64 is scaled in place."""
    codes = weight.quantized_data  # (numel / 2,) uint8: two 4-bit codes per byte
    nf4 = weight.nf4  # (16,) in the weight's nominal dtype
    pairs = torch.stack([nf4.repeat_interleave(16), nf4.repeat(16)], dim=1)  # (256, 2): byte -> its two values
    index = _buffer("nf4 codes", (codes.numel(),), torch.int32, codes.device, scratch)  # index_select's index type
    out = _buffer("nf4 values", (codes.numel(), 2), nf4.dtype, nf4.device, scratch)
    index.copy_(codes)
    torch.index_select(pairs, 0, index, out=out)  # (numel / 2, 2)
    scalers = weight.dequantize_scalers(weight.quantized_scalers, weight.quantization_factor, weight.scaler_block_size)
    out.view(-1, weight.block_size).mul_(scalers[:, None])  # (n_blocks, 64) * (n_blocks, 1), in the nominal dtype
    return out.view(weight.shape)


INT8_CHUNK = 1 << 20
"""Weights per block of rows that int8 de-quantisation computes in float32 (a 4 MiB scratch at most)."""


def _int8_values(weight: Any, scratch: Scratch | None) -> torch.Tensor:
    """torchao ``Int8Tensor.dequantize()``, bit for bit: ``(q - zero_point) * scale`` per output row, computed in
    the scale's dtype (float32) and rounded to the nominal one.

    Written as ``out.mul_(scale)`` on a bf16 ``out``, PyTorch would make two weight-sized float32 temporaries per
    call; here blocks of rows go through one float32 scratch with in-place ops, so nothing is allocated.
    """
    q = weight.qdata  # (out, in) int8
    scale = weight.scale.reshape(-1, 1)  # (out, 1)
    zero = None if weight.zero_point is None else weight.zero_point.reshape(-1, 1)
    out = _buffer("int8 values", tuple(q.shape), weight.dtype, q.device, scratch)  # (out, in)
    rows = max(1, min(q.shape[0], INT8_CHUNK // max(1, q.shape[1])))
    work = _buffer("int8 scratch", (rows, q.shape[1]), scale.dtype, q.device, scratch)  # (rows, in)
    for start in range(0, q.shape[0], rows):
        block = work[: min(rows, q.shape[0] - start)]
        block.copy_(q[start : start + rows])  # int8 -> float32, exact
        if zero is not None:
            block.sub_(zero[start : start + rows])
        block.mul_(scale[start : start + rows])
        out[start : start + rows].copy_(block)  # rounded to the nominal dtype
    return out


def dequantize(weight: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A plain tensor of ``weight``'s values: exactly what the quantised forward multiplies by."""
    if hasattr(weight, "get_original_weight"):  # torchao NF4Tensor
        plain = _nf4_values(weight, None)
    elif hasattr(weight, "qdata") and type(weight) is not torch.Tensor:  # torchao Int8Tensor
        plain = _int8_values(weight, None)
    else:
        plain = weight.detach()
    return plain if dtype is None else plain.to(dtype)


def dequantize_to_scratch(weight: torch.Tensor, scratch: Scratch) -> torch.Tensor:
    """``dequantize(weight)`` written into ``scratch``'s buffer for its shape, shared by every weight of that shape:
    valid until the next call for that shape, so use it at once (the quantised forward and backward do).

    torchao's own de-quantisation builds several weight-sized temporaries per call (NF4 widens the packed codes
    to int64: about 18 bytes per weight at its peak, 30 MB for one of SmolLM2's MLP matrices). Allocated and
    freed twice per layer per step, they fragment the heap, and a QLoRA step's peak RSS sat above a bf16 LoRA
    step's (bench/qlora_memory.py). With one buffer per shape there is nothing to allocate after the first step.
    """
    if hasattr(weight, "get_original_weight"):
        return _nf4_values(weight, scratch)
    return _int8_values(weight, scratch)


def quantized_bytes(weight: torch.Tensor) -> int:
    """Bytes a (quantised) tensor holds: the sum over its inner tensors (codes, scales, lookup table)."""
    flatten = getattr(type(weight), "__tensor_flatten__", None)
    if flatten is None or type(weight) is torch.Tensor or type(weight) is nn.Parameter:
        return weight.numel() * weight.element_size()
    names, _ = flatten(weight)
    inner = (getattr(weight, n) for n in names)
    return sum(quantized_bytes(t) for t in inner if isinstance(t, torch.Tensor))


class _FrozenQuantLinear(torch.autograd.Function):
    """``y = x W^T`` with ``W`` frozen and stored quantised, de-quantised when it is needed.

    Backward: ``dL/dx = dL/dy W`` (``y = x W^T`` is linear in x); W is de-quantised again for it, and there
    is no ``dL/dW`` since W never trains. Saving the quantised W rather than a de-quantised copy is the point:
    autograd through a plain linear would keep a float copy of every weight alive until backward, which costs
    more memory than the bf16 model QLoRA is meant to undercut.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, scratch: Scratch) -> torch.Tensor:
        ctx.save_for_backward(weight)
        ctx.x_dtype, ctx.scratch = x.dtype, scratch
        return F.linear(x, dequantize_to_scratch(weight, scratch).to(x.dtype))  # (..., out)

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None, None
        (weight,) = ctx.saved_tensors
        grad_x = grad_y @ dequantize_to_scratch(weight, ctx.scratch).to(grad_y.dtype)  # (..., out) @ (out, in)
        return grad_x.to(ctx.x_dtype), None, None


class QuantLinear(nn.Module):
    """A frozen ``nn.Linear`` with its weight stored as NF4 or int8: ``y = x dequant(W)^T + b``.

    ``weight`` is the quantised tensor (shape (out, in) and the nominal dtype of the weight it replaced), a
    parameter that never requires grad, so ``.to(device)`` moves it and the parameter count stays honest.
    The bias (if any) stays in full precision. ``scratch`` holds the de-quantisation buffers; the layers of one
    model share one (``quantize_model`` does that).
    """

    def __init__(
        self, weight: torch.Tensor, bias: nn.Parameter | None, scheme: Scheme, scratch: Scratch | None = None
    ) -> None:
        super().__init__()
        self.scratch = scratch or Scratch()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = bias
        self.scheme = scheme
        self.out_features, self.in_features = weight.shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _FrozenQuantLinear.apply(x, self.weight, self.scratch)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def dequantized(self, dtype: torch.dtype | None = None) -> nn.Linear:
        """A float ``nn.Linear`` holding exactly the de-quantised weight (cast to ``dtype``, default the nominal
        dtype of the quantised weight), sharing the bias. Merging into this never re-quantises the sum."""
        weight = dequantize(self.weight, dtype or self.weight.dtype)  # (out, in)
        linear = nn.Linear(self.in_features, self.out_features, bias=False, device="meta")
        linear.weight = nn.Parameter(weight, requires_grad=False)
        linear.bias = self.bias  # type: ignore[assignment]  # None when the layer has no bias, as nn.Linear allows
        return linear

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, scheme={self.scheme}"
