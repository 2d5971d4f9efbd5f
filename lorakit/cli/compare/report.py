"""report.md and the plots of a ``lorakit compare`` run, from its results.json alone (matplotlib, imported on first
use), so a report can be rebuilt, or a documentation page refreshed, without a model:

    python -m lorakit.cli.compare.report RUN_FOLDER [--docs docs/scalpel-vs-sledgehammer.md]

``--docs`` copies the report, results.json and plots into ``compare-run/`` beside the page and replaces the part of
the page between its ``<!-- compare figures -->`` and ``<!-- /compare figures -->`` lines with the figures; the rest
of the page (the reading) is written by a person.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path
from typing import Any

from lorakit.cli.compare.analysis import at_edge, equal_score, learning, mean_std
from lorakit.files import atomic_write, write_text_atomic
from lorakit.plan import human

BEGIN, END = "<!-- compare figures -->", "<!-- /compare figures -->"
IMAGES = ("score_vs_params.png", "learning_vs_forgetting.png")


def ppl_change(trial: dict[str, Any], base: dict[str, Any]) -> float:
    """Probe perplexity increase over the base model's, in %."""
    return 100 * (trial["probe"]["perplexity"] / base["probe"]["perplexity"] - 1)


def lost(trial: dict[str, Any]) -> float:
    """Probe questions the base answered that the trained model no longer answers, in %."""
    return 100 * (1 - trial["probe"]["questions"])


def _trials(payload: dict[str, Any], task: str, label: str) -> list[dict[str, Any]]:
    return [t for t in payload["trials"] if t["task"] == task and t["label"] == label]


def curves(payload: dict[str, Any], task: str) -> dict[str, list[dict[str, float]]]:
    """Each method's points by rate: learning, probe perplexity change and questions lost, averaged over the seeds
    trained at that rate (the best rate has several; ``KEY_sd`` is their sample standard deviation)."""
    info, base = payload["settings"]["tasks"][task], payload["base"][task]
    out: dict[str, list[dict[str, float]]] = {}
    for method in payload["settings"]["methods"]:
        rows = _trials(payload, task, method["label"])
        points = []
        for lr in sorted({t["lr"] for t in rows}):
            at = [t for t in rows if t["lr"] == lr]
            gains = [
                learning(t["test"][info["metric"]], base["test"][info["metric"]], info["higher_is_better"]) for t in at
            ]
            point: dict[str, float] = {"lr": lr, "n": len(at)}
            for key, values in (
                ("learning", gains),
                ("ppl", [ppl_change(t, base) for t in at]),
                ("lost", [lost(t) for t in at]),
            ):
                point[key], point[f"{key}_sd"] = mean_std(values)
            points.append(point)
        out[method["label"]] = points
    return out


def _sweep_table(payload: dict[str, Any], task: str) -> str:
    info, base = payload["settings"]["tasks"][task], payload["base"][task]
    metric = info["metric"]
    head = ["method", "lr", f"validation {metric}", f"test {metric}", "probe ppl change", "probe questions kept",
            "train loss"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    n = base["probe"]["n_questions"]
    lines.append(f"| base | - | {base['validation'][metric]:.3f} | {base['test'][metric]:.3f} | - | {n} / {n} | - |")
    for method in payload["settings"]["methods"]:
        label = method["label"]
        best = payload["best"][task][label]
        for t in sorted((t for t in _trials(payload, task, label) if t["seed"] == 0), key=lambda t: t["lr"]):
            chosen = " (best)" if t["lr"] == best and method["swept"] else ""
            lines.append(
                f"| {label} | {t['lr']:g}{chosen} | {t['validation'][metric]:.3f} | {t['test'][metric]:.3f} | "
                f"{ppl_change(t, base):+.1f}% | {t['probe']['kept']} / {t['probe']['n_questions']} | "
                f"{t['train_loss']:.3f} |"
            )
    return "\n".join(lines)


def _spread(values: list[float], digits: int, unit: str = "", sign: bool = False) -> str:
    mean, sd = mean_std(values)
    fmt = f"{'+' if sign else ''}.{digits}f"
    text = f"{mean:{fmt}}{unit}"
    return text + (f" ± {sd:.{digits}f}" if len(values) > 1 else "")


def _peak(rows: list[dict[str, Any]]) -> str:
    """The highest training peak RSS of ``rows``; "-" where it was not measured (trials cached before lorakit took
    the trainer's own peak: their ru_maxrss was the scoring process's)."""
    peaks = [t["peak_rss"] for t in rows if t.get("peak_rss")]
    return human(max(peaks)) if peaks else "-"


def _seed_table(payload: dict[str, Any], task: str) -> tuple[str, list[str]]:
    info, base = payload["settings"]["tasks"][task], payload["base"][task]
    metric = info["metric"]
    head = ["method", "lr", "seeds", f"test {metric} (mean ± sd)", "per seed", "probe ppl change",
            "probe questions lost", "trainable", "on disk", "peak RSS", "s/step"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines.append(
        f"| base | - | - | {base['test'][metric]:.3f} | - | {base['probe']['perplexity']:.2f} (ppl) | - | "
        "- | - | - | - |"
    )
    notes = []
    for method in payload["settings"]["methods"]:
        label = method["label"]
        best = payload["best"][task][label]
        rows = sorted((t for t in _trials(payload, task, label) if t["lr"] == best), key=lambda t: t["seed"])
        if not rows:
            continue
        first = rows[0]
        lines.append(
            f"| {label} | {best:g} | {len(rows)} | {_spread([t['test'][metric] for t in rows], 3)} | "
            + ", ".join(f"{t['test'][metric]:.3f}" for t in rows)
            + f" | {_spread([ppl_change(t, base) for t in rows], 1, '%', sign=True)} | "
            f"{_spread([lost(t) for t in rows], 1, '%')} | {first['trainable']:,} | {human(first['disk_bytes'])} | "
            f"{_peak(rows)} | {_spread([t['seconds_per_step'] for t in rows], 2)} |"
        )
        sweep = [t["validation"][metric] for t in _trials(payload, task, label) if t["seed"] == 0]
        edge = at_edge(best, method["rates"]) if method["swept"] else None
        if method["swept"] and len(set(sweep)) == 1:
            notes.append(f"{label}: every rate scored {sweep[0]:.3f} on validation; the lowest was kept.")
        elif edge:
            notes.append(f"{label}: the best rate, {best:g}, is the {edge} of its sweep; a better one may lie beyond.")
    return "\n".join(lines), notes


def _equal_table(payload: dict[str, Any], task: str) -> str:
    info, base = payload["settings"]["tasks"][task], payload["base"][task]
    points = curves(payload, task)
    ppl = equal_score({k: [(p["learning"], p["ppl"]) for p in v] for k, v in points.items()})
    questions = equal_score({k: [(p["learning"], p["lost"]) for p in v] for k, v in points.items()})
    levels = ppl[0]
    if not levels:
        return "No method scored above the base model on the test split: there is no task score to compare at."
    labels = list(points)
    sign = 1.0 if info["higher_is_better"] else -1.0
    head = [f"test {info['metric']} reached", *labels]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, level in enumerate(levels):
        cells = [f"{base['test'][info['metric']] + sign * level:.3f}"]
        for label in labels:
            p, q = ppl[1][label][i], questions[1][label][i]
            cells.append("not reached" if p is None or q is None else f"{p:+.1f}% / {q:.1f}%")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(payload: dict[str, Any], output: Path) -> list[str]:
    """score_vs_params.png (test score at the best rate, mean and sd over seeds, against trainable parameters) and
    learning_vs_forgetting.png (each method's curve through its rates); returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(payload["settings"]["tasks"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        info, base = payload["settings"]["tasks"][task], payload["base"][task]
        for method in payload["settings"]["methods"]:
            rows = [
                t for t in _trials(payload, task, method["label"]) if t["lr"] == payload["best"][task][method["label"]]
            ]
            if rows:
                mean, sd = mean_std([t["test"][info["metric"]] for t in rows])
                ax.errorbar([rows[0]["trainable"]], [mean], yerr=[sd], fmt="o", capsize=4, label=method["label"])
        ax.axhline(base["test"][info["metric"]], color="grey", linestyle="--", label="base model")
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters (log scale)")
        ax.set_ylabel(f"test {info['metric']} at the best rate")
        ax.set_title(info["title"])
        ax.grid(alpha=0.3)
    axes[0][0].legend(loc="best", fontsize=8)
    fig.tight_layout()
    atomic_write(output / IMAGES[0], lambda tmp: fig.savefig(tmp, dpi=110))
    plt.close(fig)

    fig, axes = plt.subplots(len(tasks), 2, figsize=(11, 4 * len(tasks)), squeeze=False)
    for row, task in zip(axes, tasks, strict=True):
        info = payload["settings"]["tasks"][task]
        for label, points in curves(payload, task).items():
            for ax, key in zip(row, ("ppl", "lost"), strict=True):
                xs, ys = [0.0] + [p["learning"] for p in points], [0.0] + [p[key] for p in points]
                (line,) = ax.plot(xs, ys, marker="o", label=label)
                spread = [p for p in points if p["n"] > 1]  # the best rate: its seeds' spread both ways
                ax.errorbar([p["learning"] for p in spread], [p[key] for p in spread], capsize=3, fmt="none",
                            xerr=[p["learning_sd"] for p in spread], yerr=[p[f"{key}_sd"] for p in spread],
                            ecolor=line.get_color())  # fmt: skip
                for p in points:
                    ax.annotate(f"{p['lr']:.0e}", (p["learning"], p[key]), textcoords="offset points", xytext=(4, 3),
                                fontsize=7, color=line.get_color())  # fmt: skip
        change = "gained" if info["higher_is_better"] else "lowered"
        row[0].set_ylabel("probe perplexity increase (%, symlog)")
        row[0].set_yscale("symlog", linthresh=10)  # a diverged rate (+1000s of %) would flatten every other point
        row[1].set_ylabel("probe questions lost (%)")
        for ax in row:
            ax.set_xlabel(f"learning: test {info['metric']} {change} over the base")
            ax.set_title(info["title"], fontsize=9)
            ax.axhline(0, color="grey", linewidth=0.8)
            ax.grid(alpha=0.3)
    axes[0][0].legend(loc="best", fontsize=8)
    fig.suptitle("learning vs forgetting, one curve per method through its rates (from the base model at 0, 0)")
    fig.tight_layout()
    atomic_write(output / IMAGES[1], lambda tmp: fig.savefig(tmp, dpi=110))
    plt.close(fig)
    return list(IMAGES)


def figures(payload: dict[str, Any], images: str = "", level: int = 2) -> str:
    """The report's body: command, machine and settings, then per task (headings at ``level``) the sweep, the seeds
    and forgetting at equal task score; the plots are linked at ``images``."""
    s = payload["settings"]
    base = next(iter(payload["base"].values()))
    n = base["probe"]["n_questions"]
    se = 100 * math.sqrt(2 * 0.75 * 0.25 / n) if n else math.nan
    compute = sum(t["seconds"] for t in payload["trials"]) / 60
    methods = "; ".join(
        f"{m['label']} (lr {' / '.join(f'{r:g}' for r in m['rates'])}{'' if m['swept'] else ', not swept'}"
        + (f", lora_alpha {m['lora_alpha']:g}" if "lora_alpha" in m else "")
        + ")"
        for m in s["methods"]
    )
    h2, h3 = "#" * level, "#" * (level + 1)
    lines = [
        f"- command: `{payload['command']}`",
        f"- machine: {payload['machine']}",
        f"- budget: {s['budget']['describe']}",
        f"- model: {s['model']}; methods: {methods}",
        f"- trials: {len(payload['trials'])}, {compute:.0f} min of training and scoring in all "
        f"({s['minutes_this_run']} min in the run that wrote this report; the rest was cached)",
        "- the best rate of each method is the one with the best validation score (a tie goes to the lower rate); "
        "every score below is on the test split, which no choice saw",
        f"- forgetting probe: perplexity on ordinary-text passages, and the {n} of {base['probe'].get('asked', n)} "
        f"short general questions the base model answers (whole-word match); with {n} questions, a difference in the "
        f"share kept has a standard error of about {se:.0f} points (at 75% kept)",
        "",
    ]
    for task, info in s["tasks"].items():
        seeds, notes = _seed_table(payload, task)
        lines += [
            f"{h2} {info['title']}", "",
            f"{info['steps']} steps x batch {info['batch_size']} for every method (sequences up to {info['seq_len']} "
            f"tokens); {info['about']}.", "",
            f"{h3} The sweep (seed 0)", "", _sweep_table(payload, task), "",
            f"{h3} At the best rate ({s['budget']['seeds']} seed(s); mean ± sample sd)", "", seeds, "",
            *[f"- {note}" for note in notes], *([""] if notes else []),
            f"{h3} Forgetting at equal task score", "",
            "Probe perplexity change / probe questions lost, interpolated along each method's curve of rates (its "
            "Pareto front from the base model) at the same test score (lorakit.cli.compare.analysis):", "",
            _equal_table(payload, task), "",
        ]  # fmt: skip
    lines += [f"![{name}]({images}{name})" for name in IMAGES]
    return "\n".join(lines)


def write_report(output: Path, payload: dict[str, Any]) -> Path:
    """results.json, the plots and report.md into ``output``; returns the report's path."""
    write_text_atomic(output / "results.json", json.dumps(payload, indent=2) + "\n")
    return render(output, payload)


def render(output: Path, payload: dict[str, Any]) -> Path:
    plot(payload, output)
    text = "# lorakit compare: LoRA vs full fine-tuning\n\n" + figures(payload)
    path = output / "report.md"
    write_text_atomic(path, text + "\n")
    return path


def refresh_docs(run: Path, page: Path) -> None:
    """Copy the run's report into ``compare-run/`` beside ``page`` and put its figures between the page's markers."""
    payload = json.loads((run / "results.json").read_text(encoding="utf-8"))
    text = page.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{page}: no {BEGIN} ... {END} block to fill")
    target = page.parent / "compare-run"
    target.mkdir(exist_ok=True)
    render(run, payload)
    for name in ("report.md", "results.json", *IMAGES):
        shutil.copyfile(run / name, target / name)
    head, rest = text.split(BEGIN, 1)
    block = f"{BEGIN}\n{figures(payload, 'compare-run/', level=3)}\n{END}"
    write_text_atomic(page, head + block + rest.split(END, 1)[1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lorakit.cli.compare.report", description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="the output folder of a lorakit compare run")
    parser.add_argument("--docs", type=Path, help="a documentation page with a compare figures block to refresh")
    args = parser.parse_args(argv)
    if args.docs:
        refresh_docs(args.run, args.docs)
    else:
        render(args.run, json.loads((args.run / "results.json").read_text(encoding="utf-8")))


if __name__ == "__main__":
    main()
