"""LoRA wrappers: each holds its base layer (``self.base_layer``) and adds low-rank updates beside it.

For every active, unmerged adapter ``a``::

    y = base(x) + scaling_a * B_a A_a dropout_a(x),   scaling_a = lora_alpha_a / r_a  (or / sqrt(r_a), rsLoRA)

Parameter names match peft's in memory (``lora_A.<adapter>.weight``, ``lora_embedding_A.<adapter>``), so the
file format is a matter of dropping the adapter name. This module knows nothing of transformers: GPT-2's
``Conv1D`` (a Linear whose weight is stored (in, out)) is recognised by its shape and attributes.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.lora_fn import lora_product

InitMode = bool | str


def is_gpt2_conv1d(module: nn.Module) -> bool:
    """transformers' ``Conv1D``: ``y = x @ W + b`` with ``W`` (in, out); duck-typed to avoid the import."""
    weight = getattr(module, "weight", None)
    return (
        type(module).__name__ == "Conv1D"
        and isinstance(getattr(module, "nf", None), int)
        and isinstance(weight, torch.Tensor)
        and weight.dim() == 2
        and weight.shape[1] == module.nf
    )


def weight_of(module: nn.Module) -> torch.Tensor:
    """``module.weight``, typed (``nn.Module.__getattr__`` is typed as returning a Module or a Tensor)."""
    weight = module.weight
    assert isinstance(weight, torch.Tensor), f"{type(module).__name__} has no weight tensor"
    return weight


def linear_shape(base_layer: nn.Module, fan_in_fan_out: bool) -> tuple[bool, int, int]:
    """(fan_in_fan_out, in_features, out_features) of a Linear or GPT-2 Conv1D (whose weight is stored (in, out))."""
    transposed = fan_in_fan_out or is_gpt2_conv1d(base_layer)
    out_features, in_features = weight_of(base_layer).shape
    return (transposed, out_features, in_features) if transposed else (transposed, in_features, out_features)


def is_quantized_linear(module: nn.Module) -> bool:
    """A frozen Linear with a quantised weight (``lorakit.quant.QuantLinear``), known by what it can do: give a
    float ``nn.Linear`` of its weights (``dequantized()``). Duck-typed, so this module needs no quantisation code."""
    return callable(getattr(module, "dequantized", None)) and hasattr(module, "in_features")


def output_head(model: nn.Module) -> nn.Module | None:
    """A causal LM's output head (``get_output_embeddings()``), or None for a model without one."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    return head if isinstance(head, nn.Module) else None


def is_linear_like(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or is_quantized_linear(module) or is_gpt2_conv1d(module)


def _adapter_dtype(weight: torch.Tensor) -> torch.dtype:
    # Adapters train in at least float32: bf16/fp16 adapter weights lose the small updates of early training.
    return weight.dtype if weight.dtype in (torch.float32, torch.float64) else torch.float32


def _accumulation_dtype(weight: torch.Tensor) -> torch.dtype:
    # Merges sum in float32 (float64 for float64 weights): a bf16 sum would drift with each merge.
    return torch.float64 if weight.dtype == torch.float64 else torch.float32


class LoraLayer(nn.Module):
    """Bookkeeping shared by all wrappers: named adapters, which are active, which are merged."""

    adapter_param_names: tuple[str, ...] = ()
    # Set by lorakit.methods.mixed.row_adapters: the update for a batch whose rows use different adapters.
    row_delta: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.lora_dropout = nn.ModuleDict()
        self.r: dict[str, int] = {}
        self.lora_alpha: dict[str, float] = {}
        self.scaling: dict[str, float] = {}
        self.active_adapters: list[str] = []
        self.merged_adapters: list[str] = []
        self.disabled = False

    @property
    def weight(self) -> torch.Tensor:
        """The base weight, so code that reads ``layer.weight`` (e.g. tied embeddings) keeps working."""
        return weight_of(self.base_layer)

    @property
    def adapter_names(self) -> list[str]:
        return list(self.r)

    def add(self, name: str, r: int, lora_alpha: float, lora_dropout: float, use_rslora: bool, init: InitMode) -> None:
        if name in self.r:
            raise ValueError(f"adapter {name!r} already exists on this layer")
        self.r[name] = r
        self.lora_alpha[name] = lora_alpha
        self.scaling[name] = lora_alpha / (math.sqrt(r) if use_rslora else r)
        self.lora_dropout[name] = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()
        self._create(name, r, init)

    def _create(self, name: str, r: int, init: InitMode) -> None:
        raise NotImplementedError

    def lora_delta(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """The adapter's contribution to the output for input ``x``."""
        raise NotImplementedError

    def delta_weight(self, name: str) -> torch.Tensor:
        """``scaling * B A`` laid out like the base weight, in float32 (or float64 for float64 adapters)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        if self.disabled:
            return result
        if self.row_delta is not None:
            return result + self.row_delta(x).to(result.dtype)
        for name in self.active_adapters:
            if name not in self.merged_adapters:
                result = result + self.lora_delta(x, name).to(result.dtype)
        return result

    def merge(self, names: list[str], safe: bool = False) -> None:
        """``W += scaling * B A`` for each adapter in ``names`` it holds, summed in float32 and cast back."""
        if is_quantized_linear(self.base_layer) and any(n in self.r for n in names):
            # Never re-quantise a merged weight (that loses what the adapter learned): merge into a de-quantised
            # copy, which stays in float from then on.
            self.base_layer = self.base_layer.dequantized()  # type: ignore[operator]
        weight = weight_of(self.base_layer)
        for name in names:
            if name not in self.r or name in self.merged_adapters:
                continue
            acc = _accumulation_dtype(weight)
            merged = weight.detach().to(acc) + self.delta_weight(name).to(acc)
            if safe and not torch.isfinite(merged).all():
                raise ValueError(f"adapter {name!r} gives non-finite weights when merged; refusing to merge")
            with torch.no_grad():
                weight.copy_(merged.to(weight.dtype))
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        weight = weight_of(self.base_layer)
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            with torch.no_grad():
                acc = _accumulation_dtype(weight)
                weight.copy_((weight.detach().to(acc) - self.delta_weight(name).to(acc)).to(weight.dtype))

    def remove(self, name: str) -> None:
        """Forget an adapter (unmerged first if it was merged)."""
        if name in self.merged_adapters:
            self.unmerge()
        for attr in ("lora_dropout", *self.adapter_param_names):
            container = getattr(self, attr)
            if name in container:
                del container[name]
        for table in (self.r, self.lora_alpha, self.scaling):
            table.pop(name, None)
        self.active_adapters = [a for a in self.active_adapters if a != name]

    def adapter_parameters(self, name: str) -> list[nn.Parameter]:
        params: list[nn.Parameter] = []
        for attr in self.adapter_param_names:
            container = getattr(self, attr)
            if name in container:
                entry = container[name]
                params.extend(entry.parameters() if isinstance(entry, nn.Module) else [entry])
        return params


class Linear(LoraLayer):
    """LoRA for ``nn.Linear`` and GPT-2's ``Conv1D``: ``y = W x + scaling * B A dropout(x)``."""

    adapter_param_names = ("lora_A", "lora_B")

    def __init__(self, base_layer: nn.Module, fan_in_fan_out: bool = False) -> None:
        super().__init__(base_layer)
        self.fan_in_fan_out, self.in_features, self.out_features = linear_shape(base_layer, fan_in_fan_out)
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()

    def _create(self, name: str, r: int, init: InitMode) -> None:
        weight = weight_of(self.base_layer)
        options: dict[str, Any] = {"dtype": _adapter_dtype(weight), "device": weight.device, "bias": False}
        self.lora_A[name] = nn.Linear(self.in_features, r, **options)
        self.lora_B[name] = nn.Linear(r, self.out_features, **options)
        if init is False:
            return  # both keep nn.Linear's random init: the adapter changes the output from the start
        if init == "gaussian":
            nn.init.normal_(weight_of(self.lora_A[name]), std=1 / r)
        else:
            nn.init.kaiming_uniform_(weight_of(self.lora_A[name]), a=math.sqrt(5))
        nn.init.zeros_(weight_of(self.lora_B[name]))

    def lora_delta(self, x: torch.Tensor, name: str) -> torch.Tensor:
        lora_A, lora_B = self.lora_A[name], self.lora_B[name]
        if isinstance(self.lora_dropout[name], nn.Identity):  # one autograd node that saves only x, A, B
            return lora_product(x, weight_of(lora_A), weight_of(lora_B), self.scaling[name])  # (..., out)
        x = self.lora_dropout[name](x.to(weight_of(lora_A).dtype))
        return lora_B(lora_A(x)) * self.scaling[name]  # (..., out)

    def delta_weight(self, name: str) -> torch.Tensor:
        a = weight_of(self.lora_A[name])
        b = weight_of(self.lora_B[name])
        dtype = torch.float64 if a.dtype == torch.float64 else torch.float32
        delta = (b.to(dtype) @ a.to(dtype)) * self.scaling[name]  # (out, in)
        return delta.T if self.fan_in_fan_out else delta


class Embedding(LoraLayer):
    """LoRA for ``nn.Embedding``: ``y = E[i] + scaling * (A^T)[i] B^T``; A (r, vocab), B (dim, r).

    As in peft (and loralib), the default init is the other way round from Linear: A zero, B normal, so a
    fresh adapter still changes nothing. There is no dropout on token ids.
    """

    adapter_param_names = ("lora_embedding_A", "lora_embedding_B")

    def __init__(self, base_layer: nn.Embedding) -> None:
        super().__init__(base_layer)
        self.lora_embedding_A = nn.ParameterDict()
        self.lora_embedding_B = nn.ParameterDict()

    def _create(self, name: str, r: int, init: InitMode) -> None:
        weight = weight_of(self.base_layer)
        num_embeddings, dim = weight.shape
        options: dict[str, Any] = {"dtype": _adapter_dtype(weight), "device": weight.device}
        self.lora_embedding_A[name] = nn.Parameter(torch.randn(r, num_embeddings, **options))
        self.lora_embedding_B[name] = nn.Parameter(torch.randn(dim, r, **options))
        if init is not False:
            nn.init.zeros_(self.lora_embedding_A[name])
            nn.init.normal_(self.lora_embedding_B[name])

    def lora_delta(self, x: torch.Tensor, name: str) -> torch.Tensor:
        base: nn.Embedding = self.base_layer  # type: ignore[assignment]
        a = self.lora_embedding_A[name]
        after_a = F.embedding(
            x, a.T, base.padding_idx, base.max_norm, base.norm_type, base.scale_grad_by_freq, base.sparse
        )  # (..., r)
        return (after_a @ self.lora_embedding_B[name].T) * self.scaling[name]  # (..., dim)

    def delta_weight(self, name: str) -> torch.Tensor:
        a = self.lora_embedding_A[name]
        dtype = torch.float64 if a.dtype == torch.float64 else torch.float32
        return (self.lora_embedding_B[name].to(dtype) @ a.to(dtype)).T * self.scaling[name]  # (vocab, dim)


class Conv(LoraLayer):
    """LoRA for ``nn.Conv1d``/``nn.Conv2d``: A is a conv in->r with the base kernel, B a 1x1 conv r->out."""

    adapter_param_names = ("lora_A", "lora_B")

    def __init__(self, base_layer: nn.Conv1d | nn.Conv2d) -> None:
        if base_layer.groups != 1:
            raise ValueError(f"LoRA on grouped convolutions (groups={base_layer.groups}) is not supported")
        super().__init__(base_layer)
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()

    def _create(self, name: str, r: int, init: InitMode) -> None:
        base: nn.Conv1d | nn.Conv2d = self.base_layer  # type: ignore[assignment]
        conv: Any = type(base)  # Conv1d or Conv2d; the kernel tuples match the class by construction
        options: dict[str, Any] = {"dtype": _adapter_dtype(base.weight), "device": base.weight.device}
        geometry = {"stride": base.stride, "padding": base.padding, "dilation": base.dilation}
        self.lora_A[name] = conv(base.in_channels, r, base.kernel_size, bias=False, **geometry, **options)
        self.lora_B[name] = conv(r, base.out_channels, 1, 1, bias=False, **options)
        if init is False:
            return
        if init == "gaussian":
            nn.init.normal_(weight_of(self.lora_A[name]), std=1 / r)
        else:
            nn.init.kaiming_uniform_(weight_of(self.lora_A[name]), a=math.sqrt(5))
        nn.init.zeros_(weight_of(self.lora_B[name]))

    def lora_delta(self, x: torch.Tensor, name: str) -> torch.Tensor:
        lora_A, lora_B = self.lora_A[name], self.lora_B[name]
        x = self.lora_dropout[name](x.to(weight_of(lora_A).dtype))
        return lora_B(lora_A(x)) * self.scaling[name]

    def delta_weight(self, name: str) -> torch.Tensor:
        a = weight_of(self.lora_A[name])  # (r, in, *kernel)
        b = weight_of(self.lora_B[name]).flatten(1)  # (out, r): B's kernel is 1x1
        dtype = torch.float64 if a.dtype == torch.float64 else torch.float32
        return torch.einsum("or,ri...->oi...", b.to(dtype), a.to(dtype)) * self.scaling[name]  # (out, in, *kernel)


class ModulesToSave(nn.Module):
    """A whole module trained per adapter (peft's ``modules_to_save``): a copy per adapter beside the original."""

    def __init__(self, original_module: nn.Module) -> None:
        super().__init__()
        self.original_module = original_module
        self.modules_to_save = nn.ModuleDict()
        self.active_adapters: list[str] = []
        self.disabled = False

    @property
    def adapter_names(self) -> list[str]:
        return list(self.modules_to_save)

    def add(self, name: str) -> None:
        self.modules_to_save[name] = copy.deepcopy(self.original_module)

    def remove(self, name: str) -> None:
        if name in self.modules_to_save:
            del self.modules_to_save[name]
        self.active_adapters = [a for a in self.active_adapters if a != name]

    def adapter_parameters(self, name: str) -> list[nn.Parameter]:
        return list(self.modules_to_save[name].parameters()) if name in self.modules_to_save else []

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if not self.disabled:
            for name in self.active_adapters:
                if name in self.modules_to_save:
                    return self.modules_to_save[name](*args, **kwargs)
        return self.original_module(*args, **kwargs)


def wrapper_for(module: nn.Module) -> type[LoraLayer] | None:
    """The wrapper class that handles ``module``, or None when lorakit cannot adapt it."""
    if isinstance(module, LoraLayer):
        return type(module)
    if is_linear_like(module):
        return Linear
    if isinstance(module, nn.Embedding):
        return Embedding
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return Conv
    return None


def wrap(module: nn.Module, fan_in_fan_out: bool = False) -> LoraLayer:
    """Wrap ``module`` (returned unchanged when it already is a wrapper)."""
    if isinstance(module, LoraLayer):
        return module
    cls = wrapper_for(module)
    if cls is None:
        raise TypeError(f"lorakit cannot add LoRA to a {type(module).__name__}")
    if cls is Linear:
        return Linear(module, fan_in_fan_out)
    return cls(module)  # type: ignore[call-arg]
