"""Group-relative advantage estimators: rewards of the G samples of one prompt -> one advantage each.

Rewards arrive flat and group-major: ``rewards`` is ``[B*G]`` and completion ``i`` belongs to prompt
``i // G``. Every estimator returns a tensor of the same shape. A group whose rewards are all equal
carries no learning signal, so it gets an advantage of exactly 0 (not a rounding residue) everywhere.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def _grouped(rewards: Tensor, group_size: int) -> Tensor:
    """Check the rewards and view them as ``[B, G]`` floats."""
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if rewards.numel() % group_size != 0:
        raise ValueError(
            f"rewards.numel() = {rewards.numel()} is not divisible by group_size = {group_size}"
        )
    if not rewards.is_floating_point():
        rewards = rewards.float()
    if torch.isnan(rewards).any():
        raise ValueError("rewards contain NaN; abstentions must be filled before computing advantages")
    if torch.isinf(rewards).any():
        bad = torch.isinf(rewards).nonzero().flatten().tolist()
        raise ValueError(f"rewards contain inf at completions {bad[:8]}; every reward must be finite "
                         "(a reward source or weight produced a non-finite value)")
    return rewards.reshape(-1, group_size)  # [B, G]


def _finish(adv: Tensor, grouped: Tensor, like: Tensor) -> Tensor:
    """Force exact zeros on constant groups and restore the flat shape."""
    constant = (grouped == grouped[:, :1]).all(dim=1, keepdim=True)  # [B, 1]
    adv = torch.where(constant, torch.zeros_like(adv), adv)  # [B, G]
    return adv.reshape(like.shape)  # [B*G]


def rloo(rewards: Tensor, group_size: int) -> Tensor:
    """REINFORCE leave-one-out (Ahmadian et al. 2024, "Back to Basics"): A_i = r_i - mean_{j!=i} r_j.

    The baseline excludes the sample itself, so it is unbiased; equals G/(G-1) * (r_i - group mean).
    """
    if group_size < 2:
        raise ValueError(f"rloo needs group_size >= 2 (a leave-one-out baseline), got {group_size}")
    r = _grouped(rewards, group_size)  # [B, G]
    baseline = (r.sum(dim=1, keepdim=True) - r) / (group_size - 1)  # [B, G]
    return _finish(r - baseline, r, rewards)


def grpo(rewards: Tensor, group_size: int, eps: float = 1e-6) -> Tensor:
    """GRPO (Shao et al. 2024, DeepSeekMath): (r - group mean) / (group std + eps), std unbiased as in verl."""
    r = _grouped(rewards, group_size)  # [B, G]
    mean = r.mean(dim=1, keepdim=True)  # [B, 1]
    # [B, 1]; a one-sample group has no unbiased std (and is constant, so _finish zeroes it)
    std = r.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(mean)
    return _finish((r - mean) / (std + eps), r, rewards)


def dr_grpo(rewards: Tensor, group_size: int) -> Tensor:
    """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training"): r - group mean, no std division.

    Dropping the std removes GRPO's question-difficulty bias (near-constant groups get inflated weight).
    """
    r = _grouped(rewards, group_size)  # [B, G]
    return _finish(r - r.mean(dim=1, keepdim=True), r, rewards)


ADVANTAGE_ESTIMATORS: dict[str, Callable[..., Tensor]] = {"rloo": rloo, "grpo": grpo, "dr_grpo": dr_grpo}


def compute_advantages(name: str, rewards: Tensor, group_size: int) -> Tensor:
    """Look up the estimator ``name`` in ``ADVANTAGE_ESTIMATORS`` and apply it to flat rewards ``[B*G]``."""
    if name not in ADVANTAGE_ESTIMATORS:
        raise ValueError(
            f"unknown advantage estimator {name!r}; accepted: {sorted(ADVANTAGE_ESTIMATORS)}"
        )
    return ADVANTAGE_ESTIMATORS[name](rewards, group_size)
