"""Adapter arithmetic: a new adapter from a weighted combination of existing LoRA adapters (peft's
``add_weighted_adapter`` for "cat", "linear" and "svd").

With ``delta_i = s_i B_i A_i`` (s_i the scaling) and weights ``w_i``; the new adapter has ``lora_alpha = r``,
so its own scaling is 1:

- "cat": ``A = [w_1 s_1 A_1; w_2 s_2 A_2; ...]``, ``B = [B_1 | B_2 | ...]``, so ``B A = sum_i w_i delta_i``
  exactly; rank = sum of the ranks.
- "linear": ``A = sum_i sign(w_i s_i) sqrt|w_i s_i| A_i``, ``B = sum_i sqrt|w_i s_i| B_i`` (all ranks equal).
  This is peft's definition; it is *not* the weighted sum of the deltas (cross terms ``B_i A_j`` appear),
  except for a single adapter.
- "svd": the best rank-k approximation (Eckart-Young) of ``sum_i w_i delta_i``, ``B = U_k S_k``, ``A = V_k^T``;
  k = ``rank`` or the largest input rank.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Literal

import torch
from torch import nn

from lorakit.adapters import adapter_modules, add_adapter, check_known
from lorakit.config import AdapterConfig, IA3Config, LoraConfig
from lorakit.errors import AdapterError
from lorakit.layers import Conv, Embedding, Linear, LoraLayer, weight_of
from lorakit.variants.dora import DoraLinear

CombineMethod = Literal["cat", "linear", "svd"]


def _a_b(layer: LoraLayer, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Adapter ``name``'s A and B parameters on ``layer`` (embeddings keep them as plain parameters)."""
    if isinstance(layer, Embedding):
        return layer.lora_embedding_A[name], layer.lora_embedding_B[name]
    assert isinstance(layer, (Linear, Conv)), type(layer)
    return weight_of(layer.lora_A[name]), weight_of(layer.lora_B[name])


def max_rank(config: LoraConfig) -> int:
    """The largest rank any layer of the adapter has (``r`` or a ``rank_pattern`` entry)."""
    return max(config.r, *config.rank_pattern.values()) if config.rank_pattern else config.r


def not_combinable(config: AdapterConfig) -> str | None:
    """Why ``combine_adapters`` cannot take an adapter with this config (None when it can): the one statement of
    its rules, worded for users of the library and of ``lorakit combine`` alike."""
    if isinstance(config, IA3Config):
        return "an IA3 adapter; adapters combine as plain LoRA adapters only"
    if config.use_dora:
        # A DoRA layer's output is magnitude * (W + BA) / ||W + BA||: weighted sums of the B A's say nothing
        # about the combined magnitude vector. (peft 0.21 accepts DoRA here but keeps the magnitude computed
        # when the new adapter was created, before its A and B are filled: weights 1,0 do not give back the
        # first adapter.)
        return (
            "a DoRA adapter (use_dora); its magnitude vector does not combine, so adapters combine as plain LoRA "
            "adapters only (merging can bake a DoRA adapter into the base instead)"
        )
    if config.modules_to_save:
        return (
            f"has modules_to_save {list(config.modules_to_save)}; adapters combine the low-rank weights of plain "
            "LoRA adapters only"
        )
    return None


def unequal_ranks(ranks: Sequence[int], method: CombineMethod) -> bool:
    """'linear' sums A's and B's entry by entry, so it needs every adapter at one rank."""
    return method == "linear" and len(set(ranks)) > 1


def _combined_config(configs: list[LoraConfig], method: CombineMethod, rank: int | None) -> LoraConfig:
    ranks = [max_rank(c) for c in configs]
    if unequal_ranks(ranks, method):
        raise AdapterError(f"method='linear' needs adapters of one rank, got ranks {ranks}; use 'cat' or 'svd'")
    if method == "linear":
        new_rank = ranks[0]
    elif method == "cat":
        new_rank = sum(ranks)
    else:
        new_rank = rank or max(ranks)
    kinds = {isinstance(c.target_modules, str) for c in configs}
    if len(kinds) != 1:
        raise AdapterError("cannot combine adapters whose target_modules mix a regex string and a list of names")
    targets: tuple[str, ...] | str
    if isinstance(configs[0].target_modules, str):
        targets = "|".join(f"({c.target_modules})" for c in configs)
    else:
        targets = tuple(sorted({t for c in configs for t in (c.target_modules or ())}))
    # As peft, the rest comes from the first adapter; the combined weights are plain LoRA with scaling 1.
    return replace(
        configs[0], r=new_rank, lora_alpha=new_rank, target_modules=targets, rank_pattern={}, alpha_pattern={},
        use_rslora=False, use_dora=False, init_lora_weights=True,
    )  # fmt: skip


def combine_adapters(
    model: nn.Module,
    names: Sequence[str],
    weights: Sequence[float],
    name: str,
    method: CombineMethod = "svd",
    rank: int | None = None,
) -> nn.Module:
    """Add adapter ``name`` = the weighted combination of adapters ``names`` (see the module docstring).

    The new adapter becomes the active one, frozen (call ``mark_trainable`` to train it further).
    """
    names, weights = list(names), [float(w) for w in weights]
    if not names or len(names) != len(weights):
        raise AdapterError(f"combine_adapters needs one weight per adapter, got {len(names)} names, {len(weights)}")
    if method not in ("cat", "linear", "svd"):
        raise AdapterError(f"combine_adapters method must be 'cat', 'linear' or 'svd', got {method!r}")
    if rank is not None and (rank <= 0 or method != "svd"):
        raise AdapterError("combine_adapters rank= is a positive integer, for method='svd' only")
    configs = check_known(model, names)
    if name in configs:
        raise AdapterError(f"adapter {name!r} already exists; pick another name for the combination")
    chosen: list[LoraConfig] = []
    for adapter in names:
        config = configs[adapter]
        problem = not_combinable(config)
        if problem is not None:
            raise AdapterError(f"adapter {adapter!r}: {problem}")
        assert isinstance(config, LoraConfig)
        chosen.append(config)
    if len(names) == 1:
        method = "linear"  # as peft: one adapter is just rescaled
    add_adapter(model, _combined_config(chosen, method, rank), name)
    for module_name, layer in adapter_modules(model):
        if not isinstance(layer, LoraLayer) or name not in layer.adapter_names or isinstance(layer, DoraLinear):
            continue
        present = [(a, w) for a, w in zip(names, weights, strict=True) if a in layer.adapter_names]
        new_a, new_b = _a_b(layer, name)
        with torch.no_grad():
            new_a.zero_()
            new_b.zero_()
            if not present:
                continue
            if method == "cat":
                a = torch.cat([_a_b(layer, n)[0] * (w * layer.scaling[n]) for n, w in present], dim=0)  # (sum r, ...)
                b = torch.cat([_a_b(layer, n)[1] for n, _ in present], dim=1)  # (out, sum r, ...)
                new_a[: a.shape[0]] = a
                new_b[:, : b.shape[1]] = b
            elif method == "linear":
                for n, w in present:
                    root = math.sqrt(abs(w * layer.scaling[n]))
                    a_n, b_n = _a_b(layer, n)
                    new_a += a_n * (math.copysign(root, w * layer.scaling[n]))
                    new_b += b_n * root
            else:
                a, b = _svd(layer, present, new_a.shape[0], module_name)
                new_a[: a.shape[0]] = a  # fewer rows than the rank when the weight itself is smaller
                new_b[:, : b.shape[1]] = b
    for param in _combined_parameters(model, name):
        param.requires_grad_(False)
    return model


def _svd(layer: LoraLayer, present: list[tuple[str, float]], k: int, module_name: str) -> tuple[torch.Tensor, ...]:
    if isinstance(layer, Conv):
        raise AdapterError(f"{module_name}: method='svd' is implemented for Linear and Embedding layers, not Conv")
    delta = sum(layer.delta_weight(n) * w for n, w in present)  # laid out like the base weight
    assert isinstance(delta, torch.Tensor)
    if isinstance(layer, Embedding) or getattr(layer, "fan_in_fan_out", False):
        delta = delta.T  # (out, in): the layout of B A
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)  # (out, m), (m,), (m, in)
    k = min(k, s.shape[0])
    return vh[:k], u[:, :k] * s[:k]  # A (k, in), B (out, k)


def _combined_parameters(model: nn.Module, name: str) -> list[nn.Parameter]:
    return [p for _, module in adapter_modules(model) for p in module.adapter_parameters(name)]
