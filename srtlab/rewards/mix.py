"""The weighted mix of reward sources, and the monitors every run logs (docs/metrics.md)."""

from __future__ import annotations

import math
from typing import Any

import torch

from srtlab.answers.canonical import ScoreStats
from srtlab.answers.metrics import answer_concentration
from srtlab.answers.votes import GroupVote, vote_groups
from srtlab.models.forward import TokenStatsFn
from srtlab.rewards.base import RewardContext, RewardSource
from srtlab.rewards.ground_truth import GOLD, GroundTruth
from srtlab.rollout.engine import RolloutEngine
from srtlab.settings import Annotated, checked, fail, is_real, mapping, real
from srtlab.types import RewardOutput, RolloutBatch

MAX_WEIGHT = 100.0
WEIGHT_BOUND = ("sources score in [0, 1], so a weight 100 times another's already drowns it; larger values only "
                "overflow the float32 reward")
ABSTAIN_BOUND = "on the scale of the mix: scores in [0, 1] times weights of at most 100"


@checked
class RewardMix:
    """Mixed reward = sum, over the sources with an opinion (non-NaN), of weight * reward.

    Every source is called once per batch, including sources of weight 0 (pure monitors), and a
    :class:`GroundTruth` monitor always runs (the one among the sources if there is one). Where no
    source of non-zero weight has an opinion, the reward is ``abstain_value``; when a whole group
    abstains, its completions all get the same reward and so zero advantage under group baselines.
    Metric names carry no stage prefix: the caller adds ``train/`` or ``val/``.
    """

    def __init__(self, sources: dict[str, RewardSource], weights: Annotated[dict[str, float], mapping()],
                 abstain_value: Annotated[float, real(-MAX_WEIGHT, MAX_WEIGHT, why=ABSTAIN_BOUND)] = 0.0) -> None:
        fail(type(self), weight_problems(weights, sources))
        gold = [name for name, source in sources.items() if isinstance(source, GroundTruth)]
        if not gold and GOLD in sources:
            raise ValueError(f"source {GOLD!r} must be a GroundTruth, the mix's gold monitor")
        self.sources = dict(sources)
        self.gold_name = gold[0] if gold else GOLD
        self.gold = sources[gold[0]] if gold else GroundTruth()
        self.weights = {name: float(w) for name, w in weights.items()}
        self.abstain_value = abstain_value

    def with_weights(self, weights: dict[str, float]) -> RewardMix:
        """The same sources (and gold monitor) with other weights; ``weights`` may name the gold monitor
        even when it is not a source (a ground-truth warm-up, a guard's gold-mix remedy)."""
        sources = dict(self.sources)
        if self.gold_name in weights:
            sources[self.gold_name] = self.gold
        full = {name: float(weights.get(name, 0.0)) for name in sources}
        unknown = set(weights) - set(sources)
        if unknown:
            raise ValueError(f"reward weights name unknown sources {sorted(unknown)}; known: {sorted(sources)}")
        return RewardMix(sources, full, self.abstain_value)

    def __call__(self, rollouts: RolloutBatch, token_stats: TokenStatsFn | None = None,
                 engine: RolloutEngine | None = None, micro_batch_tokens: int = 16384) -> RewardOutput:
        """Score a batch; ``token_stats``, ``engine`` and ``micro_batch_tokens``: what sources may use
        (``RewardContext``)."""
        # 1. what every source shares, computed once: the votes and the gold verdicts
        scoring = ScoreStats()  # answers the bounded comparison refused or timed out: counted, not waited for
        ctx = RewardContext(votes=vote_groups(rollouts, scoring), gold=self.gold.verdicts(rollouts, scoring),
                            token_stats=token_stats, engine=engine, micro_batch_tokens=micro_batch_tokens)
        # 2. every source, and the gold monitor when it is not a source
        outputs = {name: self._run(name, source, rollouts, ctx) for name, source in self.sources.items()}
        if self.gold_name not in outputs:
            outputs[self.gold_name] = RewardOutput(rewards=ctx.gold)
        # 3. the weighted sum over sources with an opinion
        mixed = self._mix(outputs, len(rollouts))
        # 4. metrics
        metrics = self._source_metrics(outputs)
        if len(mixed):
            metrics["reward/mixed"] = mixed.mean().item()
        metrics.update(monitor_metrics(rollouts, ctx.votes, ctx.gold))
        metrics.update({"score_timeouts": float(scoring.dropped), "score_text_only": float(scoring.text_only)})
        return RewardOutput(rewards=mixed, metrics=metrics,
                            by_source={name: out.rewards for name, out in outputs.items()},
                            by_level=level_statistics(rollouts, ctx.votes, ctx.gold),
                            majorities=[(v.answer, v.share) for v in ctx.votes])

    def _run(self, name: str, source: RewardSource, rollouts: RolloutBatch, ctx: RewardContext) -> RewardOutput:
        """Call one source and check its output: shape [B*G], no infinity (NaN means no opinion)."""
        out = source(rollouts, ctx)
        if tuple(out.rewards.shape) != (len(rollouts),):
            shape = tuple(out.rewards.shape)
            raise ValueError(f"reward source {name!r} returned rewards of shape {shape}, want ({len(rollouts)},)")
        if torch.isinf(out.rewards).any():
            raise ValueError(f"reward source {name!r} returned an infinite reward; rewards must be finite "
                             "(NaN for no opinion)")
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


def weight_problems(weights: dict[str, Any], sources: dict[str, Any]) -> list[tuple[str, Any, str]]:
    """Reward weights must name exactly the sources, be numbers in [0, MAX_WEIGHT] and have a positive sum.

    Negative weights are refused: every source reports "higher is better" in [0, 1] (or a rank), so a negative
    weight would silently train away from it; a penalty belongs in a source of its own. Above ``MAX_WEIGHT``
    a weight only risks overflow (``1e300`` is ``inf`` in float32, and the advantages NaN).
    """
    if set(weights) != set(sources):
        return [("weights", dict(weights), f"one weight for each source, no other: {sorted(sources)}")]
    bad = [(f"weights.{k}", w, f"a number in [0, {MAX_WEIGHT:g}] ({WEIGHT_BOUND})") for k, w in weights.items()
           if not (is_real(w) and 0 <= w <= MAX_WEIGHT)]
    if not bad and not any(w > 0 for w in weights.values()):
        bad = [("weights", dict(weights), "weights with a positive sum (at least one source > 0)")]
    return bad


def monitor_metrics(rollouts: RolloutBatch, votes: list[GroupVote], gold: torch.Tensor) -> dict[str, float]:
    """majority_share, answer_rate, answer_concentration, gt_accuracy and label_accuracy (docs/metrics.md).

    ``gold`` is GroundTruth's [B*G] verdict.
    """
    metrics: dict[str, float] = {}
    if votes:
        metrics["majority_share"] = sum(v.share for v in votes) / len(votes)
    if len(rollouts):
        metrics["answer_rate"] = sum(a is not None for a in rollouts.answers) / len(rollouts)
        metrics["answer_concentration"] = answer_concentration(rollouts.answers)
    has_gold = ~torch.isnan(gold)
    if has_gold.any():
        metrics["gt_accuracy"] = gold[has_gold].mean().item()
    # a group's self-label is right when its majority cluster's first member is right by gold
    labels = [gold[v.representative].item() for v in votes if v.representative is not None]
    labels = [x for x in labels if not math.isnan(x)]  # drop groups without gold
    if labels:
        metrics["label_accuracy"] = sum(x > 0.5 for x in labels) / len(labels)
    return metrics


def level_statistics(rollouts: RolloutBatch, votes: list[GroupVote], gold: torch.Tensor) -> dict[str, dict[str, float]]:
    """Per ``"<task>/<level>"`` of the batch: groups, majority_share, gt_accuracy (NaN gold as 0) and
    answer_rate: what a curriculum's advance rule reads, from the votes the mix computed anyway."""
    out: dict[str, dict[str, float]] = {}
    for key in dict.fromkeys(f"{p.task}/{p.level}" for p in rollouts.prompts):
        groups = [b for b, p in enumerate(rollouts.prompts) if f"{p.task}/{p.level}" == key]
        rows = [i for b in groups for i in range(b * rollouts.n, (b + 1) * rollouts.n)]
        out[key] = {"groups": float(len(groups)),
                    "majority_share": sum(votes[b].share for b in groups) / len(groups),
                    "gt_accuracy": float(gold[rows].nan_to_num(0.0).mean()),
                    "answer_rate": sum(rollouts.answers[i] is not None for i in rows) / len(rows)}
    return out
