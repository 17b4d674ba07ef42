"""The gradient pass of one step: the policy loss over micro-batches of whole groups, and its metrics.

Each micro-batch's loss is weighted by its share of the batch's normaliser (tokens for ``token_mean``,
sequences otherwise), so the accumulated gradient is that of the whole batch whatever the split.
Groups whose advantages are all zero (unanimous groups) carry no policy gradient and are skipped
unless ``train_every_group`` (the KL term needs them, or several processes must run as many passes);
they still count in the normaliser, and a no-grad pass measures their entropy, so ``train/entropy``
covers every sample of the step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from srtlab.algorithms.losses import aggregate, kl_k3, masked_mean, policy_gradient_loss
from srtlab.algorithms.settings import AlgorithmSettings
from srtlab.models.forward import TokenLogprobs, right_pad
from srtlab.types import RolloutBatch

LogprobFn = Callable[[list[list[int]], list[list[int]], int], TokenLogprobs]  # (prompt ids, completion ids, n)


def micro_batches(r: RolloutBatch, groups: list[int], size: int) -> Iterator[tuple[list[int], list[list[int]],
                                                                                     list[list[int]]]]:
    """(completion rows, prompt ids, completion ids) per micro-batch of ``size`` whole groups."""
    for start in range(0, len(groups), size):
        chunk = groups[start:start + size]
        rows = [i for b in chunk for i in range(b * r.n, (b + 1) * r.n)]
        yield rows, [r.prompt_ids[b] for b in chunk], [r.completion_ids[i] for i in rows]


def loss_pass(r: RolloutBatch, adv: torch.Tensor, logprobs: LogprobFn,
              reference: Callable[[list[list[int]], list[list[int]], int], torch.Tensor] | None,
              algo: AlgorithmSettings, micro_batch_prompts: int, backward: Callable[[torch.Tensor], None],
              train_every_group: bool = False) -> dict[str, float]:
    """Forward and ``backward(loss)`` over micro-batches; returns the step's ``train/*`` metrics.

    ``adv`` [B*G]; ``logprobs`` scores completions with the trained weights (with grad); ``reference``
    gives the frozen reference's log-probs [b*n, T] when the KL term is on (``algo.kl_coef > 0``).
    """
    n = r.n
    lengths = torch.tensor([len(c) for c in r.completion_ids], dtype=torch.float)  # [B*G]
    if r.loss_mask is not None:  # the normaliser counts trained tokens only
        lengths = torch.tensor([float(sum(m)) for m in r.loss_mask])  # [B*G]
    total_tokens, total_seqs = float(lengths.sum().clamp(min=1)), float(len(r))
    max_tokens = algo.max_tokens or int(lengths.max().clamp(min=1))
    groups = list(range(len(r.prompts)))
    active = [b for b in groups if train_every_group or bool(adv[b * n:(b + 1) * n].abs().sum() > 0)]
    sums = {"loss": 0.0, "kl": 0.0, "entropy": 0.0, "clip_fraction": 0.0}
    tokens_seen = 0.0
    for rows, p_ids, c_ids in micro_batches(r, active, micro_batch_prompts):
        logp, mask, entropy = logprobs(p_ids, c_ids, n)  # [b*n, T]
        if r.loss_mask is not None:  # only some completion tokens are trained (e.g. a reflection)
            mask = mask & right_pad([r.loss_mask[i] for i in rows], 0)[0].bool().to(mask.device)
        loss, m = policy_gradient_loss(logp, logp.detach(), adv[rows], mask, algo.clip_eps, algo.clip_eps_high,
                                       algo.loss_agg, max_tokens)
        if algo.kl_coef > 0 and reference is not None:
            kl = kl_k3(logp, reference(p_ids, c_ids, n))  # [b*n, T]
            loss = loss + algo.kl_coef * aggregate(kl, mask, algo.loss_agg, max_tokens)
            sums["kl"] += float(masked_mean(kl.detach(), mask)) * float(mask.sum())
        tokens = float(mask.sum())
        share = tokens / total_tokens if algo.loss_agg == "token_mean" else len(rows) / total_seqs
        backward(loss * share)
        sums["loss"] += float(loss.detach()) * share
        sums["entropy"] += float(masked_mean(entropy, mask)) * tokens
        sums["clip_fraction"] += float(m["clip_fraction"]) * tokens
        tokens_seen += tokens
    entropy_tokens = tokens_seen
    skipped = sorted(set(groups) - set(active))
    with torch.no_grad():  # the entropy of the groups the gradient pass skipped
        for _, p_ids, c_ids in micro_batches(r, skipped, micro_batch_prompts):
            _, mask, entropy = logprobs(p_ids, c_ids, n)
            sums["entropy"] += float(masked_mean(entropy, mask)) * float(mask.sum())
            entropy_tokens += float(mask.sum())
    stats = {"train/loss": sums["loss"], "train/response_length": float(lengths.mean()),
             "train/active_groups": len(active) / max(1, len(groups))}
    if entropy_tokens:
        stats["train/entropy"] = sums["entropy"] / entropy_tokens
    if tokens_seen:
        stats["train/clip_fraction"] = sums["clip_fraction"] / tokens_seen
        if algo.kl_coef > 0:
            stats["train/kl"] = sums["kl"] / tokens_seen
    return stats
