"""The one contract every reward source implements, and the batch's votes that several sources share.

A source is any object with a ``name`` and ``__call__(rollouts, ctx) -> RewardOutput`` (see
docs/adding_a_reward.md). ``ctx`` is built by the reward mix once per scored batch: it carries what is
computed once and shared (the votes, the gold verdicts) and the few capabilities a source may use (a
log-prob function of the trainer's weights, the rollout engine), typed, never the LightningModule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from srtlab.answers.votes import GroupVote
from srtlab.models.forward import TokenStatsFn
from srtlab.rollout.engine import RolloutEngine
from srtlab.types import RewardOutput, RolloutBatch


@dataclass(frozen=True)
class RewardContext:
    """What a source may use besides the rollouts; built by the mix for each batch it scores.

    ``votes`` and ``gold`` are computed once per batch and shared by every source and monitor;
    ``token_stats`` scores completions with the trainer's weights (confidence: per-token log-prob, entropy and
    mean log-prob, never full logits); ``engine`` asks the policy a question (self-judge: one more batched call).
    The caller gives the mix the last three (``RewardMix.__call__``); a source's name is its key under
    ``reward.sources``.
    """

    votes: list[GroupVote]  # [B] the batch's majority votes
    gold: torch.Tensor  # [B*G] the gold verdict (1.0 / 0.0; NaN where a prompt has no gold answer)
    token_stats: TokenStatsFn | None = None
    engine: RolloutEngine | None = None
    micro_batch_tokens: int = 16384  # tokens per ``token_stats`` call (srtlab.models.forward.micro_batches)


@runtime_checkable
class RewardSource(Protocol):
    """Scores a whole batch at once, because some rewards (majority vote) need the whole group.

    Returns ``RewardOutput.rewards`` as a float32 tensor ``[B*G]`` in the batch's group-major order,
    NaN where the source has no opinion about a completion, plus its own metrics (unprefixed). Its name is its
    key under ``reward.sources`` (logged as ``train/reward/<name>``).
    """

    def __call__(self, rollouts: RolloutBatch, ctx: RewardContext) -> RewardOutput: ...
