"""Nothing lost on a crash: SIGKILL `lorakit train` at random moments, including inside a checkpoint write,
resume each time, and end with the adapter of an uninterrupted run."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from lorakit.runs import RunConfig, train_run

STEPS = 12
# Runs `lorakit train` with the checkpoint write slowed down after its adapter half, announcing the moment with
# a marker file, so that the test can kill the process inside the write.
SLOW_CHECKPOINT = """
import sys, time, pathlib
import lorakit.train.checkpoint as checkpoint
marker = pathlib.Path(sys.argv[1])
original = checkpoint.save_adapter
def slow_save(model, folder, *args, **kwargs):
    out = original(model, folder, *args, **kwargs)
    marker.write_text(str(folder))
    time.sleep(30)
    return out
checkpoint.save_adapter = slow_save
from lorakit.cli import main
raise SystemExit(main(sys.argv[2:]))
"""


def _args(model_dir: Path, data: Path, output: Path) -> list[str]:
    return ["train", "--model", str(model_dir), "--data", str(data), "--output", str(output), "--max-steps",
            str(STEPS), "--batch-size", "4", "--save-every", "1", "--precision", "fp32", "--lr", "3e-3",
            "--warmup-steps", "1", "--r", "4", "--lora-alpha", "8", "--seq-len", "256"]  # fmt: skip


def _steps_logged(output: Path) -> int:
    path = output / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def _start(cmd: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)


def test_sigkill_then_resume_ends_with_the_uninterrupted_adapter(
    tiny_model_dir: Path, small_chat_data: Path, tmp_path: Path
) -> None:
    reference_args = _args(tiny_model_dir, small_chat_data, tmp_path / "reference")
    flags = dict(zip(reference_args[1::2], reference_args[2::2], strict=True))
    reference = train_run(
        RunConfig(model=flags["--model"], data=flags["--data"], output=flags["--output"], max_steps=STEPS,
                    batch_size=4, save_every=1, precision="fp32", lr=3e-3, warmup_steps=1, r=4, lora_alpha=8,
                    seq_len=256),
        progress=False,
    )  # fmt: skip

    out = tmp_path / "killed"
    train = [sys.executable, "-m", "lorakit", *_args(tiny_model_dir, small_chat_data, out)]
    rng = random.Random(0)
    kills: list[str] = []
    # 1. killed at a random step of the loop
    proc = _start(train)
    target = rng.randint(2, STEPS // 3)
    while _steps_logged(out) < target and proc.poll() is None:
        time.sleep(0.05)
    _kill(proc)
    kills.append(f"after step {_steps_logged(out)}")
    # 2. killed inside a checkpoint write (adapter written, trainer state not yet)
    marker = tmp_path / "in-checkpoint"
    proc = _start([sys.executable, "-c", SLOW_CHECKPOINT, str(marker), *train[3:], "--resume"])
    while not marker.exists() and proc.poll() is None:
        time.sleep(0.05)
    _kill(proc)
    assert marker.exists(), "the run reached a checkpoint write"
    kills.append(f"inside the write of {Path(marker.read_text()).name}")
    half = [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".") and ".tmp-" in p.name]
    assert half, "a half-written checkpoint"
    # 3. killed again at a random moment (a random time after training restarted, not a step boundary)
    before = _steps_logged(out)
    proc = _start([*train, "--resume"])
    while _steps_logged(out) <= before and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(rng.uniform(0.0, 0.5))
    if proc.poll() is None:
        _kill(proc)
        kills.append(f"at a random time, after step {_steps_logged(out)}")
        # 4. resumed to the end
        done = subprocess.run([*train, "--resume"], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr

    a = load_file(reference.output / "adapter_model.safetensors")
    b = load_file(out / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6, kills
    assert len(kills) >= 2
    steps = [int(line.split('"step": ')[1].split(",")[0]) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1)), "each step logged once"
    assert not any((p.name.startswith(".") and ".tmp-" in p.name) for p in (out / "checkpoints").iterdir())
    assert torch.isfinite(torch.cat([t.flatten() for t in b.values()])).all()
    assert os.path.exists(out / "train_summary.json")
