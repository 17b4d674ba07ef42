"""Freed training tensors go back to the system at once: glibc's mmap threshold, low during a training pass.

On Linux, CPU tensors come from glibc's ``malloc``. Below its mmap threshold it serves them from its heaps, and each
time a larger mapped block is freed it raises the threshold (up to 32 MiB), so after the first long pass most
activations come from the heaps: freed, they stay resident, fragmented, and the next pass's peak adds to them.
A low fixed threshold gives each large tensor its own mapping, unmapped when freed, but costs page faults on every
allocation, which the decode loop makes at every token. So :func:`released_memory` lowers the threshold for the
training pass only (few, large tensors) and puts it back at glibc's ceiling (what the decode loop's steady state
had) with the heaps trimmed after it; and only in long steps (the policy's rule: more than ``CHECKPOINT_ABOVE``
tokens, as for activation checkpointing), since in the default step's short passes the page faults cost more than
the memory is worth (train 9.1 s against 6.9 s a step).

Measured on one 8 x 8 x 256-token SRT step of SmolLM2-135M (experiments/bench_memory.py; docs/scale.md): peak
8.25 GiB and 7.70 GiB resident after the step with glibc's default; a 4 MiB threshold for the whole process 5.61
and 2.67 GiB, but generation 106 s against 79 s (page faults per decode step); a user's own
``MALLOC_MMAP_THRESHOLD_`` is left as set, and other C libraries (macOS, musl) are left alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections.abc import Iterator

M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)
TRAINING = 4 << 20  # during a training pass
CEILING = 32 << 20  # glibc's largest dynamic threshold on 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX)


def _glibc():
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018  (glibc has both)
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _glibc()


@contextlib.contextmanager
def released_memory(device: object = "cpu", when: bool = True) -> Iterator[bool]:
    """Within: tensors of 4 MiB and more are mapped on their own (unmapped when freed); after: glibc's ceiling, and
    free heap pages returned. Yields whether it applies (``when``, glibc, a CPU pass, no user setting)."""
    on = when and _LIBC is not None and str(device).startswith("cpu")
    if on:
        _LIBC.mallopt(M_MMAP_THRESHOLD, TRAINING)
    try:
        yield on
    finally:
        if on:
            _LIBC.mallopt(M_MMAP_THRESHOLD, CEILING)
            _LIBC.malloc_trim(0)
