"""Files and folders that are either whole or absent: written beside their destination, fsynced, renamed into place.

Every file lorakit writes goes through ``atomic_write`` (or ``write_text_atomic``) and every folder through
``atomic_folder``, so a crash or a full disk leaves the old version or the new one, never half of either.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from lorakit.errors import DiskFullError, is_disk_full


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable (a no-op where the OS cannot open folders)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: Path, write: Callable[[str], object]) -> None:
    """``write(temporary_path)`` in the same folder, fsync, then rename: a crash leaves the old file or the new.

    A full disk raises ``DiskFullError`` (one line for the user) and leaves the old file as it was.
    """
    path = Path(path)
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + path.suffix)
        os.close(fd)
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except Exception as err:  # safetensors wraps the OSError in an exception type of its own
        if is_disk_full(err):
            raise DiskFullError(
                f"{path}: no room left on the device to write it (any previous file is untouched)"
            ) from None
        raise
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: Path, text: str) -> None:
    """A UTF-8 text file written through ``atomic_write``."""
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_jsonl(path: Path, records: Iterable[Mapping[str, Any]]) -> None:
    """One JSON object per line (UTF-8, not escaped to ASCII), written through ``atomic_write``."""
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def _fsync_tree(folder: Path) -> None:
    for root, _, names in os.walk(folder):
        for name in names:
            with open(os.path.join(root, name), "rb") as handle:
                os.fsync(handle.fileno())
        fsync_dir(Path(root))


@contextlib.contextmanager
def atomic_folder(final: Path, replace: bool = False, what: str = "it") -> Iterator[Path]:
    """Yield a temporary folder beside ``final``; on a clean exit fsync it and rename it to ``final``.

    ``replace``: an existing ``final`` is removed first (else it must be absent or empty, or the rename fails).
    A full disk raises ``DiskFullError`` naming ``what``; the temporary folder is removed in every case.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
    try:
        yield tmp
        _fsync_tree(tmp)
        if final.exists() and (replace or not any(final.iterdir())):
            shutil.rmtree(final)
        os.rename(tmp, final)
        fsync_dir(final.parent)
    except Exception as err:
        if is_disk_full(err):
            raise DiskFullError(f"{final}: no room left on the device for {what}") from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
