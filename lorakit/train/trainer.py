"""``Trainer``: train the model you hold, on the device it is on, alone or inside a process group that exists.

```python
trainer = lorakit.Trainer(model, tokenizer, lorakit.TrainConfig(r=16, lora_alpha=32, max_steps=100))
trainer.fit("my.jsonl")        # or a list of records
trainer.step(batch)            # one optimiser step on input_ids / attention_mask / labels (-100: no loss)
lorakit.save_adapter(trainer.model, "my-adapter")
```

The trainer reads only ``TrainConfig``'s training fields. It never loads a model, picks data or writes a file by
itself: it adds the adapter the config describes (or trains the adapters the model has), changes the model it is
given and nothing else (frozen weights stored in the compute dtype; on a CPU the attention runs in fp32 inside its
own steps, ``lorakit.train.attention``), and draws every random number (adapter init, dropout) from generator
states of its own, so the caller's global RNG is as it was after every call. Under a process group that already
exists (torchrun, Ray Train), each rank calls ``step`` with its own slice of the global batch, and the gradients
are those of the whole batch: summed over ranks and divided by the global label-token count.

The order of a step, top to bottom, is ``step``; the order of a run is ``fit``. Checkpoint files and run folders
are the caller's (``lorakit train`` keeps them in ``lorakit.runs``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from lorakit.adapters import adapter_configs, add_adapter, count_parameters
from lorakit.data.batching import collate
from lorakit.data.dataset import Dataset, DataSource, tokenize_data
from lorakit.errors import LorakitError
from lorakit.eval.generate import decode_ids, sampler
from lorakit.io import save_adapter
from lorakit.loss import autocast, label_count, mean_token_loss
from lorakit.memory import peak_gpu_mb, peak_rss_mb
from lorakit.models import describe_device, precision_name, resolve_precision
from lorakit.train.attention import fp32_attention
from lorakit.train.batches import MicroBatches, complete_batch
from lorakit.train.checkpoint import read_checkpoint, save_checkpoint
from lorakit.train.compile import CompiledLayers
from lorakit.train.config import TrainConfig
from lorakit.train.distributed import Processes
from lorakit.train.optim import build_optimizer, schedule
from lorakit.train.prepare import make_fully_trainable, prepare_for_training
from lorakit.train.reference import computing_as
from lorakit.train.rng import rng_from, seeded_state
from lorakit.train.sampling import Completion, Prompt, completions, prompt_ids

Batch = Mapping[str, torch.Tensor]
LossFn = Callable[[torch.Tensor, dict[str, torch.Tensor]], "torch.Tensor | tuple[torch.Tensor, Mapping[str, float]]"]
"""``loss(log_probs (B, T), batch) -> scalar`` or ``(scalar, {name: value})``: see ``Trainer.forward_backward``."""
MODEL_KEYS = ("input_ids", "attention_mask", "labels", "position_ids")  # what the model reads of a batch
EVAL_BATCH = 16  # rows per evaluation batch (no gradients: larger batches cost nothing extra)


class NonFiniteLoss(LorakitError):
    """The loss of a step was NaN or infinite; nothing of that step was applied."""

    def __init__(self, loss: float, step: int) -> None:
        self.loss, self.step = loss, step
        super().__init__(f"loss became {loss} at step {step}; stopped; try a lower --lr")


@dataclass
class TrainResult:
    """What ``fit`` did: steps reached, the last step's loss, tokens and seconds of this call, parameter counts."""

    steps: int
    final_loss: float
    tokens: int
    seconds: float
    trainable: int
    total: int


def _log(message: str) -> None:
    tqdm.write(f"lorakit: {message}")


class Trainer:
    """Trains ``model`` (with the adapter ``config`` describes, or the adapters it already has) where it lies.

    ``base_model`` is recorded in a new adapter's config as ``base_model_name_or_path`` (default: the model's own
    ``name_or_path``).
    """

    def __init__(
        self, model: nn.Module, tokenizer: Any, config: TrainConfig | None = None, *, base_model: str | None = None
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.config = config = config or TrainConfig()
        self.procs = Processes.join(config.fsdp)  # the process group that exists, or this process alone
        if self.procs.world > 1:  # each rank computes on its own device (NCCL: its GPU); precision is that device's
            model.to(self.procs.device())
        self.device = next(model.parameters()).device
        self.autocast = resolve_precision(config.precision, self.device)
        self.scaler = self.procs.loss_scaler(self.autocast, self.device)  # fp16 only: dynamic loss scaling
        self.step_count = 0
        self.total_steps: int | None = config.max_steps or None  # None: from the data's size, when fit sees it
        self._rng = seeded_state(config.seed, self.device, self.procs.rank)
        self._synced = False  # gradients all-reduced since the last optim_step
        with self._own_rng():
            if config.method == "full":
                make_fully_trainable(model)
            elif not adapter_configs(model):
                name = base_model or getattr(getattr(model, "config", None), "name_or_path", None) or None
                add_adapter(model, dataclasses.replace(config.adapter_config(), base_model_name_or_path=name))
            if self.procs.world > 1:
                # The adapter is initialised the same on every rank; from here each rank draws its own dropout masks,
                # as one process draws different masks for different rows.
                torch.random.default_generator.manual_seed(config.seed + self.procs.rank)
                if self.device.type == "cuda":
                    torch.cuda.manual_seed(config.seed + self.procs.rank)
        prepare_for_training(model, self.autocast, config.gradient_checkpointing)
        self.compiled = CompiledLayers(model) if config.compile else None  # compiles at the first step
        self.trainable, self.total = count_parameters(model)
        # batch -> loss sum; under DDP/FSDP2 it syncs the adapter gradients. A shared prompt prefix runs once per batch,
        # except with compiled layers: the prefix's KV cache would keep every layer eager (lorakit.train.compile).
        self.forward = self.procs.wrap(model, share_prefix=not config.compile)
        self.optimizer = build_optimizer(model, config)
        self.scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
        self._pending_scheduler: dict[str, Any] | None = None
        if self.total_steps:
            self._start_schedule(self.total_steps)

    # ---- one step
    def step(self, batch: Batch | Sequence[Batch]) -> dict[str, float]:
        """One optimiser step on ``batch`` (or on several micro-batches, their gradients accumulated):
        ``forward_backward(batch)`` then ``optim_step()``.

        A batch holds ``input_ids`` (B, T), and optionally ``attention_mask`` (default all ones) and ``labels``
        (default ``input_ids``; -100 where there is no loss). In a process group, each rank passes its own slice.
        Returns the step's ``step``, ``loss`` (mean over every label token of the step, all ranks), ``lr``,
        ``grad_norm``, ``tokens`` (all ranks) and ``seconds``; in fp16 also ``loss_scale`` (the scale this step's
        gradients were computed at) and ``skipped`` (1 when a gradient overflowed at that scale: the optimiser did
        not step, the scale halves, and the learning-rate schedule does not advance, as in Hugging Face's Trainer;
        the step still counts, so the data order goes on as planned).
        """
        started = time.perf_counter()
        self._check_schedule()
        done = self.forward_backward(batch)
        stepped = self.optim_step()
        return {"step": stepped["step"], "loss": done["loss"], "lr": stepped["lr"], "grad_norm": stepped["grad_norm"],
                "tokens": done["tokens"], "seconds": time.perf_counter() - started,
                **{k: stepped[k] for k in ("loss_scale", "skipped") if k in stepped}}  # fmt: skip

    # ---- the primitives a step is made of, for loops of one's own (DPO, GRPO: lorakit.train.preference, .grpo)
    def forward_backward(
        self, batch: Batch | Sequence[Batch], loss: str | LossFn = "cross_entropy"
    ) -> dict[str, float]:
        """Add the gradients of ``batch`` (or of several micro-batches) to the trained parameters' ``.grad``.

        ``"cross_entropy"``: the mean next-token loss over the label tokens of all micro-batches and ranks (``step``'s).
        A callable ``loss(log_probs, batch)`` gets a micro-batch's per-token log-probabilities (B, T) with gradients
        (``lorakit.loss.token_log_probs``: entry t is log p(input_ids[t] | tokens < t) where ``labels[t]`` is not
        -100, else 0) and the micro-batch, extra keys included; it returns a scalar or ``(scalar, {name: value})``,
        its rows' share of the whole batch's loss: gradients add up over micro-batches and ranks (a mean over the
        batch is its rows' sum over the count on all ranks, ``trainer.procs.sum``). Returns ``loss``, ``tokens`` and
        the extra values, summed over micro-batches and ranks. Calls add up until ``optim_step`` (under DDP: one)."""
        micro = [complete_batch(batch)] if isinstance(batch, Mapping) else [complete_batch(b) for b in batch]
        if not micro:
            raise ValueError("forward_backward() needs a batch")
        if self._synced and self.procs.world > 1 and not self.procs.fsdp:
            raise LorakitError("under DDP, pass all micro-batches of a step to one forward_backward call: the "
                               "gradients were already all-reduced once since the last optim_step")  # fmt: skip
        with self._own_rng(), self._kernels(), self._compiled():
            # One normaliser for the whole step: the mean over all its label tokens, not a mean of means; in a
            # process group, over all ranks' tokens (gradients are summed across ranks, not averaged).
            (n_labels,) = self.procs.sum(sum(label_count(b) for b in micro)) if loss == "cross_entropy" else (1,)
            n_labels = max(n_labels, 1)
            loss_sum, extra = 0.0, dict[str, float]()
            for k, b in enumerate(micro):
                with (
                    self.procs.accumulate(self.forward, sync=k == len(micro) - 1),
                    autocast(self.autocast, self.device),
                ):
                    if callable(loss):
                        log_probs = self.forward({key: b[key] for key in MODEL_KEYS if key in b}, log_probs=True)
                    else:
                        value = self.forward(b)
                if callable(loss):
                    out = loss(log_probs, b)
                    value, values = out if isinstance(out, tuple) else (out, {})
                    for name, v in values.items():
                        extra[name] = extra.get(name, 0.0) + float(v)
                elif loss != "cross_entropy":
                    raise ValueError(f"forward_backward: loss must be 'cross_entropy' or a callable, got {loss!r}")
                scaled = value / n_labels
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
                loss_sum += float(value.detach())
            loss_sum, tokens, *sums = self.procs.sum(loss_sum, sum(int(b["attention_mask"].sum()) for b in micro),
                                                     *extra.values())  # fmt: skip
            loss_value = loss_sum / n_labels
            self._synced = True
            if not math.isfinite(loss_value):
                self.optimizer.zero_grad(set_to_none=True)
                raise NonFiniteLoss(loss_value, self.step_count + 1)
        return {"loss": loss_value, "tokens": int(tokens), **dict(zip(extra, sums, strict=True))}

    def optim_step(self) -> dict[str, float]:
        """Clip the gradients ``forward_backward`` added up, step the optimiser and the schedule, zero them.
        Returns ``step``, ``lr`` (this step's), ``grad_norm`` (before clipping); in fp16 ``loss_scale``, ``skipped``."""
        self._check_schedule()
        assert self.scheduler is not None
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # clip (and report) the true gradients, not the scaled ones
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm or float("inf")))
        lr = self.optimizer.param_groups[0]["lr"]
        scaling: dict[str, float] = {}
        if self.scaler is None:
            self.optimizer.step()
        else:
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)  # skipped when a gradient is inf or nan
            self.scaler.update()  # halves the scale after an overflow (and only then)
            scaling = {"loss_scale": scale, "skipped": float(self.scaler.get_scale() < scale)}
        if not scaling.get("skipped"):  # a skipped step changed nothing: the schedule waits for a real one
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._synced = False
        self.step_count += 1
        return {"step": self.step_count, "lr": lr, "grad_norm": grad_norm, **scaling}

    def log_probs(self, batch: Batch, adapter: bool | str = True) -> torch.Tensor:
        """Per-token log-probabilities (B, T) of ``batch`` as ``forward_backward`` gives a callable loss, without
        gradients or dropout: with the active adapters (True), none (False: the base model, DPO's reference) or
        adapter ``adapter`` alone (``lorakit.train.reference``). In a process group, every rank calls it."""
        b = complete_batch(batch)
        with self._inference(adapter):
            return self.procs.eval_module(self.forward)({k: b[k] for k in MODEL_KEYS if k in b}, log_probs=True)  # type: ignore[no-any-return]

    def sample(
        self, prompts: Sequence[Prompt], n: int = 1, max_new_tokens: int | None = None,
        temperature: float | None = None, top_p: float | None = None, adapter: bool | str = True,
    ) -> list[Completion]:  # fmt: skip
        """``n`` completions of each prompt (text, messages or token ids; ``lorakit.train.sampling``), prompt by
        prompt, drawn from the live adapter (``adapter`` as in ``log_probs``; False: the base) without dropout, with
        token ids and log-probabilities; defaults from the config (``max_completion_length``, ``temperature``,
        ``top_p``). Random numbers come from the trainer's sampling generator (``seed`` + rank, in ``state_dict``).
        In a process group (DDP) each rank samples its own prompts."""
        if self.procs.sharded:
            raise LorakitError("sample() does not run under --fsdp yet (each decoding step would gather the shards)")
        c, ids = self.config, [prompt_ids(self.tokenizer, p) for p in prompts]
        if not ids or n < 1:
            raise ValueError("sample() needs at least one prompt and n >= 1")
        generator = torch.Generator(self.device).set_state(self._rng["sample"])
        pick = sampler(c.temperature if temperature is None else temperature, c.top_p if top_p is None else top_p,
                       generator)  # fmt: skip
        stop = self.tokenizer.eos_token_id
        try:
            with self._inference(adapter):
                rows, scores = decode_ids(self.model, ids, max_new_tokens or c.max_completion_length, stop,
                                          self.tokenizer.pad_token_id, n, pick, log_probs=True)  # fmt: skip
        finally:
            self._rng = {**self._rng, "sample": generator.get_state()}  # a new dict: a state_dict taken holds the old
        return completions(self.tokenizer, ids, n, rows, scores, stop)

    # ---- a run
    def tokenize(self, data: DataSource) -> Dataset:
        """``data`` (a JSONL path or records) tokenized with this trainer's tokenizer and ``seq_len``."""
        return tokenize_data(self.tokenizer, data, self.config.seq_len)

    def batches(self, data: Dataset) -> MicroBatches:
        """The run's micro-batches over ``data``: this rank's slice of global batches ordered by (seed, epoch)."""
        c = self.config
        return MicroBatches(data.examples, c.batch_size * self.procs.world, c.seed, self.tokenizer.pad_token_id,
                            self.procs, c.pad_to_multiple_of, c.seq_len if c.packing else None)  # fmt: skip

    def set_total_steps(self, total: int) -> None:
        """The run's length in optimiser steps, which the learning-rate schedule spans (``fit`` sets it from its data;
        a loop of one's own over epochs sets it here)."""
        if self.scheduler is None or self.total_steps != total:
            self._start_schedule(total)

    def steps_for(self, data: Dataset) -> int:
        """Optimiser steps a run over ``data`` takes: ``max_steps``, or ``epochs`` passes when it is 0."""
        per_epoch = self.batches(data).per_epoch
        return self.config.max_steps or max(1, math.ceil(self.config.epochs * per_epoch / self.config.grad_accum))

    def fit(
        self,
        data: DataSource,
        *,
        on_step: Callable[[Trainer, dict[str, float]], None] | None = None,
        progress: bool = True,
    ) -> TrainResult:
        """Train from ``step_count`` (0, or where ``load_state_dict`` left off) to the run's last step.

        ``on_step(trainer, metrics)`` is called after every step (metrics as ``step`` returns them, plus
        ``peak_rss_mb``, and ``peak_gpu_mb`` on a CUDA device): the place for logging, evaluation and checkpoints.
        ``progress`` shows a progress bar and the run's log lines (on rank 0).
        """
        started = time.perf_counter()
        data = self.tokenize(data)
        batches = self.batches(data)
        total = self.steps_for(data)
        if self.scheduler is None or self.total_steps != total:
            self._start_schedule(total)
        show = progress and self.procs.is_main
        if show:
            epochs = total * self.config.grad_accum / batches.per_epoch
            rows = "rows of packed examples" if self.config.packing else "examples"
            _log(data.describe(self.config.seq_len))
            scaled = " with dynamic loss scaling" if self.scaler is not None else ""
            _log(
                f"{self.describe()}; {total} steps = {epochs:.3g} epochs of {batches.per_epoch} batches of "
                 f"{self.config.batch_size} {rows}; on {describe_device(self.device)} in "
                 f"{precision_name(self.autocast)}{scaled}; padding {100 * batches.padding():.0f}% of tokens"
            )  # fmt: skip
            _log(self.procs.describe(self.model, self.config.batch_size, self.config.grad_accum))
            if self.compiled is not None:
                _log("--compile: the first step compiles the decoder layers (about a minute on a 2-core CPU)")
        first = self.step_count
        bar = tqdm(total=total, initial=first, disable=not show, unit="step", dynamic_ncols=True)
        tokens, loss = 0, float("nan")
        ga = self.config.grad_accum
        while self.step_count < total:
            metrics = self.step([batches[self.step_count * ga + k] for k in range(ga)])
            metrics["peak_rss_mb"] = peak_rss_mb() or 0.0
            gpu = peak_gpu_mb(self.device)
            if gpu is not None:
                metrics["peak_gpu_mb"] = gpu
            tokens, loss = tokens + int(metrics["tokens"]), metrics["loss"]
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{metrics['lr']:.2e}",
                            tok_s=f"{metrics['tokens'] / metrics['seconds']:.0f}")  # fmt: skip
            bar.update(1)
            if on_step is not None:
                on_step(self, metrics)
        bar.close()
        seconds = time.perf_counter() - started
        self.procs.report_traffic(self.step_count - first)
        if show and tokens:
            _log(f"trained {self.step_count - first} steps in {seconds:.0f} s ({tokens / seconds:.0f} tokens/s)")
        return TrainResult(self.step_count, loss, tokens, seconds, self.trainable, self.total)

    def evaluate(self, data: DataSource | list[dict[str, torch.Tensor]]) -> float:
        """Mean label-token loss on ``data`` (dropout off): a dataset, or batches made by ``eval_batches``. In a
        process group, call it on every rank; under DDP only rank 0 computes (the others get nan)."""
        made = isinstance(data, list) and bool(data) and "input_ids" in data[0]
        batches: list[dict[str, torch.Tensor]] = data if made else self.eval_batches(data)  # type: ignore[assignment,arg-type]
        if not self.procs.evaluates:
            return float("nan")
        with self._own_rng(), self._kernels():
            return mean_token_loss(self.model, batches, self.autocast, self.procs.eval_module(self.forward))

    def eval_batches(self, data: DataSource) -> list[dict[str, torch.Tensor]]:
        """``data`` tokenized and collated into evaluation batches (make them once, evaluate often)."""
        examples = self.tokenize(data).examples
        pad = self.tokenizer.pad_token_id
        return [collate(examples[i : i + EVAL_BATCH], pad) for i in range(0, len(examples), EVAL_BATCH)]

    def describe(self) -> str:
        """One line: the method, its adapter shape and the trainable share of the parameters."""
        c = self.config
        what: str = "full fine-tuning" if c.method == "full" else c.method
        if c.method not in ("full", "ia3"):
            what += f" r={c.r} alpha={c.lora_alpha}"
        if c.method != "full":
            what += f" on {c.target_modules}"
        if c.quantize():
            what += f" (base Linear weights in {c.quantize()})"
        share = 100 * self.trainable / self.total
        return f"{what}: {self.trainable:,} trainable of {self.total:,} parameters ({share:.2f}%)"

    # ---- state: what a checkpoint holds
    def state_dict(self) -> dict[str, Any]:
        """Step, optimiser, schedule, loss scale (fp16) and RNG states (the trained weights are the model's). In a
        process group this is a collective (every rank's RNG state is gathered): call it on every rank. Under FSDP2
        the optimiser's state is gathered whole onto rank 0 (the other ranks hold {} there), in the form one process
        writes."""
        return {
            "step": self.step_count,
            "optimizer": self.procs.optimizer_state(self.forward, self.optimizer),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": self._rng,
            "extra": self.procs.checkpoint_extra(self._rng),
        }

    def load_state_dict(self, state: Mapping[str, Any], source: Path | str = "checkpoint") -> None:
        """Continue from ``state`` (a ``state_dict``, or a checkpoint written by ``lorakit train``). In a process
        group, call it on every rank (under FSDP2 the optimiser's state is rank 0's)."""
        rank_rng = self.procs.resumed(Path(source), state.get("extra", {}))
        self.step_count = int(state["step"])
        self.procs.load_optimizer_state(self.forward, self.optimizer, state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        else:
            self._pending_scheduler = state.get("scheduler")
        self._rng = rng_from(rank_rng or state["rng"], self._rng)
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    def save_checkpoint(self, output: Path) -> Path | None:
        """``<output>/checkpoints/step-NNNNNN/`` (``lorakit.train.checkpoint``), written by rank 0; every rank calls
        it. Returns the folder (None on other ranks)."""
        state = self.state_dict()
        weights = self.procs.trained_weights(self.forward)  # FSDP2: gathered whole onto rank 0; else None
        return save_checkpoint(output, self.model, state, weights) if self.procs.is_main else None

    def load_checkpoint(self, folder: Path) -> None:
        """Weights and state from a checkpoint folder ``save_checkpoint`` wrote (every rank calls it)."""
        weights, state = read_checkpoint(folder, self.model)
        self.procs.load_trained(self.forward, self.model, weights)
        self.load_state_dict(state, folder)

    def save(self, output: Path, initial_adapter: Path | None = None) -> None:
        """The trained result, written by rank 0 (every rank calls it): the adapter in peft's format, or for full
        fine-tuning a whole model folder (model and tokenizer) that ``lorakit.load_model`` reads."""
        with self.procs.full_params(self.forward):  # FSDP2: gather the sharded adapter whole to write one file
            if not self.procs.is_main:
                return
            if self.config.method == "full":
                self.model.save_pretrained(output)  # type: ignore[operator]
                self.tokenizer.save_pretrained(output)
            else:
                save_adapter(self.model, output, initial_adapter=initial_adapter)

    # ---- internals
    def _check_schedule(self) -> None:
        if self.scheduler is None:
            raise LorakitError(
                "TrainConfig(max_steps=0) trains for --epochs of a dataset: call fit(data), or give max_steps"
            )

    def _start_schedule(self, total: int) -> None:
        self.total_steps = total
        for group in self.optimizer.param_groups:  # a LambdaLR scales the initial lr: start from it again
            group["lr"] = group.setdefault("initial_lr", group["lr"])
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule(self.config, total))
        if self._pending_scheduler is not None:  # resumed before the run's length was known
            self.scheduler.load_state_dict(self._pending_scheduler)
            self._pending_scheduler = None
            for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_last_lr(), strict=True):
                group["lr"] = lr  # the rate of the step the run continues from, not of step 0

    @contextlib.contextmanager
    def _own_rng(self) -> Iterator[None]:
        """Inside: the global torch generators hold the trainer's state; outside, the caller's, untouched."""
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda, device_type="cuda"):
            torch.set_rng_state(self._rng["torch"])
            if cuda and "cuda" in self._rng:
                torch.cuda.set_rng_state(self._rng["cuda"], cuda[0])
            try:
                yield
            finally:
                self._rng = {"torch": torch.get_rng_state(), "sample": self._rng["sample"]}
                if cuda:
                    self._rng["cuda"] = torch.cuda.get_rng_state(cuda[0])

    @contextlib.contextmanager
    def _inference(self, adapter: bool | str) -> Iterator[None]:
        """No gradients, no dropout, the model computing as ``adapter`` says, in the run's precision and kernels."""
        was_training = self.model.training
        self.model.eval()
        try:
            with (
                torch.no_grad(),
                computing_as(self.model, adapter),
                self._kernels(),
                autocast(self.autocast, self.device),
            ):
                yield
        finally:
            self.model.train(was_training)

    def _compiled(self) -> contextlib.AbstractContextManager[None]:
        """The decoder layers' compiled forward (``TrainConfig.compile``), during training steps only."""
        return self.compiled.active() if self.compiled is not None else contextlib.nullcontext()

    def _kernels(self) -> contextlib.AbstractContextManager[None]:
        """fp32 attention for a bf16 run on a CPU, where PyTorch's kernel is faster in fp32 than in bf16."""
        if self.autocast is not None and self.device.type == "cpu":
            return fp32_attention(self.model)
        return contextlib.nullcontext()
