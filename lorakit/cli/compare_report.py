"""report.md and the plots of a ``lorakit compare`` run (matplotlib, imported on first use)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lorakit.files import atomic_write, write_text_atomic
from lorakit.plan import human

TASK_TITLES = {"format": "format (contacts JSON)", "knowledge": "knowledge (invented facts, paraphrased questions)"}


def _rows(results: list[Any], task: str) -> list[Any]:
    return [r for r in results if r.task == task]


def _table(results: list[Any], task: str) -> str:
    rows = _rows(results, task)
    base = rows[0]
    keys = list(base.score)
    head = ["method", "lr", "trainable", "on disk", "peak RSS", "s/step", "train loss", *keys,
            "probe ppl (change)", "probe questions (change)"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ppl, q = r.probe.get("perplexity", 0.0), r.probe.get("questions", 0.0)
        dppl = 100 * (ppl - base.probe["perplexity"]) / base.probe["perplexity"]
        cells = [
            r.label, f"{r.lr:g}" if r.lr else "-", f"{r.trainable:,}" if r.trainable else "-",
            human(r.disk_bytes) if r.disk_bytes else "-", human(r.peak_rss) if r.peak_rss else "-",
            f"{r.seconds_per_step:.2f}" if r.seconds_per_step else "-", f"{r.train_loss:.3f}" if r.train_loss else "-",
            *(f"{r.score[k]:.3f}" for k in keys),
            f"{ppl:.2f} ({dppl:+.1f}%)" if r.label != "base" else f"{ppl:.2f}",
            f"{q:.3f} ({q - 1:+.3f})" if r.label != "base" else f"{q:.3f} (n={r.probe['n_questions']})",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: list[Any], tasks: list[str], output: Path) -> list[str]:
    """score_vs_params.png and learning_vs_forgetting.png; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        rows = _rows(results, task)
        base = rows[0]
        for r in rows[1:]:
            ax.scatter([r.trainable], [r.score["exact_match"]], s=60, label=r.label)
            ax.annotate(r.label, (r.trainable, r.score["exact_match"]), textcoords="offset points", xytext=(5, 5))
        ax.axhline(base.score["exact_match"], color="grey", linestyle="--", label="base model")
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters (log scale)")
        ax.set_ylabel("exact match")
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(TASK_TITLES.get(task, task))
        ax.grid(alpha=0.3)
    axes[0][0].legend(loc="best", fontsize=8)
    fig.tight_layout()
    atomic_write(output / "score_vs_params.png", lambda tmp: fig.savefig(tmp, dpi=110))
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    markers = {"format": "o", "knowledge": "s"}
    for task in tasks:
        rows = _rows(results, task)
        base = rows[0]
        for r in rows[1:]:
            gain = r.score["exact_match"] - base.score["exact_match"]
            dppl = 100 * (r.probe["perplexity"] - base.probe["perplexity"]) / base.probe["perplexity"]
            for ax, y in zip(axes, (dppl, 100 * (1 - r.probe["questions"])), strict=True):
                ax.scatter([gain], [y], marker=markers.get(task, "o"), s=60)
                ax.annotate(f"{task[:4]}: {r.label}", (gain, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    axes[0].set_ylabel("probe perplexity increase (%)")
    axes[1].set_ylabel("probe questions lost (% of those the base got right)")
    for ax in axes:
        ax.set_xlabel("learning: task exact match gained over the base")
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.grid(alpha=0.3)
    fig.suptitle("learning vs forgetting (up = more forgetting, right = more learning)")
    fig.tight_layout()
    atomic_write(output / "learning_vs_forgetting.png", lambda tmp: fig.savefig(tmp, dpi=110))
    plt.close(fig)
    return ["score_vs_params.png", "learning_vs_forgetting.png"]


def write_report(output: Path, results: list[Any], settings: dict[str, Any], machine: str, command: str) -> Path:
    tasks = list(dict.fromkeys(r.task for r in results))
    write_text_atomic(
        output / "results.json",
        json.dumps(
            {"settings": settings, "machine": machine, "command": command, "results": [r.__dict__ for r in results]},
            indent=2,
        )
        + "\n",
    )
    images = plot(results, tasks, output)
    lines = [
        "# lorakit compare: LoRA vs full fine-tuning", "",
        f"- command: `{command}`", f"- machine: {machine}", f"- model: {settings['model']}; seed 0; "
        f"wall time {settings['minutes']} min", "- methods: " + "; ".join(
            f"{m['label']} (lr {m['lr']:g}" + (f", lora_alpha {m['lora_alpha']})" if "lora_alpha" in m else ")")
            for m in settings["methods"]),
        "- budget per task (the same for every method: steps, batch, data order, seed): " + "; ".join(
            f"{t}: {s['steps']} steps x batch {s['batch_size']} on {s['data']}"
            + (f" (first {s['n_train']})" if s["n_train"] else "") for t, s in settings["tasks"].items()),
        "- forgetting probe: perplexity on 20 held-out ordinary-text passages, and the general questions the base "
        "model answered right (answer contained in the reply); change against the base",
        "- peak RSS: of the training process (model load included); s/step: median over the run", "",
    ]  # fmt: skip
    for task in tasks:
        n = settings["tasks"][task]["n_test"]
        lines += [f"## {TASK_TITLES.get(task, task)}", "", f"scored on {n or 'all'} held-out items", "",
                  _table(results, task), ""]  # fmt: skip
    lines += [f"![{name}]({name})" for name in images]
    path = output / "report.md"
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path
