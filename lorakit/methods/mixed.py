"""One adapter per batch row: ``with row_adapters(model, ["a", "b", None, "a"]): out = model(...)``.

Inside the block every LoRA layer adds, to row ``i`` of its output, the update of adapter ``rows[i]`` only
(``None``: no update, the base model). The adapters' weights are stacked once per layer into

    down (n+1, r_max, in)   slot 0 all zeros (for None), slot k = A_k padded with zero rows to r_max
    up   (n+1, r_max, out)  slot k = B_k^T padded with zero rows; scale (n+1,) = scaling_k, 0 for slot 0

and a forward gathers each row's slot and runs two batched matrix products (Punica's "BGMV" idea, here with
``torch.bmm``): ``delta_i = scale_i * (x_i down_i^T) up_i``. Zero padding adds exact zeros, so adapters of
different ranks share a batch and each row equals what its adapter gives alone. There is no Python loop over
adapters in the forward pass; the stack is rebuilt only when an adapter is added, removed or its weights
change (checked by tensor identity and version counter at the start of each block).

This is for inference: LoRA dropout is not applied, merged adapters are refused (their update is already in
the base weights of every row) and so are ``modules_to_save`` adapters (a whole module per row cannot be
batched this way).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.adapters import adapter_configs, adapter_modules, check_known
from lorakit.config import LoraConfig
from lorakit.errors import AdapterError
from lorakit.layers import Embedding, Linear, LoraLayer, weight_of

_STACK_ATTR = "_lorakit_row_stack"
StackKey = tuple[tuple[str, int, int, int, int, float], ...]


@dataclass
class _Stack:
    """One layer's adapters stacked for gathering; ``slots`` maps an adapter name to its slot (0 = none)."""

    key: StackKey
    slots: dict[str, int]
    down: torch.Tensor  # Linear: (n+1, r_max, in); Embedding: (n+1, vocab, r_max), i.e. A^T
    up: torch.Tensor  # (n+1, r_max, out)
    scale: torch.Tensor  # (n+1,)
    names: tuple[str, ...] = ()  # the adapters in slot order, from 1


def _factors(layer: LoraLayer, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(down, up) of one adapter: A (r, in) and B^T (r, out) for Linear; A^T (vocab, r) and B^T for Embedding."""
    if isinstance(layer, Linear):
        return weight_of(layer.lora_A[name]), weight_of(layer.lora_B[name]).T
    if isinstance(layer, Embedding):
        return layer.lora_embedding_A[name].T, layer.lora_embedding_B[name].T
    raise AdapterError(f"row_adapters supports Linear and Embedding LoRA layers, not {type(layer).__name__}")


def _key(layer: LoraLayer) -> StackKey:
    entries = []
    for name in layer.adapter_names:
        down, up = _factors(layer, name)
        entries.append((name, down.data_ptr(), down._version, up.data_ptr(), up._version, layer.scaling[name]))
    return tuple(entries)


def _build(layer: LoraLayer, key: StackKey) -> _Stack:
    names = layer.adapter_names
    factors = [_factors(layer, n) for n in names]
    r_max = max(layer.r[n] for n in names)
    down0, up0 = factors[0]
    dtype, device = down0.dtype, down0.device
    embedding = isinstance(layer, Embedding)
    with torch.no_grad():
        if embedding:  # A^T: (vocab, r) per adapter, padded along r
            down = torch.zeros(len(names) + 1, down0.shape[0], r_max, dtype=dtype, device=device)
        else:
            down = torch.zeros(len(names) + 1, r_max, down0.shape[1], dtype=dtype, device=device)
        up = torch.zeros(len(names) + 1, r_max, up0.shape[1], dtype=dtype, device=device)
        for slot, (d, u) in enumerate(factors, start=1):  # built once per change, not per forward
            if embedding:
                down[slot, :, : d.shape[1]] = d
            else:
                down[slot, : d.shape[0]] = d
            up[slot, : u.shape[0]] = u
        scale = torch.tensor([0.0] + [layer.scaling[n] for n in names], dtype=dtype, device=device)
    return _Stack(key, {n: i for i, n in enumerate(names, start=1)}, down, up, scale, tuple(names))


def _stack_of(layer: LoraLayer) -> _Stack:
    key = _key(layer)
    stack: _Stack | None = layer.__dict__.get(_STACK_ATTR)
    if stack is None or stack.key != key:
        stack = _build(layer, key)
        layer.__dict__[_STACK_ATTR] = stack
    return stack


@dataclass
class _ModelStacks:
    """Every LoRA layer's stack, with what it was built from; checked in one pass per block (a server enters
    a block per decode step, so walking the module tree and comparing per-layer keys each time would cost)."""

    signature: tuple[tuple[str, int], ...]  # (adapter name, id of its config): changes on add/delete
    layers: list[LoraLayer]
    stacks: list[_Stack]
    params: list[torch.Tensor]
    state: list[tuple[int, int]]  # (data_ptr, version) of each of ``params``


def _model_stacks(model: nn.Module) -> _ModelStacks:
    signature = tuple((name, id(config)) for name, config in adapter_configs(model).items())
    cached: _ModelStacks | None = model.__dict__.get(_STACK_ATTR)
    if cached is not None and cached.signature == signature:
        if [(p.data_ptr(), p._version) for p in cached.params] == cached.state:
            return cached
        layers = cached.layers
    else:
        layers = [m for _, m in adapter_modules(model) if isinstance(m, LoraLayer)]
    for layer in layers:
        if type(layer) not in (Linear, Embedding):  # subclasses (DoRA, IA3) have their own forward: no hook
            raise AdapterError(f"row_adapters supports Linear and Embedding LoRA layers, not {type(layer).__name__}")
    stacks = [_stack_of(layer) for layer in layers]  # rebuilds only the layers whose weights changed
    params = [t for layer in layers for name in layer.adapter_names for t in _factors(layer, name)]
    fresh = _ModelStacks(signature, layers, stacks, params, [(p.data_ptr(), p._version) for p in params])
    model.__dict__[_STACK_ATTR] = fresh
    return fresh


def _row_delta(layer: LoraLayer, stack: _Stack, slots: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The layer's hook: ``x`` (B, ..., in) -> the per-row LoRA update (B, ..., out).

    Two equivalent ways, picked by shape. Gathered (prefill): each row's own A and B are gathered from the stack
    and applied with ``bmm``; the copies cost B * r_max * (in + out), nothing next to B * T tokens of activations.
    Masked (decode, few tokens per row): every row goes through all slots at once as one rank-(n+1)*r_max LoRA,
    ``(x down_all^T * mask) up_all``, where ``mask`` keeps only the row's own slot (times its scaling) and zeroes
    the rest exactly; the weights are read once instead of copied per row, at (n+1) times the (tiny) LoRA FLOPs.
    """
    embedding = isinstance(layer, Embedding)
    n_slots, r_max = stack.scale.shape[0], stack.up.shape[1]
    down_all = stack.down.reshape(n_slots * r_max, -1)  # ((n+1) r_max, in); Embedding never takes this path
    up_all = stack.up.reshape(n_slots * r_max, -1)  # ((n+1) r_max, out)
    keep = F.one_hot(slots, n_slots).to(stack.scale.dtype) * stack.scale  # (B, n+1): the row's slot and scaling

    def delta(x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != slots.shape[0]:
            raise ValueError(f"row_adapters names {slots.shape[0]} rows but the batch has {x.shape[0]}")
        rows = x.shape[0]
        if embedding:
            after_down = stack.down[slots.view(-1, *([1] * (x.dim() - 1))), x]  # (B, ..., r_max)
            after_down = after_down.reshape(rows, -1, r_max)  # (B, T, r_max)
        else:
            flat = x.reshape(rows, -1, x.shape[-1]).to(stack.down.dtype)  # (B, T, in)
            if flat.shape[1] * n_slots <= 2 * rows:  # decode-like: masked
                after_all = (flat @ down_all.T).view(rows, -1, n_slots, r_max)  # (B, T, n+1, r_max)
                after_all = after_all * keep.view(rows, 1, n_slots, 1)
                out = after_all.flatten(2) @ up_all  # (B, T, out)
                return out.reshape(*x.shape[:-1], -1)
            after_down = torch.bmm(flat, stack.down[slots].transpose(1, 2))  # (B, T, r_max)
        after_down = after_down * stack.scale[slots].view(rows, 1, 1)  # scale the narrow (B, T, r_max) side
        out = torch.bmm(after_down, stack.up[slots])  # (B, T, out)
        return out.reshape(*x.shape[:-1], -1) if not embedding else out.reshape(*x.shape, -1)

    return delta


def _check(model: nn.Module, rows: Sequence[str | None]) -> None:
    known = check_known(model, rows, where="row_adapters: ")
    for name in {n for n in rows if n is not None}:
        config = known[name]
        if not isinstance(config, LoraConfig) or getattr(config, "use_dora", False):
            raise AdapterError(
                f"row_adapters: adapter {name!r} is not a plain LoRA adapter (DoRA, IA3 are not batched)"
            )
        if config.modules_to_save:
            raise AdapterError(f"row_adapters: adapter {name!r} has modules_to_save, which cannot vary by row")


@contextmanager
def row_adapters(model: nn.Module, rows: Sequence[str | None]) -> Iterator[nn.Module]:
    """Inside the block, row ``i`` of each batch passed to ``model`` uses adapter ``rows[i]`` (None: none).

    The model's active adapters are ignored meanwhile and restored untouched afterwards.
    """
    rows = list(rows)
    _check(model, rows)
    built = _model_stacks(model)
    for layer in built.layers:
        if layer.merged_adapters:
            raise AdapterError("row_adapters: unmerge the adapters first (merged updates apply to every row)")
        if layer.training and any(not isinstance(d, nn.Identity) for d in layer.lora_dropout.values()):
            raise AdapterError("row_adapters is for inference (no LoRA dropout): call model.eval() first")
    slot_cache: dict[tuple[str, ...], torch.Tensor] = {}  # layers holding the same adapters share
    try:
        for layer, stack in zip(built.layers, built.stacks, strict=True):
            slots = slot_cache.get(stack.names)
            if slots is None:
                slots = torch.tensor([stack.slots.get(n, 0) if n else 0 for n in rows], device=stack.down.device)
                slot_cache[stack.names] = slots
            # Straight into __dict__: nn.Module.__setattr__ costs more than the rest of this loop together.
            layer.__dict__["row_delta"] = _row_delta(layer, stack, slots)
        yield model
    finally:
        for layer in built.layers:
            layer.__dict__.pop("row_delta", None)  # back to the class default, None
