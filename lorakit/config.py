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
from typing import Any, Literal

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
            raise _fail("init_lora_weights", "True, False, 'gaussian', 'pissa', 'pissa_niter_<K>' or 'olora'",
                        self.init_lora_weights)  # fmt: skip
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


Precision = Literal["auto", "fp32", "bf16"]
Method = Literal["lora", "dora", "ia3", "qlora", "full"]
METHODS: tuple[str, ...] = ("lora", "dora", "ia3", "qlora", "full")
Schedule = Literal["cosine", "linear", "constant"]


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``lorakit train`` needs; each field is a flag (``--lora-alpha``) and a YAML key.

    The defaults are the built-in demo's tuned settings: built-in model, built-in contacts data.
    """

    model: str | None = None
    """Base model: None for the built-in SmolLM2-135M-Instruct, a folder, a .gguf file or a hub id."""
    data: str | None = None
    """Training JSONL (chat ``messages`` or ``prompt``/``completion``); None for the built-in contacts set."""
    eval_data: str | None = None
    """Held-out JSONL for the eval loss (``eval_every``); None for none."""
    output: str | None = None
    """Output folder; None for ``runs/<timestamp>``."""
    method: Method = "lora"
    """lora, dora (magnitude + direction), ia3 (scaling vectors), qlora (LoRA on a --bits base), full (all weights)."""
    bits: int = 4
    """QLoRA's base weights: 4 (NF4, double-quantised scales) or 8 (int8 per channel)."""
    r: int = 16
    """LoRA rank."""
    lora_alpha: float = 32
    """LoRA alpha (scaling = lora_alpha / r)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA path."""
    use_rslora: bool = False
    """rsLoRA: scaling lora_alpha / sqrt(r) instead of / r."""
    init_lora_weights: bool | str = True
    """true, gaussian, pissa, pissa_niter_K or olora (the last three save a plain adapter for the original base)."""
    target_modules: str = "all-linear"
    """Comma-separated module names, one regex, or all-linear."""
    max_steps: int = 120
    """Optimiser steps; 0 means use ``epochs``."""
    epochs: float = 1.0
    """Passes over the data when ``max_steps`` is 0."""
    batch_size: int = 8
    """Examples per micro-batch (per process)."""
    grad_accum: int = 1
    """Micro-batches per optimiser step."""
    lr: float = 1e-3
    """Peak learning rate."""
    loraplus_lr_ratio: float = 1.0
    """LoRA+: learning rate of B = ratio x lr (1 = plain LoRA)."""
    warmup_steps: int = 5
    """Linear warm-up steps."""
    lr_schedule: Schedule = "cosine"
    """Decay after warm-up."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping (0 = off)."""
    seq_len: int = 384
    """Longest example in tokens; longer ones are truncated (skipped if nothing to learn is left)."""
    seed: int = 0
    """Seed for adapter init, data order and dropout."""
    precision: Precision = "auto"
    """auto: bf16 where the hardware has fast bf16 (frozen base weights stored in bf16, adapters fp32), else fp32."""
    gradient_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward: less memory for ~1/3 more compute."""
    save_every: int = 0
    """Checkpoint every N steps (0 = only the final adapter)."""
    eval_every: int = 0
    """Eval loss every N steps on ``eval_data`` (0 = never)."""
    resume: bool = False
    """Continue from the newest checkpoint in ``output``."""
    overwrite: bool = False
    """Allow writing into an output folder that holds a finished run."""
    trust_remote_code: bool = False
    """Let the model folder run its own Python code (its config's auto_map); only for models you trust."""
    fsdp: bool = False
    """Under torchrun: shard the frozen base across processes with FSDP2 (default: DDP; no effect in 1 process)."""

    def __post_init__(self) -> None:
        positive = ("r", "batch_size", "grad_accum", "seq_len")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"--{_flag(name)} must be a positive integer, got {value!r}")
        for name in ("max_steps", "warmup_steps", "save_every", "eval_every", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"--{_flag(name)} must be an integer >= 0, got {value!r}")
        for name in ("lora_alpha", "lr", "epochs", "loraplus_lr_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"--{_flag(name)} must be a number > 0, got {value!r}")
        for name in ("weight_decay", "max_grad_norm"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"--{_flag(name)} must be a number >= 0, got {value!r}")
        if isinstance(self.lora_dropout, bool) or not isinstance(self.lora_dropout, (int, float)):
            raise ValueError(f"--lora-dropout must be a number in [0, 1), got {self.lora_dropout!r}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"--lora-dropout must be a number in [0, 1), got {self.lora_dropout!r}")
        if not is_init_mode(self.init_mode()):
            raise ValueError(
                "--init-lora-weights must be true, false, gaussian, pissa, pissa_niter_<K> or olora, "
                f"got {self.init_lora_weights!r}"
            )
        if self.bits not in (4, 8) or isinstance(self.bits, bool):
            raise ValueError(f"--bits must be 4 or 8, got {self.bits!r}")
        if self.bits != 4 and self.method != "qlora":
            raise ValueError(f"--bits {self.bits} needs --method qlora (plain LoRA keeps the base unquantised)")
        choices = {"method": METHODS, "lr_schedule": ("cosine", "linear", "constant"),
                   "precision": ("auto", "fp32", "bf16")}  # fmt: skip
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"--{_flag(name)} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.fsdp and (self.save_every or self.resume):
            raise ValueError("--fsdp does not write checkpoints yet: drop --save-every and --resume, or use DDP")
        if not isinstance(self.target_modules, str) or not self.target_modules.strip():
            raise ValueError(
                f"--target-modules must be a comma list, a regex or all-linear, got {self.target_modules!r}"
            )

    def quantize(self) -> Literal["nf4", "int8"] | None:
        """How ``load_model`` stores the base's Linear weights: quantised for QLoRA, else not at all."""
        if self.method != "qlora":
            return None
        return "nf4" if self.bits == 4 else "int8"

    def lora_config(self) -> LoraConfig:
        """The adapter config these flags describe."""
        targets: tuple[str, ...] | str = self.target_modules
        if self.target_modules != "all-linear" and re.fullmatch(r"[\w.,\s-]+", self.target_modules):
            targets = tuple(t.strip() for t in self.target_modules.split(",") if t.strip())
        return LoraConfig(
            r=self.r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout, target_modules=targets,
            use_rslora=self.use_rslora, init_lora_weights=self.init_mode(), task_type="CAUSAL_LM",
        )  # fmt: skip

    def init_mode(self) -> bool | str:
        """``init_lora_weights`` as LoraConfig takes it (the command line gives "true"/"false" as text)."""
        text = str(self.init_lora_weights).lower()
        return {"true": True, "false": False}.get(text, self.init_lora_weights)

    def converts_on_save(self) -> bool:
        """PiSSA/OLoRA change the base weights: the saved adapter is converted for the original base."""
        return isinstance(self.init_mode(), str) and str(self.init_mode()).startswith(("pissa", "olora"))

    def adapter_config(self) -> AdapterConfig:
        """The adapter config ``--method`` and the adapter flags describe (the one place methods are told apart)."""
        if self.method == "dora":
            return dataclasses.replace(self.lora_config(), use_dora=True)
        if self.method == "ia3":
            # all-linear (the default) means peft's IA3 targets for the model type: keys, values, down projection.
            targets = self.lora_config().target_modules
            if targets == "all-linear":
                return IA3Config(task_type="CAUSAL_LM")
            feedforward = (
                tuple(t for t in targets if t.endswith(_FEEDFORWARD_NAMES)) if isinstance(targets, tuple) else None
            )
            return IA3Config(target_modules=targets, feedforward_modules=feedforward, task_type="CAUSAL_LM")
        return self.lora_config()

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrainConfig:
        """Strict: keys are flag names (``lora-alpha`` or ``lora_alpha``); an unknown one suggests the closest."""
        known = [f.name for f in dataclasses.fields(cls)]
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            name = str(key).replace("-", "_")
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f" (did you mean {_flag(close[0])!r}?)" if close else ""
                raise ValueError(f"{source}: unknown key {key!r}{hint}")
            kwargs[name] = value
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Names of feed-forward output projections, whose *input* IA3 scales (llama/mistral/qwen, GPT-2, OPT, Mixtral).
_FEEDFORWARD_NAMES = ("down_proj", "mlp.c_proj", "fc2", "w2")


def _flag(name: str) -> str:
    return name.replace("_", "-")
