"""The settings of the RL objective and of the optimizer (configs/algorithm/, configs/optim/)."""

from __future__ import annotations

from dataclasses import dataclass

from srtlab.algorithms.advantages import ADVANTAGE_ESTIMATORS
from srtlab.algorithms.losses import AGGREGATIONS


@dataclass
class AlgorithmSettings:
    """The RL objective. ``kl_coef=0`` (the default) loads no reference model.

    ``max_tokens`` is Dr. GRPO's constant normaliser (``loss_agg=seq_mean_token_sum_norm``); null uses the
    longest completion of the batch.
    """

    advantage: str = "rloo"  # rloo | grpo | dr_grpo
    loss_agg: str = "token_mean"  # see srtlab.algorithms.losses.AGGREGATIONS
    clip_eps: float = 0.2
    clip_eps_high: float | None = None
    kl_coef: float = 0.0
    max_tokens: int | None = None

    def validate(self) -> None:
        if self.advantage not in ADVANTAGE_ESTIMATORS:
            raise ValueError(f"algorithm.advantage={self.advantage!r}; accepted: {', '.join(ADVANTAGE_ESTIMATORS)}")
        if self.loss_agg not in AGGREGATIONS:
            raise ValueError(f"algorithm.loss_agg={self.loss_agg!r}; accepted: {', '.join(AGGREGATIONS)}")
        if self.kl_coef < 0:
            raise ValueError(f"algorithm.kl_coef={self.kl_coef}; must be >= 0")


@dataclass
class OptimSettings:
    """AdamW with linear warm-up and gradient-norm clipping."""

    lr: float = 1e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    warmup_steps: int = 0
    grad_clip: float = 1.0  # max gradient norm; 0 disables
