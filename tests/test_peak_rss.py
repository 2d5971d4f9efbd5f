"""lorakit.memory.peak_rss_mb is the process's own peak, not the one Linux carries over from its parent."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM and the carried-over ru_maxrss "
                                "are Linux's")  # fmt: skip

CHILD = """
import json, resource
from lorakit.memory import peak_rss_mb
print(json.dumps({"own": peak_rss_mb(), "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

PARENT = """
import subprocess, sys
big = bytearray(1536 << 20)
for i in range(0, len(big), 4096):  # touch every page: 1.5 GiB resident
    big[i] = 1
sys.stdout.write(subprocess.run([sys.executable, "-c", sys.argv[1]], capture_output=True, text=True, check=True).stdout)
"""


def test_a_child_of_a_big_process_reports_its_own_peak() -> None:
    """What lorakit compare saw: a trainer started by a process that had scored models (4-5 GB) logged that
    process's peak as its own through ru_maxrss."""
    proc = subprocess.run([sys.executable, "-c", PARENT, CHILD], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout)
    assert got["ru_maxrss"] >= 1536, "Linux carries the parent's peak into the child's ru_maxrss across exec"
    assert 0 < got["own"] < 1024, f"the child (Python and torch, a few hundred MiB) reported {got['own']} MiB"
