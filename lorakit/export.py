"""``lorakit merge``: base + adapter -> a plain transformers folder that loads without lorakit."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import lorakit
from lorakit.errors import DiskFullError, LorakitError, is_disk_full


def merge_to_folder(
    model_name: str | None, adapter: str, output: str, safe: bool = False, trust_remote_code: bool = False
) -> Path:
    """Merge ``adapter`` into the base weights (float32 sums) and save model, config and tokenizer."""
    folder = Path(output)
    if folder.exists() and any(folder.iterdir()):
        raise LorakitError(f"{folder}: output folder is not empty")
    model, tokenizer = lorakit.load_model(model_name, trust_remote_code=trust_remote_code)
    lorakit.load_adapter(model, adapter)
    lorakit.merge_adapters(model, safe=safe)
    plain = lorakit.unload(model, merge=True)
    # Written beside the destination and renamed into place: a failure (a full disk) leaves no half model.
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    try:
        plain.save_pretrained(tmp)  # type: ignore[operator]  # safetensors
        tokenizer.save_pretrained(tmp)  # includes the chat template
        if folder.exists():
            folder.rmdir()  # empty, checked above
        os.rename(tmp, folder)
    except Exception as err:
        if is_disk_full(err):
            raise DiskFullError(f"{folder}: no room left on the device for the merged model") from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
