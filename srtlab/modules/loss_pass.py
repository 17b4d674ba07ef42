"""The gradient pass of one update: the policy loss over micro-batches of at most a token budget, and its metrics.

Three steps, one function each:

1. :func:`normalisers`: the update's global counts (trained tokens, sequences, Dr. GRPO's constant, the number of
   passes), summed or maxed over data-parallel ranks, so that every micro-batch's loss is weighted by its share
   of the whole update and N ranks give one process's update;
2. :func:`micro_batch_loss`: one micro-batch's clipped policy-gradient loss (+ KL), already weighted, and its
   metric sums;
3. :func:`skipped_entropy`: a no-grad pass over the groups the gradient pass skipped, so that
   ``train/entropy`` covers every sample of the step.

:func:`loss_pass` runs them in order. Groups whose advantages are all zero (unanimous groups) carry no policy
gradient and are skipped unless ``train_every_group`` (the KL term needs them); they still count in the
normaliser, so the gradient is unchanged.

"Old" log-probs are the trainer's log-probs at rollout time: the current ones detached on the first update of a
batch (the weights have not moved yet), or the stored ones (``old``) when a batch is used for several updates.
The sampler's own log-probs (``RolloutBatch.sampler_logprobs``) give the importance correction and the
sampler-trainer KL (the bf16 copy or vLLM is not the fp32 trainer).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from srtlab import interrupt
from srtlab.algorithms.losses import aggregate, importance_weights, kl_k3, masked_mean, policy_gradient_loss
from srtlab.algorithms.settings import AlgorithmSettings
from srtlab.models.forward import LogprobFn, MicroBatch, micro_batches, pad_values, right_pad
from srtlab.modules import ranks
from srtlab.types import RolloutBatch

ReferenceFn = Callable[[list[list[int]], list[list[int]], int], torch.Tensor]  # -> the reference's log-probs [b*n, T]
SUMS = ("loss", "kl", "entropy", "clip_fraction", "dual_clip_fraction", "is_weight_mean", "sampler_kl", "is_masked",
        "tokens_seen", "entropy_tokens", "sampler_tokens")


@torch.no_grad()
def stored_logprobs(r: RolloutBatch, logprobs: LogprobFn, micro_batch_tokens: int) -> list[list[float]]:
    """The trainer's log-probs of every completion before any update: the "old" policy of PPO epochs."""
    out: list[list[float]] = [[] for _ in range(len(r))]
    for part in micro_batches(r, list(range(len(r.prompts))), micro_batch_tokens):
        logp, mask, _ = logprobs(part.prompt_ids, part.completion_ids, part.counts)
        for j, i in enumerate(part.rows):
            out[i] = logp[j][mask[j]].float().cpu().tolist()
    return out


# -- 1. the update's global counts -------------------------------------------------------------------------
@dataclass
class Normalisers:
    """What every micro-batch's loss is weighted by: counts of the whole update, over all ranks."""

    tokens: float  # trained tokens of the update (loss-mask 1 only)
    sequences: float
    max_tokens: int  # Dr. GRPO's constant: the configured one, or the longest completion of the update
    active_groups: float  # groups with a non-zero advantage (or all, with train_every_group)
    groups: float
    passes: int  # gradient passes: the most any rank needs (the others run zero-weight ones)
    entropy_passes: int  # no-grad passes over the skipped groups, likewise


def trained_lengths(r: RolloutBatch, rows: list[int]) -> torch.Tensor:
    """[rows] tokens trained per completion: its length, or its loss mask's ones."""
    if r.loss_mask is not None:  # the normaliser counts trained tokens only
        return torch.tensor([float(sum(r.loss_mask[i])) for i in rows])
    return torch.tensor([float(len(r.completion_ids[i])) for i in rows])


def normalisers(r: RolloutBatch, groups: list[int], active: list[int], skipped: list[int], micro_batch_tokens: int,
                max_tokens: int | None, device: torch.device) -> Normalisers:
    """The global counts of one update of ``groups`` (``active``: trained, ``skipped``: entropy only)."""
    rows = [i for b in groups for i in range(b * r.n, (b + 1) * r.n)]
    lengths = trained_lengths(r, rows)  # [rows]
    token_sum, seq_sum, active_sum, group_sum = ranks.all_reduce(
        [float(lengths.sum()), len(rows), len(active), len(groups)], "sum", device)
    longest, passes, entropy_passes = ranks.all_reduce(
        [float(lengths.max()) if len(lengths) else 0.0, _count(r, active, micro_batch_tokens),
         _count(r, skipped, micro_batch_tokens)], "max", device)
    max_tokens = max_tokens or int(max(longest, 1.0)) if seq_sum else 1
    return Normalisers(tokens=token_sum, sequences=seq_sum, max_tokens=max_tokens, active_groups=active_sum,
                       groups=group_sum, passes=int(passes), entropy_passes=int(entropy_passes))


# -- 2. one micro-batch's loss -----------------------------------------------------------------------------
def micro_batch_loss(part: MicroBatch, logprobs: LogprobFn, reference: ReferenceFn | None, r: RolloutBatch,
                     adv: torch.Tensor, old: list[list[float]] | None, algo: AlgorithmSettings,
                     norm: Normalisers) -> tuple[torch.Tensor, dict[str, float], float]:
    """The loss of one micro-batch, weighted by its share of the update (tokens for ``token_mean``, sequences
    otherwise), and its metric sums; -> (loss, sums, is_weight_max)."""
    sums = dict.fromkeys(SUMS, 0.0)
    logp, mask, entropy = logprobs(part.prompt_ids, part.completion_ids, part.counts)  # [rows, T]
    if r.loss_mask is not None:  # only some completion tokens are trained (e.g. a reflection)
        mask = mask & right_pad([r.loss_mask[i] for i in part.rows], 0)[0].bool().to(mask.device)
    width = logp.shape[1]
    old_logp = logp.detach() if old is None else pad_values([old[i] for i in part.rows], width).to(logp.device)
    weights, train_mask, is_max = None, mask, 0.0
    tokens = float(mask.sum())
    if r.sampler_logprobs is not None:
        sampler = pad_values([r.sampler_logprobs[i] for i in part.rows], width).to(logp.device)  # [b*n, T]
        weights, train_mask = importance_weights(old_logp, sampler, mask, algo.is_correction, algo.is_cap)
        raw = torch.exp(torch.where(mask, old_logp - sampler, torch.zeros_like(sampler)))
        sums["is_weight_mean"] = float(masked_mean(raw, mask)) * tokens
        sums["sampler_kl"] = float(masked_mean(kl_k3(sampler, old_logp), mask)) * tokens
        sums["is_masked"] = float((mask & ~train_mask).sum())
        is_max = float(raw[mask].max()) if mask.any() else 0.0
        sums["sampler_tokens"] = tokens
    loss, m = policy_gradient_loss(logp, old_logp, adv[part.rows], train_mask, algo.clip_eps, algo.clip_eps_high,
                                   algo.loss_agg, norm.max_tokens, token_weights=weights, dual_clip=algo.dual_clip)
    if algo.kl_coef > 0 and reference is not None:
        kl = kl_k3(logp, reference(part.prompt_ids, part.completion_ids, part.counts))  # [rows, T]
        loss = loss + algo.kl_coef * aggregate(kl, train_mask, algo.loss_agg, norm.max_tokens)
        sums["kl"] = float(masked_mean(kl.detach(), mask)) * tokens
    share = float(train_mask.sum()) / max(norm.tokens, 1.0) if algo.loss_agg == "token_mean" \
        else len(part.rows) / max(norm.sequences, 1.0)
    sums.update(loss=float(loss.detach()) * share, entropy=float(masked_mean(entropy, mask)) * tokens,
                clip_fraction=float(m["clip_fraction"]) * tokens, tokens_seen=tokens, entropy_tokens=tokens,
                dual_clip_fraction=float(m["dual_clip_fraction"]) * tokens)
    return loss * share, sums, is_max


# -- 3. the entropy of the skipped groups ------------------------------------------------------------------
@torch.no_grad()
def skipped_entropy(r: RolloutBatch, skipped: list[int], groups: list[int], logprobs: LogprobFn,
                    micro_batch_tokens: int, passes: int) -> tuple[float, float]:
    """-> (entropy summed over tokens, tokens) of the groups the gradient pass skipped (no gradient)."""
    total, tokens = 0.0, 0.0
    for part, weight in _padded(r, skipped, groups, micro_batch_tokens, passes):
        _, mask, entropy = logprobs(part.prompt_ids, part.completion_ids, part.counts)
        if weight:
            total += float(masked_mean(entropy, mask)) * float(mask.sum())
            tokens += float(mask.sum())
    return total, tokens


# -- the pass ----------------------------------------------------------------------------------------------
def loss_pass(r: RolloutBatch, adv: torch.Tensor, logprobs: LogprobFn, reference: ReferenceFn | None,
              algo: AlgorithmSettings, micro_batch_tokens: int, backward: Callable[[torch.Tensor], None],
              max_tokens: int | None = None, groups: list[int] | None = None, train_every_group: bool = False,
              old: list[list[float]] | None = None, measure_skipped: bool = True,
              interruptible: bool = True) -> dict[str, float]:
    """Forward and ``backward(loss)`` over micro-batches of ``groups`` (default: all); -> ``train/*`` metrics.

    ``adv`` [B*G]; ``logprobs`` scores completions with the trained weights (with grad); ``reference``
    gives the frozen reference's log-probs [b*n, T] when the KL term is on; ``max_tokens`` is Dr. GRPO's
    constant (default: the longest completion); ``old`` the stored old log-probs (None: first update);
    ``interruptible``: a SIGTERM may stop the run between passes (``srtlab.interrupt``; not once a step has moved
    the weights, so that a rerun of the step starts from where it did).

    With N data-parallel ranks (``srtlab.modules.ranks``) the normaliser is global and each backward is scaled
    by N, because DDP and FSDP average gradients over ranks; every rank runs as many passes as the busiest one
    (zero-weight passes on its first group: DDP's all-reduce and FSDP's gathers need each rank in every pass).
    The metrics returned are global, the same on every rank.
    """
    n = r.n
    groups = list(range(len(r.prompts))) if groups is None else list(groups)
    active = [b for b in groups if train_every_group or bool(adv[b * n:(b + 1) * n].abs().sum() > 0)]
    skipped = sorted(set(groups) - set(active)) if measure_skipped else []
    norm = normalisers(r, groups, active, skipped, micro_batch_tokens, max_tokens, adv.device)
    world = ranks.world_size()
    sums, is_max = dict.fromkeys(SUMS, 0.0), 0.0
    for part, weight in _padded(r, active, groups, micro_batch_tokens, norm.passes):
        if interruptible:
            interrupt.check(collective=True)  # every rank runs as many passes: a point they reach together
        loss, found, part_max = micro_batch_loss(part, logprobs, reference, r, adv, old, algo, norm)
        backward(loss * (world * weight))  # x N: DDP / FSDP divide the summed gradients by N
        if weight:  # a zero-weight pass only keeps the ranks in step
            sums = {k: sums[k] + found[k] for k in SUMS}
            is_max = max(is_max, part_max)
    entropy, entropy_tokens = skipped_entropy(r, skipped, groups, logprobs, micro_batch_tokens, norm.entropy_passes)
    sums["entropy"] += entropy
    sums["entropy_tokens"] += entropy_tokens
    sums = dict(zip(sums, ranks.all_reduce(list(sums.values()), "sum", adv.device)))
    is_max = ranks.all_reduce([is_max], "max", adv.device)[0] if sums["sampler_tokens"] else is_max
    return _metrics(sums, is_max, norm, algo, measure_skipped)


def _metrics(sums: dict[str, float], is_max: float, norm: Normalisers, algo: AlgorithmSettings,
             measure_skipped: bool) -> dict[str, float]:
    stats = {"train/loss": sums["loss"], "train/response_length": norm.tokens / norm.sequences if norm.sequences
             else 0.0, "train/active_groups": norm.active_groups / max(1.0, norm.groups)}
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


def _count(r: RolloutBatch, groups: list[int], budget: int) -> int:
    """Passes needed for ``groups`` within ``budget`` tokens each."""
    return sum(1 for _ in micro_batches(r, groups, budget))


def _padded(r: RolloutBatch, chosen: list[int], groups: list[int], budget: int, passes: int
            ) -> Iterator[tuple[MicroBatch, float]]:
    """The micro-batches of ``chosen`` with weight 1, then zero-weight repeats of the first pass of ``groups``' first
    group up to ``passes`` in all (the common pass count of the ranks)."""
    done = 0
    for part in micro_batches(r, chosen, budget):
        yield part, 1.0
        done += 1
    for _ in range(done, passes):
        yield next(micro_batches(r, groups[:1], budget)), 0.0
