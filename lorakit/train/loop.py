"""The training loop, top to bottom: data, model, adapter, optimiser, steps, checkpoints, report.

The library owns the parts (loss, optimiser, schedule, checkpoints, report); this file owns their order.
A run is deterministic for a given seed: adapter init, data order (a function of seed and epoch) and dropout
all draw from seeded generators, and a checkpoint stores every RNG state, so a resumed run ends with the same
adapter as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

import lorakit
from lorakit.adapters import add_adapter, count_parameters
from lorakit.cli.run_folder import MetricsLog, model_card, plot_loss, write_text_atomic
from lorakit.data.batching import batch_order, collate, padding_waste
from lorakit.data.jsonl import read_jsonl
from lorakit.data.tokenize import TokenizedExample, tokenize_dataset
from lorakit.errors import LorakitError
from lorakit.io import save_adapter
from lorakit.loss import token_loss_sum
from lorakit.memory import loading_heap, peak_rss_mb
from lorakit.models import BUILTIN_NAME, load_model
from lorakit.tasks.contacts import builtin_path
from lorakit.train.attention import use_fp32_attention
from lorakit.train.checkpoint import check_room, clean_temporary, list_checkpoints, load_checkpoint, save_checkpoint
from lorakit.train.config import CONFIG_FILE, TrainConfig
from lorakit.train.distributed import Processes, QuietLog, start
from lorakit.train.optim import build_optimizer, schedule

INITIAL_ADAPTER = "initial_adapter"  # PiSSA/OLoRA adapter as initialised, before training
SUMMARY_FILE = "train_summary.json"  # written last: its presence means the run finished
# Fields a resumed run may change; any other difference means a different run. pad_to_multiple_of only pads
# the same batches further (the loss is the same up to rounding), so a run from before the flag resumes too.
RESUMABLE_CHANGES = {
    "resume", "overwrite", "output", "max_steps", "epochs", "save_every", "eval_every", "trust_remote_code",
    "pad_to_multiple_of",
}  # fmt: skip


@dataclass
class TrainResult:
    output: Path
    steps: int
    final_loss: float
    seconds: float
    tokens: int
    trainable: int
    total: int


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32. "auto" takes bf16 where the hardware runs it fast."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None


def output_path(config: TrainConfig) -> Path:
    """``--output``, or ``runs/<timestamp>`` when it is not given."""
    return Path(config.output or Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S"))


def prepare_output(config: TrainConfig) -> Path:
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
        defaults = TrainConfig().to_dict()
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


def read_dataset(path: str | None) -> tuple[str, list[dict[str, Any]]]:
    """(source, validated records); None means the built-in contacts training split."""
    source = str(path) if path else str(builtin_path("train"))
    return source, read_jsonl(source)


class MicroBatches:
    """Micro-batch ``m`` of the whole run, derived from (seed, epoch): no iterator state to save or restore."""

    def __init__(
        self,
        examples: list[TokenizedExample],
        batch_size: int,
        seed: int,
        pad_id: int,
        procs: Processes | None = None,
        pad_to_multiple_of: int = 1,
    ) -> None:
        self.examples, self.batch_size, self.seed, self.pad_id = examples, batch_size, seed, pad_id
        self.pad_to_multiple_of = pad_to_multiple_of
        self.procs = procs or Processes()  # under torchrun: batch_size is the global batch, [m] this rank's slice
        self.lengths = [len(e.input_ids) for e in examples]
        self.per_epoch = len(batch_order(self.lengths, batch_size, seed, 0))
        self._epoch: tuple[int, list[list[int]]] | None = None

    def order(self, epoch: int) -> list[list[int]]:
        if self._epoch is None or self._epoch[0] != epoch:
            self._epoch = (epoch, batch_order(self.lengths, self.batch_size, self.seed, epoch))
        return self._epoch[1]

    def __getitem__(self, m: int) -> dict[str, torch.Tensor]:
        epoch, index = divmod(m, self.per_epoch)
        return self.procs.batch(self.examples, self.order(epoch)[index], self.pad_id, self.pad_to_multiple_of)


def _log(message: str) -> None:
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        tqdm.write(f"lorakit: {message}")


def mean_token_loss(
    model: torch.nn.Module,
    batches: list[dict[str, torch.Tensor]],
    autocast: torch.dtype | None,
    loss_sum: torch.nn.Module | None = None,
) -> float:
    """Mean assistant-token loss over ``batches`` (dropout off); ``loss_sum`` is a wrapped model's loss module."""
    was_training = model.training
    model.eval()
    total = count = 0.0
    with torch.no_grad(), _autocast(autocast, next(model.parameters()).device):
        for batch in batches:
            total += float(loss_sum(batch) if loss_sum is not None else token_loss_sum(model, batch))
            count += int((batch["labels"][:, 1:] != -100).sum())
    model.train(was_training)
    return total / max(count, 1)


def prepare_for_training(model: torch.nn.Module, autocast: torch.dtype | None, checkpointing: bool) -> None:
    """Frozen base weights stored in the autocast dtype; activation checkpointing if asked.

    Autocast would cast each fp32 base weight, and each fp32 activation entering a Linear, to bf16 at every call
    (and the gradients back in the backward): a sixth of a step's time in copies on a 2-core CPU. With every
    frozen parameter in bf16 (Linear weights, embeddings, norms: the whole model computes in bf16, as a model
    loaded in bf16 does) those casts disappear and the base takes half the memory. Trained parameters (the
    adapters), their gradients and the AdamW state stay fp32; buffers (rotary frequencies) stay as they are,
    and the loss is summed in fp32. On a CPU the attention itself runs in fp32, where PyTorch's kernel is faster
    than in bf16 (lorakit.train.attention).
    """
    if autocast is not None and next(model.parameters()).device.type == "cpu":
        use_fp32_attention(model)
    if autocast is not None:
        for module in model.modules():
            for param in module.parameters(recurse=False):
                # plain fp32 tensors only: a quantised base keeps its storage
                if not param.requires_grad and type(param) is torch.nn.Parameter and param.dtype == torch.float32:
                    param.data = param.data.to(autocast)
    if checkpointing:
        enable = getattr(model, "gradient_checkpointing_enable", None)
        if not callable(enable):
            raise LorakitError(f"--gradient-checkpointing: {type(model).__name__} has no gradient_checkpointing_enable")
        # Non-reentrant checkpointing needs no input that requires grad, so a frozen base works as is.
        enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _autocast(dtype: torch.dtype | None, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Autocast on the device the model runs on (CPU or CUDA), or nothing for fp32."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def make_fully_trainable(model: torch.nn.Module) -> None:
    """Full fine-tuning: every base parameter trains, held in fp32 (the master weights; autocast computes in
    bf16 from them), so AdamW's small updates are not rounded away as they would be in bf16 weights."""
    model.float()
    for param in model.parameters():
        param.requires_grad_(True)


def train(config: TrainConfig, progress: bool = True) -> TrainResult:
    """Run ``lorakit train``: returns where the adapter, metrics, plot and model card were written."""
    started = time.perf_counter()
    procs = start(config.fsdp)  # under torchrun: this process's rank; rank 0 writes, all ranks train
    output = procs.on_main(lambda: prepare_output(config))
    procs.on_main(lambda: clean_temporary(output))
    torch.manual_seed(config.seed)

    # ---- data (checked before the model is loaded: a broken line fails fast), model, tokens
    data_source, records = read_dataset(config.data)
    eval_records = read_dataset(config.eval_data)[1] if config.eval_data else []
    with loading_heap():  # the steps start from a compact heap, whatever loading freed (lorakit.memory)
        model, tokenizer = load_model(
            config.model, quantize=config.quantize(), trust_remote_code=config.trust_remote_code
        )
        device = next(model.parameters()).device
        autocast = resolve_precision(config.precision, device)
        examples, stats = tokenize_dataset(tokenizer, records, config.seq_len, path=data_source)
        _log(
            f"{data_source}: {stats.n_records} examples, {stats.n_tokens:,} tokens ({stats.n_label_tokens:,} trained "
            f"on); {stats.n_truncated} truncated to --seq-len {config.seq_len}, {stats.n_skipped} skipped (nothing "
            "left to learn after truncation)"
        )
        eval_batches: list[dict[str, torch.Tensor]] = []
        if eval_records:
            eval_examples, _ = tokenize_dataset(tokenizer, eval_records, config.seq_len, path=config.eval_data)
            eval_batches = [
                collate(eval_examples[i : i + 16], tokenizer.pad_token_id) for i in range(0, len(eval_examples), 16)
            ]
    # Batch lengths rounded up to --pad-to-multiple-of: with every length new, oneDNN cached kernels per shape and
    # glibc's heap fragmented around them, and the demo's peak RSS crept 2.1 -> 4.4 GB over 240 steps.
    batches = MicroBatches(
        examples, config.batch_size * procs.world, config.seed, tokenizer.pad_token_id, procs, config.pad_to_multiple_of
    )
    waste = padding_waste(batches.lengths, batches.order(0), config.pad_to_multiple_of)

    # ---- adapter (or the whole model), optimiser, schedule
    torch.manual_seed(config.seed)
    base_name = config.model or BUILTIN_NAME
    if config.method == "full":
        make_fully_trainable(model)
        what = "full fine-tuning"
    else:
        adapter = dataclasses.replace(config.adapter_config(), base_model_name_or_path=base_name)
        add_adapter(model, adapter)
        if config.converts_on_save() and procs.is_main and not (config.resume and (output / INITIAL_ADAPTER).exists()):
            save_adapter(model, output / INITIAL_ADAPTER)  # PiSSA/OLoRA: what the final save converts against
        what = f"{config.method}{'' if config.method == 'ia3' else f' r={config.r} alpha={config.lora_alpha}'}"
        what += f" on {config.target_modules}"
    prepare_for_training(model, autocast, config.gradient_checkpointing)
    trainable, total = count_parameters(model)
    forward = procs.wrap(model)  # batch -> loss sum; under DDP/FSDP2 it syncs the adapter gradients
    optimizer = build_optimizer(model, config)
    adapter_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    check_room(output, adapter_bytes, checkpoints=config.save_every > 0)
    total_steps = config.max_steps or max(1, math.ceil(config.epochs * batches.per_epoch / config.grad_accum))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule(config, total_steps))
    base_kind = f" (base Linear weights in {config.quantize()})" if config.quantize() else ""
    _log(
        f"{what}{base_kind}: {trainable:,} trainable of {total:,} parameters "
        f"({100 * trainable / total:.2f}%); {total_steps} steps; precision {autocast or 'fp32'}; "
        f"padding {100 * waste:.0f}% of tokens"
    )
    _log(procs.describe(model, config.batch_size, config.grad_accum))

    # ---- resume
    start_step = 0
    checkpoints = procs.on_main(lambda: list_checkpoints(output)) if config.resume else []
    if checkpoints:
        state = load_checkpoint(checkpoints[-1], model, optimizer, scheduler)
        start_step = state["step"]
        procs.resumed(checkpoints[-1], state["extra"])
        if start_step >= total_steps and (output / SUMMARY_FILE).exists():
            raise LorakitError(
                f"{output}: the run already reached step {start_step} of {total_steps}; raise --max-steps to train on"
            )
        _log(f"resumed from {checkpoints[-1]} at step {start_step}")
    elif config.resume:
        _log(f"--resume: no checkpoint in {output}/checkpoints yet, starting from step 0")
    keep = start_step if config.resume else None
    metrics = MetricsLog(output / "metrics.jsonl", keep) if procs.is_main else QuietLog()

    # ---- the loop
    model.train()
    bar = tqdm(total=total_steps, initial=start_step, disable=not (progress and procs.is_main), unit="step",
               dynamic_ncols=True)  # fmt: skip
    tokens_seen = 0
    loss_value = float("nan")
    loop_start = time.perf_counter()
    for step in range(start_step, total_steps):
        step_start = time.perf_counter()
        micro = [batches[step * config.grad_accum + k] for k in range(config.grad_accum)]
        # One normaliser for the whole step: the mean over all its label tokens, not a mean of means.
        # Under torchrun, over all ranks' tokens: gradients are summed across ranks, not averaged.
        (n_labels,) = procs.sum(sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro))
        loss_sum = 0.0
        for k, batch in enumerate(micro):
            with procs.accumulate(forward, sync=k == len(micro) - 1), _autocast(autocast, device):
                loss = forward(batch)
            (loss / n_labels).backward()
            loss_sum += float(loss.detach())
        step_tokens = sum(int(b["attention_mask"].sum()) for b in micro)
        loss_sum, tokens = procs.sum(loss_sum, step_tokens)
        step_tokens = int(tokens)
        loss_value = loss_sum / n_labels
        if not math.isfinite(loss_value):
            last = list_checkpoints(output)
            kept = f"the last good checkpoint is {last[-1]}" if last else "no checkpoint was written yet"
            raise LorakitError(f"loss became {loss_value} at step {step + 1}; stopped ({kept}); try a lower --lr")
        params = [p for g in optimizer.param_groups for p in g["params"]]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm or float("inf")))
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        tokens_seen += step_tokens
        seconds = time.perf_counter() - step_start
        record = {"kind": "train", "step": step + 1, "loss": round(loss_value, 5), "lr": lr,
                  "grad_norm": round(grad_norm, 4), "tokens": step_tokens, "seconds": round(seconds, 3),
                  "peak_rss_mb": peak_rss_mb()}  # fmt: skip
        metrics.write(record)
        bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", tok_s=f"{step_tokens / seconds:.0f}")
        bar.update(1)

        if eval_batches and config.eval_every and (step + 1) % config.eval_every == 0 and procs.evaluates:
            eval_loss = mean_token_loss(model, eval_batches, autocast, procs.eval_module(forward))
            metrics.write({"kind": "eval", "step": step + 1, "eval_loss": round(eval_loss, 5)})
            _log(f"step {step + 1}: eval loss {eval_loss:.4f}")
        if config.save_every and ((step + 1) % config.save_every == 0 or step + 1 == total_steps):
            extra = procs.checkpoint_extra()  # under torchrun: every rank's RNG state
            if procs.is_main:  # the last checkpoint lets --resume extend a run
                save_checkpoint(output, model, optimizer, scheduler, step + 1, extra)
    bar.close()
    train_seconds = time.perf_counter() - loop_start

    # ---- results: adapter, plot, model card, then the summary that marks the run finished
    if start_step >= total_steps:  # killed while writing the results: write them again
        loss_value = next((r["loss"] for r in reversed(metrics.read()) if r.get("kind") == "train"), loss_value)
    final: dict[str, Any] = {"train_loss": round(loss_value, 4)}
    if eval_batches and procs.evaluates:
        final["eval_loss"] = round(mean_token_loss(model, eval_batches, autocast, procs.eval_module(forward)), 4)
        metrics.write({"kind": "eval", "step": total_steps, "eval_loss": final["eval_loss"]})
    with procs.full_params(forward):  # FSDP2: gather the sharded adapter whole to write one peft file
        if procs.is_main and config.method == "full":  # a whole model folder: lorakit.load_model(output) reads it
            model.save_pretrained(output)
            tokenizer.save_pretrained(output)
        elif procs.is_main:
            save_adapter(model, output, initial_adapter=output / INITIAL_ADAPTER if config.converts_on_save() else None)
    procs.report_traffic(total_steps - start_step)
    if not procs.is_main:
        procs.finish()
        return TrainResult(
            output, total_steps, loss_value, time.perf_counter() - started, tokens_seen, trainable, total
        )
    records = metrics.read()
    plot_loss(records, output / "loss.png", f"{what.split(' alpha')[0]} on {Path(data_source).name}")
    seconds = time.perf_counter() - started
    info = {
        "lorakit_version": lorakit.__version__, "base_model": base_name, "data": data_source,
        "n_examples": len(examples), "n_truncated": stats.n_truncated, "n_skipped": stats.n_skipped,
        "trainable": trainable, "total": total, "steps": total_steps,
        "tokens": sum(r.get("tokens", 0) for r in records),
        "seconds": seconds, "precision": str(autocast or "fp32").replace("torch.", ""),
        "hyperparameters": {k: v for k, v in config.to_dict().items() if k not in ("output", "resume", "overwrite")},
        "final": final, "output": str(output),
    }  # fmt: skip
    write_text_atomic(output / "README.md", model_card(info))
    write_text_atomic(output / SUMMARY_FILE, json.dumps(info, indent=2) + "\n")
    if tokens_seen:
        rate = tokens_seen / train_seconds
        _log(f"trained {total_steps - start_step} steps in {train_seconds:.0f} s ({rate:.0f} tokens/s)")
    procs.finish()
    return TrainResult(output, total_steps, loss_value, seconds, tokens_seen, trainable, total)
