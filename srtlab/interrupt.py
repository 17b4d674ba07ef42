"""Stopping on SIGTERM and SIGINT within a bounded time, with a checkpoint that resumes exactly.

SLURM and Kubernetes send SIGTERM some time before they kill a job. ``fit`` installs :func:`handlers`; a signal
only records itself, and the loop checks for it (:func:`check`) between decode steps and between micro-batches, not
only between steps, so a long generation or training pass stops within one decode step or one pass. The step
that was running is dropped whole (its batch and seeds are a pure function of the step number, so ``resume=true``
runs it again and continues exactly as an uninterrupted run would) and the policy writes its checkpoint
(``srtlab.modules.policy``). A second SIGINT (Ctrl-C twice) stops at once.

With several ranks a rank must not stop where the others go on (a collective would wait forever), so there the
check runs only at points every rank reaches together (``collective=True``), and agrees over ranks.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

_RECEIVED: list[int] = []  # the signals received since handlers() was entered (a signal handler's only state)


class Interrupted(Exception):
    """A SIGTERM or SIGINT asked the run to stop."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"received {signal.Signals(signum).name}")


def _record(signum: int, frame) -> None:
    if signum == signal.SIGINT and signal.SIGINT in _RECEIVED:
        raise KeyboardInterrupt  # Ctrl-C twice: now
    _RECEIVED.append(signum)


@contextlib.contextmanager
def handlers() -> Iterator[None]:
    """While inside, SIGTERM and SIGINT are recorded for :func:`check` (the previous handlers come back after)."""
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    _RECEIVED.clear()
    for s in previous:
        signal.signal(s, _record)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def requested() -> int | None:
    """The first signal received, or None."""
    return _RECEIVED[0] if _RECEIVED else None


def check(collective: bool = False) -> None:
    """Raise :class:`Interrupted` when a signal asked to stop. With several ranks only at a ``collective`` point
    (every rank calls it there), where the ranks agree: one rank's signal stops them all."""
    import torch.distributed as dist

    several = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if not several:
        if _RECEIVED:
            raise Interrupted(_RECEIVED[0])
        return
    if not collective:
        return
    import torch

    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    flag = torch.tensor([float(_RECEIVED[0]) if _RECEIVED else 0.0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if flag.item():
        raise Interrupted(int(flag.item()))
