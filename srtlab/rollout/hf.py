"""Hugging Face ``generate`` engine, in process: a bf16 sampling copy of the policy (the default), or the
policy itself.

With ``dtype=null`` the engine samples with the policy module itself. With ``dtype="bfloat16"`` it keeps a bf16
copy of the policy for sampling instead (faster where the device computes bf16 natively; docs/scale.md has
the figures) and receives the new weights tensor by tensor after each optimizer step, as vLLM does. The
trainer then scores the samples with its own fp32 weights, as with any separate inference engine.

The prompt is prefilled once per prompt and its KV cache copied G times, instead of prefilling the same
prompt G times (what ``num_return_sequences`` does); the completions are then sampled by ``model.generate``
continuing from that cache, with the next token drawn by :class:`Sampler` (a logits processor; ``generate``
runs greedy on its choice) and, on the bf16 sampling copy, decode attention from ``srtlab.models.attention``.
The last prompt token is left out of the prefill so that ``generate`` has one new token to start from.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from transformers import (
    DynamicCache,
    LogitsProcessor,
    LogitsProcessorList,
    StaticCache,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from srtlab.answers.extract import ANSWER_STYLES, extract_answer
from srtlab.models.attention import NAME as DECODE_ATTENTION
from srtlab.models.forward import CACHE, left_pad
from srtlab.models.load import DTYPES
from srtlab.models.precision import AUTO, sampling_dtype
from srtlab.rollout.engine import SamplingSettings, eos_ids, render_messages, resolve_prompt_ids
from srtlab.seeds import seed_for
from srtlab.settings import Annotated, boolean, checked, choice, integer
from srtlab.types import Prompt, RolloutBatch


class Sampler(LogitsProcessor):
    """Samples the next token itself and records its log-prob; ``generate`` then runs greedy on its choice.

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

    Temperature, top-k and top-p truncation are applied first (with ``transformers``' own warpers); the
    recorded log-prob is the untruncated ``log_softmax(logits / T)`` at the drawn token, which is what the
    trainer computes (``srtlab.models.forward.token_logprobs``). Temperature 0 takes the argmax and records
    at temperature 1. Random numbers come from the global torch generator (the engine seeds it per call).
    """

    def __init__(self, temperature: float, top_k: int = 0, top_p: float = 1.0, block: int = 256) -> None:
        self.temperature, self.block = temperature, block
        self.warpers = ([TopKLogitsWarper(top_k)] if top_k else []) + ([TopPLogitsWarper(top_p)] if top_p < 1.0 else [])
        self.steps: list[torch.Tensor] = []  # each [rows]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        logits = scores.float()  # [rows, V]
        if self.temperature == 0:
            logp = torch.log_softmax(logits, -1)
            token = logp.argmax(-1, keepdim=True)  # [rows, 1]
        else:
            logp = torch.log_softmax(logits / self.temperature, -1)  # [rows, V]
            weights = logp
            for warp in self.warpers:  # truncation: -inf outside the kept tokens
                weights = warp(input_ids, weights)
            token = race(weights, self.block)
        self.steps.append(logp.gather(-1, token).squeeze(-1))
        return torch.full_like(scores, float("-inf")).scatter_(-1, token, 0.0)

    def finish(self, new_tokens: torch.Tensor) -> torch.Tensor:
        """[rows, steps] log-probs of the tokens ``generate`` returned (one recorded per decode step)."""
        return torch.stack(self.steps[: new_tokens.shape[1]], 1) if self.steps else torch.zeros(new_tokens.shape[0], 0)


def race(log_weights: torch.Tensor, block: int = 256) -> torch.Tensor:
    """[rows, 1] tokens drawn with probability proportional to ``exp(log_weights)`` [rows, V] (-inf: never),
    where ``log_weights`` are log-probabilities (<= 0), possibly truncated.

    The exponential race of :class:`Sampler` in two rounds: the vocabulary in blocks of ``block`` tokens
    races by block mass, then the winning block's tokens race. Every row draws the same number of variates
    (``V / block + block``) whatever wins, so one row's draw never shifts another's random numbers."""
    rows, vocab = log_weights.shape
    blocks = -(-vocab // block)
    w = log_weights
    if blocks * block != vocab:  # 49,152 = 192 x 256 needs no padding
        w = torch.nn.functional.pad(w, (0, blocks * block - vocab), value=float("-inf"))
    w = w.reshape(rows, blocks, block)
    first = _earliest(w.exp().sum(-1).log())  # [rows, 1] the winning block (log-probs: exp cannot overflow)
    inner = w.gather(1, first.unsqueeze(-1).expand(rows, 1, block)).squeeze(1)  # [rows, block]
    return first * block + _earliest(inner)


def _earliest(log_rates: torch.Tensor) -> torch.Tensor:
    """[rows, 1] index of the first of independent exponential clocks with rates ``exp(log_rates)`` [rows, n]."""
    clocks = torch.empty_like(log_rates).exponential_().log() - log_rates  # log(E / rate)
    return clocks.masked_fill(log_rates == float("-inf"), float("inf")).argmin(-1, keepdim=True)  # rate 0 never


def _trim(tokens: list[int], eos: set[int]) -> list[int]:
    """Cut a completion after its first eos (``generate`` pads finished rows)."""
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
        ids_n, mask_n = ids.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)  # [b*n, P]
        # A preallocated cache: DynamicCache concatenates every layer's keys at every step (most of a CPU decode
        # step at batch 64: docs/scale.md).
        cache = StaticCache(config=self.model.config, max_cache_len=ids.shape[1] + s.max_new_tokens)
        if self.share_prefill and ids.shape[1] > 1:
            prefill = DynamicCache(config=self.model.config)
            positions = (mask[:, :-1].cumsum(-1) - 1).clamp(min=0)
            # Its own sampling copy runs the decoder alone: the prefill's logits are not used, and the head on
            # a [b, 1, d] slice ran as a batched matmul over a copy of the [d, V] weight per prompt (docs/scale.md).
            # The shared policy runs whole: under FSDP only the root module gathers the shards.
            if self.shares_policy:
                self.model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions,
                           use_cache=True, logits_to_keep=1, **{CACHE: prefill})
            else:
                self.model.get_decoder()(input_ids=ids[:, :-1], attention_mask=mask[:, :-1],
                                         position_ids=positions, use_cache=True, **{CACHE: prefill})
            for static, layer in zip(cache.layers, prefill.layers):  # copy the prompt's cache G times
                static.update(layer.keys.repeat_interleave(n, 0), layer.values.repeat_interleave(n, 0))
            del prefill
        sampler = Sampler(s.temperature, s.top_k, s.top_p)  # generate runs greedy on the sampler's choice
        out = self.model.generate(
            input_ids=ids_n, attention_mask=mask_n, do_sample=False, temperature=None, top_p=None, top_k=None,
            max_new_tokens=s.max_new_tokens, min_new_tokens=s.min_new_tokens or None, eos_token_id=self.eos,
            pad_token_id=pad,
            stop_strings=s.stop or None, tokenizer=self.tokenizer if s.stop else None,
            logits_processor=LogitsProcessorList([sampler]), **{CACHE: cache},
        )
        new = out[:, ids.shape[1]:]  # [b*n, steps]
        return [row.tolist() for row in new], [row.tolist() for row in sampler.finish(new).cpu()]

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
