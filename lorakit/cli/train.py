"""``lorakit train``: a run folder around ``lorakit.Trainer``.

The trainer trains; this module does what a command does around it: load the base model, own the output folder
(refuse to clobber a finished run, resume from its newest checkpoint), log metrics, evaluate and checkpoint on
schedule, and write the adapter, loss plot, model card and summary. Under torchrun it starts the process group
the trainer joins. A run is deterministic for a given seed: adapter init, data order (a function of seed and
epoch) and dropout all come from seeded generator states, and a checkpoint stores them, so a resumed run ends
with the same adapter as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch.distributed as dist
from tqdm import tqdm

from lorakit._version import __version__
from lorakit.cli.common import config_flags, offline_unless_hub_reachable, train_config_from
from lorakit.cli.process import fix_mmap_threshold, loading_heap
from lorakit.cli.run_folder import (
    CONFIG_FILE,
    INITIAL_ADAPTER,
    SUMMARY_FILE,
    MetricsLog,
    QuietLog,
    model_card,
    plot_loss,
)
from lorakit.data.dataset import tokenize_data
from lorakit.data.formats import DataFormat, shared_system_prompt
from lorakit.data.jsonl import Records
from lorakit.data.sources import read_data
from lorakit.errors import LorakitError
from lorakit.files import write_text_atomic
from lorakit.io import save_adapter
from lorakit.models import load_dtype, load_model, resolve_device, resolve_precision
from lorakit.origin import SYSTEM_PROMPT_FILE, recorded_name
from lorakit.tasks.contacts import TRAINING as BUILTIN_TRAINING
from lorakit.tasks.contacts import builtin_path
from lorakit.train.checkpoint import check_room, clean_temporary, list_checkpoints
from lorakit.train.config import TrainConfig
from lorakit.train.distributed import Processes
from lorakit.train.trainer import NonFiniteLoss, Trainer


@dataclass(frozen=True)
class RunConfig(TrainConfig):
    """``lorakit train``'s settings: the trainer's (``TrainConfig``) and the run's own, each a flag and a YAML key."""

    model: str | None = None
    """Base model: None for the built-in SmolLM2-135M-Instruct, a folder, a .gguf file or a hub id."""
    data: str | None = None
    """Training data: .jsonl, .json, .csv, .parquet, a save_to_disk folder or a Hub dataset; None: the built-in set."""
    data_format: DataFormat = "auto"
    """Record format of --data and --eval-data; auto: read from the first record's keys."""
    eval_data: str | None = None
    """Held-out data for the eval loss (any --data source); None for none."""
    eval_split: float = 0.0
    """Without --eval-data: hold out this share of --data (e.g. 0.05) for the eval loss."""
    output: str | None = None
    """Output folder; None for ``runs/<timestamp>``."""
    save_every: int = 0
    """Checkpoint every N steps (0 = only the final adapter)."""
    eval_every: int = 0
    """Eval loss every N steps on ``eval_data`` (0 = never)."""
    resume: bool = False
    """Continue from the newest checkpoint in ``output``."""
    overwrite: bool = False
    """Allow writing into an output folder that holds a finished run."""
    trust_remote_code: bool = False
    """Let the model folder run its own Python code (its config's auto_map); only for models you trust."""
    device: str = "auto"
    """Where to train: auto (CUDA, then MPS, then the CPU), cpu, cuda, cuda:N or mps (torchrun: each rank's GPU)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("save_every", "eval_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be an integer >= 0, got {value!r}")
        split = self.eval_split
        if isinstance(split, bool) or not isinstance(split, (int, float)) or not 0 <= split < 1:
            raise ValueError(f"--eval-split must be a share in [0, 1), got {split!r}")
        if split and self.eval_data:
            raise ValueError("give --eval-data or --eval-split, not both")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> RunConfig:
        """As ``TrainConfig.from_dict``; without ``data``, the built-in task's settings (``lorakit.tasks.contacts.
        TRAINING``) fill what ``data`` leaves unset, so ``lorakit train`` with no flags is the demo's run."""
        given = {str(k).replace("-", "_") for k in data}
        if not data.get("data"):
            data = {**{k: v for k, v in BUILTIN_TRAINING.items() if k not in given}, **data}
        return super().from_dict(data, source)  # type: ignore[return-value]


# Fields a resumed run may change; any other difference means a different run. pad_to_multiple_of only pads
# the same batches further (the loss is the same up to rounding), so a run from before the flag resumes too; a run
# may go on on another device (the same computation up to rounding; dropout masks come from that device's generator),
# or with or without compiled layers (the same computation up to rounding).
RESUMABLE_CHANGES = {
    "resume", "overwrite", "output", "max_steps", "epochs", "save_every", "eval_every", "trust_remote_code",
    "pad_to_multiple_of", "device", "compile",
}  # fmt: skip


@dataclass
class RunResult:
    output: Path
    steps: int
    final_loss: float
    seconds: float
    tokens: int
    trainable: int
    total: int


def output_path(config: RunConfig) -> Path:
    """``--output``, or ``runs/<timestamp>`` when it is not given."""
    return Path(config.output or Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S"))


def prepare_output(config: RunConfig) -> Path:
    """Create (or check) the output folder before any compute is spent; refuse to clobber a finished run."""
    output = output_path(config)
    finished = (output / SUMMARY_FILE).exists()
    if finished and not (config.overwrite or config.resume):
        raise LorakitError(f"{output}: already holds a finished run; pass --overwrite to replace it or --resume")
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / ".write-test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise LorakitError(f"{output}: cannot write to the output folder ({err.strerror})") from None
    saved = output / CONFIG_FILE
    if config.resume and saved.exists():
        before = json.loads(saved.read_text(encoding="utf-8"))
        now = config.to_dict()
        # A setting the saved run predates had its default there (runs outlive new flags).
        defaults = RunConfig().to_dict()
        changed = sorted(k for k in now if k not in RESUMABLE_CHANGES and before.get(k, defaults[k]) != now[k])
        if changed:
            diffs = ", ".join(f"{k}: {before.get(k, defaults[k])!r} -> {now[k]!r}" for k in changed)
            raise LorakitError(f"{output}: --resume with different settings than the run it continues ({diffs})")
    write_text_atomic(saved, json.dumps(config.to_dict(), indent=2) + "\n")
    if config.overwrite and not config.resume:  # a new run: nothing of the old one may be resumed or reported
        (output / SUMMARY_FILE).unlink(missing_ok=True)
        shutil.rmtree(output / "checkpoints", ignore_errors=True)
        shutil.rmtree(output / INITIAL_ADAPTER, ignore_errors=True)
    return output


def start_process_group(device: str = "auto") -> bool:
    """Under torchrun (WORLD_SIZE > 1) with no process group yet, start one: NCCL, each rank on its GPU
    (cuda:LOCAL_RANK), when ``device`` is a CUDA device (auto: where there is one), else gloo on the CPU. True if
    this call started it (and so must end it)."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1 or dist.is_initialized():
        return False
    import torch

    cuda = resolve_device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    return True


def run(config: RunConfig, progress: bool = True) -> RunResult:
    """Run ``lorakit train``: returns where the adapter, metrics, plot and model card were written."""
    started = time.perf_counter()
    owns_group = start_process_group(config.device)
    try:
        return _run(config, progress, started)
    finally:
        if owns_group:
            dist.barrier()
            dist.destroy_process_group()


def _run(config: RunConfig, progress: bool, started: float) -> RunResult:
    procs = Processes.join(config.fsdp)  # rank 0 writes, all ranks train
    device = procs.device() if procs.world > 1 else resolve_device(config.device)
    output = procs.on_main(lambda: prepare_output(config))
    procs.on_main(lambda: clean_temporary(output))

    # ---- data (checked before the model is loaded: a broken line fails fast), model, tokens
    data_source = config.data or str(builtin_path("train"))
    read = read_data(data_source, config.data_format)
    eval_read = read_data(config.eval_data, config.data_format) if config.eval_data else None
    records, eval_records = read.records, eval_read.records if eval_read else []
    if config.eval_split:
        records, eval_records = split_off(records, config.eval_split, config.seed)
    _log(procs, describe_read(read, eval_read, len(eval_records) if config.eval_split else None))
    # Loaded onto the device the run trains on, in the dtype its frozen weights will be stored in there (full
    # fine-tuning keeps fp32 master weights); the trainer trains where the model is.
    compute = None if config.method == "full" else resolve_precision(config.precision, device)
    with loading_heap():  # the steps start from a compact heap, whatever loading freed (lorakit.cli.process)
        model, tokenizer = load_model(
            config.model, dtype=load_dtype(device, compute), quantize=config.quantize(),
            trust_remote_code=config.trust_remote_code, device=device,
        )  # fmt: skip
        base_name = recorded_name(config.model)
        trainer_config = TrainConfig(**{f.name: getattr(config, f.name) for f in dataclasses.fields(TrainConfig)})
        data = tokenize_data(tokenizer, records, config.seq_len, source=data_source)  # records: checked already
        eval_name = config.eval_data or f"{data_source} (held out)"
        eval_data = tokenize_data(tokenizer, eval_records, config.seq_len, source=eval_name) if eval_records else None
    fix_mmap_threshold()  # training's own setting (loading_heap pins it too; a user's choice still wins)

    # ---- adapter (or the whole model), optimiser, schedule
    trainer = Trainer(model, tokenizer, trainer_config, base_model=base_name)
    eval_batches = trainer.eval_batches(eval_data) if eval_data is not None else []
    initial = output / INITIAL_ADAPTER if config.converts_on_save() else None
    if initial is not None and procs.is_main and not (config.resume and initial.exists()):
        save_adapter(model, initial)  # PiSSA/OLoRA: what the final save converts against
    adapter_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    check_room(output, adapter_bytes, checkpoints=config.save_every > 0)
    total_steps = trainer.steps_for(data)

    # ---- resume
    checkpoints = procs.on_main(lambda: list_checkpoints(output)) if config.resume else []
    if checkpoints:
        trainer.load_checkpoint(checkpoints[-1])
        if trainer.step_count >= total_steps and (output / SUMMARY_FILE).exists():
            raise LorakitError(
                f"{output}: the run already reached step {trainer.step_count} of {total_steps}; raise --max-steps to "
                "train on"
            )
        _log(procs, f"resumed from {checkpoints[-1]} at step {trainer.step_count}")
    elif config.resume:
        _log(procs, f"--resume: no checkpoint in {output}/checkpoints yet, starting from step 0")
    start_step = trainer.step_count
    metrics = (
        MetricsLog(output / "metrics.jsonl", start_step if config.resume else None) if procs.is_main else QuietLog()
    )

    def after_step(trainer: Trainer, m: dict[str, float]) -> None:
        step = int(m["step"])
        record = {
            "kind": "train",
            "step": step,
            "loss": round(m["loss"], 5),
            "lr": m["lr"],
            "grad_norm": round(m["grad_norm"], 4) if math.isfinite(m["grad_norm"]) else None,
            "tokens": int(m["tokens"]),
            "seconds": round(m["seconds"], 3),
            "peak_rss_mb": m["peak_rss_mb"],
        }
        # on a GPU its peak memory; in fp16 the loss scale and whether an overflow skipped the step
        record.update({k: m[k] for k in ("peak_gpu_mb", "loss_scale") if k in m})
        if "skipped" in m:
            record["skipped"] = bool(m["skipped"])
        metrics.write(record)
        if eval_batches and config.eval_every and step % config.eval_every == 0 and procs.evaluates:
            eval_loss = trainer.evaluate(eval_batches)
            metrics.write({"kind": "eval", "step": step, "eval_loss": round(eval_loss, 5)})
            _log(procs, f"step {step}: eval loss {eval_loss:.4f}")
        if config.save_every and (step % config.save_every == 0 or step == total_steps):
            trainer.save_checkpoint(output)  # the last checkpoint lets --resume extend a run

    try:
        result = trainer.fit(data, on_step=after_step, progress=progress)
    except NonFiniteLoss as err:
        last = list_checkpoints(output)
        kept = f"the last good checkpoint is {last[-1]}" if last else "no checkpoint was written yet"
        raise LorakitError(f"loss became {err.loss} at step {err.step}; stopped ({kept}); try a lower --lr") from None

    # ---- results: adapter, plot, model card, then the summary that marks the run finished
    loss_value = result.final_loss
    if start_step >= total_steps:  # killed while writing the results: write them again
        loss_value = next((r["loss"] for r in reversed(metrics.read()) if r.get("kind") == "train"), loss_value)
    final: dict[str, Any] = {"train_loss": round(loss_value, 4)}
    if eval_batches and procs.evaluates:
        final["eval_loss"] = round(trainer.evaluate(eval_batches), 4)
        metrics.write({"kind": "eval", "step": total_steps, "eval_loss": final["eval_loss"]})
    trainer.save(output, initial_adapter=initial)
    seconds = time.perf_counter() - started
    if not procs.is_main:
        return RunResult(output, total_steps, loss_value, seconds, result.tokens, result.trainable, result.total)
    records_logged = metrics.read()
    what = trainer.describe().split(":")[0]
    plot_loss(records_logged, output / "loss.png", f"{what.split(' alpha')[0]} on {Path(data_source).name}")
    stats = data.stats
    info = {
        "lorakit_version": __version__, "base_model": base_name, "data": data_source, "data_format": read.data_format,
        "n_examples": len(data.examples), "n_truncated": stats.n_truncated, "n_skipped": stats.n_skipped,
        "trainable": result.trainable, "total": result.total, "steps": total_steps,
        "tokens": sum(r.get("tokens", 0) for r in records_logged),
        "seconds": seconds, "precision": str(trainer.autocast or "fp32").replace("torch.", ""),
        "device": str(trainer.device),
        "hyperparameters": {k: v for k, v in config.to_dict().items() if k not in ("output", "resume", "overwrite")},
        "final": final, "output": str(output),
    }  # fmt: skip
    system_prompt = shared_system_prompt(records)
    if system_prompt is not None:  # the model learnt to answer under it: chat, generate and serve send it
        write_text_atomic(output / SYSTEM_PROMPT_FILE, system_prompt)
    if config.eval_split:
        write_text_atomic(
            output / HELD_OUT_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in eval_records)
        )
    info["system_prompt"] = system_prompt
    write_text_atomic(output / "README.md", model_card(info))
    write_text_atomic(output / SUMMARY_FILE, json.dumps(info, indent=2) + "\n")
    return RunResult(output, total_steps, loss_value, seconds, result.tokens, result.trainable, result.total)


HELD_OUT_FILE = "held_out.jsonl"  # the records --eval-split kept out of training, for lorakit eval --data


def split_off(records: list[dict], share: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, held out): ``share`` of the records (at least one), drawn by ``seed``, in their file order."""
    if len(records) < 2:
        raise LorakitError(f"--eval-split needs at least 2 records to hold some out, the data has {len(records)}")
    n = min(len(records) - 1, max(1, round(share * len(records))))
    import random

    held = set(random.Random(f"lorakit.eval_split:{seed}").sample(range(len(records)), n))
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]


def describe_read(read: Records, eval_read: Records | None, held_out: int | None) -> str:
    line = read.describe()
    if eval_read is not None:
        line += f"; eval: {eval_read.describe()}"
    if held_out is not None:
        line += f"; {held_out} held out for the eval loss (--eval-split)"
    return line


def _log(procs: Processes, message: str) -> None:
    if procs.is_main:
        tqdm.write(f"lorakit: {message}")


# ---- the subcommand
def add_parser(sub: Any) -> None:
    p = sub.add_parser("train", help="train a LoRA adapter (no flags: the built-in demo's training)")
    config_flags(p, RunConfig)
    p.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    config = train_config_from(args, RunConfig)
    offline_unless_hub_reachable(config.data, config.eval_data)
    main_process = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 writes the run's files
    if config.output is None and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        config = dataclasses.replace(config, output=str(output_path(config)))
    output = Path(config.output) if config.output else None
    fresh = output is not None and not output.exists()
    try:
        result = run(config)
    except LorakitError:
        # A mistake found before training wrote anything of value leaves no folder behind.
        if (
            main_process
            and fresh
            and output
            and output.is_dir()
            and {p.name for p in output.iterdir()} <= {CONFIG_FILE}
        ):
            shutil.rmtree(output, ignore_errors=True)
        raise
    if main_process:
        print(f"adapter, loss.png, metrics.jsonl and README.md in {result.output}/")
    return 0
