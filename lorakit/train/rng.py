"""The trainer's own random-number states: made, saved and restored without touching the process's generators."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def seeded_state(seed: int, device: torch.device, rank: int = 0) -> dict[str, Any]:
    """Generator states of ``seed`` for the CPU (and the model's CUDA device), made without touching the globals,
    and the sampling generator's (on the model's device, ``seed + rank``: each rank draws its own samples)."""
    state = {"torch": torch.Generator().manual_seed(seed).get_state(),
             "sample": torch.Generator(device).manual_seed(seed + rank).get_state()}  # fmt: skip
    if device.type == "cuda":
        state["cuda"] = torch.Generator(device=device).manual_seed(seed).get_state()
    return state


def rng_from(saved: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, Any]:
    """The trainer's RNG state from a checkpoint's (older checkpoints also hold Python's, which is not used, and no
    sampling state: the current one stays)."""
    return {"sample": current["sample"], **{k: v for k, v in saved.items() if k in ("torch", "cuda", "sample")}}
