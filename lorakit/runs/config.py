"""``RunConfig``: a whole training run's settings, the trainer's (``TrainConfig``) and the run's own.

Each field is a ``lorakit train`` flag and a YAML key, as ``TrainConfig``'s are. The run's own say which model and
data, where the run folder is, how often to evaluate and checkpoint, and whether to resume.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from lorakit.data.formats import DataFormat
from lorakit.tasks.contacts import TRAINING as BUILTIN_TRAINING
from lorakit.train.config import TrainConfig


@dataclass(frozen=True)
class RunConfig(TrainConfig):
    """``lorakit train``'s settings: the trainer's (``TrainConfig``) and the run's own, each a flag and a YAML key."""

    model: str | None = None
    """Base model: None for the built-in SmolLM2-135M-Instruct, a folder, a .gguf file or a hub id."""
    data: str | None = None
    """Training data: .jsonl, .json, .csv, .parquet, a save_to_disk folder or a Hub dataset; None: the built-in set."""
    data_format: DataFormat = "auto"
    """Record format of --data and --eval-data; auto: read from the first record's keys."""
    eval_data: str | None = None
    """Held-out data for the eval loss (any --data source); None for none."""
    eval_split: float = 0.0
    """Without --eval-data: hold out this share of --data (e.g. 0.05) for the eval loss."""
    output: str | None = None
    """Output folder; None for ``runs/<timestamp>``."""
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
    device: str = "auto"
    """Where to train: auto (CUDA, then MPS, then the CPU), cpu, cuda, cuda:N or mps (torchrun: each rank's GPU)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("save_every", "eval_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be an integer >= 0, got {value!r}")
        split = self.eval_split
        if isinstance(split, bool) or not isinstance(split, (int, float)) or not 0 <= split < 1:
            raise ValueError(f"--eval-split must be a share in [0, 1), got {split!r}")
        if split and self.eval_data:
            raise ValueError("give --eval-data or --eval-split, not both")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> RunConfig:
        """As ``TrainConfig.from_dict``; without ``data``, the built-in task's settings (``lorakit.tasks.contacts.
        TRAINING``) fill what ``data`` leaves unset, so ``lorakit train`` with no flags is the demo's run."""
        given = {str(k).replace("-", "_") for k in data}
        if not data.get("data"):
            data = {**{k: v for k, v in BUILTIN_TRAINING.items() if k not in given}, **data}
        return super().from_dict(data, source)  # type: ignore[return-value]

    def training(self, **changes: Any) -> TrainConfig:
        """The trainer's part of these settings (its fields, as they are here, with ``changes``)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(TrainConfig)}
        return TrainConfig(**{**fields, **changes})

    def changes_from(self, saved: dict[str, Any]) -> str | None:
        """What differs from the ``saved`` settings of the run that ``--resume`` continues beyond what a resumed run
        may change (``RESUMABLE_CHANGES``), as "name: before -> now, ..."; None when nothing does. A setting the saved
        run predates had its default there (runs outlive new flags)."""
        now, defaults = self.to_dict(), RunConfig().to_dict()
        changed = sorted(k for k in now if k not in RESUMABLE_CHANGES and saved.get(k, defaults[k]) != now[k])
        return ", ".join(f"{k}: {saved.get(k, defaults[k])!r} -> {now[k]!r}" for k in changed) or None


# Fields a resumed run may change; any other difference means a different run. pad_to_multiple_of only pads
# the same batches further (the loss is the same up to rounding), so a run from before the flag resumes too; a run
# may go on on another device (the same computation up to rounding; dropout masks come from that device's generator),
# or with or without compiled layers (the same computation up to rounding).
RESUMABLE_CHANGES = {
    "resume", "overwrite", "output", "max_steps", "epochs", "save_every", "eval_every", "trust_remote_code",
    "pad_to_multiple_of", "device", "compile",
}  # fmt: skip


def output_path(config: RunConfig) -> Path:
    """``--output``, or ``runs/<timestamp>`` when it is not given."""
    return Path(config.output or Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S"))
