"""Causal-LM loss computed only where there is something to learn.

The output head of a small LLM is a large share of its compute (SmolLM2: a 576 x 49,152 matrix, ~20% of the
model's FLOPs) and its fp32 logits dominate activation memory (201 MB per 4 x 256 batch). Only assistant
tokens carry a loss, so the head runs on those positions alone: same loss, a fraction of the work. The
cross-entropy runs over those positions in chunks, each chunk's gradient computed as it goes
(``head_cross_entropy_sum``), so the full-vocabulary fp32 logits never exist for the whole batch at once.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.data.tokenize import IGNORE_INDEX
from lorakit.layers import output_head

MIN_SHARED_PREFIX = 8  # below this, a separate prefix pass costs more than it saves
HEAD_CHUNK = 256  # label positions per head chunk: 256 x 49,152 fp32 logits are 50 MB (not 201 MB per 4 x 256 batch)
HEAD_ROWS_MULTIPLE = 64  # the last chunk is padded to a multiple of this: a handful of shapes over a run, not one per
# label count (oneDNN caches kernels per shape and the heap fragments around them; see lorakit.cli.process)


def _backbone_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """(decoder returning hidden states, output head) of a transformers causal LM, when it has the usual shape."""
    prefix = getattr(model, "base_model_prefix", None)
    backbone = getattr(model, prefix, None) if isinstance(prefix, str) else None
    head = output_head(model)
    config = getattr(model, "config", None)
    # Models that post-process logits (soft-capping, scaling) need their own forward.
    special = any(getattr(config, k, None) for k in ("final_logit_softcapping", "logit_scale", "logits_scaling"))
    if not isinstance(backbone, nn.Module) or not isinstance(head, nn.Module) or special:
        return None
    return backbone, head


def shared_prefix_length(batch: dict[str, torch.Tensor]) -> int:
    """Length of the token prefix that every row shares and that holds no label (a common system prompt).

    The label at position P is predicted from position P-1, so the prefix stops before the first label.
    """
    input_ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    if input_ids.shape[0] < 2:
        return 0
    same = (input_ids == input_ids[:1]).all(0) & mask.bool().all(0) & (labels == IGNORE_INDEX).all(0)  # (T,)
    common = int(same.long().cumprod(0).sum())
    prefix = min(common - 1, input_ids.shape[1] - 2)  # keep position `prefix` (its label is ignored) in the suffix
    return prefix if prefix >= MIN_SHARED_PREFIX else 0


def _suffix_hidden(backbone: nn.Module, batch: dict[str, torch.Tensor], prefix: int) -> torch.Tensor | None:
    """Hidden states of positions ``prefix..T-1``, with the shared prefix run once for the whole batch.

    The prefix's keys and values are computed on one row and broadcast to all (gradients of the broadcast sum
    back over rows, which is what B separate copies would get). Returns None where the cache is not the usual
    per-layer one, and the caller runs the whole sequence instead.
    """
    input_ids, mask = batch["input_ids"], batch["attention_mask"]
    rows = input_ids.shape[0]
    first: Any = backbone(input_ids=input_ids[:1, :prefix], use_cache=True)
    cache = first["cache"] if "cache" in first else getattr(first, "past_key_values", None)
    layers = getattr(cache, "layers", None)
    if not layers or not all(hasattr(layer, "keys") and hasattr(layer, "values") for layer in layers):
        return None
    for layer in layers:
        layer.keys = layer.keys.expand(rows, -1, -1, -1)  # (B, heads, P, d)
        layer.values = layer.values.expand(rows, -1, -1, -1)
    # transformers >= 5.2x names the argument ``cache``; older releases ``past_key_values``
    name = "cache" if "cache" in inspect.signature(backbone.forward).parameters else "past_key_values"
    out: Any = backbone(input_ids=input_ids[:, prefix:], attention_mask=mask, use_cache=True, **{name: cache})
    return out.last_hidden_state  # (B, T - P, H)


def token_loss_sum(model: nn.Module, batch: dict[str, torch.Tensor], share_prefix: bool = True) -> torch.Tensor:
    """Sum over label tokens of the next-token cross-entropy (float32, float64 for float64 models); divide by the
    token count yourself.

    ``labels`` (B, T) are aligned with ``input_ids``: position t's label is the token at t, predicted from t-1.
    With ``share_prefix``, a label-free prefix common to all rows (the system prompt of a chat dataset) is run
    once per batch instead of once per row: the same loss and gradients for fewer FLOPs. Dropout on the LoRA path
    then draws one mask for the shared prefix.
    """
    head, hidden, targets, _ = _label_positions(model, batch, share_prefix)
    if head is None:
        return F.cross_entropy(hidden.float(), targets, reduction="sum")  # hidden: the label positions' logits
    return head_cross_entropy_sum(head, hidden, targets)  # over the N label positions only


def token_log_probs(model: nn.Module, batch: dict[str, torch.Tensor], share_prefix: bool = True) -> torch.Tensor:
    """Per-token log-probabilities (B, T), aligned with ``input_ids``: entry t is log p(input_ids[t] | tokens < t)
    where ``labels[t]`` is not -100, and 0 elsewhere (and at t = 0). float32 (float64 for float64 models), with
    gradients; the same computation as ``token_loss_sum`` (whose value is minus their sum), per token."""
    head, hidden, targets, keep = _label_positions(model, batch, share_prefix)
    if head is None:
        picked = -F.cross_entropy(hidden.float(), targets, reduction="none")  # (N,)
    else:
        picked = -head_cross_entropy_sum(head, hidden, targets, reduce=False)  # (N,)
    after = picked.new_zeros(keep.shape).masked_scatter(keep, picked)  # (B, T-P-1): tokens P+1.. of each row
    return F.pad(after, (batch["input_ids"].shape[1] - keep.shape[1], 0))  # (B, T)


def _label_positions(
    model: nn.Module, batch: dict[str, torch.Tensor], share_prefix: bool
) -> tuple[nn.Module | None, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(head, hidden states at the N label positions (N, H), their targets (N,), which positions they are).

    The positions are a (B, T-P-1) mask over the tokens after the shared prefix (P = 0 without one), each predicting
    the next token. A model without the usual decoder/head split gives head None and the positions' logits (N, V).
    """
    input_ids, labels = batch["input_ids"], batch["labels"]
    targets = labels[:, 1:]  # (B, T-1)
    keep = targets != IGNORE_INDEX  # (B, T-1)
    parts = _backbone_and_head(model)
    # Packed rows (lorakit.data.batching.collate_packed): positions restart per example and no 2-D mask is passed,
    # so transformers masks attention block-diagonally; the rows share no prefix.
    packed = "position_ids" in batch
    inputs = {"position_ids": batch["position_ids"]} if packed else {"attention_mask": batch["attention_mask"]}
    if parts is None:
        logits = model(input_ids=input_ids, **inputs).logits[:, :-1]  # (B, T-1, V)
        return None, logits[keep], targets[keep], keep
    backbone, head = parts
    # transformers' checkpointed layers drop the cache, which the shared prefix needs: run whole rows then.
    checkpointed = getattr(model, "is_activation_checkpointing", None)  # transformers >= 5.2x; older: _gradient_
    if checkpointed is None:
        checkpointed = getattr(model, "is_gradient_checkpointing", False)
    share_prefix = share_prefix and not checkpointed and not packed
    prefix = shared_prefix_length(batch) if share_prefix else 0
    hidden = _suffix_hidden(backbone, batch, prefix) if prefix else None
    if hidden is None:
        prefix = 0
        out: Any = backbone(input_ids=input_ids, use_cache=False, **inputs)
        hidden = out[0] if isinstance(out, tuple) else out.last_hidden_state  # (B, T, H)
    targets = labels[:, prefix + 1 :]  # (B, T-P-1)
    keep = targets != IGNORE_INDEX
    return head, hidden[:, :-1][keep], targets[keep], keep


class _ChunkedHeadCrossEntropy(torch.autograd.Function):
    """Sum of cross-entropies of ``hidden @ W^T (+ bias)`` against ``targets``, ``chunk`` rows at a time (with
    ``reduce`` False: each row's cross-entropy, (N,)).

    For logits z = h W^T (+ b) and target t, the loss is ``logsumexp(z) - z_t`` and its gradient
    ``dL/dz = softmax(z) - onehot(t)``, so ``dL/dh = (softmax(z) - onehot(t)) W``: both follow from ``log_softmax(z)``
    (the loss is minus its entry at t, softmax its exponential). The forward computes both per
    chunk and keeps only dL/dh (N, H): the (N, V) fp32 logits never exist for more than ``chunk`` rows at a
    time, and the backward is a multiplication by the incoming gradient (a scalar for the sum; per row, row n's
    loss depends on h_n alone, so dL_n/dh_n scaled by row n's incoming gradient). The head's weight is frozen.
    A short last chunk runs padded with zero rows up to a multiple of ``rows_multiple`` (at most ``chunk``);
    their losses are dropped and their dL/dz zeroed, so they change nothing but the matrix shapes.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
        dtype: torch.dtype, chunk: int, rows_multiple: int, reduce: bool = True,
    ) -> torch.Tensor:  # fmt: skip
        need_grad = ctx.needs_input_grad[0]
        grad_hidden = torch.empty_like(hidden) if need_grad else None  # (N, H)
        logits_dtype = torch.promote_types(dtype, torch.float32)  # fp32 logits for bf16, float64 for float64
        total = torch.zeros((), dtype=logits_dtype, device=hidden.device)
        per_row = None if reduce else torch.empty(hidden.shape[0], dtype=logits_dtype, device=hidden.device)  # (N,)
        w = weight.to(dtype)  # (V, H): a no-op when the head is stored in the compute dtype
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, hidden.shape[0], chunk):
                h = hidden[start : start + chunk].to(dtype)  # (n, H)
                t = targets[start : start + chunk]  # (n,)
                n = len(t)
                rows = min(-(-n // rows_multiple) * rows_multiple, chunk)
                if rows > n:
                    h = F.pad(h, (0, 0, 0, rows - n))  # (rows, H): zero rows after the n real ones
                z = (h @ w.T).to(logits_dtype)  # (rows, V)
                if bias is not None:
                    z += bias.to(logits_dtype)
                # log-softmax is one fused kernel (max, sum of exponentials and the write in one sweep): the chunk's
                # 50 MB of logits are read and written far fewer times than by logsumexp, a subtraction and exp.
                logp = torch.log_softmax(z, dim=-1)  # (rows, V)
                del z
                if per_row is None:
                    total -= logp[:n].gather(1, t[:, None]).sum()
                else:
                    per_row[start : start + n] = -logp[:n].gather(1, t[:, None]).squeeze(1)
                if grad_hidden is not None:
                    probs = logp.exp_()  # (rows, V) softmax, in place
                    probs[n:] = 0  # padding rows pass no gradient
                    probs[torch.arange(n, device=t.device), t] -= 1
                    grad_hidden[start : start + chunk] = (probs.to(dtype) @ w)[:n].to(hidden.dtype)  # (n, H)
        ctx.save_for_backward(grad_hidden)
        return total if per_row is None else per_row

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        (grad_hidden,) = ctx.saved_tensors
        scale = grad.to(grad_hidden.dtype)
        return grad_hidden * (scale if scale.dim() == 0 else scale[:, None]), None, None, None, None, None, None, None


def head_cross_entropy_sum(
    head: nn.Module,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    chunk: int = HEAD_CHUNK,
    rows_multiple: int = HEAD_ROWS_MULTIPLE,
    reduce: bool = True,
) -> torch.Tensor:
    """``cross_entropy(head(hidden).float(), targets, reduction="sum")`` for hidden (N, H), targets (N,); with
    ``reduce`` False, ``reduction="none"`` (N,).

    A plain frozen ``nn.Linear`` head goes through the chunked function above; any other head (trained, wrapped
    by an adapter) through the plain path.
    """
    weight = getattr(head, "weight", None)
    if type(head) is not nn.Linear or not isinstance(weight, torch.Tensor) or weight.requires_grad:
        return F.cross_entropy(head(hidden).float(), targets, reduction="sum" if reduce else "none")
    bias = head.bias if isinstance(head.bias, torch.Tensor) else None
    device_type = hidden.device.type
    autocast = torch.is_autocast_enabled(device_type) and weight.dtype in (torch.float32, torch.bfloat16)
    dtype = torch.get_autocast_dtype(device_type) if autocast else torch.promote_types(hidden.dtype, weight.dtype)
    return _ChunkedHeadCrossEntropy.apply(  # type: ignore[no-any-return]
        hidden, weight, bias, targets, dtype, chunk, rows_multiple, reduce
    )


def label_count(batch: dict[str, torch.Tensor]) -> int:
    """Tokens of ``batch`` that carry a loss: positions 1.. whose label is not IGNORE_INDEX (the first token has
    nothing before it to predict it from)."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def autocast(dtype: torch.dtype | None, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Autocast on the device the model runs on (CPU or CUDA), or nothing for fp32."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def mean_token_loss(
    model: nn.Module,
    batches: list[dict[str, torch.Tensor]],
    autocast_dtype: torch.dtype | None,
    loss_sum: nn.Module | None = None,
) -> float:
    """Mean label-token loss over ``batches`` (dropout off); ``loss_sum`` is a wrapped model's loss module."""
    was_training = model.training
    model.eval()
    total = count = 0.0
    device = next(model.parameters()).device
    with torch.no_grad(), autocast(autocast_dtype, device):
        for batch in batches:
            if loss_sum is not None:
                total += float(loss_sum(batch))  # the loss module moves the batch itself
            else:
                total += float(token_loss_sum(model, {k: v.to(device) for k, v in batch.items()}))
            count += label_count(batch)
    model.train(was_training)
    return total / max(count, 1)
