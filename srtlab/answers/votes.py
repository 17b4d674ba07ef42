"""The majority vote within each prompt's group: computed once per batch, read by every user of it (the vote
reward, the mix's monitors, a curriculum's statistics, reflect-and-retry's self-labels, frozen-teacher labels)."""

from __future__ import annotations

from dataclasses import dataclass

from srtlab.answers.canonical import ScoreStats, cluster_answers
from srtlab.answers.metrics import majority_vote
from srtlab.types import RolloutBatch


@dataclass(frozen=True)
class GroupVote:
    """The outcome of voting within one prompt's group of G completions."""

    cluster_ids: list[int | None]  # [G] cluster of each completion, None for no readable answer
    majority: int | None  # majority cluster id, None when no completion has an answer
    share: float  # majority cluster size / G (0.0 when no answer)
    representative: int | None  # batch index of the majority cluster's first member
    answer: str | None  # that member's answer: the group's self-label


def vote_groups(rollouts: RolloutBatch, stats: ScoreStats | None = None) -> list[GroupVote]:
    """Cluster every group's answers by its prompt's ``answer_kind`` and take the majority (B entries).

    Each group's clustering has a bounded cost (``srtlab.answers.canonical``); answers refused or timed out
    count as no answer and are counted in ``stats``.
    """
    votes = []
    for prompt, group in zip(rollouts.prompts, rollouts.groups()):
        ids = cluster_answers([rollouts.answers[i] for i in group], prompt.answer_kind, stats=stats)
        majority, share = majority_vote(ids)
        representative = None if majority is None else group[ids.index(majority)]
        answer = None if representative is None else rollouts.answers[representative]
        votes.append(GroupVote(ids, majority, share, representative, answer))
    return votes
