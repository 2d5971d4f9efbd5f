"""Which modules an adapter config selects: small pure functions with peft's matching rules.

- ``target_modules`` as a string is a regex that must match the whole module name;
- as a list, an entry matches a name equal to it or ending in ``"." + entry``;
- ``"all-linear"`` means every Linear / GPT-2 Conv1D except the output head;
- ``layers_to_transform`` keeps only modules inside those numbered layers;
- ``exclude_modules`` and ``modules_to_save`` are never adapted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import replace

from torch import nn

from lorakit.config import AdapterConfig, IA3Config
from lorakit.errors import AdapterError
from lorakit.layers import LoraLayer, is_linear_like, output_head, wrapper_for

ALL_LINEAR = "all-linear"
# Modules inside a wrapper (``q_proj.base_layer``, ``q_proj.lora_A.default``) are never targets of their own.
_INNER = re.compile(r"\.(base_layer|lora_A|lora_B|lora_dropout|ia3_l|lora_magnitude_vector)(\.|$)")

# peft's defaults for ``target_modules=None`` by ``config.model_type`` (the attention projections).
DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    **{t: ("q_proj", "v_proj") for t in ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "opt")},
    **{t: ("query_key_value",) for t in ("gpt_neox", "bloom", "falcon")},
    "gpt2": ("c_attn",),
    "phi3": ("qkv_proj",),
}
# peft's IA3 defaults: (targets, feed-forward targets) by model type.
IA3_DEFAULT_TARGETS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    **{t: (("k_proj", "v_proj", "down_proj"), ("down_proj",)) for t in ("llama", "mistral", "qwen2", "gemma")},
    "gpt2": (("c_attn", "mlp.c_proj"), ("mlp.c_proj",)),
}
# Names of feed-forward output projections, whose *input* IA3 scales (llama/mistral/qwen, GPT-2, OPT, Mixtral,
# GPT-NeoX): used when the user names IA3's targets and leaves its feed-forward modules to lorakit.
FEEDFORWARD_NAMES = ("down_proj", "mlp.c_proj", "fc2", "w2", "dense_4h_to_h")


def parse_target_modules(text: str) -> tuple[str, ...] | str:
    """``--target-modules`` as the configs take it: "all-linear", a comma list (a tuple of names) or one regex."""
    if text != ALL_LINEAR and re.fullmatch(r"[\w.,\s-]+", text):
        return tuple(t.strip() for t in text.split(",") if t.strip())
    return text


def ia3_config(target_modules: str = ALL_LINEAR) -> IA3Config:
    """The IA3 config ``--method ia3 --target-modules ...`` describes: all-linear means peft's IA3 defaults for
    the model type (keys, values, the feed-forward down projection); named targets that end in a feed-forward
    output projection's name scale their input."""
    targets = parse_target_modules(target_modules)
    if targets == ALL_LINEAR:
        return IA3Config(task_type="CAUSAL_LM")
    feedforward = tuple(t for t in targets if t.endswith(FEEDFORWARD_NAMES)) if isinstance(targets, tuple) else None
    return IA3Config(target_modules=targets, feedforward_modules=feedforward, task_type="CAUSAL_LM")


def _matches(pattern: tuple[str, ...] | str, name: str) -> bool:
    if isinstance(pattern, str):
        return re.fullmatch(pattern, name) is not None
    return name in pattern or any(name.endswith("." + entry) for entry in pattern)


def _layer_index(name: str, layers_pattern: Sequence[str] | None) -> int | None:
    if not layers_pattern:
        # The first numbered segment is the layer index (not a nested one such as an expert index).
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", name)
    else:
        match = None
        for pattern in layers_pattern:
            match = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", name)
            if match is not None:
                break
    return int(match.group("idx")) if match else None


def is_selected(config: AdapterConfig, name: str) -> bool:
    """peft's rule for one module name; ``config.target_modules`` must already be resolved (not None)."""
    assert config.target_modules is not None, "resolve_config() first"
    if config.exclude_modules and _matches(config.exclude_modules, name):
        return False
    if config.modules_to_save and any(re.match(rf"(^|.*\.){m}($|\..*)", name) for m in config.modules_to_save):
        return False
    if not _matches(config.target_modules, name):
        return False
    # As peft: a regex or an exact full name is taken as is; only suffix matches are filtered by layer.
    if isinstance(config.target_modules, str) or name in config.target_modules:
        return True
    if config.layers_to_transform is None:
        return True
    index = _layer_index(name, config.layers_pattern)
    return index is not None and index in config.layers_to_transform


def all_linear_names(named_modules: Iterable[tuple[str, nn.Module]], output_name: str | None) -> tuple[str, ...]:
    """The leaf names of every Linear-like module except the output head's (what peft expands it to)."""
    leaves = {
        name.rsplit(".", 1)[-1]
        for name, module in named_modules
        if name
        and not _INNER.search(name)  # not an adapter's own lora_A etc.
        and (is_linear_like(module) or (isinstance(module, LoraLayer) and is_linear_like(module.base_layer)))
    }
    if output_name:
        leaves.discard(output_name.rsplit(".", 1)[-1])
    return tuple(sorted(leaves))


def resolve_config(config: AdapterConfig, model: nn.Module) -> AdapterConfig:
    """Replace ``target_modules=None`` by the model type's defaults and expand ``"all-linear"``."""
    targets = config.target_modules
    if isinstance(config, IA3Config) and targets is None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type not in IA3_DEFAULT_TARGETS:
            raise AdapterError(
                f"no default IA3 target_modules for model type {model_type!r}; set target_modules and "
                f"feedforward_modules (candidates: {', '.join(candidate_names(model)) or 'none'})"
            )
        targets, feedforward = IA3_DEFAULT_TARGETS[model_type]
        if config.feedforward_modules is None:
            config = replace(config, feedforward_modules=feedforward)
    if targets is None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type not in DEFAULT_TARGETS:
            raise AdapterError(
                f"no default target_modules for model type {model_type!r}; set target_modules "
                f"(candidates: {', '.join(candidate_names(model)) or 'none'})"
            )
        targets = DEFAULT_TARGETS[model_type]
    elif targets == ALL_LINEAR:
        output_name = _output_layer_name(model)
        targets = all_linear_names(model.named_modules(), output_name)
    return replace(config, target_modules=targets)


def _output_layer_name(model: nn.Module) -> str | None:
    head = output_head(model)
    if head is None:
        return None
    return next((name for name, module in model.named_modules() if module is head), None)


def candidate_names(model: nn.Module) -> list[str]:
    """Leaf names of the modules lorakit can adapt, for error messages."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if name and wrapper_for(module)})


def select_modules(model: nn.Module, config: AdapterConfig) -> list[str]:
    """Names of the modules ``config`` (resolved) adapts; an error lists candidates when it selects none."""
    selected = [name for name, _ in model.named_modules() if name and is_selected(config, name)]
    # A name that is a wrapper's inner part (e.g. ``q_proj.base_layer``) is never a target of its own.
    selected = [name for name in selected if not _INNER.search(name)]
    if not selected:
        raise AdapterError(
            f"target_modules={_show(config.target_modules)} matched no module of the model; "
            f"candidates: {', '.join(candidate_names(model)) or 'none'}"
        )
    return selected


def _show(targets: tuple[str, ...] | str | None) -> str:
    return repr(list(targets)) if isinstance(targets, tuple) else repr(targets)
