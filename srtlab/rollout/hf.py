"""The Hugging Face engine, in process: a bf16 sampling copy of the policy where bf16 is native, or the policy itself.

With ``dtype=null`` the engine samples with the policy module itself. With ``dtype="bfloat16"`` it keeps a bf16
copy of the policy for sampling instead (faster where the device computes bf16 natively; docs/scale.md has
the figures) and receives the new weights tensor by tensor after each optimizer step, as vLLM does. The
trainer then scores the samples with its own fp32 weights, as with any separate inference engine.

The prompt is prefilled once per prompt and its KV cache copied G times, instead of prefilling the same
prompt G times (what ``num_return_sequences`` does); the completions are then sampled by srtlab's own decode loop
(``srtlab.rollout.decode``: finished rows leave the batch, so a call costs the sum of the completions' lengths), with
the next token drawn by :class:`Sampler` and, on the bf16 sampling copy, decode attention from
``srtlab.models.attention``. The last prompt token is left out of the prefill: the first decode step reads it.
It draws exactly what ``transformers``' ``generate`` with the same sampler drew (tested).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from transformers import DynamicCache, StopStringCriteria, TopKLogitsWarper, TopPLogitsWarper

from srtlab.answers.extract import ANSWER_STYLES, extract_answer
from srtlab.models.attention import NAME as DECODE_ATTENTION
from srtlab.models.forward import CACHE, left_pad
from srtlab.models.load import DTYPES
from srtlab.models.precision import AUTO, sampling_dtype
from srtlab.rollout.decode import DecodeCache, decode
from srtlab.rollout.engine import SamplingSettings, eos_ids, render_messages, resolve_prompt_ids
from srtlab.seeds import seed_for
from srtlab.settings import Annotated, boolean, checked, choice, integer
from srtlab.types import Prompt, RolloutBatch


class Sampler:
    """Draws the next token of every row and records its log-prob (:func:`srtlab.rollout.decode.decode`'s ``draw``).

    Why: ``generate``'s own sampling (``torch.multinomial``) draws an exponential variate for every
    vocabulary entry of every row, which on a CPU costs more than the decode step's matmuls (docs/scale.md,
    "Why the code is as it is"). The draw here is the same exponential race (the next token is
    ``argmin_i E_i / p_i``, ``E_i ~ Exp(1)``), run in two rounds (:func:`race`): blocks of ``block`` tokens
    race with their summed probability, then the tokens of the winning block. The first of independent
    exponential clocks is itself exponential with the summed rate and is each clock with probability
    proportional to its rate, so this draws exactly the categorical distribution, with ``V / block +
    block`` variates per row (448 for 49,152 tokens, not 49,152). A race, not an inverse CDF over one
    uniform: a race changes its winner only on a near tie, so rounding-level changes of the logits (a bf16
    copy of weights that two ranks and one process hold 1e-6 apart after an optimizer step) leave the
    draws as they were, which the data-parallel parity tests need.

    Every step draws the variates of all ``rows`` of the batch and each present row uses its own, so a row's draws
    do not depend on which rows are still decoding (finished rows leave the decode batch). Temperature, top-k and
    top-p truncation are applied first (with ``transformers``' own warpers); the recorded log-prob is the
    untruncated ``log_softmax(logits / T)`` at the drawn token, which is what the trainer computes
    (``srtlab.models.forward.token_logprobs``). Temperature 0 takes the argmax and records at temperature 1. Random
    numbers come from the global torch generator (the engine seeds it per call).
    """

    def __init__(self, temperature: float, top_k: int = 0, top_p: float = 1.0, rows: int = 1,
                 block: int = 256) -> None:
        self.temperature, self.rows, self.block = temperature, rows, block
        self.warpers = ([TopKLogitsWarper(top_k)] if top_k else []) + ([TopPLogitsWarper(top_p)] if top_p < 1.0 else [])

    def __call__(self, logits: torch.Tensor, present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """logits [A, V] of the present rows (batch rows ``present`` [A]) -> tokens [A], their log-probs [A]."""
        logits = logits.float()
        if self.temperature == 0:
            logp = torch.log_softmax(logits, -1)
            token = logp.argmax(-1, keepdim=True)  # [A, 1]
        else:
            logp = torch.log_softmax(logits / self.temperature, -1)  # [A, V]
            weights = logp
            for warp in self.warpers:  # truncation: -inf outside the kept tokens
                weights = warp(None, weights)
            token = race(weights, self.block, rows=present, of=self.rows)
        return token.squeeze(-1), logp.gather(-1, token).squeeze(-1)


def race(log_weights: torch.Tensor, block: int = 256, rows: torch.Tensor | None = None,
         of: int | None = None) -> torch.Tensor:
    """[A, 1] tokens drawn with probability proportional to ``exp(log_weights)`` [A, V] (-inf: never),
    where ``log_weights`` are log-probabilities (<= 0), possibly truncated.

    The exponential race of :class:`Sampler` in two rounds: the vocabulary in blocks of ``block`` tokens
    races by block mass, then the winning block's tokens race. Every row draws the same number of variates
    (``V / block + block``) whatever wins, so one row's draw never shifts another's random numbers. ``rows`` [A]
    (of ``of`` batch rows): draw the variates of all ``of`` rows and use those of ``rows``."""
    count, vocab = log_weights.shape
    blocks = -(-vocab // block)
    w = log_weights
    if blocks * block != vocab:  # 49,152 = 192 x 256 needs no padding
        w = torch.nn.functional.pad(w, (0, blocks * block - vocab), value=float("-inf"))
    w = w.reshape(count, blocks, block)
    first = _earliest(w.exp().sum(-1).log(), rows, of)  # [A, 1] the winning block (log-probs: exp cannot overflow)
    inner = w.gather(1, first.unsqueeze(-1).expand(count, 1, block)).squeeze(1)  # [A, block]
    return first * block + _earliest(inner, rows, of)


def _earliest(log_rates: torch.Tensor, rows: torch.Tensor | None = None, of: int | None = None) -> torch.Tensor:
    """[A, 1] index of the first of independent exponential clocks with rates ``exp(log_rates)`` [A, n]; the clocks
    of all ``of`` batch rows are drawn and those of ``rows`` used."""
    if rows is None:
        noise = torch.empty_like(log_rates).exponential_()
    else:
        noise = torch.empty(of, log_rates.shape[1], dtype=log_rates.dtype, device=log_rates.device).exponential_()
        noise = noise[rows.to(noise.device)]
    clocks = noise.log() - log_rates  # log(E / rate)
    return clocks.masked_fill(log_rates == float("-inf"), float("inf")).argmin(-1, keepdim=True)  # rate 0 never


def ranks_world() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _trim(tokens: list[int], eos: set[int]) -> list[int]:
    """Cut a completion after its first eos."""
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[: i + 1]
    return tokens


@checked
class HFEngine:
    """Samples with ``transformers`` ``generate``, in process (``configs/rollout/hf.yaml``).

    Args:
        model: the policy (a ``PreTrainedModel`` or a peft model).
        tokenizer: its tokenizer.
        answer_style: how answers are extracted from completions (see ``srtlab.answers.extract``).
        prompts_per_call: prompts generated together in one ``generate`` call (memory bound).
        share_prefill: prefill each prompt once and copy its cache to the G samples.
        dtype: a dtype name for a separate sampling copy of the policy (synced after every step), None to
            sample with the policy module itself, or ``auto``: a bf16 copy where bf16 is native on the policy's
            device, else the policy itself (``srtlab.models.precision``).
    """

    def __init__(self, model, tokenizer, answer_style: Annotated[str, choice(ANSWER_STYLES)] = "auto",
                 prompts_per_call: Annotated[int, integer(1)] = 8, share_prefill: Annotated[bool, boolean()] = True,
                 dtype: Annotated[str | None, choice([*DTYPES, AUTO], null=True)] = None) -> None:
        self.policy = model
        self.model = model
        dtype = sampling_dtype(dtype, model)
        if dtype is not None and getattr(torch, dtype) != next(model.parameters()).dtype:
            sampler = copy.deepcopy(model)
            if hasattr(sampler, "merge_and_unload"):  # LoRA: a plain model (the copy, never the policy, is merged)
                sampler = sampler.merge_and_unload()  # synced with merged weights (srtlab.rollout.sync)
            self.model = sampler.to(getattr(torch, dtype)).eval().requires_grad_(False)
            if self.model.config._attn_implementation == "sdpa":  # decode attention as two matmuls
                self.model.set_attn_implementation(DECODE_ATTENTION)
        self.tokenizer = tokenizer
        self.answer_style = answer_style
        self.prompts_per_call = prompts_per_call
        self.share_prefill = share_prefill
        self.eos = eos_ids(self.model, tokenizer)

    def generate(self, prompts: list[Prompt], n: int, sampling: SamplingSettings, seed: int,
                 prompt_ids: list[list[int]] | None = None) -> RolloutBatch:
        prompt_ids = resolve_prompt_ids(self.tokenizer, prompts, prompt_ids)
        completions: list[list[int]] = []
        logprobs: list[list[float]] = []
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(prompts), self.prompts_per_call):
                chunk = prompt_ids[start:start + self.prompts_per_call]
                # One RNG stream per (seed, chunk): reproducible whatever ran before.
                torch.manual_seed(seed_for(seed, "chunk", start))
                ids, lps = self._generate_chunk(chunk, n, sampling)
                completions += ids
                logprobs += lps
        finally:
            self.model.train(was_training)
        eos = set(self.eos)
        completions = [_trim(c, eos) for c in completions]
        logprobs = [lp[: len(c)] for lp, c in zip(logprobs, completions)]
        texts = self.tokenizer.batch_decode(completions, skip_special_tokens=True)
        return RolloutBatch(
            prompts=list(prompts), n=n, prompt_ids=prompt_ids, completion_ids=completions, texts=texts,
            answers=[extract_answer(t, self.answer_style) for t in texts],
            finish_reasons=["stop" if c and c[-1] in eos else "length" for c in completions],
            sampler_logprobs=logprobs,
        )

    @torch.no_grad()
    def _generate_chunk(self, prompt_ids: list[list[int]], n: int, s: SamplingSettings
                        ) -> tuple[list[list[int]], list[list[float]]]:
        pad = self.tokenizer.pad_token_id
        ids, mask = left_pad(prompt_ids, pad)  # [b, P]
        device = next(self.model.parameters()).device
        ids, mask = ids.to(device), mask.to(device)
        ids_n, mask_n = ids.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)  # [b*n, P]
        width = ids.shape[1]
        cache = DecodeCache(self.model.config.num_hidden_layers, capacity=width + min(s.max_new_tokens, 128),
                            limit=width + s.max_new_tokens)
        if width > 1:  # every prompt position but the last, which the first decode step reads
            shared = self.share_prefill
            prompt, prompt_mask = (ids, mask) if shared else (ids_n, mask_n)
            prefill = DynamicCache(config=self.model.config)
            positions = (prompt_mask[:, :-1].cumsum(-1) - 1).clamp(min=0)
            inputs = dict(input_ids=prompt[:, :-1], attention_mask=prompt_mask[:, :-1], position_ids=positions,
                          use_cache=True, **{CACHE: prefill})
            # Its own sampling copy runs the decoder alone: the prefill's logits are not used, and the head on
            # a [b, 1, d] slice ran as a batched matmul over a copy of the [d, V] weight per prompt (docs/scale.md).
            # The shared policy runs whole: under FSDP only the root module gathers the shards.
            if self.shares_policy:
                self.model(**inputs, logits_to_keep=1)
            else:
                self.model.get_decoder()(**inputs)
            for layer, written in zip(cache.layers, prefill.layers):  # the prompt's cache, G times when shared
                repeat = n if shared else 1
                layer.update(written.keys.repeat_interleave(repeat, 0), written.values.repeat_interleave(repeat, 0))
            del prefill
        positions = mask_n.sum(-1) - 1  # [b*n] the last prompt token's position
        stop = StopStringCriteria(self.tokenizer, s.stop) if s.stop else None
        synced = getattr(self.model, "_is_fsdp_managed_module", False) and ranks_world() > 1
        return decode(self.model, cache, ids_n[:, -1], mask_n, positions, s.max_new_tokens,
                      Sampler(s.temperature, s.top_k, s.top_p, rows=len(ids_n)), self.eos, s.min_new_tokens,
                      stop=None if stop is None else (lambda seqs: stop(seqs, None)), prompt=ids_n, pad_id=pad,
                      synced=synced)

    @torch.no_grad()
    def next_token_logprobs(self, prompts: list[list[dict[str, str]]], token_ids: list[int],
                            rows_per_pass: int = 32) -> torch.Tensor:
        """[N, K] float32 log-probs (temperature 1) of the K ``token_ids`` as the next token after each
        chat prompt (see ``RolloutEngine.next_token_logprobs``). One forward pass per ``rows_per_pass``
        prompts, left padded, with the sampling model (the bf16 copy when there is one)."""
        ids = render_messages(self.tokenizer, prompts)
        device = next(self.model.parameters()).device
        candidates = torch.tensor(token_ids, dtype=torch.long, device=device)  # [K]
        out = []
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(ids), rows_per_pass):
                batch, mask = (t.to(device) for t in left_pad(ids[start:start + rows_per_pass],
                                                              self.tokenizer.pad_token_id))  # [n, L]
                positions = (mask.cumsum(-1) - 1).clamp(min=0)
                logits = self.model(input_ids=batch, attention_mask=mask, position_ids=positions,
                                    logits_to_keep=1).logits[:, -1]  # [n, V]
                out.append(torch.log_softmax(logits.float(), dim=-1)[:, candidates].cpu())  # [n, K]
        finally:
            self.model.train(was_training)
        return torch.cat(out) if out else torch.empty(0, len(token_ids))

    @property
    def shares_policy(self) -> bool:
        """True when sampling uses the policy module itself (nothing to sync)."""
        return self.model is self.policy

    @torch.no_grad()
    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy new weights into the sampling copy, one tensor at a time (no-op when shared)."""
        if self.shares_policy:
            return
        own = self.model.state_dict()
        for name, tensor in named_tensors:
            own[name].copy_(tensor)

    # Nothing to free or restore in process.

    def sleep(self) -> None:
        return None

    def wake(self) -> None:
        return None
