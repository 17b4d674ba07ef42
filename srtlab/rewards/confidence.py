"""Confidence rewards: how sure the policy is of its own completion, from its token distributions.

``kind`` picks the per-sequence statistic, computed with the trainer's current weights over the
completion tokens (position t is the distribution that produced token t), at temperature ``temperature``:

- ``self_certainty`` (Kang et al. 2025, arXiv 2502.18581; the reward of Intuitor, Zhao et al. 2025):
  the mean over tokens of KL(U || p_t) = -log V - (1/V) sum_v log p_t(v), the divergence of the token
  distribution from uniform over the vocabulary (V tokens). Larger = more peaked.
- ``neg_entropy`` (RENT, Prabhudesai et al. 2025): minus the mean over tokens of the entropy
  H(p_t) = -sum_v p_t(v) log p_t(v).
- ``seq_logprob`` (RLSC, Li et al. 2025, "Confidence is all you need"): log p(y | x) = sum over tokens of
  log p_t(y_t), the sequence's own log-probability (RLSC maximises p(y | x); ranking is the same).

The raw statistics have unlike scales (nats, summed or averaged), so by default they are turned into
ranks within each group (``normalize="rank"``): (number of group members with a lower value + half the
number with an equal one) / (G - 1), in [0, 1], 1.0 for the group's most confident completion. Then
``reward > 0.5`` reads "more confident than the group's median", which is what the mix's
``agreement/confidence`` compares with correctness, and a weight of 0.2 next to the vote means the same
thing whatever the kind. ``"zscore"`` standardises within the group; ``"none"`` keeps the raw value.

Cost and a deviation from "in the training forward pass": the reward is needed before advantages are
computed, so it cannot come from the gradient pass itself. It is one extra no-grad forward pass of the
trainer's model over the B*G completions (each prompt's pass shared by its G completions, in micro-batches
of at most ``micro_batch_tokens`` tokens, under the trainer's precision), with the full-vocabulary statistics made in
chunks of tokens by the same function as the loss's log-probs (``srtlab.models.forward.token_stats``), so nothing of
vocabulary size is kept, leaves the trainer or comes from the engine.
A completion with no tokens gets NaN; every other completion has an opinion, readable answer or not.
"""

from __future__ import annotations

import math

import torch

from srtlab.models.forward import TokenStats, micro_batches
from srtlab.rewards.base import RewardContext
from srtlab.settings import Annotated, checked, choice, real
from srtlab.types import RewardOutput, RolloutBatch

KINDS = ("self_certainty", "neg_entropy", "seq_logprob")
NORMALIZATIONS = ("rank", "zscore", "none")


# -- per-sequence statistics (pure functions of per-token statistics) ----------------------------------------
def token_values(stats: TokenStats, kind: str) -> torch.Tensor:
    """Per-token statistic [N, T] from the model's per-token log-prob, entropy and mean log-prob (at the
    temperature the statistic is taken of; ``srtlab.models.forward.token_stats``)."""
    if kind == "self_certainty":
        return -math.log(stats.vocab) - stats.mean_logp  # KL(U || p_t) = -log V - (1/V) sum_v log p_t(v)
    if kind == "neg_entropy":
        return -stats.entropy  # -H(p_t)
    if kind == "seq_logprob":
        return stats.logp  # log p_t(y_t)
    raise ValueError(f"confidence kind={kind!r}; accepted: {', '.join(KINDS)}")


def sequence_confidence(stats: TokenStats, kind: str) -> torch.Tensor:
    """[N] per-sequence value: the token mean (self_certainty, neg_entropy) or sum (seq_logprob) over
    the mask [N, T]; NaN for a sequence without tokens."""
    mask = stats.mask
    values = torch.where(mask.bool(), token_values(stats, kind), torch.zeros_like(stats.logp))  # [N, T]
    count = mask.sum(-1).float()  # [N]
    total = values.sum(-1)
    out = total if kind == "seq_logprob" else total / count.clamp(min=1)
    return torch.where(count > 0, out, torch.full_like(out, math.nan))


def normalize_in_groups(values: torch.Tensor, n: int, how: str) -> torch.Tensor:
    """[B*G] -> [B*G]: rank in [0, 1], z-score, or unchanged, within each group of n; NaN stays NaN."""
    if how == "none":
        return values.clone()
    if how not in NORMALIZATIONS:
        raise ValueError(f"confidence normalize={how!r}; accepted: {', '.join(NORMALIZATIONS)}")
    out = torch.full_like(values, math.nan)
    for start in range(0, len(values), n):
        group = values[start:start + n]
        ok = ~torch.isnan(group)
        v = group[ok]
        if len(v) == 0:
            continue
        if how == "rank":
            lower = (v[None, :] < v[:, None]).sum(1).float()  # members below each one
            equal = (v[None, :] == v[:, None]).sum(1).float() - 1  # ties, itself excluded
            scored = (lower + 0.5 * equal) / (len(v) - 1) if len(v) > 1 else torch.full_like(v, 0.5)
        else:
            std = v.std(unbiased=False)
            scored = (v - v.mean()) / (std + 1e-6)
        out[start:start + n][ok] = scored
    return out


@checked
class Confidence:
    """Reward = the policy's confidence in each completion (see the module docstring for the kinds).

    Args:
        kind: ``self_certainty``, ``neg_entropy`` or ``seq_logprob``.
        normalize: ``rank`` (default), ``zscore`` or ``none``, within each group.
        temperature: the distribution the statistic is taken of (1.0: the model's own).
    """

    def __init__(self, kind: Annotated[str, choice(KINDS)] = "self_certainty",
                 normalize: Annotated[str, choice(NORMALIZATIONS)] = "rank",
                 temperature: Annotated[float, real(0, 100, open_low=True)] = 1.0) -> None:
        self.kind, self.normalize, self.temperature = kind, normalize, temperature

    def __call__(self, rollouts: RolloutBatch, ctx: RewardContext) -> RewardOutput:
        if ctx.token_stats is None:
            raise ValueError("confidence needs the trainer's per-token statistics (RewardContext.token_stats)")
        raw = self.raw_values(rollouts, ctx)  # [B*G]
        rewards = normalize_in_groups(raw, rollouts.n, self.normalize)
        ok = ~torch.isnan(raw)
        metrics = {f"raw_{self.kind}": raw[ok].mean().item()} if ok.any() else {}
        return RewardOutput(rewards=rewards, metrics=metrics)

    @torch.no_grad()
    def raw_values(self, rollouts: RolloutBatch, ctx: RewardContext) -> torch.Tensor:
        """[B*G] raw statistic with the trainer's weights, in passes of at most ``ctx.micro_batch_tokens`` tokens."""
        values = torch.full((len(rollouts),), math.nan)
        for part in micro_batches(rollouts, list(range(len(rollouts.prompts))), ctx.micro_batch_tokens):
            stats = ctx.token_stats(part.prompt_ids, part.completion_ids, part.counts, self.temperature)  # [rows, T]
            values[part.rows] = sequence_confidence(stats, self.kind).cpu().float()
        return values
