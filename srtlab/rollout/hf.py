"""Hugging Face ``generate`` engine, in process: a bf16 sampling copy of the policy (the default), or the
policy itself.

With ``dtype=null`` the engine samples with the policy module itself. With ``dtype="bfloat16"`` (the shipped
default, configs/rollout/hf.yaml) it keeps a bf16 copy of the policy for sampling instead (measured on a
2-core AVX512-BF16 CPU: bf16 matmuls 3.4x faster) and receives the new weights tensor by tensor after each
optimizer step, as vLLM does. The trainer then scores the samples with its own fp32 weights, as with any
separate inference engine.

The prompt is prefilled once per prompt and its KV cache copied G times, instead of prefilling the same
prompt G times (what ``num_return_sequences`` does); the completions are then sampled by ``model.generate``
continuing from that cache. The last prompt token is left out of the prefill so that ``generate`` has one
new token to start from.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from transformers import DynamicCache, LogitsProcessor, LogitsProcessorList, StaticCache

from srtlab.eval.extract import extract_answer
from srtlab.models.forward import CACHE, left_pad
from srtlab.rollout.engine import SamplingSettings, render_messages, resolve_prompt_ids
from srtlab.seeds import seed_for
from srtlab.types import Prompt, RolloutBatch


class SampledLogprobs(LogitsProcessor):
    """Records the log-prob of each sampled token under the sampling model at the sampling temperature.

    ``generate`` runs custom processors before its temperature/top-k/top-p warpers, and shows a processor
    the token chosen at step t only at step t+1 (as the last input id), so this keeps one step of
    ``log_softmax(scores / T)`` [rows, V] and gathers at the next call (and once more after the last
    step, :meth:`finish`). Top-k/top-p truncation is not applied: the trainer's log-probs
    (``srtlab.models.forward.token_logprobs``) are untruncated at the same temperature, so the two compare.
    """

    def __init__(self, temperature: float) -> None:
        self.temperature = temperature or 1.0
        self.previous: torch.Tensor | None = None  # [rows, V]
        self.steps: list[torch.Tensor] = []  # each [rows]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.previous is not None:
            self.steps.append(self.previous.gather(-1, input_ids[:, -1:]).squeeze(-1))
        self.previous = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        return scores

    def finish(self, new_tokens: torch.Tensor) -> torch.Tensor:
        """[rows, steps] log-probs of ``new_tokens`` [rows, steps] (what generate returned)."""
        if self.previous is not None and len(self.steps) < new_tokens.shape[1]:
            self.steps.append(self.previous.gather(-1, new_tokens[:, len(self.steps):len(self.steps) + 1]).squeeze(-1))
        self.previous = None
        return torch.stack(self.steps, 1) if self.steps else torch.zeros(new_tokens.shape[0], 0)


def _trim(tokens: list[int], eos: set[int]) -> list[int]:
    """Cut a completion after its first eos (``generate`` pads finished rows)."""
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[: i + 1]
    return tokens


class HFEngine:
    """Samples with ``transformers`` ``generate`` on the policy model itself.

    Args:
        model: the policy (a ``PreTrainedModel`` or a peft model), shared, not copied.
        tokenizer: its tokenizer.
        answer_style: how answers are extracted from completions (see ``srtlab.eval.extract``).
        prompts_per_call: prompts generated together in one ``generate`` call (memory bound).
        share_prefill: prefill each prompt once and copy its cache to the G samples.
        dtype: None to sample with the policy itself, or a dtype name for a separate sampling copy.
    """

    def __init__(self, model, tokenizer, answer_style: str = "auto", prompts_per_call: int = 8,
                 share_prefill: bool = True, dtype: str | None = None) -> None:
        self.policy = model
        self.model = model
        if dtype is not None and getattr(torch, dtype) != next(model.parameters()).dtype:
            sampler = copy.deepcopy(model)
            if hasattr(sampler, "merge_and_unload"):  # LoRA: a plain model (the copy, never the policy, is merged)
                sampler = sampler.merge_and_unload()  # synced with merged weights (srtlab.rollout.sync)
            self.model = sampler.to(getattr(torch, dtype)).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.answer_style = answer_style
        self.prompts_per_call = prompts_per_call
        self.share_prefill = share_prefill

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
        eos = set(self._eos_ids())
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
        # A preallocated cache: DynamicCache concatenates every layer's keys at every step, which
        # measured as 80% of a CPU decode step at batch 64.
        cache = StaticCache(config=self.model.config, max_cache_len=ids.shape[1] + s.max_new_tokens)
        if self.share_prefill and ids.shape[1] > 1:
            prefill = DynamicCache(config=self.model.config)
            positions = (mask[:, :-1].cumsum(-1) - 1).clamp(min=0)
            self.model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions,
                       use_cache=True, logits_to_keep=1, **{CACHE: prefill})
            for static, layer in zip(cache.layers, prefill.layers):  # copy the prompt's cache G times
                static.update(layer.keys.repeat_interleave(n, 0), layer.values.repeat_interleave(n, 0))
            del prefill
        greedy = s.temperature == 0
        recorder = SampledLogprobs(s.temperature)
        out = self.model.generate(
            input_ids=ids_n, attention_mask=mask_n, do_sample=not greedy,
            temperature=None if greedy else s.temperature, top_p=None if greedy else s.top_p,
            top_k=None if greedy or not s.top_k else s.top_k, max_new_tokens=s.max_new_tokens,
            eos_token_id=self._eos_ids(), pad_token_id=pad,
            stop_strings=s.stop or None, tokenizer=self.tokenizer if s.stop else None,
            logits_processor=LogitsProcessorList([recorder]), **{CACHE: cache},
        )
        new = out[:, ids.shape[1]:]  # [b*n, steps]
        return [row.tolist() for row in new], [row.tolist() for row in recorder.finish(new).cpu()]

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

    def _eos_ids(self) -> list[int]:
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        return list(eos) if isinstance(eos, (list, tuple)) else [eos]

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
