"""Does a training run's memory stay flat? ``lorakit train`` on the demo's settings, with and without padding.

    python -m bench.rss_creep [--steps 120] [--multiples 1,8] [--quick]

Each configuration is one real ``lorakit train`` process (the built-in model and contacts data, the demo's
defaults) run for ``--steps`` steps with a different ``--pad-to-multiple-of``; its metrics.jsonl logs the
process's peak RSS after every step. Padding 1 leaves every batch its own length (about 90 distinct lengths in
the demo's 240 steps), 8 rounds them up (16 distinct). The runs alternate when ``--repeats`` > 1. ``--quick``
trains a tiny random model instead (checks the harness; its numbers mean nothing). Writes
bench/results/rss_creep.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import RESULTS, ROOT, child_env, median, print_table, write_result


def _tiny_model(folder: Path) -> Path:
    """A 2-layer random Llama with the built-in tokenizer (for ``--quick``)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from lorakit.models import builtin_model_dir

    tokenizer = AutoTokenizer.from_pretrained(builtin_model_dir())
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def run(multiple: int, steps: int, work: Path, model: Path | None) -> dict[str, Any]:
    """One ``lorakit train`` process; returns its per-step records."""
    out = work / f"pad{multiple}"
    argv = [sys.executable, "-m", "lorakit", "train", "--output", str(out), "--overwrite", "--max-steps", str(steps),
            "--pad-to-multiple-of", str(multiple)]  # fmt: skip
    if model is not None:
        argv += ["--model", str(model)]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=child_env())
    if proc.returncode != 0:
        raise RuntimeError(f"lorakit train --pad-to-multiple-of {multiple} failed:\n{proc.stderr[-3000:]}")
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return {"records": [r for r in map(json.loads, lines) if r.get("kind") == "train"]}


def row(multiple: int, runs: list[dict[str, Any]], marks: list[int]) -> list[Any]:
    """Medians over the repeats: peak RSS at each mark, its growth, s/step and tokens/s after the first step."""
    peaks = [median([r["records"][m - 1]["peak_rss_mb"] for r in runs]) for m in marks]
    seconds = median([median([x["seconds"] for x in r["records"][1:]]) for r in runs])
    rate = median(
        [sum(x["tokens"] for x in r["records"][1:]) / sum(x["seconds"] for x in r["records"][1:]) for r in runs]
    )
    label = "off (every batch its own length)" if multiple == 1 else f"--pad-to-multiple-of {multiple}"
    return [label, *(round(p) for p in peaks), f"{peaks[-1] / peaks[0]:.2f}x", round(seconds, 3), round(rate)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--multiples", default="1,8")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    multiples = [int(m) for m in args.multiples.split(",")]
    runs: dict[int, list[dict[str, Any]]] = {m: [] for m in multiples}
    with tempfile.TemporaryDirectory(prefix="lorakit-rss-creep-") as tmp:
        model = _tiny_model(Path(tmp) / "tiny") if args.quick else None
        for k in range(args.repeats):
            for m in multiples if k % 2 == 0 else multiples[::-1]:  # alternate the order between repeats
                runs[m].append(run(m, args.steps, Path(tmp), model))
                print(f"done: pad {m}, run {k + 1}", file=sys.stderr)
    marks = sorted({1, min(10, args.steps), max(1, args.steps // 2), args.steps})
    columns = [
        "batch lengths",
        *(f"peak RSS MiB after step {m}" for m in marks),
        "last / first",
        "median s/step",
        "tokens/s",
    ]
    rows = [row(m, runs[m], marks) for m in multiples]
    command = f"python -m bench.rss_creep --steps {args.steps} --multiples {args.multiples} --repeats {args.repeats}"
    notes = (
        f"{'Tiny random Llama (--quick: harness check only)' if args.quick else 'SmolLM2-135M-Instruct'}, "
        "`lorakit train` with the demo's defaults (LoRA r=16 all-linear, batch 8 of the built-in contacts data, "
        f"bf16), {args.steps} steps, each configuration its own process, {args.repeats} run(s) each (medians). "
        "Peak RSS is the process's high-water mark so far (ru_maxrss, model load included), as metrics.jsonl logs "
        "it; tokens/s counts real (unpadded) tokens, so padding's extra work shows as a lower rate."
    )
    path = write_result("rss_creep", "Peak RSS over a training run, with and without length padding", command,
                        columns, rows, notes, args.out)  # fmt: skip
    print_table(columns, rows)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
