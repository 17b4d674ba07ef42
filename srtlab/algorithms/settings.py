"""The settings of the RL objective (``configs/algorithm/``)."""

from __future__ import annotations

from dataclasses import dataclass

from srtlab.algorithms.advantages import ADVANTAGE_ESTIMATORS
from srtlab.algorithms.losses import AGGREGATIONS, IS_CORRECTIONS
from srtlab.settings import Annotated, checked, choice, integer, real


@checked
@dataclass
class AlgorithmSettings:
    """The RL objective. ``kl_coef=0`` (the default) loads no reference model.

    ``max_tokens`` is Dr. GRPO's constant normaliser (``loss_agg=seq_mean_token_sum_norm``); null: the
    run's ``rollout.sampling.max_new_tokens``, as the paper defines it. ``ppo_epochs`` x ``mini_batches``
    optimizer updates per rollout batch, against the log-probs stored before the first (so the clip acts);
    ``is_correction`` corrects for sampling with another model (see ``losses.importance_weights``).
    """

    advantage: Annotated[str, choice(ADVANTAGE_ESTIMATORS)] = "rloo"
    loss_agg: Annotated[str, choice(AGGREGATIONS)] = "token_mean"
    # a clip of 1 or more lets the ratio fall to 0 unclipped; a negative one zeroes positive-advantage gradients
    clip_eps: Annotated[float, real(0, 1, open_low=True, open_high=True)] = 0.2
    clip_eps_high: Annotated[float | None, real(0, 1, open_low=True, null=True)] = None  # DAPO's clip-higher
    dual_clip: Annotated[float | None, real(1, 100, open_low=True, null=True)] = None  # verl's clip_ratio_c
    kl_coef: Annotated[float, real(0, 10, why="a KL term 10x the policy loss already holds the policy at the "
                                             "reference")] = 0.0
    max_tokens: Annotated[int | None, integer(1, null=True)] = None
    ppo_epochs: Annotated[int, integer(1, 64)] = 1
    mini_batches: Annotated[int, integer(1)] = 1
    is_correction: Annotated[str, choice(IS_CORRECTIONS)] = "none"  # none | tis | mis
    # C: the truncation (tis) or masking (mis) threshold on the importance ratio
    is_cap: Annotated[float, real(1, 1000)] = 2.0
