"""Operations on a model: add, select, disable, delete, merge, unmerge and unload adapters.

Every state change is an explicit call. The configs of the adapters a model carries live in
``model.lorakit_configs`` (name -> resolved ``LoraConfig`` or ``IA3Config``), which saving reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace

from torch import nn

from lorakit.config import AdapterConfig, IA3Config, LoraConfig
from lorakit.errors import AdapterError
from lorakit.layers import Linear, LoraLayer, ModulesToSave, is_gpt2_conv1d, is_linear_like, wrap, wrapper_for
from lorakit.targeting import resolve_config, select_modules
from lorakit.variants.dora import DoraLinear
from lorakit.variants.ia3 import IA3Linear
from lorakit.variants.inits import init_from_weight, is_weight_init

CONFIGS_ATTR = "lorakit_configs"

AdapterModule = LoraLayer | ModulesToSave


def adapter_configs(model: nn.Module) -> dict[str, AdapterConfig]:
    """The configs of the adapters on ``model``, by name (empty when it has none)."""
    configs: dict[str, AdapterConfig] = model.__dict__.setdefault(CONFIGS_ATTR, {})
    return configs


def adapter_modules(model: nn.Module) -> Iterator[tuple[str, AdapterModule]]:
    """(name, wrapper) for every LoRA wrapper and modules_to_save wrapper in ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, (LoraLayer, ModulesToSave)):
            yield name, module


def check_known(model: nn.Module, names: Iterable[str | None], where: str = "") -> dict[str, AdapterConfig]:
    """The model's adapter configs, after checking each of ``names`` is one of them (None is skipped): an unknown
    name is an AdapterError that lists the adapters there are (``where`` prefixes the message)."""
    known = adapter_configs(model)
    for name in names:
        if name is not None and name not in known:
            listed = ", ".join(repr(k) for k in known) or "none"
            raise AdapterError(f"{where}unknown adapter {name!r}; the model has: {listed}")
    return known


def _check_name(name: str) -> None:
    """Adapter names key ``nn.ModuleDict``s in every wrapped layer, so they must be valid keys there."""
    if not isinstance(name, str) or not name or "." in name:
        raise AdapterError(f"adapter name must be a non-empty string without '.', got {name!r}")
    if hasattr(nn.ModuleDict(), name):
        raise AdapterError(f"adapter name {name!r} clashes with an nn.Module attribute; pick another name")


def add_adapter(model: nn.Module, config: AdapterConfig, name: str = "default") -> nn.Module:
    """Add adapter ``name`` to ``model`` in place and make it the active, only trainable part.

    A second call with another name adds beside the first; the newest adapter becomes the active one
    (``set_adapters`` activates several at once).
    """
    _check_name(name)
    configs = adapter_configs(model)
    if name in configs:
        raise AdapterError(f"adapter {name!r} already exists; delete_adapter() it first or pick another name")
    config = resolve_config(config, model)
    targets = select_modules(model, config)
    for module_name in targets:
        module = model.get_submodule(module_name)
        if isinstance(config, IA3Config) and isinstance(module, LoraLayer) and not isinstance(module, IA3Linear):
            raise AdapterError(f"{module_name} already carries a LoRA adapter; LoRA and IA3 cannot share a layer")
        if isinstance(config, IA3Config) and not (is_linear_like(module) or isinstance(module, IA3Linear)):
            raise AdapterError(
                f"target module {module_name!r} is a {type(module).__name__}; lorakit adds IA3 to Linear and "
                "GPT-2 Conv1D layers"
            )
        needs_linear = isinstance(config, LoraConfig) and (config.use_dora or is_weight_init(config.init_lora_weights))
        if needs_linear and not (is_linear_like(module) or type(module) in (Linear, DoraLinear)):
            raise AdapterError(
                f"target module {module_name!r} is a {type(module).__name__}; use_dora and init_lora_weights="
                f"{getattr(config, 'init_lora_weights', None)!r} are implemented for Linear layers only"
            )
        if isinstance(config, LoraConfig) and isinstance(module, IA3Linear):
            raise AdapterError(f"{module_name} already carries an IA3 adapter; LoRA and IA3 cannot share a layer")
        if wrapper_for(module) is None:
            raise AdapterError(
                f"target module {module_name!r} is a {type(module).__name__}; lorakit adds LoRA to "
                "Linear, Embedding, Conv1d, Conv2d and GPT-2 Conv1D layers"
            )
    if not config.fan_in_fan_out and any(is_gpt2_conv1d(model.get_submodule(t)) for t in targets):
        # GPT-2 stores Conv1D weights as (in, out): peft records this as fan_in_fan_out=True.
        config = replace(config, fan_in_fan_out=True)
    for module_name in targets:
        module = model.get_submodule(module_name)
        layer: LoraLayer
        if isinstance(config, IA3Config):
            layer = _add_ia3(module, module_name, config, name)
        else:
            layer = _add_lora(module, module_name, config, name)
        model.set_submodule(module_name, layer)
    for module_name in _modules_to_save_names(model, config):
        wrapper = model.get_submodule(module_name)
        if not isinstance(wrapper, ModulesToSave):
            wrapper = ModulesToSave(wrapper)
            model.set_submodule(module_name, wrapper)
        wrapper.add(name)
    configs[name] = config
    set_adapters(model, [name])
    mark_trainable(model, name)
    return model


def _add_lora(module: nn.Module, module_name: str, config: LoraConfig, name: str) -> LoraLayer:
    layer = wrap(module, config.fan_in_fan_out)
    r, alpha = config.rank_and_alpha(module_name)
    init = config.init_lora_weights
    if config.use_dora:
        layer = DoraLinear.from_layer(layer)
    layer.add(name, r, alpha, config.lora_dropout, config.use_rslora, True if is_weight_init(init) else init)
    if isinstance(init, str) and is_weight_init(init):
        init_from_weight(layer, name, init)  # before DoRA's magnitude, which is taken from the modified weight
    if isinstance(layer, DoraLinear):
        layer.add_magnitude(name)
    return layer


def _add_ia3(module: nn.Module, module_name: str, config: IA3Config, name: str) -> IA3Linear:
    feedforward = config.is_feedforward(module_name)
    if isinstance(module, IA3Linear):
        if module.is_feedforward != feedforward:
            raise AdapterError(f"{module_name}: IA3 adapters disagree on whether it is a feed-forward module")
        layer = module
    elif isinstance(module, LoraLayer):
        raise AdapterError(f"{module_name} already carries a LoRA adapter; LoRA and IA3 cannot share a layer")
    else:
        layer = IA3Linear(module, config.fan_in_fan_out, feedforward)
    layer.add_ia3(name, config.init_ia3_weights)
    return layer


def _modules_to_save_names(model: nn.Module, config: AdapterConfig) -> list[str]:
    if not config.modules_to_save:
        return []
    names = [
        n
        for n, m in model.named_modules()
        if n
        and any(n == k or n.endswith("." + k) for k in config.modules_to_save)
        and not isinstance(m, LoraLayer)
        and ".modules_to_save." not in n
        and not n.endswith(".original_module")
    ]
    if not names:
        raise AdapterError(f"modules_to_save={list(config.modules_to_save)} matched no module of the model")
    return names


def mark_trainable(model: nn.Module, name: str | None) -> None:
    """Freeze every parameter, then unfreeze adapter ``name``'s (and the biases its ``bias`` mode names)."""
    for param in model.parameters():
        param.requires_grad_(False)
    if name is None:
        return
    for _, module in adapter_modules(model):
        for param in module.adapter_parameters(name):
            param.requires_grad_(True)
    bias = adapter_configs(model)[name].bias
    if bias == "all":
        for param_name, param in model.named_parameters():
            if param_name.endswith("bias") and ".original_module." not in param_name:
                param.requires_grad_(True)
    elif bias == "lora_only":
        for _, module in adapter_modules(model):
            if isinstance(module, LoraLayer) and name in module.adapter_names:
                base_bias = getattr(module.base_layer, "bias", None)
                if base_bias is not None:
                    base_bias.requires_grad_(True)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters; shared (tied) tensors count once, as in peft."""
    trainable = total = 0
    for param in model.parameters():
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
    return trainable, total


def set_adapters(model: nn.Module, names: Sequence[str] | str) -> None:
    """Make exactly ``names`` active; their updates add up where several touch the same layer."""
    names = [names] if isinstance(names, str) else list(names)
    check_known(model, names)
    for _, module in adapter_modules(model):
        module.active_adapters = [n for n in names if n in module.adapter_names]


def active_adapters(model: nn.Module) -> list[str]:
    active: list[str] = []
    for _, module in adapter_modules(model):
        active.extend(n for n in module.active_adapters if n not in active)
    return active


@contextmanager
def disable_adapters(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block the model behaves as its base: merged adapters are taken out and put back after."""
    merged = {id(m): list(m.merged_adapters) for _, m in adapter_modules(model) if isinstance(m, LoraLayer)}
    modules = [m for _, m in adapter_modules(model)]
    for module in modules:
        if isinstance(module, LoraLayer):
            module.unmerge()
        module.disabled = True
    try:
        yield model
    finally:
        for module in modules:
            module.disabled = False
            if isinstance(module, LoraLayer) and merged.get(id(module)):
                module.merge(merged[id(module)])


def delete_adapter(model: nn.Module, name: str) -> None:
    """Remove adapter ``name`` everywhere; layers left with no adapter go back to their plain module."""
    check_known(model, [name])
    for module_name, module in list(adapter_modules(model)):
        module.remove(name)
        if not module.adapter_names:
            plain = module.base_layer if isinstance(module, LoraLayer) else module.original_module
            model.set_submodule(module_name, plain)
    del adapter_configs(model)[name]


def merge_adapters(model: nn.Module, names: Sequence[str] | None = None, safe: bool = False) -> None:
    """``W += scaling * B A`` for ``names`` (default: the active adapters), summed in float32.

    With ``safe=True`` a merge that would give a non-finite weight is refused before anything is written to
    that layer. Merged adapters are skipped in the forward pass, so outputs do not change.
    """
    names = active_adapters(model) if names is None else list(names)
    check_known(model, names)
    for module_name, module in adapter_modules(model):
        if isinstance(module, LoraLayer):
            try:
                module.merge(names, safe=safe)
            except ValueError as err:
                raise AdapterError(f"{module_name}: {err}") from None


def unmerge_adapters(model: nn.Module) -> None:
    """Subtract every merged update from the base weights again."""
    for _, module in adapter_modules(model):
        if isinstance(module, LoraLayer):
            module.unmerge()


def unload(model: nn.Module, merge: bool = True) -> nn.Module:
    """Put the plain modules back: with ``merge``, the active adapters are merged into them first.

    ``modules_to_save`` modules of the active adapter replace the originals when merging.
    """
    if merge:
        merge_adapters(model)
    else:
        unmerge_adapters(model)
    for module_name, module in list(adapter_modules(model)):
        if isinstance(module, LoraLayer):
            plain = module.base_layer
        else:
            active = [n for n in module.active_adapters if n in module.modules_to_save]
            plain = module.modules_to_save[active[0]] if merge and active else module.original_module
        model.set_submodule(module_name, plain)
    model.__dict__.pop(CONFIGS_ATTR, None)
    return model
