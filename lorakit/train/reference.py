"""The reference model of preference and reward learning, without a second copy of the model.

DPO and GRPO's KL term compare the policy's log-probabilities with those of a frozen reference. With LoRA the
base model is already frozen, so the reference is the same model computed differently:

- a new adapter: the model with its adapters disabled is the base, the reference (``lorakit.disable_adapters``);
- continuing an adapter (DPO after SFT, the usual case): the reference is that adapter as it was before this
  training, so a frozen copy of it is kept beside the trained one as the adapter ``"reference"`` and only it is
  active during the reference pass. The copy costs one adapter's parameters (r=16 on SmolLM2-135M: 4.9 M, 20 MB in
  fp32), not a model's (135 M). It is made from the file (``load_reference``: what a resumed run does too, since
  checkpoints hold trained tensors only) or from the adapter in memory (``add_reference``).

Merging the continued adapter into the base weights and training a fresh one on top would give the same reference
for free, but the new adapter would then be a delta over a merged model, not an adapter for the original base.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator

import torch
from torch import nn

from lorakit.adapters import active_adapters, adapter_configs, add_adapter, disable_adapters, set_adapters
from lorakit.config import LoraConfig
from lorakit.errors import AdapterError
from lorakit.io import adapter_tensors, load_adapter

REFERENCE = "reference"


def add_reference(model: nn.Module, source: str = "default", name: str = REFERENCE) -> None:
    """A frozen copy of adapter ``source``'s current values as adapter ``name``, left inactive (the active and
    trainable adapters stay as they are)."""
    configs = adapter_configs(model)
    if source not in configs:
        raise AdapterError(f"add_reference: the model has no adapter {source!r} to copy")
    config = configs[source]
    if config.bias != "none":
        raise AdapterError(f"add_reference: adapter {source!r} trains biases (bias={config.bias!r}), which adapters "
                           "share, so a frozen copy cannot keep them")  # fmt: skip
    if isinstance(config, LoraConfig):  # weight-based inits (PiSSA, OLoRA) would change the base: the values are copied
        config = dataclasses.replace(config, init_lora_weights=True)
    active, trainable = active_adapters(model), [p for p in model.parameters() if p.requires_grad]
    add_adapter(model, config, name)
    copies = adapter_tensors(model, name)
    with torch.no_grad():
        for key, value in adapter_tensors(model, source).items():
            copies[key].copy_(value)
    _restore(model, name, active, trainable)


def load_reference(model: nn.Module, path: str | os.PathLike[str], name: str = REFERENCE) -> None:
    """The adapter at ``path`` (the one being continued, as it was saved) as the frozen, inactive adapter ``name``."""
    active, trainable = active_adapters(model), [p for p in model.parameters() if p.requires_grad]
    load_adapter(model, path, name=name, trainable=False)
    _restore(model, name, active, trainable)


def _restore(model: nn.Module, name: str, active: list[str], trainable: list[nn.Parameter]) -> None:
    set_adapters(model, [a for a in active if a != name])
    for param in model.parameters():
        param.requires_grad_(False)
    for param in trainable:
        param.requires_grad_(True)


def reference_adapter(model: nn.Module) -> str | None:
    """``"reference"`` when the model holds such an adapter, else None (the reference is the base)."""
    return REFERENCE if REFERENCE in adapter_configs(model) else None


@contextlib.contextmanager
def computing_as(model: nn.Module, adapter: bool | str) -> Iterator[None]:
    """Inside: the model computes with its active adapters (True), with none (False: the base), or with adapter
    ``adapter`` alone (a name); outside, as before."""
    if adapter is True:
        yield
        return
    if adapter is False:
        with disable_adapters(model):
            yield
        return
    active = active_adapters(model)
    set_adapters(model, [adapter])
    try:
        yield
    finally:
        set_adapters(model, active)
