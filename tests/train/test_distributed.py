"""``torchrun`` with 2 CPU processes (gloo) trains the same adapter as 1 process with the global batch.

The reference is the plain single-process loop with batch 4; the distributed runs are the real launcher
(``python -m torch.distributed.run``) running ``python -m lorakit train`` with batch 2 per process. Their
checkpoints (DDP's and FSDP2's alike) hold what the single process's hold, and a killed run resumes to the
adapter of an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import lorakit
from lorakit.data.tokenize import TokenizedExample
from lorakit.errors import LorakitError
from lorakit.runs import RunConfig, train_run
from lorakit.train.distributed import Processes

REPO = Path(__file__).resolve().parents[2]
COMMON = dict(max_steps=3, lr=3e-3, warmup_steps=1, precision="fp32", seq_len=256, r=4, lora_alpha=8,
              lora_dropout=0.0, seed=0)  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _torchrun(n: int, model: Path, data: Path, output: Path, **flags: object) -> str:
    """Run ``lorakit train`` under the real torchrun with ``n`` CPU processes; returns its output.

    ``--`` ends torchrun's own flags: without it, its parser reads ``--r`` as an ambiguous ``--rdzv-*``.
    """
    args = [f"--{k.replace('_', '-')}={v}" for k, v in {**COMMON, **flags}.items() if not isinstance(v, bool)]
    args += [f"--{k}" for k, v in flags.items() if v is True]
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc-per-node={n}",
        "--master-addr=127.0.0.1", f"--master-port={_free_port()}", "-m", "lorakit", "--", "train",
        f"--model={model}", f"--data={data}", f"--output={output}", *args,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path, small_chat_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One process, batch 4: the adapter (and losses) two processes with batch 2 each must reproduce."""
    output = tmp_path_factory.mktemp("one-process")
    cfg = RunConfig(model=str(tiny_model_dir), data=str(small_chat_data), output=str(output), batch_size=4,
                      eval_data=str(small_chat_data), eval_every=2, save_every=2, **COMMON)  # type: ignore[arg-type]  # fmt: skip
    return train_run(cfg, progress=False).output


def _assert_same_and_trained(reference: Path, got: Path, model_dir: Path) -> None:
    a, b = _weights(reference), _weights(got)
    assert sorted(a) == sorted(b)
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert diff <= 1e-5, f"2 processes differ from 1 by {diff}"
    lora = RunConfig(r=4, lora_alpha=8).lora_config()
    init = lorakit.io.adapter_tensors(lorakit.add_adapter(lorakit.load_model(str(model_dir))[0], lora), "default")
    moved = max((b[k] - v).abs().max().item() for k, v in init.items())
    assert moved > 1e-3, "the adapter trained"


def _assert_same_checkpoint(reference: Path, got: Path) -> None:
    """A 2-process checkpoint is the folder 1 process writes: the same files, the adapter whole in peft's format,
    and the optimiser's moments (gathered whole under FSDP2) and schedule, numbered as torch.optim numbers them."""
    assert sorted(p.name for p in got.iterdir()) == sorted(p.name for p in reference.iterdir())
    config = [json.loads((folder / "adapter_config.json").read_text()) for folder in (got, reference)]
    assert config[0] == config[1]  # as values: the command line's lora_alpha 8.0 is the reference's 8
    a, b = _weights(reference), _weights(got)
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}, "whole tensors, not shards"
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5
    ours = torch.load(got / "trainer_state.pt", weights_only=True)
    theirs = torch.load(reference / "trainer_state.pt", weights_only=True)
    assert (ours["step"], ours["scheduler"]) == (theirs["step"], theirs["scheduler"])
    assert ours["optimizer"]["param_groups"] == theirs["optimizer"]["param_groups"]
    moments, expected = ours["optimizer"]["state"], theirs["optimizer"]["state"]
    assert sorted(moments) == sorted(expected)
    for i in expected:
        for name in ("step", "exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(moments[i][name], expected[i][name], rtol=1e-4, atol=1e-9)
    assert ours["extra"]["processes"] == 2 and len(ours["extra"]["rng_ranks"]) == 2, "every rank's RNG state"


@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp"])
def test_two_processes_train_the_adapter_of_one_process_with_the_global_batch(
    fsdp: bool, reference: Path, tiny_model_dir: Path, small_chat_data: Path, tmp_path: Path
) -> None:
    log = _torchrun(2, tiny_model_dir, small_chat_data, tmp_path / "run", batch_size=2, fsdp=fsdp,
                    eval_data=small_chat_data, eval_every=2, save_every=2)  # fmt: skip
    _assert_same_and_trained(reference, tmp_path / "run", tiny_model_dir)
    _assert_same_checkpoint(reference / "checkpoints" / "step-000002", tmp_path / "run" / "checkpoints" / "step-000002")
    assert "global batch 2 x 2 processes x 1 accumulation = 4 examples/step" in log
    assert json.loads((tmp_path / "run" / "adapter_config.json").read_text())["r"] == 4
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    expected = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["step"]) for r in records] == [(r["kind"], r["step"]) for r in expected], "rank 0 writes"
    for got, ref in zip(records, expected, strict=True):  # over all ranks' tokens, not a mean of rank means
        assert got.get("loss", got.get("eval_loss")) == pytest.approx(ref.get("loss", ref.get("eval_loss")), abs=1e-4)
        assert got.get("tokens") == ref.get("tokens")
    if not fsdp:
        trainable = sum(v.numel() * 4 for v in _weights(reference).values())
        assert f"all-reduced {trainable:,} bytes of gradients per step (measured)" in log


def test_two_processes_accumulate_like_one_process(tiny_model_dir: Path, small_chat_data: Path, tmp_path: Path) -> None:
    """Batch 1 x 2 processes x 2 micro-batches (gradients synced after the second only) = 1 process, 2 x 2."""
    single = RunConfig(model=str(tiny_model_dir), data=str(small_chat_data), output=str(tmp_path / "one"),
                         batch_size=2, grad_accum=2, **COMMON)  # type: ignore[arg-type]  # fmt: skip
    expected = train_run(single, progress=False).output
    _torchrun(2, tiny_model_dir, small_chat_data, tmp_path / "two", batch_size=1, grad_accum=2)
    _assert_same_and_trained(expected, tmp_path / "two", tiny_model_dir)


# Two (DDP) or four (FSDP2) torchrun launches of two processes each; .ci/run runs the slow marker after make test.
@pytest.mark.slow
@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp"])
def test_two_processes_resume_to_the_adapter_of_an_uninterrupted_run(
    fsdp: bool, tiny_model_dir: Path, small_chat_data: Path, tmp_path: Path
) -> None:
    """With dropout, so each rank's own RNG state must come back from the checkpoint. Under FSDP2 the adapter and
    the AdamW moments are sharded in memory, gathered whole into the checkpoint and sharded again on resume."""
    out = tmp_path / "two"
    flags = dict(batch_size=2, save_every=2, lora_dropout=0.1, fsdp=fsdp)
    _torchrun(2, tiny_model_dir, small_chat_data, out, **flags)
    uninterrupted = _weights(out)

    # As if killed after the step-2 checkpoint: the step-3 checkpoint, adapter and summary never written.
    shutil.rmtree(out / "checkpoints" / "step-000003")
    for name in ("adapter_model.safetensors", "train_summary.json"):
        (out / name).unlink()
    cfg = RunConfig(model=str(tiny_model_dir), data=str(small_chat_data), output=str(out), resume=True,
                      **{**COMMON, **flags})  # type: ignore[arg-type]  # fmt: skip
    with pytest.raises(LorakitError, match="written by 2 processes, resumed with 1"):
        train_run(cfg, progress=False)
    log = _torchrun(2, tiny_model_dir, small_chat_data, out, **flags, resume=True)
    assert "at step 2" in log
    resumed = _weights(out)
    assert all(torch.equal(uninterrupted[k], resumed[k]) for k in resumed), "resumed = uninterrupted"
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3], "no step lost, none twice"


@pytest.mark.parametrize("rows", [7, 2, 1])
def test_rank_slices_cover_a_global_batch_once(rows: int) -> None:
    examples = [TokenizedExample(input_ids=[5, 6, 7 + i], labels=[-100, 6, 7 + i]) for i in range(rows)]
    order = list(range(rows))[::-1]
    parts = [Processes(rank=k, world=3).part(order) for k in range(3)]
    assert [row for part in parts for row in part] == order, "contiguous slices, in order, each row once"
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    for k, part in enumerate(parts):
        batch = Processes(rank=k, world=3).batch(examples, order, pad_id=0)
        assert batch["input_ids"].shape[1] == 3
        assert Processes(rank=k, world=3).batch(examples, order, 0, pad_to_multiple_of=8)["input_ids"].shape[1] == 8
        if part:
            assert batch["input_ids"][:, 2].tolist() == [7 + i for i in part]
        else:  # nothing left for this rank: one row that joins the all-reduce with no label to learn
            assert batch["input_ids"].shape[0] == 1 and (batch["labels"] == -100).all()
