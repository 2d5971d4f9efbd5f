"""Under Ray Train, the Python API trains the adapter the 2-process torchrun run trains, in Ray's process group.

A ``TorchTrainer`` with 2 CPU workers starts a gloo process group in each worker before it calls the per-worker
function; that function uses only lorakit's public API (``load_model``, ``Trainer``, ``fit``, ``save``,
``save_checkpoint``/``load_checkpoint``). The reference is the real ``torchrun`` running ``lorakit train`` with
the same settings. Ray is slow to start and heavy to install: these tests carry the ``ray`` marker, which
``make test`` leaves out and ``make test-extra`` (run by ``.ci/run``) runs after installing ``lorakit[ray]``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.train.test_distributed import COMMON, _assert_same_and_trained, _torchrun, _weights

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[2]


def _per_worker(cfg: dict[str, Any]) -> None:
    """What each Ray worker runs: DDP, FSDP2, and FSDP2 resumed from a checkpoint, through the public API only.

    Results go to ``<name>-rank<k>`` folders so that a write by any rank but 0 would show.
    """
    import torch.distributed as dist

    import lorakit

    out, rank = Path(cfg["out"]), dist.get_rank()
    seen: dict[str, Any] = {"initialised_before": dist.is_initialized(), "init_calls": 0}
    world_group = dist.group.WORLD
    real_init = dist.init_process_group

    def counting_init(*args: Any, **kwargs: Any) -> None:
        seen["init_calls"] += 1
        real_init(*args, **kwargs)

    def trainer(fsdp: bool) -> lorakit.Trainer:
        model, tokenizer = lorakit.load_model(cfg["model"])
        config = lorakit.TrainConfig(batch_size=2, fsdp=fsdp, **COMMON)  # type: ignore[arg-type]
        return lorakit.Trainer(model, tokenizer, config)

    def checkpoint_at_2(t: lorakit.Trainer, metrics: dict[str, float]) -> None:
        if metrics["step"] == 2:
            t.save_checkpoint(out / "fsdp-checkpoints")  # every rank calls it, rank 0 writes

    dist.init_process_group = counting_init  # type: ignore[assignment]  # a second group would be counted here
    try:
        ddp = trainer(fsdp=False)
        seen.update(world=ddp.procs.world, rank=ddp.procs.rank, backend=ddp.procs.backend)
        ddp.fit(cfg["data"], progress=False)
        ddp.save(out / f"ddp-rank{rank}")

        fsdp = trainer(fsdp=True)
        fsdp.fit(cfg["data"], progress=False, on_step=checkpoint_at_2)
        fsdp.save(out / f"fsdp-rank{rank}")

        resumed = trainer(fsdp=True)
        resumed.load_checkpoint(out / "fsdp-checkpoints" / "checkpoints" / "step-000002")
        seen["resumed_at"] = resumed.step_count
        resumed.fit(cfg["data"], progress=False)
        resumed.save(out / f"fsdp-resumed-rank{rank}")

        # A state taken before the first step (no AdamW moments yet) loads back as it was.
        at_zero = trainer(fsdp=True)
        at_zero.load_state_dict(at_zero.state_dict())
        at_zero.fit(cfg["data"], progress=False)
        at_zero.save(out / f"fsdp-from-0-rank{rank}")
        seen["same_group"] = dist.group.WORLD is world_group and dist.get_world_size() == 2
    finally:
        dist.init_process_group = real_init  # type: ignore[assignment]
    (out / f"seen-rank{rank}.json").write_text(json.dumps(seen))


@pytest.fixture(scope="module")
def ray_run(tiny_model_dir: Path, small_chat_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    out = tmp_path_factory.mktemp("ray")
    # The workers import this checkout's lorakit and this test module (the per-worker function is pickled by name).
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    try:
        TorchTrainer(
            _per_worker,
            train_loop_config={"model": str(tiny_model_dir), "data": str(small_chat_data), "out": str(out)},
            scaling_config=ScalingConfig(num_workers=2, use_gpu=False),
            run_config=RunConfig(storage_path=str(out / "ray-results"), name="lorakit"),
        ).fit()
    finally:
        ray.shutdown()
    return out


@pytest.fixture(scope="module")
def torchrun_ddp(tiny_model_dir: Path, small_chat_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``torchrun`` with 2 processes running ``lorakit train``, batch 2 each: the adapter Ray must reproduce."""
    out = tmp_path_factory.mktemp("torchrun") / "run"
    _torchrun(2, tiny_model_dir, small_chat_data, out, batch_size=2)
    return out


def test_the_trainer_joins_rays_process_group_and_starts_none(ray_run: Path) -> None:
    for k in range(2):
        seen = json.loads((ray_run / f"seen-rank{k}.json").read_text())
        assert seen["initialised_before"], "Ray started the process group before the trainer existed"
        assert (seen["world"], seen["rank"], seen["backend"]) == (2, k, "gloo")
        assert seen["init_calls"] == 0, "the trainer never starts a process group"
        assert seen["same_group"]
    written = {p.name for p in ray_run.iterdir()} - {"seen-rank0.json", "seen-rank1.json", "ray-results"}
    assert written == {"ddp-rank0", "fsdp-rank0", "fsdp-resumed-rank0", "fsdp-from-0-rank0", "fsdp-checkpoints"}, (
        "rank 0 alone writes"
    )


@pytest.mark.parametrize("run", ["ddp", "fsdp"])
def test_ray_workers_train_the_adapter_of_the_torchrun_run(
    run: str, ray_run: Path, torchrun_ddp: Path, tiny_model_dir: Path
) -> None:
    _assert_same_and_trained(torchrun_ddp, ray_run / f"{run}-rank0", tiny_model_dir)  # <= 1e-5, the DDP test's
    assert json.loads((ray_run / f"{run}-rank0" / "adapter_config.json").read_text())["r"] == 4


def test_an_fsdp2_checkpoint_under_ray_resumes_to_the_uninterrupted_adapter(ray_run: Path) -> None:
    """From a checkpoint at step 2, and from a ``state_dict`` taken before the first step."""
    assert all(json.loads((ray_run / f"seen-rank{k}.json").read_text())["resumed_at"] == 2 for k in range(2))
    uninterrupted = _weights(ray_run / "fsdp-rank0")
    for name in ("fsdp-resumed-rank0", "fsdp-from-0-rank0"):
        resumed = _weights(ray_run / name)
        assert sorted(uninterrupted) == sorted(resumed)
        assert all(torch.equal(uninterrupted[k], resumed[k]) for k in resumed), f"{name} = uninterrupted"
    folder = ray_run / "fsdp-checkpoints" / "checkpoints" / "step-000002"
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                       "trainer_state.pt"]  # fmt: skip
    state = torch.load(folder / "trainer_state.pt", weights_only=True)
    assert state["step"] == 2 and len(state["extra"]["rng_ranks"]) == 2, "every rank's RNG state"
