"""``TrainConfig``: how to train (method, adapter shape, optimiser, batches, precision), as one frozen dataclass.

It holds training fields only: which model, which data, where files go and how often to checkpoint are the
caller's (a run adds them in ``lorakit.runs.config.RunConfig``). Each field is also a command-line flag
(``--lora-alpha``) and a YAML key (the CLI derives both from the fields and their docstrings); validation happens
once, in ``__post_init__``, and every message names the flag. The adapter configs it builds (``LoraConfig``,
``IA3Config``) live in ``lorakit.config``.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any, Literal

from lorakit.config import METHODS, AdapterConfig, LoraConfig, Method, is_init_mode
from lorakit.models import PRECISIONS, Precision
from lorakit.targeting import ia3_config, parse_target_modules

Schedule = Literal["cosine", "linear", "constant"]
Objective = Literal["sft", "dpo", "grpo"]
OBJECTIVES: tuple[str, ...] = ("sft", "dpo", "grpo")
PreferenceLoss = Literal["sigmoid", "ipo"]
RewardScaling = Literal["group", "batch", "none"]
# beta when it is not given: TRL's DPOConfig (0.1) and GRPOConfig (0.0: no KL term, as DAPO and Dr. GRPO found it
# unnecessary for verifiable rewards); SFT has none.
DEFAULT_BETA: dict[str, float] = {"dpo": 0.1, "grpo": 0.0}
# The peak learning rate each method starts from when --lr is not given. LoRA's best rate is about ten times full
# fine-tuning's (Biderman et al. 2024, "LoRA Learns Less and Forgets Less"; Schulman et al. 2025, "LoRA Without
# Regret"): the adapter starts at B = 0 and its update B A is scaled by alpha / r, so a step moves the weights far
# less than a full fine-tuning step at the same rate. 2e-4 is the rate of the QLoRA paper and of most LoRA recipes;
# 2e-5 the full-SFT rate of TRL's SFTConfig and most chat fine-tunes; DoRA and QLoRA train the same low-rank
# factors as LoRA; IA3's scaling vectors start at 1 and need larger steps (3e-3, the T-Few paper's rate). Small
# models take larger rates: the built-in demo (135M parameters) trains LoRA at 1e-3 (lorakit.tasks.contacts).
DEFAULT_LR: dict[str, float] = {"lora": 2e-4, "dora": 2e-4, "qlora": 2e-4, "ia3": 3e-3, "full": 2e-5}


@dataclass(frozen=True)
class TrainConfig:
    """How ``lorakit.Trainer`` trains; each field is a flag (``--lora-alpha``) and a YAML key.

    The defaults are for data of the user's: ``epochs`` passes over it at the method's learning rate
    (``DEFAULT_LR``); the built-in demo's tuned settings live with its task (``lorakit.tasks.contacts.TRAINING``).
    """

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
    max_steps: int = 0
    """Optimiser steps; 0 means use ``epochs``."""
    epochs: float = 3.0
    """Passes over the data when ``max_steps`` is 0."""
    batch_size: int = 8
    """Examples per micro-batch (per process)."""
    grad_accum: int = 1
    """Micro-batches per optimiser step."""
    lr: float | None = None
    """Peak learning rate; unset: the method's (lora, dora, qlora 2e-4; ia3 3e-3; full 2e-5)."""
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
    seq_len: int = 1024
    """Longest example in tokens; longer ones are truncated (skipped if nothing to learn is left)."""
    packing: bool = False
    """Pack several short examples into each row of up to seq_len tokens (attention stays inside each example)."""
    pad_to_multiple_of: int = 8
    """Pad each batch's length up to a multiple of this: shapes repeat, so the run's memory stays flat (1 = off)."""
    seed: int = 0
    """Seed for adapter init, data order and dropout."""
    precision: Precision = "auto"
    """auto: bf16 where the device runs it natively, else fp16 (loss-scaled) on CUDA, else fp32; adapters stay fp32."""
    gradient_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward: less memory for ~1/3 more compute."""
    compile: bool = False
    """torch.compile each decoder layer for the training steps (a C++ compiler on a CPU): compiles at step 1."""
    fsdp: bool = False
    """In a process group (torchrun, Ray Train): shard the frozen base with FSDP2 (default: DDP; no effect alone)."""
    objective: Objective = "sft"
    """sft (next-token loss on the data), dpo (preference pairs), grpo (rewards of sampled completions)."""
    beta: float | None = None
    """dpo: strength of the pull towards the reference (0.1); grpo: weight of the KL term to it (0: none)."""
    loss_type: PreferenceLoss = "sigmoid"
    """dpo's loss: sigmoid (DPO) or ipo (IPO, log-ratios per completion token)."""
    num_generations: int = 8
    """grpo: completions sampled per prompt (the group their rewards are normalised in)."""
    max_completion_length: int = 256
    """grpo (and Trainer.sample): longest sampled completion in tokens."""
    temperature: float = 1.0
    """grpo (and Trainer.sample): sampling temperature (0: greedy)."""
    top_p: float = 1.0
    """grpo (and Trainer.sample): sample from the smallest set of tokens whose probability reaches top_p."""
    epsilon: float = 0.2
    """grpo: the importance ratio is clipped to [1 - epsilon, 1 + epsilon]."""
    reward: str = ""
    """grpo: comma-separated rewards (summed): json, json-schema:FILE, exact, contacts, module:fn, file.py:fn."""
    reward_weights: str = ""
    """grpo: comma-separated weights of the rewards, in their order (default: 1 each)."""
    scale_rewards: RewardScaling = "group"
    """grpo: divide advantages by the rewards' standard deviation in each group, over the batch, or not at all."""

    def __post_init__(self) -> None:
        choices = {"method": METHODS, "lr_schedule": ("cosine", "linear", "constant"), "precision": PRECISIONS,
                   "objective": OBJECTIVES, "loss_type": ("sigmoid", "ipo"),
                   "scale_rewards": ("group", "batch", "none")}  # fmt: skip
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"--{_flag(name)} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.lr is None and self.method in DEFAULT_LR:
            object.__setattr__(self, "lr", DEFAULT_LR[self.method])  # frozen: resolved once, recorded as a number
        positive = ("r", "batch_size", "grad_accum", "seq_len", "pad_to_multiple_of")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"--{_flag(name)} must be a positive integer, got {value!r}")
        for name in ("max_steps", "warmup_steps", "seed"):
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
        self._check_post_training()
        if not isinstance(self.target_modules, str) or not self.target_modules.strip():
            raise ValueError(
                f"--target-modules must be a comma list, a regex or all-linear, got {self.target_modules!r}"
            )

    def _check_post_training(self) -> None:
        """The DPO/GRPO fields (TRL's names): beta resolved per objective, then every value checked."""
        if self.beta is None:
            object.__setattr__(self, "beta", DEFAULT_BETA.get(self.objective, 0.0))
        for name in ("beta", "top_p", "epsilon", "temperature"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"--{_flag(name)} must be a number >= 0, got {value!r}")
        if self.objective == "dpo" and not self.beta:
            raise ValueError("--beta must be > 0 for --objective dpo (it divides the IPO target, scales DPO's)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"--top-p must be in (0, 1], got {self.top_p!r}")
        for name in ("num_generations", "max_completion_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"--{_flag(name)} must be a positive integer, got {value!r}")
        if self.objective == "grpo" and self.num_generations < 2:
            raise ValueError("--num-generations must be at least 2 for grpo: advantages compare a group's completions")
        if self.objective == "grpo" and self.batch_size % self.num_generations:
            raise ValueError(f"--batch-size ({self.batch_size}) counts completions per process, as TRL's: it must be a "
                             f"multiple of --num-generations ({self.num_generations})")  # fmt: skip
        if self.objective == "grpo" and not self.reward.strip():
            raise ValueError("--reward is needed for --objective grpo (e.g. json, contacts or module:function)")
        if not isinstance(self.reward, str) or not isinstance(self.reward_weights, str):
            raise ValueError("--reward and --reward-weights are comma-separated text")
        weights = [w for w in self.reward_weights.split(",") if w.strip()]
        try:
            [float(w) for w in weights]
        except ValueError:
            raise ValueError(f"--reward-weights must be comma-separated numbers, got {self.reward_weights!r}") from None
        names = [r for r in self.reward.split(",") if r.strip()]
        if weights and len(weights) != len(names):
            raise ValueError(f"--reward-weights gives {len(weights)} weights for {len(names)} rewards")

    def rewards(self) -> list[tuple[str, float]]:
        """(reward, weight) for each of ``reward`` (``lorakit.train.rewards`` reads the names)."""
        names = [r.strip() for r in self.reward.split(",") if r.strip()]
        weights = [float(w) for w in self.reward_weights.split(",") if w.strip()] or [1.0] * len(names)
        return list(zip(names, weights, strict=True))

    def quantize(self) -> Literal["nf4", "int8"] | None:
        """How the base's Linear weights are to be stored (``load_model(quantize=)``): quantised for QLoRA, else not
        at all. The trainer does not quantise: it trains the model it is given."""
        if self.method != "qlora":
            return None
        return "nf4" if self.bits == 4 else "int8"

    def lora_config(self) -> LoraConfig:
        """The adapter config these flags describe."""
        return LoraConfig(
            r=self.r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
            target_modules=parse_target_modules(self.target_modules),
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
            return ia3_config(self.target_modules)
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


def _flag(name: str) -> str:
    return name.replace("_", "-")
