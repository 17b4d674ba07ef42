"""The weighted mix of reward sources, and the monitors every run logs (see docs/design.md, Metrics)."""

from __future__ import annotations

import math

import torch

from srtlab.rewards.base import RewardContext, RewardSource
from srtlab.rewards.ground_truth import GroundTruth
from srtlab.rewards.vote import GroupVote, MajorityVote, vote_groups
from srtlab.types import RewardOutput, RolloutBatch


class RewardMix:
    """Mixed reward = sum, over the sources with an opinion (non-NaN), of weight * reward.

    Every source is called once per batch, including sources of weight 0 (pure monitors), and a
    :class:`GroundTruth` monitor always runs (the one among the sources if there is one). Where no
    source of non-zero weight has an opinion, the reward is ``abstain_value``; when a whole group
    abstains, its completions all get the same reward and so zero advantage under group baselines.
    Metric names carry no stage prefix: the caller adds ``train/`` or ``val/``.
    """

    def __init__(
        self, sources: dict[str, RewardSource], weights: dict[str, float], abstain_value: float = 0.0
    ) -> None:
        if set(weights) != set(sources):
            raise ValueError(f"reward weights {sorted(weights)} must name exactly the sources {sorted(sources)}")
        if not any(w != 0 for w in weights.values()):
            raise ValueError(f"at least one reward weight must be non-zero, got {weights}")
        gold = [name for name, source in sources.items() if isinstance(source, GroundTruth)]
        if not gold and GroundTruth.name in sources:
            raise ValueError(f"source {GroundTruth.name!r} must be a GroundTruth, the mix's gold monitor")
        self.sources = dict(sources)
        self.weights = dict(weights)
        self.abstain_value = abstain_value
        self.gold_name = gold[0] if gold else GroundTruth.name
        self.gold = sources[gold[0]] if gold else GroundTruth()

    def __call__(self, rollouts: RolloutBatch, context: RewardContext | None = None) -> RewardOutput:
        context = context or RewardContext()
        # 1. vote once per batch: the vote source and the monitors share it
        votes = vote_groups(rollouts)
        # 2. every source, and the gold monitor when it is not a source
        outputs = {name: self._run(name, source, rollouts, votes, context) for name, source in self.sources.items()}
        if self.gold_name not in outputs:
            outputs[self.gold_name] = self._run(self.gold_name, self.gold, rollouts, votes, context)
        # 3. the weighted sum over sources with an opinion
        mixed = self._mix(outputs, len(rollouts))
        # 4. metrics
        metrics = self._source_metrics(outputs)
        if len(mixed):
            metrics["reward/mixed"] = mixed.mean().item()
        metrics.update(_monitor_metrics(rollouts, votes, outputs[self.gold_name].rewards))
        return RewardOutput(rewards=mixed, metrics=metrics)

    def _run(self, name: str, source: RewardSource, rollouts: RolloutBatch, votes: list[GroupVote],
             context: RewardContext) -> RewardOutput:
        """Call one source (reusing the batch's votes for a MajorityVote) and check its output's shape."""
        if isinstance(source, MajorityVote):
            out = source.score(rollouts, votes)
        elif getattr(source, "uses_context", False):
            out = source(rollouts, context)
        else:
            out = source(rollouts)
        if tuple(out.rewards.shape) != (len(rollouts),):
            shape = tuple(out.rewards.shape)
            raise ValueError(f"reward source {name!r} returned rewards of shape {shape}, want ({len(rollouts)},)")
        return out

    def _mix(self, outputs: dict[str, RewardOutput], size: int) -> torch.Tensor:
        """[B*G] float32 weighted sum of the non-NaN rewards of non-zero-weight sources; no NaN."""
        active = [name for name, w in self.weights.items() if w != 0]
        rewards = torch.stack([outputs[name].rewards.float() for name in active]).reshape(len(active), size)
        # rewards: [S, B*G] for the S sources of non-zero weight
        weights = torch.tensor([self.weights[name] for name in active], dtype=torch.float32)[:, None]  # [S, 1]
        opinion = ~torch.isnan(rewards)
        mixed = (weights * torch.nan_to_num(rewards, nan=0.0)).sum(0)
        return torch.where(opinion.any(0), mixed, torch.full_like(mixed, self.abstain_value))

    def _source_metrics(self, outputs: dict[str, RewardOutput]) -> dict[str, float]:
        """reward/<source>, agreement/<source> with the gold monitor, and <source>/<metric>."""
        gold = outputs[self.gold_name].rewards
        metrics: dict[str, float] = {}
        for name, out in outputs.items():
            opinion = ~torch.isnan(out.rewards)
            if opinion.any():
                metrics[f"reward/{name}"] = out.rewards[opinion].float().mean().item()
            both = opinion & ~torch.isnan(gold)
            if name != self.gold_name and both.any():
                agree = (out.rewards[both] > 0.5) == (gold[both] > 0.5)
                metrics[f"agreement/{name}"] = agree.float().mean().item()
            metrics.update({f"{name}/{key}": value for key, value in out.metrics.items()})
        return metrics


def _monitor_metrics(rollouts: RolloutBatch, votes: list[GroupVote], gold: torch.Tensor) -> dict[str, float]:
    """majority_share, answer_rate, gt_accuracy and label_accuracy; ``gold`` is GroundTruth's [B*G] reward."""
    metrics: dict[str, float] = {}
    if votes:
        metrics["majority_share"] = sum(v.share for v in votes) / len(votes)
    if len(rollouts):
        metrics["answer_rate"] = sum(a is not None for a in rollouts.answers) / len(rollouts)
    has_gold = ~torch.isnan(gold)
    if has_gold.any():
        metrics["gt_accuracy"] = gold[has_gold].mean().item()
    # a group's self-label is right when its majority cluster's first member is right by gold
    labels = [gold[v.representative].item() for v in votes if v.representative is not None]
    labels = [x for x in labels if not math.isnan(x)]  # drop groups without gold
    if labels:
        metrics["label_accuracy"] = sum(x > 0.5 for x in labels) / len(labels)
    return metrics
