"""The adapter file format, peft's: ``adapter_config.json`` + ``adapter_model.safetensors``.

In memory a parameter is ``<module>.lora_A.<adapter>.weight``; on disk it is
``base_model.model.<module>.lora_A.weight`` (the adapter's name is dropped on save and put back on load).
Saving and loading are built on two pure functions, ``to_file_keys`` and the key table of a model, and every
mismatch is an error naming the module and both shapes. Loading never unpickles.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from lorakit.adapters import (
    adapter_configs,
    adapter_modules,
    add_adapter,
    check_known,
    delete_adapter,
    mark_trainable,
    set_adapters,
)
from lorakit.config import AdapterConfig, LoraConfig, config_from_peft_dict
from lorakit.errors import AdapterError
from lorakit.files import atomic_write
from lorakit.layers import LoraLayer, ModulesToSave, weight_of
from lorakit.variants.inits import convert_to_lora

PREFIX = "base_model.model."
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
LEGACY_WEIGHTS_NAME = "adapter_model.bin"
DEFAULT_NAME = "default"


def adapter_tensors(model: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """Adapter ``name``'s tensors under their file keys (live parameters, not copies)."""
    config = adapter_configs(model)[name]
    out: dict[str, torch.Tensor] = {}
    for path, module in adapter_modules(model):
        if isinstance(module, LoraLayer):
            if name not in module.adapter_names:
                continue
            for attr in module.adapter_param_names:
                if name not in getattr(module, attr):
                    continue  # e.g. no magnitude vector for a plain LoRA adapter beside a DoRA one
                entry = getattr(module, attr)[name]
                if isinstance(entry, nn.Module):
                    for param_name, param in entry.named_parameters():
                        out[f"{PREFIX}{path}.{attr}.{param_name}"] = param
                else:
                    out[f"{PREFIX}{path}.{attr}"] = entry
        elif name in module.modules_to_save:
            for param_name, param in module.modules_to_save[name].named_parameters():
                out[f"{PREFIX}{path}.{param_name}"] = param
    if config.bias != "none":
        # Biases are shared by all adapters and keep their in-memory names, ``base_layer`` included (as peft).
        lora_paths = {p for p, m in adapter_modules(model) if isinstance(m, LoraLayer) and name in m.adapter_names}
        for param_name, param in model.named_parameters():
            if not param_name.endswith("bias") or _is_peft_artifact(param_name) or "lora_" in param_name:
                continue
            if config.bias == "lora_only" and param_name.removesuffix(".base_layer.bias") not in lora_paths:
                continue
            out[PREFIX + param_name] = param
    return out


def _is_peft_artifact(key: str) -> bool:
    """Keys peft writes for ``bias="all"`` beside modules_to_save, which name no real weight of the adapter."""
    return ".original_module." in key or ".modules_to_save." in key


def adapter_dir(path: str | os.PathLike[str], name: str) -> Path:
    """Where ``save_adapter`` puts adapter ``name``: ``path`` for "default", ``path/<name>`` otherwise."""
    return Path(path) if name == DEFAULT_NAME else Path(path) / name


def save_adapter(
    model: nn.Module,
    path: str | os.PathLike[str],
    name: str = DEFAULT_NAME,
    initial_adapter: str | os.PathLike[str] | None = None,
    tensors: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Write adapter ``name`` as peft does; returns the folder written.

    ``initial_adapter``: the folder a PiSSA/OLoRA adapter was saved to right after ``add_adapter`` (before
    training). The adapter is then written as a plain LoRA adapter of rank 2r relative to the *original* base
    weights, so it loads on an unmodified base (peft's ``path_initial_model_for_weight_conversion``).
    ``tensors``: the adapter's values under their file keys when the model's own parameters do not hold them
    whole (an FSDP2 run's, gathered from the shards); every key the adapter has, each of its shape.
    """
    configs = check_known(model, [name])
    if tensors is not None:
        _check_whole(adapter_tensors(model, name), tensors)
    source = adapter_tensors(model, name) if tensors is None else tensors
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in source.items()}
    config_obj = configs[name]
    if initial_adapter is not None:
        tensors, config_obj = _converted_to_lora(tensors, config_obj, initial_adapter)
    folder = adapter_dir(path, name)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    config = config_obj.to_peft_dict()
    if config["base_model_name_or_path"] is None:
        config["base_model_name_or_path"] = getattr(getattr(model, "config", None), "_name_or_path", None) or None
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    atomic_write(folder / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return folder


def _converted_to_lora(
    tensors: dict[str, torch.Tensor], config: AdapterConfig, initial_adapter: str | os.PathLike[str]
) -> tuple[dict[str, torch.Tensor], LoraConfig]:
    """A PiSSA/OLoRA adapter's tensors and config as a plain LoRA adapter on the original weights (rank 2r)."""
    if not isinstance(config, LoraConfig) or config.use_dora:
        raise AdapterError("initial_adapter converts PiSSA/OLoRA LoRA adapters only (not IA3 or DoRA)")
    if config.use_rslora and (config.rank_pattern or config.alpha_pattern):
        raise AdapterError(
            "initial_adapter: converting an rsLoRA adapter with rank_pattern/alpha_pattern is not "
            "supported (as in peft)"
        )
    folder = find_adapter_folder(initial_adapter)
    initial = {k if k.startswith(PREFIX) else PREFIX + k: v for k, v in read_adapter_weights(folder).items()}
    try:
        tensors = convert_to_lora(tensors, initial)
    except KeyError as err:
        raise AdapterError(f"{folder / WEIGHTS_NAME}: no initial value for {err.args[0]!r}") from None
    for key, value in tensors.items():
        if ".lora_A." in key and value.shape[0] != 2 * initial[key].shape[0]:
            raise AdapterError(f"{folder / WEIGHTS_NAME}: {key} has another rank than the adapter being saved")
    # Twice the rank at the same scaling: alpha doubles (x sqrt(2) with rsLoRA, whose scaling is alpha/sqrt(r)).
    converted = replace(
        config,
        r=2 * config.r,
        lora_alpha=config.lora_alpha * (2**0.5 if config.use_rslora else 2),
        rank_pattern={k: 2 * v for k, v in config.rank_pattern.items()},
        alpha_pattern={k: 2 * v for k, v in config.alpha_pattern.items()},
        init_lora_weights=True,
    )
    return tensors, converted


def read_adapter_config(folder: Path) -> AdapterConfig:
    file = folder / CONFIG_NAME
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AdapterError(f"{file}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise AdapterError(f"{file}: expected a JSON object")
    try:
        return config_from_peft_dict(data, source=str(file))
    except ValueError as err:
        raise AdapterError(str(err)) from None


def read_adapter_weights(folder: Path) -> dict[str, torch.Tensor]:
    file = folder / WEIGHTS_NAME
    if not file.exists():
        if (folder / LEGACY_WEIGHTS_NAME).exists():
            raise AdapterError(
                f"{folder / LEGACY_WEIGHTS_NAME}: refusing to load a pickled adapter (unpickling can run code "
                'hidden in the file); if you trust it, convert it once with: python -c "import torch; '
                "from safetensors.torch import save_file; save_file(torch.load('adapter_model.bin', "
                "weights_only=True), 'adapter_model.safetensors', metadata={'format': 'pt'})\""
            )
        raise AdapterError(f"{folder}: no {WEIGHTS_NAME} in the adapter folder")
    try:
        return load_file(file)
    except (SafetensorError, OSError, ValueError) as err:
        raise AdapterError(f"{file}: corrupt or truncated safetensors file ({err})") from None


def find_adapter_folder(path: str | os.PathLike[str], name: str = DEFAULT_NAME) -> Path:
    """The folder holding the adapter: ``path`` itself, or ``path/<name>`` as ``save_adapter`` writes it."""
    folder = Path(path)
    if not folder.exists():
        raise AdapterError(f"{folder}: no such adapter folder")
    if not (folder / CONFIG_NAME).exists():
        if (folder / name / CONFIG_NAME).exists():
            return folder / name
        raise AdapterError(f"{folder}: not an adapter folder (no {CONFIG_NAME})")
    return folder


def load_adapter(
    model: nn.Module, path: str | os.PathLike[str], name: str = DEFAULT_NAME, trainable: bool = False
) -> nn.Module:
    """Load a peft-format adapter into ``model`` as ``name`` (added if missing) and make it active.

    Every key and shape is checked before a weight is written; an adapter made for another base model is
    an error naming the module and both shapes. Embedding weights that peft saves beside the adapter by default
    are written into the base model's embeddings, as peft's ``from_pretrained`` does.
    """
    folder = find_adapter_folder(path, name)
    config = read_adapter_config(folder)
    tensors = {k if k.startswith(PREFIX) else PREFIX + k: v for k, v in read_adapter_weights(folder).items()}
    _check_modules_exist(model, tensors, folder)
    added = name not in adapter_configs(model)
    if added:
        add_adapter(model, config, name)
    try:
        expected = adapter_tensors(model, name)
        base_weights = _embedding_base_weights(model, {k: v for k, v in tensors.items() if k not in expected}, folder)
        _copy_into(expected, {k: v for k, v in tensors.items() if k not in base_weights}, folder)
    except AdapterError:
        if added:
            delete_adapter(model, name)
        raise
    with torch.no_grad():
        for key, param in _embedding_params(model).items():
            if key in base_weights:
                param.copy_(base_weights[key].to(dtype=param.dtype, device=param.device))
    set_adapters(model, [name])
    if trainable:
        mark_trainable(model, name)
    else:
        for param in adapter_tensors(model, name).values():
            param.requires_grad_(False)
    return model


def _module_of(key: str) -> str:
    path = key.removeprefix(PREFIX)
    for marker in (".lora_A.", ".lora_B.", ".lora_embedding_A", ".lora_embedding_B"):
        if marker in path:
            return path.split(marker)[0]
    return path.rsplit(".", 1)[0]


def _plain_module_path(path: str) -> str:
    return path.replace(".base_layer", "").replace(".original_module", "")


def _check_modules_exist(model: nn.Module, tensors: dict[str, torch.Tensor], folder: Path) -> None:
    names = {_plain_module_path(n) for n, _ in model.named_modules()}
    for key in tensors:
        module = _plain_module_path(_module_of(key))
        if module not in names and not _is_peft_artifact(key):
            raise AdapterError(
                f"{folder / WEIGHTS_NAME}: has weights for module {module!r}, which the base model does not have "
                "(was the adapter made for another base model?)"
            )


def _embedding_params(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights of the input and output embeddings under the keys peft saves them with by default.

    peft's ``save_pretrained`` (``save_embedding_layers="auto"``) writes a targeted embedding's base weight as
    ``<path>.base_layer.weight``, and both embeddings' whole weights as ``<path>.weight`` when the vocabulary was
    resized; ``from_pretrained`` loads them into the base layers. Keys that are an adapter's own tensors (its
    modules_to_save copy) are never looked up here.
    """
    get_input, get_output = getattr(model, "get_input_embeddings", None), getattr(model, "get_output_embeddings", None)
    layers = [get() for get in (get_input, get_output) if callable(get)]
    out: dict[str, torch.Tensor] = {}
    for path, module in model.named_modules():
        if not any(module is layer for layer in layers):
            continue
        if isinstance(module, LoraLayer):
            out[f"{PREFIX}{path}.base_layer.weight"] = module.weight
        elif isinstance(module, ModulesToSave):
            out[f"{PREFIX}{path}.weight"] = weight_of(module.original_module)
        elif isinstance(getattr(module, "weight", None), torch.Tensor):
            out[f"{PREFIX}{path}.weight"] = weight_of(module)
    return out


def _embedding_base_weights(model: nn.Module, extra: dict[str, torch.Tensor], folder: Path) -> dict[str, torch.Tensor]:
    """The tensors among ``extra`` (keys the adapter does not own) that are embedding weights peft saved by
    default, shape-checked against the base layer they load into."""
    params = _embedding_params(model)
    found: dict[str, torch.Tensor] = {}
    for key, value in extra.items():
        if key not in params:
            continue
        if tuple(value.shape) != tuple(params[key].shape):
            raise AdapterError(
                f"{folder / WEIGHTS_NAME}: {key.removeprefix(PREFIX)} (the base embedding weights peft saves beside "
                f"the adapter) has shape {tuple(value.shape)} but the base model's is {tuple(params[key].shape)} "
                "(was the vocabulary resized for this adapter? resize the base model's embeddings first)"
            )
        found[key] = value
    return found


def _copy_into(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], folder: Path) -> None:
    file = folder / WEIGHTS_NAME
    found = {k if k.startswith(PREFIX) else PREFIX + k: v for k, v in found.items() if not _is_peft_artifact(k)}
    missing = sorted(set(expected) - set(found))
    if missing:
        raise AdapterError(f"{file}: missing {len(missing)} tensor(s) the config implies, e.g. {missing[0]!r}")
    unexpected = sorted(set(found) - set(expected))
    if unexpected:
        raise AdapterError(f"{file}: tensor {unexpected[0]!r} matches no module the config targets")
    for key, param in expected.items():
        if tuple(found[key].shape) != tuple(param.shape):
            part = key.removeprefix(PREFIX + _module_of(key) + ".")
            raise AdapterError(
                f"{file}: {_module_of(key)} ({part}) has shape {tuple(found[key].shape)} "
                f"but the base model needs {tuple(param.shape)} "
                "(was the adapter made for another base model?)"
            )
    with torch.no_grad():
        for key, param in expected.items():
            param.copy_(found[key].to(dtype=param.dtype, device=param.device))


def _check_whole(expected: dict[str, torch.Tensor], given: Mapping[str, torch.Tensor]) -> None:
    """``save_adapter(tensors=...)``: the adapter's keys, each of its whole shape (a shard is refused)."""
    differ = sorted(set(expected) ^ set(given))
    if differ:
        raise AdapterError(f"tensors to save do not match the adapter's keys, e.g. {differ[0]!r}")
    for key, param in expected.items():
        if tuple(given[key].shape) != tuple(param.shape):
            raise AdapterError(
                f"{_module_of(key)}: tensor to save has shape {tuple(given[key].shape)}, the adapter's is "
                f"{tuple(param.shape)}"
            )
