"""Majority-vote self-reward: a completion is rewarded for agreeing with its group's majority answer.

This is the reward of Self-Rewarded Training (Shafayat et al. 2025, "Can Large Reasoning Models
Self-Train?") and of TTRL (Zuo et al. 2025): no gold answer is read.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import torch

from srtlab.eval.canonical import cluster_answers
from srtlab.eval.metrics import majority_vote
from srtlab.types import RewardOutput, RolloutBatch


@dataclass(frozen=True)
class GroupVote:
    """The outcome of voting within one prompt's group of G completions."""

    cluster_ids: list[int | None]  # [G] cluster of each completion, None for no readable answer
    majority: int | None  # majority cluster id, None when no completion has an answer
    share: float  # majority cluster size / G (0.0 when no answer)
    representative: int | None  # batch index of the majority cluster's first member
    answer: str | None  # that member's answer: the group's self-label


def vote_groups(rollouts: RolloutBatch) -> list[GroupVote]:
    """Cluster every group's answers by its prompt's ``answer_kind`` and take the majority (B entries)."""
    votes = []
    for prompt, group in zip(rollouts.prompts, rollouts.groups()):
        ids = cluster_answers([rollouts.answers[i] for i in group], prompt.answer_kind)
        majority, share = majority_vote(ids)
        representative = None if majority is None else group[ids.index(majority)]
        answer = None if representative is None else rollouts.answers[representative]
        votes.append(GroupVote(ids, majority, share, representative, answer))
    return votes


class MajorityVote:
    """Reward agreement with the group's majority answer.

    Hard vote: 1.0 for completions in the majority cluster, 0.0 for the others, including completions
    with no readable answer. Soft vote (``soft=True``, an option of the official SRT code): the share of
    the group that gave the same answer as this completion (0.0 for no answer). A group abstains (NaN
    for all its completions) when no completion has a readable answer, or when the majority share is
    below ``min_agreement``. Ties between equally large clusters go to the answer that appeared first;
    since the G samples are drawn independently, their order is random and so is the tie-break.
    """

    name = "vote"

    def __init__(self, soft: bool = False, min_agreement: float = 0.0) -> None:
        if not 0.0 <= min_agreement <= 1.0:
            raise ValueError(f"min_agreement must be in [0, 1], got {min_agreement}")
        self.soft = soft
        self.min_agreement = min_agreement

    def __call__(self, rollouts: RolloutBatch) -> RewardOutput:
        return self.score(rollouts, vote_groups(rollouts))

    def majority_answers(self, rollouts: RolloutBatch) -> list[str | None]:
        """The self-label of each prompt (B entries), None where no completion has an answer."""
        return [vote.answer for vote in vote_groups(rollouts)]

    def score(self, rollouts: RolloutBatch, votes: list[GroupVote]) -> RewardOutput:
        """Rewards from already computed ``vote_groups(rollouts)``, so the mix clusters only once."""
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
