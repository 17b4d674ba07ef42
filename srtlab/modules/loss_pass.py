"""The gradient pass of one update: the policy loss over micro-batches of whole groups, and its metrics.

Each micro-batch's loss is weighted by its share of the update's normaliser (tokens for ``token_mean``,
sequences otherwise), so the accumulated gradient is that of the whole update whatever the split.
Groups whose advantages are all zero (unanimous groups) carry no policy gradient and are skipped
unless ``train_every_group`` (the KL term needs them, or several processes must run as many passes);
they still count in the normaliser, and a no-grad pass measures their entropy, so ``train/entropy``
covers every sample of the step.

"Old" log-probs are the trainer's log-probs at rollout time: the current ones detached on the first
update of a batch (the weights have not moved yet), or the stored ones (``old``) when a batch is used for
several updates. The sampler's own log-probs (``RolloutBatch.sampler_logprobs``) give the importance
correction and the sampler-trainer KL (the bf16 copy or vLLM is not the fp32 trainer).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from srtlab.algorithms.losses import aggregate, importance_weights, kl_k3, masked_mean, policy_gradient_loss
from srtlab.algorithms.settings import AlgorithmSettings
from srtlab.models.forward import LogprobFn, pad_values, right_pad
from srtlab.modules import ranks
from srtlab.types import RolloutBatch


def micro_batches(r: RolloutBatch, groups: list[int], size: int) -> Iterator[tuple[list[int], list[list[int]],
                                                                                     list[list[int]]]]:
    """(completion rows, prompt ids, completion ids) per micro-batch of ``size`` whole groups."""
    for start in range(0, len(groups), size):
        chunk = groups[start:start + size]
        rows = [i for b in chunk for i in range(b * r.n, (b + 1) * r.n)]
        yield rows, [r.prompt_ids[b] for b in chunk], [r.completion_ids[i] for i in rows]


@torch.no_grad()
def stored_logprobs(r: RolloutBatch, logprobs: LogprobFn, micro_batch_prompts: int) -> list[list[float]]:
    """The trainer's log-probs of every completion before any update: the "old" policy of PPO epochs."""
    out: list[list[float]] = [[] for _ in range(len(r))]
    for rows, p_ids, c_ids in micro_batches(r, list(range(len(r.prompts))), micro_batch_prompts):
        logp, mask, _ = logprobs(p_ids, c_ids, r.n)
        for j, i in enumerate(rows):
            out[i] = logp[j][mask[j]].float().cpu().tolist()
    return out


def loss_pass(r: RolloutBatch, adv: torch.Tensor, logprobs: LogprobFn,
              reference: Callable[[list[list[int]], list[list[int]], int], torch.Tensor] | None,
              algo: AlgorithmSettings, micro_batch_prompts: int, backward: Callable[[torch.Tensor], None],
              max_tokens: int | None = None, groups: list[int] | None = None, train_every_group: bool = False,
              old: list[list[float]] | None = None, measure_skipped: bool = True) -> dict[str, float]:
    """Forward and ``backward(loss)`` over micro-batches of ``groups`` (default: all); -> ``train/*`` metrics.

    ``adv`` [B*G]; ``logprobs`` scores completions with the trained weights (with grad); ``reference``
    gives the frozen reference's log-probs [b*n, T] when the KL term is on; ``max_tokens`` is Dr. GRPO's
    constant (default: the longest completion); ``old`` the stored old log-probs (None: first update).

    With N data-parallel ranks (``srtlab.modules.ranks``) the normaliser is global: token and sequence
    counts are summed over ranks before weighting, and each backward is scaled by N because DDP and FSDP
    average gradients over ranks; so N ranks with B/N prompts each give one process's update with B. Every
    rank runs as many passes as the busiest one (zero-weight passes on its first group make up the
    difference: DDP's all-reduce and FSDP's gathers need each rank in every pass). The metrics returned
    are global, the same on every rank.
    """
    n = r.n
    groups = list(range(len(r.prompts))) if groups is None else list(groups)
    rows_all = [i for b in groups for i in range(b * n, (b + 1) * n)]
    lengths = torch.tensor([float(len(r.completion_ids[i])) for i in rows_all])  # [rows]
    if r.loss_mask is not None:  # the normaliser counts trained tokens only
        lengths = torch.tensor([float(sum(r.loss_mask[i])) for i in rows_all])
    active = [b for b in groups if train_every_group or bool(adv[b * n:(b + 1) * n].abs().sum() > 0)]
    skipped = sorted(set(groups) - set(active)) if measure_skipped else []
    world = ranks.world_size()
    token_sum, seq_sum, active_sum, group_sum = ranks.all_reduce(
        [float(lengths.sum()), len(rows_all), len(active), len(groups)], "sum", adv.device)
    longest, passes, entropy_passes = ranks.all_reduce(
        [float(lengths.max()) if len(lengths) else 0.0, _count(active, micro_batch_prompts),
         _count(skipped, micro_batch_prompts)], "max", adv.device)
    total_tokens, total_seqs = max(token_sum, 1.0), max(seq_sum, 1.0)
    max_tokens = max_tokens or int(max(longest, 1.0)) if seq_sum else 1
    sums = dict.fromkeys(("loss", "kl", "entropy", "clip_fraction", "dual_clip_fraction", "is_weight_mean",
                          "sampler_kl", "is_masked", "tokens_seen", "entropy_tokens", "sampler_tokens"), 0.0)
    is_max = 0.0
    for rows, p_ids, c_ids, weight in _padded(r, active, groups, micro_batch_prompts, int(passes)):
        logp, mask, entropy = logprobs(p_ids, c_ids, n)  # [b*n, T]
        if r.loss_mask is not None:  # only some completion tokens are trained (e.g. a reflection)
            mask = mask & right_pad([r.loss_mask[i] for i in rows], 0)[0].bool().to(mask.device)
        width = logp.shape[1]
        old_logp = logp.detach() if old is None else pad_values([old[i] for i in rows], width).to(logp.device)
        weights = None
        train_mask = mask
        if r.sampler_logprobs is not None:
            sampler = pad_values([r.sampler_logprobs[i] for i in rows], width).to(logp.device)  # [b*n, T]
            weights, train_mask = importance_weights(old_logp, sampler, mask, algo.is_correction, algo.is_cap)
            if weight:
                raw = torch.exp(torch.where(mask, old_logp - sampler, torch.zeros_like(sampler)))
                sums["is_weight_mean"] += float(masked_mean(raw, mask)) * float(mask.sum())
                sums["sampler_kl"] += float(masked_mean(kl_k3(sampler, old_logp), mask)) * float(mask.sum())
                sums["is_masked"] += float((mask & ~train_mask).sum())
                is_max = max(is_max, float(raw[mask].max())) if mask.any() else is_max
                sums["sampler_tokens"] += float(mask.sum())
        loss, m = policy_gradient_loss(logp, old_logp, adv[rows], train_mask, algo.clip_eps, algo.clip_eps_high,
                                       algo.loss_agg, max_tokens, token_weights=weights, dual_clip=algo.dual_clip)
        kl = None
        if algo.kl_coef > 0 and reference is not None:
            kl = kl_k3(logp, reference(p_ids, c_ids, n))  # [b*n, T]
            loss = loss + algo.kl_coef * aggregate(kl, train_mask, algo.loss_agg, max_tokens)
        share = float(train_mask.sum()) / total_tokens if algo.loss_agg == "token_mean" else len(rows) / total_seqs
        backward(loss * (share * world * weight))  # x N: DDP / FSDP divide the summed gradients by N
        if not weight:  # a pass that only keeps the ranks in step
            continue
        tokens = float(mask.sum())
        if kl is not None:
            sums["kl"] += float(masked_mean(kl.detach(), mask)) * tokens
        sums["loss"] += float(loss.detach()) * share
        sums["entropy"] += float(masked_mean(entropy, mask)) * tokens
        sums["clip_fraction"] += float(m["clip_fraction"]) * tokens
        sums["dual_clip_fraction"] += float(m["dual_clip_fraction"]) * tokens
        sums["tokens_seen"] += tokens
    sums["entropy_tokens"] = sums["tokens_seen"]
    with torch.no_grad():  # the entropy of the groups the gradient pass skipped
        for _, p_ids, c_ids, weight in _padded(r, skipped, groups, micro_batch_prompts, int(entropy_passes)):
            _, mask, entropy = logprobs(p_ids, c_ids, n)
            if weight:
                sums["entropy"] += float(masked_mean(entropy, mask)) * float(mask.sum())
                sums["entropy_tokens"] += float(mask.sum())
    sums = dict(zip(sums, ranks.all_reduce(list(sums.values()), "sum", adv.device)))
    is_max = ranks.all_reduce([is_max], "max", adv.device)[0] if sums["sampler_tokens"] else is_max
    stats = {"train/loss": sums["loss"], "train/response_length": token_sum / seq_sum if seq_sum else 0.0,
             "train/active_groups": active_sum / max(1.0, group_sum)}
    tokens_seen, sampler_tokens = sums["tokens_seen"], sums["sampler_tokens"]
    if sums["entropy_tokens"] and measure_skipped:
        stats["train/entropy"] = sums["entropy"] / sums["entropy_tokens"]
    if tokens_seen:
        stats["train/clip_fraction"] = sums["clip_fraction"] / tokens_seen
        if algo.dual_clip is not None:
            stats["train/dual_clip_fraction"] = sums["dual_clip_fraction"] / tokens_seen
        if algo.kl_coef > 0:
            stats["train/kl"] = sums["kl"] / tokens_seen
    if sampler_tokens:
        stats.update({"train/is_weight_mean": sums["is_weight_mean"] / sampler_tokens, "train/is_weight_max": is_max,
                      "train/sampler_kl": sums["sampler_kl"] / sampler_tokens,
                      "train/is_masked": sums["is_masked"] / sampler_tokens})
    return stats


def _count(groups: list[int], size: int) -> int:
    """Micro-batches of ``size`` groups needed for ``groups``."""
    return -(-len(groups) // size)


def _padded(r: RolloutBatch, chosen: list[int], groups: list[int], size: int, passes: int
            ) -> Iterator[tuple[list[int], list[list[int]], list[list[int]], float]]:
    """The micro-batches of ``chosen`` with weight 1, then zero-weight repeats of ``groups``' first group
    up to ``passes`` in all (the common pass count of the ranks)."""
    done = 0
    for rows, p_ids, c_ids in micro_batches(r, chosen, size):
        yield rows, p_ids, c_ids, 1.0
        done += 1
    for _ in range(done, passes):
        rows, p_ids, c_ids = next(micro_batches(r, groups[:1], size))
        yield rows, p_ids, c_ids, 0.0
