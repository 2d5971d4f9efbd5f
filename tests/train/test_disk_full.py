"""A full disk: refused before training when the room is visibly missing, and at save time without touching the
last good checkpoint. Real full disks where this machine lets the test mount a small tmpfs, a simulated one always.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from lorakit.errors import DiskFullError
from lorakit.runs import RunConfig, train_run
from lorakit.train import checkpoint
from lorakit.train import trainer as trainer_module


def _config(model: Path, data: Path, out: Path, **overrides: Any) -> RunConfig:
    settings: dict[str, Any] = {"model": str(model), "data": str(data), "output": str(out), "r": 2, "batch_size": 2,
                                "max_steps": 3, "save_every": 1, "precision": "fp32",
                                "target_modules": "q_proj,v_proj"}  # fmt: skip
    settings.update(overrides)
    return RunConfig(**settings)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: a real device that fills up."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("mounting a small tmpfs needs root; test_disk_full_at_save_time_simulated covers the same code")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder: Path) -> None:
    """Take every free byte of the device ``folder`` is on."""
    with open(folder / "filler", "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError as err:
            assert err.errno == errno.ENOSPC


def _check_last_good(out: Path, step: int) -> None:
    kept = checkpoint.list_checkpoints(out)
    assert [p.name for p in kept] == [f"step-{step:06d}"]
    load_file(kept[0] / "adapter_model.safetensors")  # whole and loadable
    assert not list((out / "checkpoints").glob(".*tmp-*")), "a half-written checkpoint was left behind"


def test_no_room_is_refused_before_training(
    tiny_model_dir: Path, small_chat_data: Path, small_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkpoint, "KEEP", 10**6)  # checkpoints that would need far more than the 1 MiB there
    started = []
    monkeypatch.setattr("lorakit.train.distributed.token_loss_sum", lambda *a, **k: started.append(1))
    with pytest.raises(DiskFullError, match=r"MiB free on its device"):
        train_run(_config(tiny_model_dir, small_chat_data, small_disk / "run"), progress=False)
    assert not started


def test_disk_full_at_save_time_real_device(
    tiny_model_dir: Path, small_chat_data: Path, small_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = small_disk / "run"
    real_save = trainer_module.save_checkpoint

    def save_then_fill(output: Path, *args: Any, **kwargs: Any) -> Path:
        saved = real_save(output, *args, **kwargs)
        _fill(small_disk)  # the next checkpoint finds no room
        return saved

    monkeypatch.setattr(trainer_module, "save_checkpoint", save_then_fill)
    with pytest.raises(DiskFullError, match=r"step 2; the last good checkpoint .*step-000001 is untouched"):
        train_run(_config(tiny_model_dir, small_chat_data, out), progress=False)
    _check_last_good(out, 1)


def test_disk_full_at_save_time_simulated(
    tiny_model_dir: Path, small_chat_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    real_fsync = os.fsync
    saves = {"n": 0}
    real_save = trainer_module.save_checkpoint

    def counting_save(*args: Any, **kwargs: Any) -> Path:
        saves["n"] += 1
        return real_save(*args, **kwargs)

    def fsync(fd: int) -> None:
        if saves["n"] >= 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(trainer_module, "save_checkpoint", counting_save)
    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(DiskFullError, match=r"step 2; the last good checkpoint .*step-000001 is untouched"):
        train_run(_config(tiny_model_dir, small_chat_data, out), progress=False)
    _check_last_good(out, 1)
