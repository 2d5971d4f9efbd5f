"""lorakit.cli.process (lorakit train's allocator tuning) against glibc: what the mmap threshold does (mallinfo2)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from typing import Any

import pytest

# mallopt and mallinfo2 exist only in glibc (not musl, macOS or Windows); every test here observes them.
pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt and mallinfo2 are glibc's")

PRELUDE = """
import ctypes, json
from lorakit.cli.process import fix_mmap_threshold, loading_heap
from lorakit.memory import heap_in_use_mib

libc = ctypes.CDLL("libc.so.6")
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

def mapped(size):
    "Whether a block of size bytes gets its own mapping."
    before = libc.mallinfo2().hblks
    block = libc.malloc(size)
    result = libc.mallinfo2().hblks > before
    libc.free(block)
    return result
"""

THRESHOLD = """
libc.free(libc.malloc(16 << 20))  # freeing a 16 MiB mapping moves glibc's threshold up to 16 MiB
moved = mapped(12 << 20)  # now in the heap, whose free top then holds 12 MiB: smaller requests reuse it
fixed = fix_mmap_threshold()
print(json.dumps({"moved": moved, "fixed": fixed, "big": mapped(24 << 20), "small": mapped(1 << 20),
                  "again_after_a_big_free": (libc.free(libc.malloc(16 << 20)), mapped(24 << 20))[1]}))
"""

LOADING = """
got = {}
fix_mmap_threshold()  # 4 MiB; a fresh process's heap has little free room, and glibc maps only what does not fit
with loading_heap():
    got["loading_1m"], got["loading_32k"] = mapped(1 << 20), mapped(32 << 10)
got["after_loading_1m"], got["after_loading_24m"] = mapped(1 << 20), mapped(24 << 20)
before = heap_in_use_mib()
blocks = [libc.malloc(3 << 20), libc.malloc(9 << 20)]  # one in the heap, one mapped
got["in_use_grew_mib"] = heap_in_use_mib() - before
for block in blocks:
    libc.free(block)
got["in_use_after_free_mib"] = heap_in_use_mib() - before
print(json.dumps(got))
"""


def _probe(body: str, **env: str) -> dict[str, Any]:
    clean = {k: v for k, v in os.environ.items() if k not in ("MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")}
    proc = subprocess.run([sys.executable, "-c", PRELUDE + body], env={**clean, **env}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def test_fixed_threshold_maps_big_blocks_and_stops_moving() -> None:
    got = _probe(THRESHOLD)
    assert got["moved"] is False, "glibc's own behaviour: after a 16 MiB free, 12 MiB blocks go to the heap"
    assert got["fixed"] is True
    assert got["big"] is True and got["small"] is False  # at 4 MiB: a new 24 MiB block mapped, 1 MiB in the heap
    assert got["again_after_a_big_free"] is True, "a fixed threshold does not move"


def test_a_threshold_the_user_chose_is_kept() -> None:
    got = _probe(THRESHOLD, MALLOC_MMAP_THRESHOLD_=str(32 << 20))
    assert got["fixed"] is False
    assert got["big"] is False, "the user's 32 MiB threshold still holds"


@pytest.fixture(scope="module")
def loading() -> dict[str, Any]:
    """One fresh process's LOADING observations, read by two tests."""
    return _probe(LOADING)


def test_loading_heap_maps_blocks_over_64k_then_pins_4m(loading: dict[str, Any]) -> None:
    got = loading
    assert got["loading_1m"] is True and got["loading_32k"] is False
    assert got["after_loading_1m"] is False and got["after_loading_24m"] is True


def test_loading_heap_keeps_the_users_threshold() -> None:
    got = _probe(LOADING, MALLOC_MMAP_THRESHOLD_=str(32 << 20))
    assert got["loading_1m"] is False and got["after_loading_24m"] is False


def test_heap_in_use_counts_heap_and_mapped_blocks(loading: dict[str, Any]) -> None:
    got = loading
    assert 12 <= got["in_use_grew_mib"] < 12.1, "3 MiB in the heap + 9 MiB mapped, plus malloc's headers"
    assert abs(got["in_use_after_free_mib"]) < 0.1
