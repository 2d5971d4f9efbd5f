"""Checkpoints that survive a kill at any moment.

A checkpoint is a folder ``<output>/checkpoints/step-NNNNNN/`` holding the adapter in peft's format (so it
loads on its own) or, for full fine-tuning (a model without adapters), every trained tensor in
``model.safetensors``, and ``trainer_state.pt`` (the trainer's ``state_dict``: optimiser, scheduler, RNG states,
step). It is written into a temporary folder, fsynced, and renamed into place (``lorakit.files.atomic_folder``):
a checkpoint folder that exists is complete. Older ones are removed only after the new one is in place.
"""

from __future__ import annotations

import io
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lorakit.adapters import adapter_configs
from lorakit.errors import DiskFullError, LorakitError, is_disk_full
from lorakit.files import atomic_folder
from lorakit.io import adapter_tensors, save_adapter

STATE_NAME = "trainer_state.pt"
FULL_WEIGHTS = "model.safetensors"
KEEP = 2


def checkpoint_root(output: Path) -> Path:
    return output / "checkpoints"


def save_checkpoint(
    output: Path, model: nn.Module, state: dict[str, Any], weights: dict[str, torch.Tensor] | None = None
) -> Path:
    """Write ``<output>/checkpoints/step-NNNNNN/``: the trained weights and ``state`` (a trainer's ``state_dict``,
    which holds ``step``), whole or not at all; only the newest ``KEEP`` are kept. ``weights``: the trained
    parameters' values by their names in ``model``, when its own parameters are not whole (FSDP2 shards)."""
    root = checkpoint_root(output)
    step = int(state["step"])
    final = root / f"step-{step:06d}"
    try:
        # replace: a re-run of the same step after a resume replaces it whole
        with atomic_folder(final, replace=True) as tmp:
            _save_weights(model, tmp, weights)
            # Serialised in memory first: torch.save straight to a full disk fails with an unrelated message.
            buffer = io.BytesIO()
            torch.save(state, buffer)
            (tmp / STATE_NAME).write_bytes(buffer.getbuffer())
    except (OSError, DiskFullError) as err:
        if not is_disk_full(err) and not isinstance(err, DiskFullError):
            raise
        last = list_checkpoints(output)
        kept = f"the last good checkpoint {last[-1]} is untouched" if last else "no earlier checkpoint exists"
        raise DiskFullError(f"{root}: no room left on the device for the checkpoint of step {step}; {kept}") from None
    for old in list_checkpoints(output)[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def check_room(output: Path, adapter_bytes: int, checkpoints: bool) -> None:
    """Refuse to start when the output folder's device cannot hold what the run will write.

    A checkpoint holds the adapter and AdamW's two moments (3x the adapter); KEEP of them stay and one more
    is written before the oldest is removed, and the final adapter comes on top.
    """
    needed = adapter_bytes + ((KEEP + 1) * 3 * adapter_bytes if checkpoints else 0)
    free = shutil.disk_usage(output).free
    if free < needed:
        raise DiskFullError(
            f"{output}: {free / 2**20:.1f} MiB free on its device, but this run writes about "
            f"{needed / 2**20:.1f} MiB; free some space or choose another --output"
        )


def _trained_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every trainable parameter by name (tied weights once: named_parameters skips the duplicates)."""
    return {name: param for name, param in model.named_parameters() if param.requires_grad}


def _save_weights(model: nn.Module, folder: Path, weights: dict[str, torch.Tensor] | None) -> None:
    if adapter_configs(model):
        save_adapter(model, folder, tensors=None if weights is None else _by_file_key(model, weights))
        return
    from safetensors.torch import save_file

    trained = _trained_tensors(model)
    values = trained if weights is None else {name: weights[name] for name in trained}
    save_file({k: v.detach().contiguous() for k, v in values.items()}, str(folder / FULL_WEIGHTS))


def _by_file_key(model: nn.Module, by_name: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapter's tensors in ``by_name`` (parameter name -> value) under their file keys."""
    name_of: dict[torch.Tensor, str] = {param: name for name, param in model.named_parameters()}
    return {key: by_name[name_of[param]] for key, param in adapter_tensors(model, "default").items()}


def list_checkpoints(output: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders of an interrupted write are ignored)."""
    root = checkpoint_root(output)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / STATE_NAME).exists()]
    return sorted(found, key=lambda p: int(p.name.removeprefix("step-")))


def read_checkpoint(folder: Path, model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A checkpoint's trained weights, by the names of ``model``'s parameters they belong to, and the state
    ``save_checkpoint`` wrote with them. Copying the weights in is the caller's (``Processes.load_trained``)."""
    from safetensors.torch import load_file

    full = not adapter_configs(model)
    weights = load_file(folder / (FULL_WEIGHTS if full else "adapter_model.safetensors"))
    if not full:
        name_of: dict[torch.Tensor, str] = {param: name for name, param in model.named_parameters()}
        weights = {name_of[param]: weights[key] for key, param in adapter_tensors(model, "default").items()}
    # weights_only: the state holds tensors and plain Python values, so nothing executable is unpickled
    try:
        # map_location: a run checkpointed on a GPU may go on on the CPU (load_state_dict moves each state to its
        # parameter's device)
        state: dict[str, Any] = torch.load(folder / STATE_NAME, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise LorakitError(
            f"{folder / STATE_NAME}: not a lorakit checkpoint state, refused without running it ({reason})"
        ) from None
    return weights, state


def clean_temporary(output: Path) -> None:
    """Remove what an interrupted checkpoint write left behind."""
    root = checkpoint_root(output)
    if root.is_dir():
        for p in root.glob(".*tmp-*"):
            shutil.rmtree(p, ignore_errors=True)
