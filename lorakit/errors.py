"""Errors a user can cause and fix: the CLI prints them as one line, without a traceback.

Anything else that escapes is a bug in lorakit and keeps its traceback.
"""

from __future__ import annotations


class LorakitError(Exception):
    """A problem with the user's input (a file, a flag, a model): printed as ``lorakit: error: <message>``."""


class DataError(LorakitError, ValueError):
    """A dataset file is unusable; the message names the file and, where there is one, the line."""

    def __init__(self, path: str, message: str, line: int | None = None) -> None:
        self.path = path
        self.line = line
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")


class AdapterError(LorakitError, ValueError):
    """An adapter cannot be added, loaded or used as asked (names the module, adapter and shapes)."""


class ModelError(LorakitError):
    """A base model cannot be found or loaded."""


class DiskFullError(LorakitError):
    """The device ran out of room while writing a file; what was there before is left as it was."""


NO_ROOM = {28, 122}  # ENOSPC, EDQUOT: the disk or the user's quota is full


def is_disk_full(err: BaseException) -> bool:
    """An OSError for a full disk, or safetensors' error that wraps one (it carries no errno, only the text)."""
    if isinstance(err, OSError) and err.errno is not None:
        return err.errno in NO_ROOM
    text = str(err)
    return any(f"os error {code})" in text for code in NO_ROOM) or "No space left on device" in text
