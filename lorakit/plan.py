"""``lorakit plan``: trainable parameters and training memory of each method, from the model's config alone.

The model is built on the meta device (shapes, no storage), so a 175B model plans in seconds on a laptop.
Trainable parameters are exact: lorakit's own targeting (``targeting.select_modules``) picks the modules and
their real shapes give the counts. Memory is an estimate with stated assumptions (``ASSUMPTIONS``):

- weights: the base in ``precision`` (QLoRA: NF4 linear weights, 4.127 bits each with double quantisation);
  with ``autocast`` (lorakit train's CPU default: fp32 weights, bf16 compute) the bf16 copy autocast makes of
  every linear weight is kept for the backward, so it is counted too;
- gradients: one per trainable parameter, in the trainable parameters' dtype;
- optimiser: AdamW, two fp32 states per trainable parameter, plus an fp32 master copy when full fine-tuning
  holds its weights in 16 bits (the ZeRO paper's 2 + 2 + 12 bytes per parameter);
- activations: what autograd saves for the backward of one micro-batch, per token and layer (see
  ``_layer_bytes``), plus the output head, which lorakit's loss runs on the label positions only.

Level 7 (beside train/eval): it reads targeting and models, and nothing above it imports it but the CLI.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from lorakit.config import METHODS, AdapterConfig, IA3Config, LoraConfig, Method
from lorakit.errors import LorakitError
from lorakit.layers import is_gpt2_conv1d, is_linear_like, output_head, weight_of
from lorakit.models import is_builtin
from lorakit.targeting import FEEDFORWARD_NAMES, ia3_config, parse_target_modules, resolve_config, select_modules

PlanPrecision = Literal["fp32", "bf16", "fp16", "autocast"]
PLAN_METHODS: tuple[Method, ...] = ("full", *(m for m in METHODS if m != "full"))  # the table's columns
PRECISIONS: tuple[PlanPrecision, ...] = ("fp32", "bf16", "fp16", "autocast")

# Published shapes. GPT-3 175B (Brown et al. 2020, table 2.1) is written as a Starcoder2 config: the same
# pre-norm decoder with biases, LayerNorm and a non-gated 4*d feed-forward (c_fc, c_proj), and separate
# q_proj/k_proj/v_proj/o_proj so each attention matrix can be targeted, as Hu et al. 2021 did. It differs from
# GPT-3 only in rotary instead of learned positions (2048 x 12288 = 25M parameters, 0.01%) and dense attention.
PRESETS: dict[str, dict[str, Any]] = {
    "smollm2-135m": {
        "model_type": "llama", "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
        "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
        "max_position_embeddings": 8192, "tie_word_embeddings": True,
    },
    "llama-3-8b": {
        "model_type": "llama", "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
        "max_position_embeddings": 8192, "tie_word_embeddings": False,
    },
    "llama-2-70b": {
        "model_type": "llama", "vocab_size": 32000, "hidden_size": 8192, "intermediate_size": 28672,
        "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8,
        "max_position_embeddings": 4096, "tie_word_embeddings": False,
    },
    "gpt3-175b": {
        "model_type": "starcoder2", "vocab_size": 50257, "hidden_size": 12288, "intermediate_size": 4 * 12288,
        "num_hidden_layers": 96, "num_attention_heads": 96, "num_key_value_heads": 96,
        "max_position_embeddings": 2048, "use_bias": True, "tie_word_embeddings": True, "sliding_window": None,
        "hidden_act": "gelu",
    },
}  # fmt: skip

NF4_BYTES = 4.127 / 8  # 4-bit codes + an fp8 absmax per 64 weights + an fp32 constant per 256 absmax (QLoRA)
ASSUMPTIONS = (
    "AdamW with two fp32 states per trainable parameter; adapters (and their gradients) in fp32 except with "
    "16-bit precision, where full fine-tuning keeps an fp32 master copy in the optimiser (2+2+12 bytes per "
    "parameter); activations: no gradient checkpointing unless --checkpointing, dropout off, attention by a "
    "fused kernel (saves q, k, v, output; k/v expanded to all heads), the output head only on label tokens "
    "(fp32 log-probabilities, their gradient and the logits' gradient: 12 bytes per label token and vocabulary "
    "entry); autocast = fp32 weights with bf16 compute, which keeps a bf16 copy "
    "of each linear weight for the backward; the total is the sum of the four parts (an upper bound on the peak)"
)


@dataclass(frozen=True)
class PlanSettings:
    """What is planned: rank and targets, batch shape, precision."""

    r: int = 16
    target_modules: str = "all-linear"
    batch_size: int = 8
    seq_len: int = 384
    precision: PlanPrecision = "autocast"
    label_fraction: float = 1.0
    """Share of tokens that carry a label (the head runs on those only): 1 for plain text."""
    checkpointing: bool = False

    def __post_init__(self) -> None:
        for name in ("r", "batch_size", "seq_len"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not 0 < self.label_fraction <= 1:
            raise ValueError(f"--label-fraction must be in (0, 1], got {self.label_fraction!r}")


@dataclass(frozen=True)
class Memory:
    weights: int
    gradients: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations

    def to_dict(self) -> dict[str, int]:
        return {"weights": self.weights, "gradients": self.gradients, "optimizer": self.optimizer,
                "activations": self.activations, "total": self.total}  # fmt: skip


@dataclass(frozen=True)
class MethodPlan:
    method: Method
    trainable: int
    total: int
    adapter_bytes: int
    memory: Memory
    targets: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- the model, on the meta device


def model_config(spec: str | None) -> Any:
    """A transformers config from a preset name, the built-in model (None), a config.json or a model folder."""
    from transformers import AutoConfig

    name = "smollm2-135m" if is_builtin(spec) else str(spec).lower()
    if name in PRESETS:
        values = dict(PRESETS[name])
        return AutoConfig.for_model(values.pop("model_type"), **values)
    path = Path(spec or "").expanduser()
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        presets = ", ".join(PRESETS)
        raise LorakitError(f"--model {spec}: not a preset ({presets}), config.json or model folder")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
        return AutoConfig.for_model(values.pop("model_type"), **values)
    except (ValueError, KeyError, TypeError) as err:
        raise LorakitError(f"{path}: not a transformers model config ({err})") from None


def meta_model(config: Any) -> nn.Module:
    """The causal LM with every tensor on the meta device: real shapes, no memory, no weights read."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model: nn.Module = AutoModelForCausalLM.from_config(config)
    return model


def _in_out(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of a Linear, GPT-2 Conv1D or Embedding (num_embeddings, embedding_dim)."""
    weight = weight_of(module)
    if is_gpt2_conv1d(module):
        return int(weight.shape[0]), int(weight.shape[1])  # stored (in, out)
    if isinstance(module, nn.Embedding):
        return int(weight.shape[0]), int(weight.shape[1])
    return int(weight.shape[1]), int(weight.shape[0])  # nn.Linear: (out, in)


def targets_of(model: nn.Module, method: Method, target_modules: str) -> list[str]:
    """The modules a method adapts, by lorakit's targeting (empty for full fine-tuning)."""
    if method == "full":
        return []
    return select_modules(model, _method_config(model, method, target_modules))


def _feedforward_down(name: str) -> bool:
    return any(name == n or name.endswith("." + n) for n in FEEDFORWARD_NAMES)


def _method_config(model: nn.Module, method: Method, target_modules: str) -> AdapterConfig:
    """The adapter config training would use (``lorakit train``'s rules, through lorakit.targeting)."""
    if method == "ia3":
        return resolve_config(ia3_config(target_modules), model)
    return resolve_config(LoraConfig(target_modules=parse_target_modules(target_modules)), model)


def count_trainable(
    model: nn.Module, method: Method, targets: list[str], r: int, target_modules: str = "all-linear"
) -> int:
    """Exact trainable parameters: LoRA r*(in+out) per target; DoRA adds a magnitude of out; IA3 one vector."""
    if method == "full":
        return sum(p.numel() for p in model.parameters())
    ia3 = _method_config(model, method, target_modules) if method == "ia3" else None
    count = 0
    for name in targets:
        fan_in, fan_out = _in_out(model.get_submodule(name))
        if method == "ia3":
            count += fan_in if isinstance(ia3, IA3Config) and ia3.is_feedforward(name) else fan_out
        else:
            count += r * (fan_in + fan_out) + (fan_out if method == "dora" else 0)
    return count


# ---------------------------------------------------------------- memory


def _bytes(precision: PlanPrecision) -> tuple[int, int]:
    """(bytes per stored base weight, bytes per activation element)."""
    return {"fp32": (4, 4), "bf16": (2, 2), "fp16": (2, 2), "autocast": (4, 2)}[precision]


def _shape(config: Any) -> dict[str, int]:
    d = int(config.hidden_size)
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or d // heads)
    return {"d": d, "heads": heads, "attn": heads * head_dim, "i": int(config.intermediate_size),
            "layers": int(config.num_hidden_layers), "vocab": int(config.vocab_size)}  # fmt: skip


def _layer_bytes(model: nn.Module, config: Any, method: Method, targets: list[str], s: PlanSettings) -> float:
    """Bytes autograd saves per token in one decoder layer (layer 0 stands for all).

    - each norm saves its input, the residual stream (fp32 under autocast), and with full fine-tuning also its
      normalised output (for the norm weight's gradient);
    - each linear whose weight trains (full) or that carries a LoRA/DoRA A saves its input in compute
      precision (under autocast one cast copy per linear; otherwise q/k/v and gate/up share one input); DoRA
      also keeps the base and LoRA outputs (out each) for the magnitude's gradient; IA3 keeps the output (or
      the input, for feed-forward) it scales; LoRA's rank-r intermediate is counted too;
    - attention keeps q, k, v (expanded to all heads) and its output, plus an fp32 log-sum-exp per head;
    - the feed-forward keeps the activation's input, and when gated also the activation output and up.
    """
    _, act = _bytes(s.precision)
    resid = 4 if s.precision in ("fp32", "autocast") else 2
    shape = _shape(config)
    d, attn, i = shape["d"], shape["attn"], shape["i"]
    gated = any(name.endswith("gate_proj") for name, _ in model.named_modules())
    norms = 2 * d * resid * (2 if method == "full" else 1)
    core = (4 * attn) * act + shape["heads"] * 4 + (3 * i if gated else i) * act
    prefix = re.compile(r"(.*?\.)?(layers|h|blocks)\.0\.")
    layer = [(n, m) for n, m in model.named_modules() if prefix.match(n) and is_linear_like(m)]
    target_set = set(targets)
    saved, shared = 0.0, set()
    for name, module in layer:
        fan_in, fan_out = _in_out(module)
        trained = method == "full" or (name in target_set and method != "ia3")
        if trained:
            group = (name.rsplit(".", 2)[-2], fan_in) if s.precision != "autocast" else (name, fan_in)
            if _feedforward_down(name) or name.endswith(("o_proj", "out_proj", "dense")):
                group = (name, fan_in)
            if group not in shared:
                shared.add(group)
                saved += fan_in * act
        if name in target_set and method in ("lora", "qlora", "dora"):
            saved += s.r * act + (2 * fan_out * act if method == "dora" else 0)
        if name in target_set and method == "ia3":
            saved += (fan_in if _feedforward_down(name) else fan_out) * act
    return norms + core + saved


def _linear_params(model: nn.Module, with_head: bool = True) -> int:
    """Parameters of the linear layers; with the output head, which also gets an autocast copy."""
    head = output_head(model)
    seen: set[int] = set()
    total = 0
    for module in model.modules():
        if is_linear_like(module) and id(weight_of(module)) not in seen and (with_head or module is not head):
            seen.add(id(weight_of(module)))
            total += weight_of(module).numel()
    return total


def estimate_memory(
    model: nn.Module, config: Any, method: Method, trainable: int, targets: list[str], s: PlanSettings
) -> Memory:
    """Bytes of weights, gradients, optimiser state and activations (see the module docstring)."""
    base = sum(p.numel() for p in model.parameters())
    stored, act = _bytes(s.precision)
    sixteen = s.precision in ("bf16", "fp16")
    linear = _linear_params(model)
    copies = 2 * linear if s.precision == "autocast" else 0  # bf16 casts of the linear weights
    shape = _shape(config)
    tokens = s.batch_size * s.seq_len
    labels = max(1, round(tokens * s.label_fraction))
    if s.checkpointing:  # each layer's input is kept; one layer's activations exist at a time in the backward
        resid = 4 if s.precision in ("fp32", "autocast") else 2
        per_token = shape["layers"] * shape["d"] * resid + _layer_bytes(model, config, method, targets, s)
    else:
        per_token = shape["layers"] * _layer_bytes(model, config, method, targets, s)
    # fp32 log-probabilities (saved), and at the start of the backward their gradient and the logits' gradient
    head = labels * shape["vocab"] * 12
    if method == "full":
        head += labels * shape["d"] * act  # the head's input, for the head's weight gradient
    activations = int(tokens * per_token + head)
    if method == "full":
        weights = base * stored + copies
        gradients = base * stored
        optimizer = base * (12 if sixteen else 8)
        return Memory(weights, gradients, optimizer, activations)
    adapter = 4  # adapters train in fp32 whatever the base precision
    if method == "qlora":
        frozen_linear = _linear_params(model, with_head=False)  # the decoder's linears; the head stays 16-bit
        other = base - frozen_linear
        weights = int(frozen_linear * NF4_BYTES) + other * (4 if s.precision == "fp32" else 2)
    else:
        weights = base * stored + copies
    return Memory(weights + trainable * adapter, trainable * adapter, trainable * 8, activations)


def adapter_file_bytes(method: Method, trainable: int, n_tensors: int, precision: PlanPrecision) -> int:
    """Size of the saved file: fp32 adapters (16-bit with 16-bit precision) or the whole model; ~100 B header
    per tensor."""
    per = 2 if precision in ("bf16", "fp16") else 4
    return trainable * per + 100 * n_tensors


def plan_methods(
    spec: str | None, settings: PlanSettings, methods: tuple[Method, ...] = PLAN_METHODS
) -> tuple[str, int, dict[str, MethodPlan]]:
    """(model name, base parameters, per-method plan) for ``spec`` at ``settings``."""
    config = model_config(spec)
    model = meta_model(config)
    base = sum(p.numel() for p in model.parameters())
    plans: dict[str, MethodPlan] = {}
    for method in methods:
        targets = targets_of(model, method, settings.target_modules)
        trainable = count_trainable(model, method, targets, settings.r, settings.target_modules)
        per_target = {"lora": 2, "qlora": 2, "dora": 3, "ia3": 1}.get(method, 0)
        n_tensors = len(list(model.parameters())) if method == "full" else per_target * len(targets)
        memory = estimate_memory(model, config, method, trainable, targets, settings)
        size = adapter_file_bytes(method, trainable, n_tensors, settings.precision)
        plans[method] = MethodPlan(method, trainable, base, size, memory, targets)
    name = spec or "smollm2-135m"
    return name, base, plans


def plan_json(name: str, method: Method, plans: dict[str, MethodPlan]) -> dict[str, Any]:
    """The ``--json`` object: the chosen method's counts, and every method's memory (bytes)."""
    chosen = plans[method]
    return {
        "model": name, "method": method, "trainable_params": chosen.trainable, "total_params": chosen.total,
        "adapter_bytes": chosen.adapter_bytes, "memory": {m: p.memory.to_dict() for m, p in plans.items()},
    }  # fmt: skip


def human(n: float, unit: str = "B") -> str:
    """1234567 -> '1.23 MB' (decimal units, as disks and papers count)."""
    for prefix in ("", "K", "M", "G", "T", "P"):
        if abs(n) < 1000 or prefix == "P":
            return f"{n:.0f} {prefix}{unit}" if prefix == "" else f"{n:.3g} {prefix}{unit}"
        n /= 1000
    return f"{n} {unit}"


def plan_table(name: str, plans: dict[str, MethodPlan], s: PlanSettings) -> str:
    """Methods side by side (columns), one quantity per row."""
    rows: list[tuple[str, list[str]]] = [
        ("trainable params", [f"{p.trainable:,}" for p in plans.values()]),
        ("share of total", [f"{100 * p.trainable / p.total:.4g}%" for p in plans.values()]),
        ("adapter / checkpoint file", [human(p.adapter_bytes) for p in plans.values()]),
        ("memory: weights", [human(p.memory.weights) for p in plans.values()]),
        ("memory: gradients", [human(p.memory.gradients) for p in plans.values()]),
        ("memory: optimizer (AdamW)", [human(p.memory.optimizer) for p in plans.values()]),
        ("memory: activations", [human(p.memory.activations) for p in plans.values()]),
        ("memory: total", [human(p.memory.total) for p in plans.values()]),
    ]
    width = max(12, *(len(c) for _, cells in rows for c in cells)) + 2
    head = f"{'':27}" + "".join(f"{m:>{width}}" for m in plans)
    lines = [head] + [f"{label:27}" + "".join(f"{c:>{width}}" for c in cells) for label, cells in rows]
    base = next(iter(plans.values())).total
    title = (
        f"{name}: {base:,} parameters; r={s.r} on {s.target_modules} (ia3: k, v, ff-down); batch {s.batch_size} x "
        f"{s.seq_len} tokens, label share {s.label_fraction:g}; precision {s.precision}; "
        f"{'gradient checkpointing' if s.checkpointing else 'no checkpointing'}"
    )
    return "\n".join([title, "", *lines, "", "assumptions: " + ASSUMPTIONS])
