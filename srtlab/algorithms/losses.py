"""Policy-gradient and KL losses over token tensors.

Token tensors are ``[N, T]`` (N sequences, T completion tokens, right-padded); ``mask`` is bool or
float ``[N, T]``, nonzero on real completion tokens. Padding values never reach the result: they are
selected away with ``torch.where`` (not multiplied by 0), so a NaN or inf there cannot leak in.
"""

from __future__ import annotations

import torch
from torch import Tensor

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")
KL_K3_MAX = 10.0  # verl clamps its "low_var_kl" (k3) estimate to [-10, 10]


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of ``x`` over the tokens where ``mask`` is nonzero (all dims, or along ``dim``)."""
    kept = torch.where(mask.bool(), x, torch.zeros_like(x))  # [N, T]
    return kept.sum() if dim is None else kept.sum(dim=dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over masked tokens; 0 (still attached to the graph) where there are none."""
    count = mask.bool().sum() if dim is None else mask.bool().sum(dim=dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1).to(x.dtype)


def aggregate(per_token: Tensor, mask: Tensor, agg: str, max_tokens: int | None = None) -> Tensor:
    """Reduce a per-token loss ``[N, T]`` to a scalar.

    - "token_mean": sum over all masked tokens / their number (DAPO, Yu et al. 2025).
    - "seq_mean_token_mean": mean over each sequence's tokens, then over sequences (original GRPO).
      Sequences with no masked token are skipped in the outer mean.
    - "seq_mean_token_sum_norm": each sequence's token sum / the constant ``max_tokens``, then mean over
      all N sequences (Dr. GRPO, Liu et al. 2025); an empty sequence contributes 0 and still counts.
    With no masked token at all every mode returns 0, still attached to ``per_token``'s graph (no NaN).
    """
    if agg not in AGGREGATIONS:
        raise ValueError(f"unknown loss aggregation {agg!r}; accepted: {list(AGGREGATIONS)}")
    if per_token.shape != mask.shape:
        raise ValueError(f"per_token shape {tuple(per_token.shape)} != mask shape {tuple(mask.shape)}")
    if agg == "token_mean":
        return masked_mean(per_token, mask)
    if agg == "seq_mean_token_mean":
        seq = masked_mean(per_token, mask, dim=-1)  # [N]
        has_tokens = mask.bool().any(dim=-1)  # [N]
        return masked_mean(seq, has_tokens)
    if max_tokens is None or max_tokens <= 0:
        raise ValueError(f"agg='seq_mean_token_sum_norm' needs a positive max_tokens, got {max_tokens}")
    seq = masked_sum(per_token, mask, dim=-1) / max_tokens  # [N]
    return seq.sum() / max(seq.numel(), 1)


def policy_gradient_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    agg: str = "token_mean",
    max_tokens: int | None = None,
    token_weights: Tensor | None = None,
    dual_clip: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate (Schulman et al. 2017) per token, then ``aggregate``.

    loss_t = -min(ratio * A, clip(ratio, 1 - clip_eps, 1 + clip_eps_high) * A), ratio = exp(logp - old).
    ``clip_eps_high`` (default: ``clip_eps``) is DAPO's clip-higher. ``dual_clip`` (c > 1, Ye et al. 2020,
    as verl's ``clip_ratio_c``) bounds the loss of negative-advantage tokens at ``-c * A``, so a token whose
    ratio exploded cannot dominate. ``token_weights`` [N, T] (detached) multiply the per-token loss: the
    truncated importance weights of :func:`importance_weights`. ``advantages`` ``[N]`` is broadcast over
    tokens; it and ``old_logprobs`` are detached, so the gradient w.r.t. ``logprobs`` is the
    policy-gradient estimator. The log-ratio is not clamped (clamping would zero those tokens' gradient).
    Metrics (detached): clip_fraction = share of masked tokens where the clipped branch binds
    (A > 0 and ratio > 1 + high, or A < 0 and ratio < 1 - low); ratio_mean = masked mean ratio;
    dual_clip_fraction = share where the dual clip binds.
    """
    high = clip_eps if clip_eps_high is None else clip_eps_high
    m = mask.bool()  # [N, T]
    log_ratio = torch.where(m, logprobs - old_logprobs.detach(), torch.zeros_like(logprobs))  # [N, T]
    ratio = torch.exp(log_ratio)  # [N, T]; 1 on padding
    adv = advantages.detach().to(logprobs.dtype).unsqueeze(-1)  # [N, 1]
    unclipped = -ratio * adv  # [N, T]
    clipped = -torch.clamp(ratio, 1.0 - clip_eps, 1.0 + high) * adv  # [N, T]
    per_token = torch.maximum(unclipped, clipped)  # [N, T]; -min(...) of the objectives
    dual = torch.zeros_like(m)
    if dual_clip is not None:
        bound = -dual_clip * adv  # [N, 1]; the largest loss a negative-advantage token may have
        dual = (adv < 0) & (per_token > bound)
        per_token = torch.where(adv < 0, torch.minimum(per_token, bound), per_token)
    if token_weights is not None:
        per_token = per_token * token_weights.detach().to(per_token.dtype)
    loss = aggregate(per_token, m, agg, max_tokens)
    with torch.no_grad():
        metrics = {
            "clip_fraction": masked_mean((clipped > unclipped).to(logprobs.dtype), m),
            "ratio_mean": masked_mean(ratio, m),
            "dual_clip_fraction": masked_mean(dual.to(logprobs.dtype), m),
        }
    return loss, metrics


IS_CORRECTIONS = ("none", "tis", "mis")


def importance_weights(old_logprobs: Tensor, sampler_logprobs: Tensor, mask: Tensor, mode: str,
                       cap: float) -> tuple[Tensor, Tensor]:
    """Per-token correction for sampling with another model than the one trained (bf16 copy, vLLM).

    The ratio ``w = exp(old - sampler)`` of the trainer's (old) to the sampler's probability of each
    sampled token. ``tis`` (truncated importance sampling, Yao et al. 2025; verl, OpenRLHF): weights
    ``min(w, cap)``; ``mis`` (masked): weight 1, and tokens with ``w > cap`` are dropped from the loss;
    ``none``: weight 1. Returns (weights [N, T], mask [N, T]), both detached; padding keeps weight 1.
    """
    if mode not in IS_CORRECTIONS:
        raise ValueError(f"algorithm.is_correction={mode!r}; accepted: {', '.join(IS_CORRECTIONS)}")
    m = mask.bool()
    w = torch.exp(torch.where(m, old_logprobs - sampler_logprobs, torch.zeros_like(old_logprobs))).detach()
    if mode == "tis":
        return torch.clamp(w, max=cap), m
    if mode == "mis":
        return torch.ones_like(w), m & (w <= cap)
    return torch.ones_like(w), m


def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k3 estimator of KL(pi || pi_ref) per token (Schulman 2020, "Approximating KL divergence").

    With log r = ref_logprobs - logprobs: k3 = exp(log r) - log r - 1 = expm1(log r) - log r, unbiased
    and >= 0. As verl's ``kl_penalty`` "low_var_kl": log r is clamped to [-20, 20] before exp, and the
    result to at most ``KL_K3_MAX`` = 10 (a token the policy has made far likelier than the reference
    cannot dominate the loss; its KL gradient is then 0, as in verl), and at 0 from below against
    rounding. ``ref_logprobs`` is detached. Returns ``[N, T]`` (padding included; mask it when reducing).
    """
    log_r = (ref_logprobs.detach() - logprobs).clamp(-20.0, 20.0)  # [N, T]
    return (torch.expm1(log_r) - log_r).clamp(min=0.0, max=KL_K3_MAX)  # [N, T]


def kl_penalty_loss(
    logprobs: Tensor,
    ref_logprobs: Tensor,
    mask: Tensor,
    coef: float,
    agg: str = "token_mean",
    max_tokens: int | None = None,
) -> Tensor:
    """coef * aggregate(k3 KL to the reference policy): the scalar KL penalty added to the PG loss."""
    return coef * aggregate(kl_k3(logprobs, ref_logprobs), mask, agg, max_tokens)
