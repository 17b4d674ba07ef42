"""srtlab.models.allocator: within a training pass, a freed large tensor leaves the process (glibc)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from srtlab.models import allocator

PROBE = """
import contextlib, sys, torch
from srtlab.models.allocator import released_memory
def rss():
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmRSS")).split()[1]) * 1024
big = torch.ones(24 << 18)  # 24 MiB, mapped; freed, glibc raises its mmap threshold to it
del big
base = rss()
with (released_memory() if sys.argv[1] == "on" else contextlib.nullcontext()):
    parts = [torch.ones(8 << 18) for _ in range(40)]  # 40 x 8 MiB, then every other one freed
    del parts[::2]
    print((rss() - base) / 2**20)
"""


@pytest.mark.skipif(allocator._LIBC is None, reason="glibc only")
def test_freed_tensors_leave_the_process_within_a_training_pass():
    def resident(mode: str) -> float:
        out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
        return float(out.stdout)

    held, released = resident("off"), resident("on")
    assert held > 300  # glibc's default: the freed half stays in its heap (holes)
    assert released < 200  # 20 x 8 MiB live: the freed half went back
    with allocator.released_memory("cuda:0") as on:
        assert not on  # GPU passes: the caching allocator's business
