"""Reading the process's memory: peak resident size so far, what malloc holds live, and the peak on a GPU.
Read-only: the allocator tuning that ``lorakit train`` applies lives in the command-line layer
(``lorakit.cli.process``)."""

from __future__ import annotations

import ctypes
import sys

import torch


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]  # fmt: skip


def heap_in_use_mib() -> float | None:
    """MiB that malloc has handed out and not had back (glibc's ``mallinfo2``: blocks in use in the heap plus
    mapped blocks): the process's live allocations, without the free heap pages RSS also counts. None where
    there is no glibc 2.33+."""
    try:
        mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    return (info.uordblks + info.hblkhd) / (1 << 20)


def peak_rss_mb() -> float | None:
    """This process's peak resident memory so far, in MiB (None where the OS does not say).

    On Linux it is ``VmHWM`` from ``/proc/self/status``, not ``getrusage``'s ``ru_maxrss``: Linux carries the
    parent's peak into a child's ``ru_maxrss`` across ``exec`` (a trainer started by a 4.5 GB process reports at
    least 4.5 GB whatever it uses), while ``VmHWM`` belongs to this process's own memory."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / (1 << 10), 1)  # kB
    except OSError:  # not Linux
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(peak / (1 << 20 if sys.platform == "darwin" else 1 << 10), 1)


def peak_gpu_mb(device: torch.device) -> float | None:
    """The peak of tensor memory allocated on a CUDA ``device`` so far (``torch.cuda.max_memory_allocated``), in
    MiB; None for any other device. Read-only: the peak is never reset here (that is the process's to decide)."""
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / (1 << 20), 1)
