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

from srtlab.settings import Annotated, checked, choice, fail, integer, problem, real

METRICS = ("majority_share", "gt_accuracy", "answer_rate")


@checked
@dataclass
class AdvanceRule:
    """Which rule moves a task up, and its settings (see the module docstring)."""

    kind: Annotated[str, choice(("steps", "threshold", "plateau"))] = "steps"
    steps: Annotated[int, integer(1)] = 10  # steps: steps per level
    metric: Annotated[str, choice(METRICS)] = "majority_share"  # threshold / plateau
    threshold: Annotated[float, real(0, 1)] = 0.8  # the metrics are shares in [0, 1]
    window: Annotated[int, integer(1)] = 3
    min_delta: Annotated[float, real(-1, 1, why="the change of a share in [0, 1]")] = 0.01
    min_steps: Annotated[int, integer(0)] = 1
    max_steps: Annotated[int | None, integer(1, null=True)] = None

    def __post_init__(self) -> None:
        if self.max_steps is not None and self.max_steps < self.min_steps:
            fail(type(self), [problem("max_steps", self.max_steps, f"at least min_steps ({self.min_steps}) or null")])

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
