"""Which base model and system prompt an adapter folder wants: the one answer every command and the server use.

An adapter fits the weights it was trained against. ``lorakit train`` records them as the adapter's
``base_model_name_or_path`` (a Hub name, or an absolute folder or file path; the built-in model as its Hub name,
``HuggingFaceTB/SmolLM2-135M-Instruct``, which ``lorakit.models`` maps to its local copy without a network), and
when every training example opened with the same system prompt, keeps it in the run folder beside the adapter
(``lorakit.runs.folder``): the model learnt to answer under it, so chat, generate and serve send it unless told
otherwise. A QLoRA run's settings say how its base was quantised, so the base is loaded quantised the same way.
Adapters made elsewhere (peft, another tool) carry ``base_model_name_or_path`` too; older lorakit runs left it empty
or wrote the built-in's short name, and their settings name the model.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lorakit.errors import LorakitError
from lorakit.io import CONFIG_NAME, find_adapter_folder
from lorakit.models import BUILTIN_HUB_ID, is_builtin
from lorakit.runs.folder import RunFolder, beside


@dataclass(frozen=True)
class AdapterOrigin:
    """What an adapter folder says about how it was made: its base (None: not recorded) and system prompt."""

    folder: Path
    base_model: str | None
    system_prompt: str | None

    def base_for(self, model: str | None) -> str | None:
        """The base to load: ``--model`` when given (an override), else the adapter's own."""
        return model if model else self.base_model


def adapter_origin(path: str | os.PathLike[str]) -> AdapterOrigin:
    """The base model and system prompt of the adapter in ``path`` (an adapter folder or a run folder holding one)."""
    folder = find_adapter_folder(path)
    runs = [RunFolder(folder), RunFolder(folder.parent)] if folder != Path(path) else [RunFolder(folder)]
    base: str | None = None
    try:
        config = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
        base = config.get("base_model_name_or_path") or None if isinstance(config, dict) else None
    except (OSError, ValueError):
        base = None
    if base is None:  # an adapter from before lorakit recorded its base: the run's settings name it
        for run in runs:
            saved = run.read_config()
            if saved is None:
                continue
            if "model" in saved:
                base = saved["model"] or BUILTIN_HUB_ID  # null: the built-in model
            break
    prompt = next((p for run in runs if (p := run.read_system_prompt()) is not None), None)
    return AdapterOrigin(folder, base, prompt)


def trained_base(adapter: str | os.PathLike[str]) -> Literal["nf4", "int8", "float"] | None:
    """The kind of base ``lorakit train`` made the adapter in this folder (or its parent) on: "nf4"/"int8" for a
    QLoRA run, "float" for any other run, None for a folder without the run's settings (not known)."""
    saved = next((s for run in beside(adapter) if (s := run.read_config()) is not None), None)
    if saved is None:
        return None
    if saved.get("method") != "qlora":
        return "float"
    return "int8" if saved.get("bits") == 8 else "nf4"


def trained_quantization(adapter: str | os.PathLike[str]) -> Literal["nf4", "int8"] | None:
    """How the base was quantised when ``lorakit train`` made the adapter in this folder (or its parent):
    "nf4"/"int8" for a QLoRA run, None for any other run or a folder without the run's settings."""
    base = trained_base(adapter)
    return None if base is None or base == "float" else base


def recorded_name(model: str | None) -> str:
    """The ``base_model_name_or_path`` to record for ``--model``: the built-in's Hub name, an absolute path for a local
    folder or file (so the adapter finds it from any directory), a Hub name as it is."""
    if is_builtin(model):
        return BUILTIN_HUB_ID
    assert model is not None
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model


def same_base(a: str | None, b: str | None) -> bool:
    """Whether two model names (None: the built-in) load the same weights: one model, one folder or one Hub name."""
    if is_builtin(a) or is_builtin(b):
        return is_builtin(a) and is_builtin(b)
    assert a is not None and b is not None
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.exists() or pb.exists():
        return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()
    return a == b


def check_same_base(adapter: str | os.PathLike[str], served: str | None) -> AdapterOrigin:
    """The adapter's origin, or a one-line error when it was trained on another base than ``served``."""
    origin = adapter_origin(adapter)
    if origin.base_model is not None and not same_base(origin.base_model, served):
        raise LorakitError(
            f"{adapter}: this adapter was trained on {origin.base_model}, not on {describe(served)}, which this "
            "server serves; serve it with --model set to its base"
        )
    return origin


def describe(model: str | None) -> str:
    return f"the built-in {BUILTIN_HUB_ID}" if is_builtin(model) else str(model)
