"""A ``lorakit train`` run folder: the name of every file in it, and their reading and writing.

```text
<run>/
  adapter_config.json, adapter_model.safetensors   the adapter (lorakit.io; full fine-tuning: a model folder)
  initial_adapter/      PiSSA/OLoRA: the adapter as initialised, which the final save converts against
  checkpoints/          step-NNNNNN/ folders for --resume (lorakit.train.checkpoint's format)
  train_config.json     the run's settings, every flag (written first)
  metrics.jsonl         one JSON object per step and per evaluation, flushed as it is written
  held_out.jsonl        the records --eval-split kept out of training
  system_prompt.txt     the system prompt every training example opened with, when they shared one
  loss.png              the loss curve
  README.md             the model card
  demo_eval.json        lorakit demo: every held-out prediction beside its reference
  train_summary.json    written last: its presence means the run finished
```

No other module knows these names (``tests/test_run_files.py`` checks it). Folders outlive versions: one an older
lorakit wrote still loads (readers take what is there and skip what a crash cut short).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from lorakit.errors import LorakitError
from lorakit.eval.report import write_json
from lorakit.files import write_jsonl, write_text_atomic
from lorakit.train.checkpoint import checkpoint_root, clean_temporary, list_checkpoints

CONFIG = "train_config.json"
SUMMARY = "train_summary.json"
METRICS = "metrics.jsonl"
HELD_OUT = "held_out.jsonl"
SYSTEM_PROMPT = "system_prompt.txt"
PLOT = "loss.png"
CARD = "README.md"
DEMO_EVAL = "demo_eval.json"
INITIAL_ADAPTER = "initial_adapter"
FILE_NAMES = (CONFIG, SUMMARY, METRICS, HELD_OUT, SYSTEM_PROMPT, PLOT, CARD, DEMO_EVAL, INITIAL_ADAPTER)


class RunFolder:
    """The files of the run in ``path``: where each lies, and reading and writing it (text atomically)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # ---- where each file lies
    @property
    def config_file(self) -> Path:
        return self.path / CONFIG

    @property
    def summary_file(self) -> Path:
        return self.path / SUMMARY

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS

    @property
    def held_out_file(self) -> Path:
        return self.path / HELD_OUT

    @property
    def system_prompt_file(self) -> Path:
        return self.path / SYSTEM_PROMPT

    @property
    def plot_file(self) -> Path:
        return self.path / PLOT

    @property
    def card_file(self) -> Path:
        return self.path / CARD

    @property
    def initial_adapter(self) -> Path:
        return self.path / INITIAL_ADAPTER

    # ---- the folder
    def create(self) -> None:
        """Make the folder (or find it) and check that it can be written to, before any compute is spent."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as err:
            raise LorakitError(f"{self.path}: cannot write to the output folder ({err.strerror})") from None

    def finished(self) -> bool:
        return self.summary_file.exists()

    def forget_finished(self) -> None:
        """Remove what would let an old run be resumed or reported (``--overwrite``): its summary, checkpoints and
        initial adapter."""
        self.summary_file.unlink(missing_ok=True)
        shutil.rmtree(checkpoint_root(self.path), ignore_errors=True)
        shutil.rmtree(self.initial_adapter, ignore_errors=True)

    def discard_if_unused(self) -> None:
        """Remove the folder when it holds nothing but the settings a failed start wrote."""
        if self.path.is_dir() and {p.name for p in self.path.iterdir()} <= {CONFIG}:
            shutil.rmtree(self.path, ignore_errors=True)

    # ---- checkpoints (their format is lorakit.train.checkpoint's)
    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        return list_checkpoints(self.path)

    def clean_temporary(self) -> None:
        """Remove what an interrupted checkpoint write left behind."""
        clean_temporary(self.path)

    # ---- settings and summary
    def read_config(self) -> dict[str, Any] | None:
        """The run's settings; None when the file is missing or unreadable, {} when it holds no JSON object."""
        return _read_json(self.config_file)

    def write_config(self, settings: dict[str, Any]) -> None:
        write_text_atomic(self.config_file, json.dumps(settings, indent=2) + "\n")

    def read_summary(self) -> dict[str, Any] | None:
        return _read_json(self.summary_file)

    def write_summary(self, info: dict[str, Any]) -> None:
        """The summary, written last: from here on the run counts as finished."""
        write_text_atomic(self.summary_file, json.dumps(info, indent=2) + "\n")

    # ---- metrics
    def metrics_log(self, keep_until_step: int | None = None) -> MetricsLog:
        """The log to append to: a new one, or after a resume, the old one up to ``keep_until_step``."""
        return MetricsLog(self.metrics_file, keep_until_step)

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every record of ``metrics.jsonl`` (none when there is none); a line a crash cut short is skipped."""
        return _read_records(self.metrics_file)

    # ---- what the model learnt under, and what it never saw
    def read_system_prompt(self) -> str | None:
        return self.system_prompt_file.read_text(encoding="utf-8") if self.system_prompt_file.is_file() else None

    def write_system_prompt(self, prompt: str) -> None:
        write_text_atomic(self.system_prompt_file, prompt)

    def write_held_out(self, records: list[dict[str, Any]]) -> None:
        write_jsonl(self.held_out_file, records)

    # ---- for people: the card, and the demo's scores
    def read_card(self) -> str | None:
        return self.card_file.read_text(encoding="utf-8", errors="replace") if self.card_file.is_file() else None

    def write_card(self, text: str) -> None:
        write_text_atomic(self.card_file, text)

    def add_to_card(self, text: str) -> None:
        """Append ``text`` (a markdown section) to the model card."""
        write_text_atomic(self.card_file, self.card_file.read_text(encoding="utf-8") + text)

    def write_demo_eval(self, payload: dict[str, Any]) -> None:
        write_json(self.path / DEMO_EVAL, payload)


def beside(adapter: str | os.PathLike[str]) -> list[RunFolder]:
    """Where the run files of the adapter in ``adapter`` may lie: its own folder, then the folder above it (an
    adapter saved inside a run folder)."""
    folder = Path(adapter)
    return [RunFolder(folder), RunFolder(folder.parent)]


class MetricsLog:
    """Appends one JSON object per line and flushes it, so a crash loses at most the line being written."""

    def __init__(self, path: Path, keep_until_step: int | None = None) -> None:
        self.path = path
        if keep_until_step is not None and path.exists():
            # After a resume, drop what was logged past the checkpoint: those steps run again.
            write_jsonl(path, [line for line in self.read() if line.get("step", 0) <= keep_until_step])
        elif keep_until_step is None and path.exists():
            path.unlink()

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()

    def read(self) -> list[dict[str, Any]]:
        return _read_records(self.path)


class QuietLog(MetricsLog):
    """The metrics log of ranks other than 0: they train, rank 0 writes."""

    def __init__(self) -> None:
        pass

    def write(self, record: dict[str, Any]) -> None:
        pass

    def read(self) -> list[dict[str, Any]]:
        return []


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else {}


def _read_records(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
        if isinstance(record, dict):
            records.append(record)
    return records
