"""Peak RSS of `lorakit train` against `lorakit plan`'s estimate at the same settings (built-in model, CPU).

Runs `python -m lorakit train --max-steps 3` (default settings: LoRA r=16 on all-linear, batch 8, bf16 autocast
where the CPU has it) in a subprocess and samples its VmRSS every 10 ms. "Training memory" is the peak RSS
during the steps minus the RSS of the runtime (a process that imported lorakit's trainer and tokenised the
data, but holds no model): the part the plan estimates. The plan is run for the largest micro-batch of those
steps (its padded length and label share, recomputed here with the trainer's own batching).

    python bench/plan_memory.py          # writes bench/results/plan_memory.json
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

STEPS = 3
RUNTIME = """
import os
from lorakit.data.jsonl import read_jsonl
from lorakit.data.tokenize import tokenize_dataset
from lorakit.tasks.contacts import builtin_path
from transformers import AutoTokenizer
from lorakit.models import builtin_model_dir
tok = AutoTokenizer.from_pretrained(builtin_model_dir())
examples, _ = tokenize_dataset(tok, read_jsonl(builtin_path("train")), 384)
print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmRSS')) * 1024)
"""


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        return next(int(line.split()[1]) * 1024 for line in handle if line.startswith("VmRSS"))


def measure_train(output: str) -> dict[str, int]:
    """Peak RSS over the whole run, the RSS when training starts, and the peak after that."""
    cmd = [sys.executable, "-m", "lorakit", "train", "--max-steps", str(STEPS), "--output", output, "--overwrite"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # tqdm.write: stdout
    started = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "trainable of" in line:  # logged after the model and adapter are in place, before step 1
                started.set()

    threading.Thread(target=read, daemon=True).start()
    peak = at_start = peak_training = 0
    while proc.poll() is None:
        try:
            now = rss(proc.pid)
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            break
        peak = max(peak, now)
        if started.is_set():
            at_start = at_start or now
            peak_training = max(peak_training, now)
        time.sleep(0.01)
    proc.wait()
    return {"peak": peak, "at_start": at_start, "peak_training": peak_training}


def largest_batch() -> tuple[int, int, int]:
    """(batch size, padded length, label tokens) of the largest micro-batch among the first STEPS."""
    from lorakit.data.jsonl import read_jsonl
    from lorakit.data.tokenize import tokenize_dataset
    from lorakit.loss import label_count
    from lorakit.tasks.contacts import builtin_path
    from lorakit.train.config import TrainConfig
    from lorakit.train.trainer import MicroBatches

    config = TrainConfig()
    from transformers import AutoTokenizer

    from lorakit.models import builtin_model_dir

    tokenizer = AutoTokenizer.from_pretrained(builtin_model_dir())
    examples, _ = tokenize_dataset(tokenizer, read_jsonl(builtin_path("train")), config.seq_len)
    pad_id = tokenizer.pad_token_id or tokenizer.eos_token_id
    batches = MicroBatches(
        examples, config.batch_size, config.seed, pad_id, pad_to_multiple_of=config.pad_to_multiple_of
    )
    shapes = [(b["input_ids"].shape, label_count(b)) for b in (batches[m] for m in range(STEPS))]
    (rows, length), labels = max(shapes, key=lambda s: s[0][0] * s[0][1])
    return int(rows), int(length), labels


def main() -> None:
    from lorakit.plan import PlanSettings, plan_methods

    runtime = int(subprocess.run([sys.executable, "-c", RUNTIME], capture_output=True, text=True, check=True).stdout)
    with tempfile.TemporaryDirectory() as tmp:
        measured = measure_train(tmp)
    rows, length, labels = largest_batch()
    # lorakit train stores the frozen base in bf16 and computes in bf16 (--precision auto): plan's "bf16" model.
    settings = PlanSettings(
        r=16, batch_size=rows, seq_len=length, label_fraction=labels / (rows * length), precision="bf16"
    )
    _, _, plans = plan_methods(None, settings, ("lora",))
    estimate = plans["lora"].memory
    training = measured["peak_training"] - runtime
    mb = 1e6
    result = {
        "name": "plan_memory",
        "title": "lorakit plan's memory estimate against the peak RSS of lorakit train (built-in model, CPU)",
        "command": "python bench/plan_memory.py",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_implementation()} "
        f"{platform.python_version()}",
        "columns": ["quantity", "MB"],
        "rows": [
            ["runtime RSS (imports, tokenizer, data; no model)", round(runtime / mb)],
            ["RSS when step 1 starts", round(measured["at_start"] / mb)],
            ["peak RSS during the steps", round(measured["peak_training"] / mb)],
            ["peak RSS of the whole run (VmHWM incl. model load)", round(measured["peak"] / mb)],
            ["measured training memory (peak during steps - runtime)", round(training / mb)],
            ["plan: weights", round(estimate.weights / mb)],
            ["plan: gradients", round(estimate.gradients / mb)],
            ["plan: optimizer", round(estimate.optimizer / mb)],
            ["plan: activations", round(estimate.activations / mb)],
            ["plan: total", round(estimate.total / mb)],
        ],
        "notes": f"lorakit train --max-steps {STEPS} (LoRA r=16, all-linear, batch 8, bf16 base; plan --precision "
        f"bf16); largest micro-batch {rows} x {length} tokens with {labels} label tokens; plan/measured = "
        f"{estimate.total / training:.2f}",
    }
    out = Path(__file__).parent / "results" / "plan_memory.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for row in result["rows"]:
        print(f"{row[0]:60} {row[1]:>8}")
    print(result["notes"])


if __name__ == "__main__":
    main()
