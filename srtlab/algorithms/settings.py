"""The settings of the RL objective and of the optimizer (configs/algorithm/, configs/optim/)."""

from __future__ import annotations

from dataclasses import dataclass

from srtlab.algorithms.advantages import ADVANTAGE_ESTIMATORS
from srtlab.algorithms.losses import AGGREGATIONS, IS_CORRECTIONS


@dataclass
class AlgorithmSettings:
    """The RL objective. ``kl_coef=0`` (the default) loads no reference model.

    ``max_tokens`` is Dr. GRPO's constant normaliser (``loss_agg=seq_mean_token_sum_norm``); null: the
    run's ``rollout.sampling.max_new_tokens``, as the paper defines it. ``ppo_epochs`` x ``mini_batches``
    optimizer updates per rollout batch, against the log-probs stored before the first (so the clip acts);
    ``is_correction`` corrects for sampling with another model (see ``losses.importance_weights``).
    """

    advantage: str = "rloo"  # rloo | grpo | dr_grpo
    loss_agg: str = "token_mean"  # see srtlab.algorithms.losses.AGGREGATIONS
    clip_eps: float = 0.2
    clip_eps_high: float | None = None
    dual_clip: float | None = None  # verl's clip_ratio_c (e.g. 3.0); null: off
    kl_coef: float = 0.0
    max_tokens: int | None = None
    ppo_epochs: int = 1
    mini_batches: int = 1
    is_correction: str = "none"  # none | tis | mis
    is_cap: float = 2.0  # C: the truncation (tis) or masking (mis) threshold on the importance ratio

    def validate(self) -> None:
        if self.advantage not in ADVANTAGE_ESTIMATORS:
            raise ValueError(f"algorithm.advantage={self.advantage!r}; accepted: {', '.join(ADVANTAGE_ESTIMATORS)}")
        if self.loss_agg not in AGGREGATIONS:
            raise ValueError(f"algorithm.loss_agg={self.loss_agg!r}; accepted: {', '.join(AGGREGATIONS)}")
        if self.kl_coef < 0:
            raise ValueError(f"algorithm.kl_coef={self.kl_coef}; must be >= 0")
        if self.is_correction not in IS_CORRECTIONS:
            raise ValueError(f"algorithm.is_correction={self.is_correction!r}; accepted: {', '.join(IS_CORRECTIONS)}")
        if not self.is_cap >= 1.0:
            raise ValueError(f"algorithm.is_cap={self.is_cap}; must be >= 1")
        if self.ppo_epochs < 1 or self.mini_batches < 1:
            raise ValueError(f"algorithm.ppo_epochs={self.ppo_epochs}, mini_batches={self.mini_batches}; "
                             "both must be >= 1")
        if self.dual_clip is not None and not self.dual_clip > 1.0:
            raise ValueError(f"algorithm.dual_clip={self.dual_clip}; must be > 1 or null")
        if not self.clip_eps > 0 or (self.clip_eps_high is not None and not self.clip_eps_high > 0):
            raise ValueError(f"algorithm.clip_eps={self.clip_eps}, clip_eps_high={self.clip_eps_high}; "
                             "must be > 0 (a negative one zeroes the gradient of positive-advantage tokens)")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"algorithm.max_tokens={self.max_tokens}; must be >= 1 or null")


@dataclass
class OptimSettings:
    """AdamW with linear warm-up and gradient-norm clipping."""

    lr: float = 1e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    warmup_steps: int = 0
    grad_clip: float = 1.0  # max gradient norm; 0 disables
