"""Configuration as data: frozen dataclasses whose field names are peft's, on disk and in memory.

``LoraConfig`` mirrors ``peft.LoraConfig`` field for field (the subset lorakit implements), so an
``adapter_config.json`` written by either tool reads the same in the other. Validation happens once, in
``__post_init__``, and every message names the field and what it allows.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

BiasMode = Literal["none", "all", "lora_only"]
InitMode = bool | str
"""True, False, "gaussian", "pissa", "pissa_niter_<K>" or "olora" (peft's values)."""

PEFT_TYPE = "LORA"

# Keys peft writes that lorakit reads past when they hold their default (off) value; a non-default value
# means the adapter needs a feature lorakit does not implement, and loading it must say so.
_PEFT_KEYS_OFF_BY_DEFAULT: dict[str, Any] = {
    "lora_bias": False,
    "use_qalora": False,
    "trainable_token_indices": None,
    "target_parameters": None,
    "layer_replication": None,
    "loftq_config": {},
    "eva_config": None,
    "corda_config": None,
    "megatron_config": None,
    "alora_invocation_tokens": None,
    "arrow_config": None,
}
# Keys that carry no meaning for the weights (bookkeeping of the writer); ignored whatever their value.
_PEFT_KEYS_IGNORED = {
    "peft_type",
    "auto_mapping",
    "revision",
    "inference_mode",
    "peft_version",
    "layers_pattern",
    "megatron_core",
    "runtime_config",
    "qalora_group_size",
    "ensure_weight_tying",
    "exclude_modules",
    "modules_to_tie",
}


def _fail(field_name: str, allowed: str, got: object) -> ValueError:
    return ValueError(f"LoraConfig.{field_name} must be {allowed}, got {got!r}")


def _is_str_list(value: object) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)


Method = Literal["lora", "dora", "ia3", "qlora", "full"]
METHODS: tuple[Method, ...] = get_args(Method)
"""What lorakit trains: LoRA, DoRA, IA3, QLoRA (LoRA on a quantised base) and full fine-tuning."""


@dataclass(frozen=True)
class LoraConfig:
    """A LoRA adapter's hyper-parameters: ``y = W x + (lora_alpha / r) * B A dropout(x)``."""

    r: int = 8
    """Rank of the update: A is (r x in), B is (out x r)."""
    lora_alpha: float = 8
    """Numerator of the scaling ``lora_alpha / r`` (``/ sqrt(r)`` with ``use_rslora``)."""
    lora_dropout: float = 0.0
    """Dropout probability on the LoRA path's input, in [0, 1)."""
    target_modules: tuple[str, ...] | str | None = None
    """Module names (exact or dotted suffix), one regex (full match), ``"all-linear"``, or None for the
    model type's defaults."""
    exclude_modules: tuple[str, ...] | str | None = None
    """Modules never adapted, with the same matching rules as ``target_modules``."""
    bias: BiasMode = "none"
    """Which biases train: none, all biases of the model, or those of adapted layers."""
    fan_in_fan_out: bool = False
    """True when the base weight is stored (in, out), as in GPT-2's Conv1D."""
    use_rslora: bool = False
    """Rank-stabilised scaling ``lora_alpha / sqrt(r)`` (Kalajdzievski 2023)."""
    init_lora_weights: InitMode = True
    """True: A Kaiming-uniform, B zero; "gaussian": A normal(0, 1/r), B zero; False: both random; "pissa" /
    "pissa_niter_<K>" / "olora": A, B from the base weight's SVD / QR, which is reduced by ``scaling * B A``."""
    rank_pattern: dict[str, int] = field(default_factory=dict)
    """Per-module rank overrides: key is a regex matched against the end of the module name."""
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    """Per-module lora_alpha overrides, matched like ``rank_pattern``."""
    layers_to_transform: tuple[int, ...] | None = None
    """Only adapt modules inside these layer indices."""
    layers_pattern: tuple[str, ...] | None = None
    """Names of the layer container (e.g. "layers", "h") used to find the layer index."""
    modules_to_save: tuple[str, ...] | None = None
    """Whole modules trained and saved beside the adapter (e.g. a classification head)."""
    task_type: str | None = None
    """peft's task type, e.g. "CAUSAL_LM"."""
    base_model_name_or_path: str | None = None
    """The base model the adapter was trained on."""
    use_dora: bool = False
    """DoRA (Liu et al. 2024): a trained magnitude per output row times the direction of ``W + scaling * B A``."""

    def __post_init__(self) -> None:
        def put(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise _fail("r", "a positive integer", self.r)
        if isinstance(self.lora_alpha, bool) or not isinstance(self.lora_alpha, (int, float)):
            raise _fail("lora_alpha", "a number", self.lora_alpha)
        if isinstance(self.lora_dropout, bool) or not isinstance(self.lora_dropout, (int, float)):
            raise _fail("lora_dropout", "a number in [0, 1)", self.lora_dropout)
        if not 0.0 <= self.lora_dropout < 1.0:
            raise _fail("lora_dropout", "a number in [0, 1)", self.lora_dropout)
        for name in ("target_modules", "exclude_modules"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple, set, frozenset)):
                if not all(isinstance(v, str) for v in value):
                    raise _fail(name, "a list of module names, one regex string, or None", value)
                put(name, tuple(sorted(set(value))) if isinstance(value, (set, frozenset)) else tuple(value))
            elif value is not None and not isinstance(value, str):
                raise _fail(name, "a list of module names, one regex string, or None", value)
        if self.bias not in ("none", "all", "lora_only"):
            raise _fail("bias", "one of 'none', 'all', 'lora_only'", self.bias)
        for name in ("fan_in_fan_out", "use_rslora", "use_dora"):
            if not isinstance(getattr(self, name), bool):
                raise _fail(name, "true or false", getattr(self, name))
        if not is_init_mode(self.init_lora_weights):
            raise _fail(
                "init_lora_weights",
                "True, False, 'gaussian', 'pissa', 'pissa_niter_<K>' or 'olora'",
                self.init_lora_weights,
            )
        if not isinstance(self.rank_pattern, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v > 0
            for k, v in self.rank_pattern.items()
        ):
            raise _fail("rank_pattern", "a mapping of module pattern -> positive integer rank", self.rank_pattern)
        if not isinstance(self.alpha_pattern, dict) or not all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
            for k, v in self.alpha_pattern.items()
        ):
            raise _fail("alpha_pattern", "a mapping of module pattern -> number", self.alpha_pattern)
        layers = self.layers_to_transform
        if isinstance(layers, int) and not isinstance(layers, bool):
            layers = (layers,)
        if layers is not None:
            if not isinstance(layers, (list, tuple)) or not all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in layers
            ):
                raise _fail("layers_to_transform", "a list of layer indices or None", self.layers_to_transform)
            put("layers_to_transform", tuple(layers))
        for name in ("layers_pattern", "modules_to_save"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = (value,)
            if value is not None:
                if not _is_str_list(value):
                    raise _fail(name, "a list of module names or None", value)
                put(name, tuple(value))
        if isinstance(self.target_modules, str) and self.layers_to_transform is not None:
            raise _fail("layers_to_transform", "None when target_modules is a regex string", layers)
        if isinstance(self.target_modules, str) and self.layers_pattern is not None:
            raise _fail("layers_pattern", "None when target_modules is a regex string", self.layers_pattern)
        if self.layers_pattern and self.layers_to_transform is None:
            raise _fail("layers_pattern", "None unless layers_to_transform is set", self.layers_pattern)
        for name in ("task_type", "base_model_name_or_path"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise _fail(name, "a string or None", value)

    def rank_and_alpha(self, module_name: str) -> tuple[int, float]:
        """The rank and alpha of one module after ``rank_pattern``/``alpha_pattern`` (peft's suffix rule)."""
        return (
            _pattern_value(self.rank_pattern, module_name, self.r),
            _pattern_value(self.alpha_pattern, module_name, self.lora_alpha),
        )

    def to_peft_dict(self) -> dict[str, Any]:
        """The ``adapter_config.json`` content peft writes for this config (keys sorted on save)."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in (
            "target_modules",
            "exclude_modules",
            "layers_to_transform",
            "layers_pattern",
            "modules_to_save",
        ):
            if isinstance(out[name], tuple):
                out[name] = list(out[name])
        out["peft_type"] = PEFT_TYPE
        out["inference_mode"] = True
        out["lora_bias"] = False
        out["revision"] = None
        return out

    @classmethod
    def from_peft_dict(cls, data: dict[str, Any], source: str = "adapter_config.json") -> LoraConfig:
        """Read a peft ``adapter_config.json``; refuse other methods and LoRA features lorakit lacks."""
        peft_type = data.get("peft_type")
        if peft_type != PEFT_TYPE:
            raise ValueError(
                f"{source}: peft_type {peft_type!r} is not a LoRA adapter (lorakit reads 'LORA' and 'IA3')"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key in known:
                kwargs[key] = value
            elif key in _PEFT_KEYS_OFF_BY_DEFAULT and value not in (
                _PEFT_KEYS_OFF_BY_DEFAULT[key],
                None,
                False,
                {},
                [],
            ):
                raise ValueError(f"{source}: {key}={value!r} needs a LoRA feature lorakit does not support")
        try:
            return cls(**kwargs)
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoraConfig:
        """Strict constructor for user-written configs: an unknown key is an error that suggests the closest."""
        known = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"unknown LoraConfig key {key!r}{hint}")
        return cls(**data)


IA3_PEFT_TYPE = "IA3"


@dataclass(frozen=True)
class IA3Config:
    """An (IA)^3 adapter (Liu et al. 2022): learned scaling vectors, ``y = l * (W x + b)`` on attention
    outputs and ``y = W (l * x) + b`` on feed-forward layers (peft's ``IA3Config`` field for field)."""

    target_modules: tuple[str, ...] | str | None = None
    """Modules scaled, with ``LoraConfig.target_modules``' rules; None for the model type's defaults."""
    feedforward_modules: tuple[str, ...] | str | None = None
    """Targets whose input (not output) is scaled: names matched as a suffix, or one regex (full match)."""
    exclude_modules: tuple[str, ...] | str | None = None
    """Modules never adapted."""
    fan_in_fan_out: bool = False
    """True when the base weight is stored (in, out), as in GPT-2's Conv1D."""
    init_ia3_weights: bool = True
    """True: vectors start at 1 (no change); False: random normal."""
    modules_to_save: tuple[str, ...] | None = None
    """Whole modules trained and saved beside the adapter."""
    task_type: str | None = None
    """peft's task type, e.g. "CAUSAL_LM"."""
    base_model_name_or_path: str | None = None
    """The base model the adapter was trained on."""

    # Read by the shared targeting and saving code; IA3 has no layer filter and trains no biases.
    layers_to_transform: None = field(default=None, init=False, repr=False, compare=False)
    layers_pattern: None = field(default=None, init=False, repr=False, compare=False)
    bias: BiasMode = field(default="none", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        def fail(name: str, allowed: str) -> ValueError:
            return ValueError(f"IA3Config.{name} must be {allowed}, got {getattr(self, name)!r}")

        for name in ("target_modules", "feedforward_modules", "exclude_modules"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple, set, frozenset)):
                if not all(isinstance(v, str) for v in value):
                    raise fail(name, "a list of module names, one regex string, or None")
                value = tuple(sorted(value)) if isinstance(value, (set, frozenset)) else tuple(value)
                object.__setattr__(self, name, value)
            elif value is not None and not isinstance(value, str):
                raise fail(name, "a list of module names, one regex string, or None")
        targets, ff = self.target_modules, self.feedforward_modules
        if isinstance(targets, tuple) and isinstance(ff, tuple) and not set(ff) <= set(targets):
            raise fail("feedforward_modules", f"a subset of target_modules {list(targets)}")
        for name in ("fan_in_fan_out", "init_ia3_weights"):
            if not isinstance(getattr(self, name), bool):
                raise fail(name, "true or false")
        if isinstance(self.modules_to_save, str):
            object.__setattr__(self, "modules_to_save", (self.modules_to_save,))
        if self.modules_to_save is not None:
            if not _is_str_list(self.modules_to_save):
                raise fail("modules_to_save", "a list of module names or None")
            object.__setattr__(self, "modules_to_save", tuple(self.modules_to_save))

    def is_feedforward(self, module_name: str) -> bool:
        """peft's rule: a regex full-matches the name, a list entry is a plain suffix of it."""
        ff = self.feedforward_modules
        if ff is None:
            return False
        if isinstance(ff, str):
            return re.fullmatch(ff, module_name) is not None
        return any(module_name.endswith(entry) for entry in ff)

    def to_peft_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        for name in ("target_modules", "feedforward_modules", "exclude_modules", "modules_to_save"):
            if isinstance(out[name], tuple):
                out[name] = list(out[name])
        out["peft_type"] = IA3_PEFT_TYPE
        out["inference_mode"] = True
        out["revision"] = None
        return out

    @classmethod
    def from_peft_dict(cls, data: dict[str, Any], source: str = "adapter_config.json") -> IA3Config:
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from None


AdapterConfig = LoraConfig | IA3Config


def config_from_peft_dict(data: dict[str, Any], source: str = "adapter_config.json") -> AdapterConfig:
    """The config an ``adapter_config.json`` describes, by its ``peft_type`` (LORA or IA3)."""
    if data.get("peft_type") == IA3_PEFT_TYPE:
        return IA3Config.from_peft_dict(data, source)
    return LoraConfig.from_peft_dict(data, source)


def is_init_mode(value: object) -> bool:
    """peft's ``init_lora_weights`` values that lorakit implements."""
    if isinstance(value, bool) or value in ("gaussian", "pissa", "olora"):
        return True
    return isinstance(value, str) and re.fullmatch(r"pissa_niter_[1-9]\d*", value) is not None


def _pattern_value(pattern: dict[str, Any], module_name: str, default: Any) -> Any:
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key})$", module_name):
            return value
    return default
