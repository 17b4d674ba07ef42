"""When to move a task up a level: pure functions of the per-step statistics seen at the current level.

Each rule reads ``history``: one value of ``rule.metric`` per training step at the current level
(oldest first), measured by the scheduler on that step's prompts of the current level, *before*
the step trains on them (so it is a held-out, label-free signal for ``majority_share``).

- ``steps``: after ``steps`` steps at the level.
- ``threshold``: when the metric has been at least ``threshold`` for the last ``window`` steps. With
  ``metric: majority_share`` (share of a group agreeing with its majority) this is label-free; with
  ``metric: gt_accuracy`` it reads gold answers and is meant for comparison only.
- ``plateau``: when the mean of the last ``window`` values improved by less than ``min_delta`` over the
  mean of the ``window`` before them.

``min_steps`` holds every rule back, ``max_steps`` (if set) forces a move up, so a climb cannot stall.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

METRICS = ("majority_share", "gt_accuracy", "answer_rate")


@dataclass
class AdvanceRule:
    """Which rule moves a task up, and its settings (see the module docstring)."""

    kind: str = "steps"  # steps | threshold | plateau
    steps: int = 10  # steps: steps per level
    metric: str = "majority_share"  # threshold / plateau: one of METRICS
    threshold: float = 0.8
    window: int = 3
    min_delta: float = 0.01
    min_steps: int = 1
    max_steps: int | None = None

    def validate(self) -> None:
        if self.kind not in RULES:
            raise ValueError(f"curriculum advance.kind={self.kind!r}; accepted: {', '.join(RULES)}")
        if self.metric not in METRICS:
            raise ValueError(f"curriculum advance.metric={self.metric!r}; accepted: {', '.join(METRICS)}")
        if self.steps < 1 or self.window < 1 or self.min_steps < 0:
            raise ValueError(f"curriculum advance: steps={self.steps}, window={self.window} must be >= 1 and "
                             f"min_steps={self.min_steps} >= 0")
        if self.max_steps is not None and self.max_steps < max(1, self.min_steps):
            raise ValueError(f"curriculum advance.max_steps={self.max_steps}; must be >= min_steps and >= 1")

    def __call__(self, history: Sequence[float]) -> bool:
        """Whether to move up after ``len(history)`` steps at the current level."""
        if len(history) < self.min_steps:
            return False
        if self.max_steps is not None and len(history) >= self.max_steps:
            return True
        return RULES[self.kind](self, history)


def after_steps(rule: AdvanceRule, history: Sequence[float]) -> bool:
    return len(history) >= rule.steps


def above_threshold(rule: AdvanceRule, history: Sequence[float]) -> bool:
    recent = history[-rule.window:]
    return len(recent) == rule.window and all(v >= rule.threshold for v in recent)


def plateaued(rule: AdvanceRule, history: Sequence[float]) -> bool:
    if len(history) < 2 * rule.window:
        return False
    last = history[-rule.window:]
    before = history[-2 * rule.window:-rule.window]
    return sum(last) / rule.window - sum(before) / rule.window < rule.min_delta


RULES: dict[str, Callable[[AdvanceRule, Sequence[float]], bool]] = {
    "steps": after_steps, "threshold": above_threshold, "plateau": plateaued}
