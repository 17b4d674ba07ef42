"""What the guard does after a rollback (the remedies), and how it scores checkpoints (the rollback target)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import lightning as L

from srtlab.settings import Annotated, boolean, checked, fail, integer, mapping, problem, real


@checked
@dataclass
class Remedy:
    """What a rollback changes before training continues (each None / 0 / False: leave it).

    lr_factor: multiply the learning rate (optimizer param groups and the scheduler's base rates).
    kl_coef: set the KL coefficient (``pl_module.set_kl_coef``).
    gold_mix: reward weights for ``gold_mix_steps`` steps (``pl_module.override_reward_weights``), e.g.
        ``{vote: 0.5, ground_truth: 0.5}``; only where the training prompts have gold answers. USES LABELS: refused
        by the label-free presets.
    curriculum_back: move the curriculum one level back (``step_back()`` on the callback that has it).
    """

    lr_factor: Annotated[float | None, real(0, 1, open_low=True, null=True)] = 0.25
    kl_coef: Annotated[float | None, real(0, 10, null=True)] = None
    gold_mix: Annotated[dict[str, float] | None, mapping(null=True)] = None
    gold_mix_steps: Annotated[int, integer(0)] = 0
    curriculum_back: Annotated[bool, boolean()] = False

    def __post_init__(self) -> None:
        if self.gold_mix is not None and self.gold_mix_steps < 1:
            fail(type(self), [problem("gold_mix_steps", self.gold_mix_steps, "an integer >= 1 when gold_mix is set")])


class Criterion(NamedTuple):
    """A rollback target criterion: when it scores (``eval``: at each evaluation, ``probe``: at each unlabelled
    probe), what it reads, and whether that is gold (``labels``)."""

    when: str
    reads: tuple[str, ...]
    labels: bool


BEST_BY = {
    "vote_rate": Criterion("probe", ("guard/probe/vote_rate",), False),
    "top_answer_share": Criterion("eval", ("val/*/top_answer_share",), False),
    "heldout_mean": Criterion("eval", ("val/*/mean@*",), True),
}


def best_score(metrics: dict[str, float], best_by: str) -> float | None:
    """Higher is better: the unlabelled probe's vote rate (``vote_rate``: the share of probe samples giving the base
    model's majority answer), minus the worst held-out set's top-answer share (``top_answer_share``), or the mean
    over held-out sets of mean@k (``heldout_mean``, uses labels); None when ``metrics`` lack it."""
    if best_by == "vote_rate":
        return metrics.get("guard/probe/vote_rate")
    if best_by == "top_answer_share":
        shares = [v for k, v in metrics.items() if k.startswith("val/") and k.endswith("/top_answer_share")]
        return -max(shares) if shares else None
    means = [v for k, v in metrics.items() if k.startswith("val/") and "/mean@" in k]
    return sum(means) / len(means) if means else None


def scale_learning_rate(trainer: L.Trainer, factor: float) -> list[float]:
    """Multiply every param group's lr and every scheduler's base lrs (LambdaLR recomputes lr from them)."""
    for config in trainer.lr_scheduler_configs:
        if hasattr(config.scheduler, "base_lrs"):
            config.scheduler.base_lrs = [lr * factor for lr in config.scheduler.base_lrs]
    lrs = []
    for opt in trainer.optimizers:
        for group in opt.param_groups:
            group["lr"] *= factor
            if "initial_lr" in group:
                group["initial_lr"] *= factor
            lrs.append(group["lr"])
    return lrs
