"""Data-parallel bookkeeping: who this rank is, and reductions of the step's counts and statistics.

With N ranks each rank trains on its own B/N prompts of the step (``srtlab.data.datamodule``). What must
agree across ranks goes through here: the loss normaliser and the number of forward/backward passes
(``srtlab.modules.loss_pass``), the logged metrics, the curriculum's per-level statistics and the
held-out scores. With one process (or before a process group exists) every function is the identity,
so the default path has no collectives at all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist


def world_size() -> int:
    """Number of ranks of the default process group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank in the default process group (0 without one)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def all_reduce(values: Sequence[float], op: str, device: torch.device | str = "cpu") -> list[float]:
    """Element-wise ``op`` ("sum" or "max") of ``values`` over ranks, in one collective (float64)."""
    if world_size() == 1:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return t.tolist()


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` with one process."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def mean_metrics(per_rank: Sequence[dict[str, float]], sums: Sequence[str] = ()) -> dict[str, float]:
    """Per key, the mean over the ranks that report it and are not NaN (ranks train equal numbers of
    samples, so a mean of per-sample means is the global mean); keys in ``sums`` are added instead
    (throughputs). NaN when no rank has a value."""
    out: dict[str, float] = {}
    for key in dict.fromkeys(k for m in per_rank for k in m):
        values = [float(m[key]) for m in per_rank if key in m and not math.isnan(float(m[key]))]
        if not values:
            out[key] = math.nan
        else:
            out[key] = sum(values) if key in sums else sum(values) / len(values)
    return out


def merge_level_stats(per_rank: Sequence[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """The reward mix's per-(task/level) statistics of every rank as one: each statistic is the mean over
    ranks weighted by the rank's ``groups`` (prompts of that level), and ``groups`` is their sum, so the
    result is what one process with all B prompts would have measured."""
    out: dict[str, dict[str, float]] = {}
    for key in dict.fromkeys(k for stats in per_rank for k in stats):
        found = [stats[key] for stats in per_rank if key in stats]
        weights = [float(s.get("groups", 1.0)) for s in found]
        total = sum(weights)
        merged = {"groups": total} if any("groups" in s for s in found) else {}
        for name in dict.fromkeys(n for s in found for n in s if n != "groups"):
            pairs = [(w, float(s[name])) for w, s in zip(weights, found)
                     if name in s and not math.isnan(float(s[name]))]
            weight = sum(w for w, _ in pairs)
            merged[name] = sum(w * v for w, v in pairs) / weight if weight > 0 else math.nan
        out[key] = merged
    return out
