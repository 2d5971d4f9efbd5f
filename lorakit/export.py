"""``lorakit merge``: base + adapter -> a plain transformers folder that loads without lorakit."""

from __future__ import annotations

from pathlib import Path

import lorakit
from lorakit.errors import LorakitError


def merge_to_folder(model_name: str | None, adapter: str, output: str, safe: bool = False) -> Path:
    """Merge ``adapter`` into the base weights (float32 sums) and save model, config and tokenizer."""
    folder = Path(output)
    if folder.exists() and any(folder.iterdir()):
        raise LorakitError(f"{folder}: output folder is not empty")
    model, tokenizer = lorakit.load_model(model_name)
    lorakit.load_adapter(model, adapter)
    lorakit.merge_adapters(model, safe=safe)
    plain = lorakit.unload(model, merge=True)
    folder.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(folder)  # type: ignore[operator]  # safetensors
    tokenizer.save_pretrained(folder)  # includes the chat template
    return folder
