"""The HF engine's decode loop: each step runs only the rows still writing, so a batch costs the sum of its
completions' lengths, not its rows times the longest one.

``transformers``' ``generate`` decodes a static batch until its longest completion ends, every finished row still
computed. Here the rows live in a :class:`DecodeCache` that grows as the completions do (doubling, not per token)
and drops the finished rows once they are an eighth of those present: their keys and values are no longer
attended to, and their forward passes stop.

The draws are those of the static batch: every step draws the exponential variates of all the batch's rows, in the
order ``generate``'s logits processor drew them (:class:`srtlab.rollout.hf.Sampler`), and each row uses its own; so
a row samples the same tokens whichever rows are still present (tested against ``generate``). Stop strings are
``transformers``' own ``StopStringCriteria``; ``min_new_tokens`` masks the eos tokens as ``generate`` does.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from srtlab import interrupt
from srtlab.models.forward import CACHE

COMPACT_SHARE = 8  # drop the finished rows once they are 1/8 of those present (a copy of the cache each time)


class DecodeLayer(CacheLayerMixin):
    """One layer's keys and values [rows, heads, capacity, d], written in place, grown by doubling."""

    is_sliding = False

    def __init__(self, capacity: int, limit: int) -> None:
        super().__init__()
        self.capacity, self.limit, self.length = capacity, limit, 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        shape = (key_states.shape[0], key_states.shape[1], self.capacity)
        self.keys = key_states.new_zeros(*shape, key_states.shape[-1])
        self.values = value_states.new_zeros(*shape, value_states.shape[-1])
        self.device, self.is_initialized = key_states.device, True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        new = key_states.shape[-2]
        if self.length + new > self.capacity:
            self._grow(self.length + new)
        self.keys[:, :, self.length:self.length + new] = key_states
        self.values[:, :, self.length:self.length + new] = value_states
        self.length += new
        return self.keys[:, :, :self.length], self.values[:, :, :self.length]

    def _grow(self, needed: int) -> None:
        capacity = min(max(needed, 2 * self.capacity), max(needed, self.limit))
        for name in ("keys", "values"):
            old = getattr(self, name)
            grown = old.new_zeros(*old.shape[:2], capacity, old.shape[-1])
            grown[:, :, :self.length] = old[:, :, :self.length]
            setattr(self, name, grown)
        self.capacity = capacity

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` (a copy of what was written: finished rows' keys and values are freed)."""
        if self.is_initialized:
            self.keys = self.keys[rows, :, :self.capacity].contiguous()
            self.values = self.values[rows, :, :self.capacity].contiguous()

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return -1


class DecodeCache(Cache):
    """A :class:`DecodeLayer` per model layer: starting with room for ``capacity`` positions, never past ``limit``."""

    def __init__(self, layers: int, capacity: int, limit: int) -> None:
        super().__init__(layers=[DecodeLayer(capacity, limit) for _ in range(layers)])

    def keep(self, rows: torch.Tensor) -> None:
        for layer in self.layers:
            layer.keep(rows)


Draw = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # (logits [A, V], rows [A]) ->
# (tokens [A], log-probs [A]): the sampler, drawing this step's variates for every row of the batch


@torch.no_grad()
def decode(model, cache: DecodeCache, last: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
           max_new_tokens: int, draw: Draw, eos: list[int], min_new_tokens: int = 0,
           stop: Callable[[torch.Tensor], torch.Tensor] | None = None, prompt: torch.Tensor | None = None,
           pad_id: int = 0, synced: bool = False) -> tuple[list[list[int]], list[list[float]]]:
    """Sample up to ``max_new_tokens`` tokens per row, from a cache that holds every position but the last.

    ``last`` [rows]: each row's last prompt token (not yet in ``cache``); ``mask`` [rows, P] its prompt's attention
    mask (left padding 0); ``positions`` [rows]: the position of ``last``. ``stop(sequences [A, L]) -> [A] bool``:
    stop strings on the rows' whole sequences (``prompt`` [rows, P] + the tokens so far). ``synced``: FSDP-sharded
    weights, several ranks: every forward is collective, so a rank whose rows are done keeps stepping (one row,
    results dropped) until all ranks are. -> tokens and their log-probs per row (eos included, nothing after it).
    """
    rows, device = last.shape[0], last.device
    steps_max = max_new_tokens
    width = mask.shape[1]
    attention = torch.zeros(rows, width + steps_max, dtype=mask.dtype, device=device)
    attention[:, :width] = mask
    present = torch.arange(rows, device=device)  # the rows in the cache, in its order
    live = torch.ones(rows, dtype=torch.bool, device=device)  # still writing (by batch row)
    tokens: list[list[int]] = [[] for _ in range(rows)]
    logps: list[list[float]] = [[] for _ in range(rows)]
    sequences = None if stop is None else torch.cat(
        [prompt, torch.full((rows, steps_max), pad_id, dtype=torch.long, device=device)], dim=1)
    inputs = last.clone()  # [rows] this step's input token of each row
    eos_ids = torch.tensor(eos, device=device)
    for step in range(steps_max):
        interrupt.check()  # a SIGTERM stops within one decode step (one process; with several: between passes)
        mine = bool(live.any())
        if not (_anyone_busy(mine) if synced else mine):
            break
        out = model(input_ids=inputs[present][:, None], attention_mask=attention[present][:, :width + step],
                    position_ids=(positions[present] + step)[:, None], use_cache=True, logits_to_keep=1,
                    **{CACHE: cache})
        if not mine:
            continue  # this rank is done: its forward only kept the other ranks' collectives in step
        active = live[present]  # [present] which of the present rows still write
        logits = out.logits[:, -1].float()  # [present, V]
        if step < min_new_tokens:
            logits[:, eos_ids] = float("-inf")
        picked, logp = draw(logits, present)  # every row's variates drawn, the present rows' used
        finished = active & torch.isin(picked, eos_ids)
        for j in active.nonzero().flatten().tolist():
            tokens[int(present[j])].append(int(picked[j]))
            logps[int(present[j])].append(float(logp[j]))
        if sequences is not None:
            sequences[present, width + step] = torch.where(active, picked, torch.full_like(picked, pad_id))
            finished |= active & stop(sequences[present][:, :width + step + 1])
        inputs[present] = torch.where(active & ~finished, picked, torch.full_like(picked, pad_id))
        attention[present, width + step] = 1
        live[present[finished]] = False
        done = int((~live[present]).sum())
        if done and done * COMPACT_SHARE >= len(present):
            keep = live[present] if bool(live.any()) or not synced else _first(present)
            if bool(keep.any()):
                cache.keep(keep.nonzero().flatten())
                present = present[keep]
    return tokens, logps


def _first(present: torch.Tensor) -> torch.Tensor:
    keep = torch.zeros(len(present), dtype=torch.bool, device=present.device)
    keep[:1] = True
    return keep


def _anyone_busy(mine: bool) -> bool:
    """Whether any rank still has rows writing (a collective: every rank calls it at the same point)."""
    import torch.distributed as dist

    flag = torch.tensor([1.0 if mine else 0.0])
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())
