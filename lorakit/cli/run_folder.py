"""A ``lorakit train`` run folder: its settings (``train_config.json``), ``metrics.jsonl``, ``loss.png``, a model card
(``README.md``), checkpoints, and ``train_summary.json``, written last, whose presence means the run finished."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from lorakit.files import atomic_write, write_text_atomic

CONFIG_FILE = "train_config.json"  # the run's settings: every flag, as RunConfig.to_dict() gives them
SUMMARY_FILE = "train_summary.json"  # written last: its presence means the run finished
INITIAL_ADAPTER = "initial_adapter"  # PiSSA/OLoRA adapter as initialised, before training


def trained_quantization(adapter: str | os.PathLike[str]) -> Literal["nf4", "int8"] | None:
    """How the base was quantised when ``lorakit train`` made the adapter in this folder (or its parent):
    "nf4"/"int8" for a QLoRA run, None for any other run or a folder without ``train_config.json``."""
    base = trained_base(adapter)
    return None if base is None or base == "float" else base


def trained_base(adapter: str | os.PathLike[str]) -> Literal["nf4", "int8", "float"] | None:
    """The kind of base ``lorakit train`` made the adapter in this folder (or its parent) on: "nf4"/"int8" for a
    QLoRA run, "float" for any other run, None for a folder without ``train_config.json`` (not known)."""
    folder = Path(adapter)
    for candidate in (folder / CONFIG_FILE, folder.parent / CONFIG_FILE):
        try:
            saved = json.loads(candidate.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(saved, dict) or saved.get("method") != "qlora":
            return "float"
        return "int8" if saved.get("bits") == 8 else "nf4"
    return None


class MetricsLog:
    """Appends one JSON object per line and flushes it, so a crash loses at most the line being written."""

    def __init__(self, path: Path, keep_until_step: int | None = None) -> None:
        self.path = path
        if keep_until_step is not None and path.exists():
            # After a resume, drop what was logged past the checkpoint: those steps run again.
            kept = [line for line in self.read() if line.get("step", 0) <= keep_until_step]
            write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))
        elif keep_until_step is None and path.exists():
            path.unlink()

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        lines = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a crash
        return lines


def plot_loss(records: list[dict[str, Any]], path: Path, title: str) -> None:
    """Train loss (and eval loss where measured) against step, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in records if r.get("kind") == "train"]
    evals = [(r["step"], r["eval_loss"]) for r in records if r.get("kind") == "eval"]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", color="#1f77b4", linewidth=1.5)
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="eval loss", color="#d62728", linewidth=1.5)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss (mean cross-entropy per assistant token)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, fig.savefig)
    plt.close(fig)


def model_card(info: dict[str, Any]) -> str:
    """A model card in the style of the Hugging Face hub's, for the adapter folder."""
    hp = info["hyperparameters"]
    rows = "\n".join(f"| `{k}` | `{v}` |" for k, v in hp.items())
    final = info.get("final", {})
    metrics = "\n".join(f"| {k} | {v} |" for k, v in final.items()) or "| - | - |"
    base = info["base_model"]
    return f"""---
library_name: peft
base_model: {base}
tags: [lorakit, lora]
---

# LoRA adapter for `{base}`

Trained with lorakit {info["lorakit_version"]} on `{info["data"]}` ({info["n_examples"]} examples;
{info["n_truncated"]} truncated and {info["n_skipped"]} skipped at `seq_len` {hp["seq_len"]}).

- Trainable parameters: {info["trainable"]:,} of {info["total"]:,} ({100 * info["trainable"] / info["total"]:.2f}%)
- Steps: {info["steps"]}, tokens seen: {info["tokens"]:,}, wall time: {info["seconds"]:.0f} s
- Precision: {info["precision"]}

## Hyper-parameters

| name | value |
|---|---|
{rows}

## Final metrics

| metric | value |
|---|---|
{metrics}

![loss](loss.png)

## Use it

With lorakit:

```python
import lorakit
model, tokenizer = lorakit.load_model({base!r})
model = lorakit.load_adapter(model, "{info["output"]}")
```

With peft (the files are peft's format; lorakit here only provides the base weights):

```python
import lorakit; from peft import PeftModel  # noqa: E702
base_model, _ = lorakit.load_model({base!r})  # or the same weights from any transformers folder
model = PeftModel.from_pretrained(base_model, "{info["output"]}")
```

Or merge it into a plain transformers model: `lorakit merge --model {base} --adapter {info["output"]} --output merged/`.
"""


class QuietLog(MetricsLog):
    """The metrics log of ranks other than 0: they train, rank 0 writes."""

    def __init__(self) -> None:
        pass

    def write(self, record: dict[str, Any]) -> None:
        pass

    def read(self) -> list[dict[str, Any]]:
        return []
