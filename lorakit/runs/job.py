"""``train_run``: a whole training job, from its settings to a finished run folder.

The trainer trains; a run does what a job does around it: load the base model (``lorakit.models``), own the run
folder (refuse to clobber a finished run, resume from its newest checkpoint), log metrics, evaluate and checkpoint
on schedule, and write the adapter, loss plot, model card and summary. What depends on the training method is the
recipe's (``lorakit.runs.recipe``). A run is deterministic for a given seed: adapter init, data order (a function
of seed and epoch) and dropout all come from seeded generator states, and a checkpoint stores them, so a resumed
run ends with the same adapter as an uninterrupted one.

The library changes nothing in the process for anyone else: what the command line does to it around a run
(starting torchrun's process group, tuning glibc's allocator) it passes in as ``RunHooks``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.distributed as dist
from tqdm import tqdm

from lorakit._version import __version__
from lorakit.errors import LorakitError
from lorakit.io import save_adapter
from lorakit.models import load_dtype, load_model, precision_name, resolve_device, resolve_precision
from lorakit.runs.card import model_card, plot_loss
from lorakit.runs.config import RunConfig, output_path
from lorakit.runs.folder import MetricsLog, QuietLog, RunFolder
from lorakit.runs.origin import recorded_name
from lorakit.runs.recipe import Recipe, Supervised
from lorakit.train.checkpoint import check_room, checkpoint_root
from lorakit.train.distributed import Processes
from lorakit.train.trainer import NonFiniteLoss, Trainer


def _around(_: str) -> AbstractContextManager[object]:
    return contextlib.nullcontext()


def _nothing() -> object:
    return None


@dataclass(frozen=True)
class RunHooks:
    """What the caller does to the process around a run; the defaults do nothing. ``lorakit train`` passes
    ``lorakit.cli.process.TRAIN_HOOKS``."""

    session: Callable[[str], AbstractContextManager[object]] = _around
    """Around the whole run, given ``--device``: where a torchrun process group is started and ended."""
    loading: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext
    """Around loading the model and tokenizing the data."""
    training: Callable[[], object] = _nothing
    """Once, after loading and before the trainer is built."""


@dataclass
class RunResult:
    output: Path
    steps: int
    final_loss: float
    seconds: float
    tokens: int
    trainable: int
    total: int


def train_run(
    config: RunConfig, hooks: RunHooks = RunHooks(), progress: bool = True, recipe: Recipe | None = None
) -> RunResult:
    """Run a whole training job (``lorakit train``): returns where the adapter, metrics, plot and model card were
    written. ``recipe``: how it trains (default: ``Supervised``, fine-tuning on ``config.data``)."""
    started = time.perf_counter()
    with hooks.session(config.device):
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
            raise LorakitError("under torchrun a run needs its process group started (lorakit train starts it)")
        return _train(config, hooks, progress, recipe or Supervised(config), started)


def _train(config: RunConfig, hooks: RunHooks, progress: bool, recipe: Recipe, started: float) -> RunResult:
    procs = Processes.join(config.fsdp)  # rank 0 writes, all ranks train
    # Where and in what precision the run computes, decided once: the model is loaded there, in the dtype its
    # frozen weights are stored in (full fine-tuning keeps fp32 master weights), and the trainer computes so.
    device = procs.device() if procs.world > 1 else resolve_device(config.device)
    compute = resolve_precision(config.precision, device)
    run = procs.on_main(lambda: prepare_folder(config))
    procs.on_main(run.clean_temporary)

    # ---- data (checked before the model is loaded: a broken line fails fast), model, tokens
    _log(procs, recipe.read())
    with hooks.loading():
        model, tokenizer = load_model(
            config.model, dtype=load_dtype(device, None if config.method == "full" else compute),
            quantize=config.quantize(), trust_remote_code=config.trust_remote_code, device=device,
        )  # fmt: skip
        recipe.tokenize(tokenizer)
    hooks.training()

    # ---- adapter (or the whole model), optimiser, schedule
    base = recorded_name(config.model)  # recorded in the adapter as base_model_name_or_path
    trainer = Trainer(model, tokenizer, config.training(precision=precision_name(compute)), base_model=base)
    initial = run.initial_adapter if config.converts_on_save() else None
    if initial is not None and procs.is_main and not (config.resume and initial.exists()):
        save_adapter(model, initial)  # PiSSA/OLoRA: what the final save converts against
    adapter_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    check_room(run.path, adapter_bytes, checkpoints=config.save_every > 0)
    total_steps = recipe.steps(trainer)

    # ---- resume
    checkpoints = procs.on_main(run.checkpoints) if config.resume else []
    if checkpoints:
        trainer.load_checkpoint(checkpoints[-1])
        if trainer.step_count >= total_steps and run.finished():
            raise LorakitError(
                f"{run.path}: the run already reached step {trainer.step_count} of {total_steps}; raise --max-steps "
                "to train on"
            )
        _log(procs, f"resumed from {checkpoints[-1]} at step {trainer.step_count}")
    elif config.resume:
        _log(procs, f"--resume: no checkpoint in {checkpoint_root(run.path)} yet, starting from step 0")
    start_step = trainer.step_count
    metrics = run.metrics_log(start_step if config.resume else None) if procs.is_main else QuietLog()
    evaluates = recipe.evaluates() and procs.evaluates
    last_eval: list[float] = []  # the eval loss of the last step, when the schedule measured it there

    def after_step(trainer: Trainer, m: dict[str, float]) -> None:
        step = int(m["step"])
        metrics.write(recipe.record(m))
        if evaluates and config.eval_every and step % config.eval_every == 0:
            eval_loss = recipe.evaluate(trainer)
            metrics.write({"kind": "eval", "step": step, "eval_loss": round(eval_loss, 5)})
            _log(procs, f"step {step}: eval loss {eval_loss:.4f}")
            if step == total_steps:
                last_eval.append(eval_loss)
        if config.save_every and (step % config.save_every == 0 or step == total_steps):
            trainer.save_checkpoint(run.path)  # the last checkpoint lets --resume extend a run

    try:
        result = recipe.fit(trainer, after_step, progress)
    except NonFiniteLoss as err:
        last = run.checkpoints()
        kept = f"the last good checkpoint is {last[-1]}" if last else "no checkpoint was written yet"
        raise LorakitError(f"loss became {err.loss} at step {err.step}; stopped ({kept}); try a lower --lr") from None

    # ---- results: adapter, plot, model card, then the summary that marks the run finished
    loss_value = result.final_loss
    if start_step >= total_steps:  # killed while writing the results: write them again
        loss_value = next((r["loss"] for r in reversed(metrics.read()) if r.get("kind") == "train"), loss_value)
    final: dict[str, Any] = {"train_loss": round(loss_value, 4)}
    if evaluates:
        final["eval_loss"] = round(last_eval[0] if last_eval else recipe.evaluate(trainer), 4)
        if not last_eval and not _has_eval(metrics, total_steps):  # the last step's evaluation is logged once
            metrics.write({"kind": "eval", "step": total_steps, "eval_loss": final["eval_loss"]})
    trainer.save(run.path, initial_adapter=initial)
    seconds = time.perf_counter() - started
    if not procs.is_main:
        return RunResult(run.path, total_steps, loss_value, seconds, result.tokens, result.trainable, result.total)
    logged = metrics.read()
    what = trainer.describe().split(":")[0]
    plot_loss(logged, run.plot_file, f"{what.split(' alpha')[0]} on {recipe.data_name()}")
    info = {
        "lorakit_version": __version__, "base_model": base, **recipe.summary(),
        "trainable": result.trainable, "total": result.total, "steps": total_steps,
        "tokens": sum(r.get("tokens", 0) for r in logged),
        "seconds": seconds, "precision": str(trainer.autocast or "fp32").replace("torch.", ""),
        "device": str(trainer.device),
        "hyperparameters": {k: v for k, v in config.to_dict().items() if k not in ("output", "resume", "overwrite")},
        "final": final, "output": str(run.path),
    }  # fmt: skip
    info.update(recipe.write_files(run))
    run.write_card(model_card(info))
    run.write_summary(info)
    return RunResult(run.path, total_steps, loss_value, seconds, result.tokens, result.trainable, result.total)


def prepare_folder(config: RunConfig) -> RunFolder:
    """Create (or check) the run folder before any compute is spent: refuse to clobber a finished run, or to resume
    one with other settings; write the settings."""
    run = RunFolder(output_path(config))
    if run.finished() and not (config.overwrite or config.resume):
        raise LorakitError(f"{run.path}: already holds a finished run; pass --overwrite to replace it or --resume")
    run.create()
    saved = run.read_config() if config.resume else None
    if saved is None and config.resume and run.config_file.exists():
        raise LorakitError(f"{run.config_file}: not valid JSON; it cannot say which run --resume continues")
    changed = config.changes_from(saved) if saved is not None else None
    if changed:
        raise LorakitError(f"{run.path}: --resume with different settings than the run it continues ({changed})")
    run.write_config(config.to_dict())
    if config.overwrite and not config.resume:  # a new run: nothing of the old one may be resumed or reported
        run.forget_finished()
    return run


def _has_eval(metrics: MetricsLog, step: int) -> bool:
    """Whether the log holds an evaluation of ``step`` (a run killed while writing its results logged it)."""
    return any(r.get("kind") == "eval" and r.get("step") == step for r in metrics.read())


def _log(procs: Processes, message: str) -> None:
    if procs.is_main:
        tqdm.write(f"lorakit: {message}")
