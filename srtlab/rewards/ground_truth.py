"""Reward from the gold answer: the supervised baseline, and the monitor that every run logs.

In SRT runs it is a pure monitor (weight 0): it tells how often the policy and its self-labels are right.
The verdicts themselves are ``srtlab.answers.gold``'s; the mix computes them once per batch (``ctx.gold``).
"""

from __future__ import annotations

from srtlab.answers.gold import GoldScorer
from srtlab.rewards.base import RewardContext
from srtlab.types import RewardOutput, RolloutBatch

GOLD = "ground_truth"  # the gold monitor's name in every mix (and its key when it is a source)


class GroundTruth(GoldScorer):
    """The gold verdicts as a reward source: 1.0 correct, 0.0 wrong or unreadable, NaN without gold."""

    def __call__(self, rollouts: RolloutBatch, ctx: RewardContext) -> RewardOutput:
        return RewardOutput(rewards=ctx.gold.clone())  # the mix computed them once with :meth:`verdicts`
