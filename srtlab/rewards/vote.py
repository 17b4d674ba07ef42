"""Majority-vote self-reward: a completion is rewarded for agreeing with its group's majority answer.

This is the reward of Self-Rewarded Training (Shafayat et al. 2025, "Can Large Reasoning Models
Self-Train?") and of TTRL (Zuo et al. 2025): no gold answer is read.
"""

from __future__ import annotations

import math
from collections import Counter

import torch

from srtlab.answers.votes import GroupVote
from srtlab.rewards.base import RewardContext
from srtlab.settings import Annotated, boolean, checked, real
from srtlab.types import RewardOutput, RolloutBatch


@checked
class MajorityVote:
    """Reward agreement with the group's majority answer.

    Hard vote: 1.0 for completions in the majority cluster, 0.0 for the others, including completions
    with no readable answer. Soft vote (``soft=True``, an option of the official SRT code): the share of
    the group that gave the same answer as this completion (0.0 for no answer). A group abstains (NaN
    for all its completions) when no completion has a readable answer, or when the majority share is
    below ``min_agreement``. Ties between equally large clusters go to the answer that appeared first;
    since the G samples are drawn independently, their order is random and so is the tie-break.
    """

    def __init__(self, soft: Annotated[bool, boolean()] = False,
                 min_agreement: Annotated[float, real(0, 1)] = 0.0) -> None:
        self.soft = soft
        self.min_agreement = min_agreement

    def __call__(self, rollouts: RolloutBatch, ctx: RewardContext) -> RewardOutput:
        return self.score(ctx.votes)

    def score(self, votes: list[GroupVote]) -> RewardOutput:
        """Rewards [B*G] from the batch's votes (computed once per batch by the mix)."""
        rewards: list[float] = []
        abstained = 0
        for vote in votes:
            if vote.majority is None or vote.share < self.min_agreement:
                abstained += 1
                rewards.extend([math.nan] * len(vote.cluster_ids))
                continue
            n = len(vote.cluster_ids)
            sizes = Counter(vote.cluster_ids)
            for cluster in vote.cluster_ids:
                if cluster is None:
                    rewards.append(0.0)
                elif self.soft:
                    rewards.append(sizes[cluster] / n)
                else:
                    rewards.append(float(cluster == vote.majority))
        metrics = {
            "majority_share": sum(v.share for v in votes) / max(len(votes), 1),
            "abstain_rate": abstained / max(len(votes), 1),
        }
        return RewardOutput(rewards=torch.tensor(rewards, dtype=torch.float32), metrics=metrics)
