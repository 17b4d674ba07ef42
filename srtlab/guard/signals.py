"""Collapse signals: pure functions over metric histories (no Lightning, no torch).

A :class:`History` keeps, for each metric name, the ``(step, value)`` pairs the run logged: training
metrics once per optimizer step, held-out metrics once per evaluation. The rules in
``srtlab.guard.rules`` read it through the functions here; the callback only fills it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatch

SELF_REWARDS = ("train/reward/vote", "train/reward/mixed")  # the self-reward, first one logged wins


@dataclass
class History:
    """metric -> [(step, value), ...] in the order logged; ``baseline``: each metric's frozen early mean;
    ``firsts``: each metric's first value (the base model's, for the probe's signals), kept after a rollback."""

    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    baseline: dict[str, float] = field(default_factory=dict)
    firsts: dict[str, float] = field(default_factory=dict)

    def add(self, step: int, metrics: dict[str, float]) -> None:
        """Append this step's values (one value per metric and step: a repeated step replaces the last)."""
        for name, value in metrics.items():
            self.firsts.setdefault(name, float(value))
            rows = self.series.setdefault(name, [])
            if rows and rows[-1][0] == step:
                rows[-1] = (step, float(value))
            else:
                rows.append((step, float(value)))

    def values(self, name: str) -> list[float]:
        return [v for _, v in self.series.get(name, [])]

    def first(self, name: str) -> float | None:
        """The first value ever logged of ``name`` (before any rollback), or None."""
        return self.firsts.get(name)

    def newest_step(self) -> int | None:
        """The latest step any metric was logged at."""
        return max((rows[-1][0] for rows in self.series.values() if rows), default=None)

    def names(self, pattern: str) -> list[str]:
        """Logged metric names matching a glob pattern (``val/*/mean@*``), sorted."""
        return sorted(n for n in self.series if fnmatch(n, pattern))

    def freeze_baselines(self, steps: int) -> None:
        """Record the mean of each metric's first ``steps`` values, once it has that many (kept after)."""
        for name, rows in self.series.items():
            if name not in self.baseline and len(rows) >= steps:
                self.baseline[name] = sum(v for _, v in rows[:steps]) / steps

    def clear_windows(self) -> None:
        """Forget the recent values (after a rollback the windows describe the abandoned weights); baselines
        and first values stay."""
        self.series = {}

    def state_dict(self) -> dict:
        return {"series": {k: [list(r) for r in v] for k, v in self.series.items()}, "baseline": dict(self.baseline),
                "firsts": dict(self.firsts)}

    @classmethod
    def from_state(cls, state: dict) -> History:
        return cls({k: [(int(s), float(v)) for s, v in rows] for k, rows in state["series"].items()},
                   dict(state["baseline"]), dict(state.get("firsts", {})))


def window(values: list[float], size: int) -> list[float] | None:
    """The last ``size`` values, or None while fewer have been logged."""
    return values[-size:] if size > 0 and len(values) >= size else None


def fresh(history: History, name: str) -> list[float] | None:
    """``name``'s values if it was logged at the newest step (a signal of the probe, checked at the steps the
    probe ran, not again at every step after), else None."""
    rows = history.series.get(name)
    if not rows or rows[-1][0] != history.newest_step():
        return None
    return [v for _, v in rows]


def slope(values: list[float]) -> float:
    """Least-squares slope of ``values`` against their index (per step or per evaluation); 0 for < 2 values."""
    n = len(values)
    if n < 2:
        return 0.0
    x_mean, y_mean = (n - 1) / 2, sum(values) / n
    cov = sum((i - x_mean) * (y - y_mean) for i, y in enumerate(values))
    var = sum((i - x_mean) ** 2 for i in range(n))
    return cov / var


def relative_change(value: float, baseline: float) -> float:
    """(value - baseline) / |baseline|; 0 when the baseline is 0 (no scale to compare against)."""
    return 0.0 if baseline == 0 else (value - baseline) / abs(baseline)


def self_reward_name(history: History) -> str | None:
    """The self-reward metric this run logs: the vote's own reward if logged, else the mixed reward."""
    return next((name for name in SELF_REWARDS if history.series.get(name)), None)
