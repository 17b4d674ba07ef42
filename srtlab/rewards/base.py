"""The interface every reward source implements (see docs: adding a reward source)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from srtlab.types import RewardOutput, RolloutBatch


@runtime_checkable
class RewardSource(Protocol):
    """Scores a whole batch at once, because some rewards (majority vote) need the whole group.

    Returns ``RewardOutput.rewards`` as a float32 tensor ``[B*G]`` in the batch's group-major order,
    NaN where the source has no opinion about a completion, plus its own metrics (unprefixed).
    """

    name: str

    def __call__(self, rollouts: RolloutBatch) -> RewardOutput: ...
