"""The primitives inside a process group: DPO steps (``log_probs``, ``forward_backward`` with a callable loss,
``optim_step``) under ``torchrun`` with 2 CPU processes (gloo) train the adapter of 1 process with the global batch,
and each rank samples its own completions, whose log-probabilities are a forward pass's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.train.test_distributed import _free_port

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("post_worker.py")


def _run(model: Path, out: Path, batch_size: int, processes: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, str(WORKER), str(model), str(out), str(batch_size)]
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc-per-node={processes}",
                   "--master-addr=127.0.0.1", f"--master-port={_free_port()}", *command[1:]]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out / "result.json").read_text())


def test_two_processes_train_dpo_like_one_and_sample_their_own(tiny_model_dir: Path, tmp_path: Path) -> None:
    one = _run(tiny_model_dir, tmp_path / "one", batch_size=4, processes=1)
    two = _run(tiny_model_dir, tmp_path / "two", batch_size=2, processes=2)
    assert two["world"] == 2
    for a, b in zip(one["history"], two["history"], strict=True):
        for key in ("loss", "rewards/margins", "rewards/accuracies", "grad_norm", "tokens"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
    wa, wb = (load_file(tmp_path / name / "adapter_model.safetensors") for name in ("one", "two"))
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) <= 1e-5
    assert one["history"][1]["rewards/margins"] != 0, "the adapter moved"
    rank0, rank1 = two["samples"]
    assert rank0 != rank1, "each rank draws its own samples (seed + rank)"
    assert rank0 == one["samples"][0], "rank 0 draws what one process draws"
    assert two["log_prob_gap"] < 1e-4 and one["log_prob_gap"] < 1e-4
