"""Per-prompt fallback: the gold reward where a prompt is labelled, the majority vote where it is not.

Semi-supervised SRT: the official SRT code mixes labelled and unlabelled prompts this way, and TTRL calls
it hybrid. Which prompts count as labelled is a deterministic function of the prompt id (a hash), so
``labelled_fraction`` of the prompts (in expectation) keep their gold answer in every run and at every
step, and the others are only ever self-rewarded. A prompt without a gold answer is always unlabelled.
"""

from __future__ import annotations

import hashlib

import torch

from srtlab.answers.gold import has_gold
from srtlab.rewards.base import RewardContext
from srtlab.rewards.vote import MajorityVote
from srtlab.settings import Annotated, checked, real, text
from srtlab.types import Prompt, RewardOutput, RolloutBatch


def unit_hash(text: str) -> float:
    """A deterministic number in [0, 1) from a string (sha256; the same on every machine and run)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64


@checked
class Hybrid:
    """Gold reward (1.0 correct, 0.0 wrong or no answer) for labelled prompts, the vote for the others.

    Args:
        labelled_fraction: the share of prompts treated as labelled, in [0, 1].
        soft, min_agreement: the vote's settings for the unlabelled prompts (see ``MajorityVote``).
        salt: changes which prompts are labelled, keeping the fraction.
    """

    def __init__(self, labelled_fraction: Annotated[float, real(0, 1)] = 0.5, soft: bool = False,
                 min_agreement: float = 0.0, salt: Annotated[str, text()] = "labelled") -> None:
        # soft and min_agreement are the vote's own settings: MajorityVote checks them
        self.labelled_fraction, self.salt = labelled_fraction, salt
        self.vote = MajorityVote(soft=soft, min_agreement=min_agreement)

    def is_labelled(self, prompt: Prompt) -> bool:
        return has_gold(prompt) and unit_hash(f"{self.salt}:{prompt.id}") < self.labelled_fraction

    def __call__(self, rollouts: RolloutBatch, ctx: RewardContext) -> RewardOutput:
        labelled = [self.is_labelled(p) for p in rollouts.prompts]  # B
        gold, vote = ctx.gold, self.vote(rollouts, ctx).rewards  # [B*G] each
        use_gold = torch.tensor(labelled).repeat_interleave(rollouts.n)  # [B*G]
        rewards = torch.where(use_gold, gold, vote)
        metrics = {"labelled_share": sum(labelled) / max(len(labelled), 1)}
        return RewardOutput(rewards=rewards, metrics=metrics)
