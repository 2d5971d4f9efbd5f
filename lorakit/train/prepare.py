"""Getting a model ready to train: frozen weights in the compute dtype, activation checkpointing, full fine-tuning."""

from __future__ import annotations

import torch
from torch import nn

from lorakit.errors import LorakitError


def prepare_for_training(model: nn.Module, autocast_dtype: torch.dtype | None, checkpointing: bool) -> None:
    """Frozen base weights stored in the autocast dtype; activation checkpointing if asked.

    Autocast would cast each fp32 base weight, and each fp32 activation entering a Linear, to bf16 at every call
    (and the gradients back in the backward): a sixth of a step's time in copies on a 2-core CPU. With every
    frozen parameter in bf16 (Linear weights, embeddings, norms: the whole model computes in bf16, as a model
    loaded in bf16 does) those casts disappear and the base takes half the memory. Trained parameters (the
    adapters), their gradients and the AdamW state stay fp32; buffers (rotary frequencies) stay as they are,
    and the loss is summed in fp32.
    """
    if autocast_dtype is not None:
        for module in model.modules():
            for param in module.parameters(recurse=False):
                # plain fp32 tensors only: a quantised base keeps its storage
                if not param.requires_grad and type(param) is torch.nn.Parameter and param.dtype == torch.float32:
                    param.data = param.data.to(autocast_dtype)
    if checkpointing:
        enable = getattr(model, "gradient_checkpointing_enable", None)
        if not callable(enable):
            raise LorakitError(f"--gradient-checkpointing: {type(model).__name__} has no gradient_checkpointing_enable")
        # Non-reentrant checkpointing needs no input that requires grad, so a frozen base works as is.
        enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def make_fully_trainable(model: nn.Module) -> None:
    """Full fine-tuning: every base parameter trains, held in fp32 (the master weights; autocast computes in
    bf16 from them), so AdamW's small updates are not rounded away as they would be in bf16 weights."""
    model.float()
    for param in model.parameters():
        param.requires_grad_(True)
