"""Weight sync from the trained policy to a rollout engine, and the log-prob probe that checks it.

``policy_weights(model)`` streams the policy's weights one tensor at a time, under the base model's
names (the names in its ``model.safetensors``), whatever wraps the model:

- a plain ``transformers`` model: its parameters and persistent buffers as they are;
- a peft LoRA model: ``W + scale * B @ A`` computed out of place in fp32 and cast back to ``W``'s dtype.
  The trained model is never merged in place: merge/unmerge round trips drift bf16 weights;
- FSDP2 (``fully_shard``, Lightning's ``ModelParallelStrategy``): each sharded parameter is gathered on
  its own (``DTensor.full_tensor()``), so no rank ever holds the whole model at once. Every rank must
  iterate (the gathers are collectives), in the same order, which a module's ``state_dict`` order is.

``logprob_probe`` samples a short completion with the engine after a sync and scores it with the
trainer: if the engine's reported log-probs differ from the trainer's, the engine samples from a
different model than the one being trained (a missed or partial sync, stale prefix cache, sleep/wake
losing weights, LoRA mapped wrong). Peer frameworks' most reported bug, so it is checked every step.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from srtlab.models.forward import LogprobFn
from srtlab.rollout.engine import RolloutEngine, SamplingSettings
from srtlab.settings import Annotated, Rule, any_of, checked, integer, real
from srtlab.types import Prompt

PEFT_PREFIX = "base_model.model."  # peft's PeftModel -> LoraModel -> the base model


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor: gathered from its shards when it is a DTensor (FSDP2 / tensor parallel)."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


CHECKPOINT_WRAPPER = "._checkpoint_wrapped_module"  # torch's checkpoint wrapper: in module names, not in state_dict


def _lora_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """peft LoRA layers by the name their weights have in ``state_dict`` (modules with ``base_layer``, ``lora_A`` and
    ``lora_B``; a checkpointed layer's wrapper, which ``state_dict`` leaves out, left out here too)."""
    return {name.replace(CHECKPOINT_WRAPPER, ""): m for name, m in model.named_modules()
            if hasattr(m, "base_layer") and hasattr(m, "lora_A") and hasattr(m, "lora_B")}


def merged_lora_weight(layer: torch.nn.Module) -> torch.Tensor:
    """``W + sum_a scale_a * B_a @ A_a`` over the active adapters, in fp32, out of place; in ``W``'s dtype.

    Only linear LoRA layers without DoRA are supported (what ``target_modules: all-linear`` builds).
    """
    base = full_tensor(layer.base_layer.weight.detach())
    merged = base.float().clone()  # [out, in]
    for adapter in layer.active_adapters:
        if adapter not in layer.lora_A:
            continue
        if getattr(layer, "use_dora", {}).get(adapter, False):
            raise NotImplementedError(f"LoRA adapter {adapter!r} uses DoRA; weight sync supports plain LoRA only")
        a = full_tensor(layer.lora_A[adapter].weight.detach()).float()  # [r, in]
        b = full_tensor(layer.lora_B[adapter].weight.detach()).float()  # [out, r]
        delta = (b @ a) * layer.scaling[adapter]  # [out, in]
        merged += delta.T if getattr(layer, "fan_in_fan_out", False) else delta
    return merged.to(base.dtype)


def base_name(name: str) -> str:
    """A peft parameter name -> the base model's name (``...q_proj.base_layer.weight`` -> ``...q_proj.weight``)."""
    return name.removeprefix(PEFT_PREFIX).replace(".base_layer.", ".")


def policy_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(base model name, tensor)`` one at a time: LoRA merged out of place, shards gathered.

    Tied tensors (``lm_head.weight`` tied to the embeddings) are sent under each name: vLLM's in-place
    reload counts a layer as reloaded only when its own weight arrives. The tensors are detached; a
    LoRA-merged or gathered tensor is a fresh one, the others are views of the trained weights, so a
    receiver must copy them, never keep them.
    """
    lora = _lora_layers(model)
    for name, tensor in model.state_dict(keep_vars=True).items():
        if ".lora_" in name:  # adapters enter through their base layer
            continue
        module, _, leaf = name.rpartition(".")
        layer = lora.get(module.removesuffix(".base_layer")) if module.endswith(".base_layer") else None
        if layer is not None and leaf == "weight":
            yield base_name(name), merged_lora_weight(layer)
        else:
            yield base_name(name), full_tensor(tensor.detach())


DIFF = any_of(real(0, open_low=True), Rule(lambda v: v == math.inf, ".inf (report, never stop)"))


@checked
@dataclass
class LogprobProbe:
    """After each sync, sample ``tokens`` tokens for ``prompts`` prompts of the batch and compare log-probs.

    The engine must report the log-probs of the distribution it samples from (vLLM:
    ``logprobs_mode=processed_logprobs``, i.e. after temperature), which is what the trainer computes
    (``log_softmax(logits / T)``); the HF engine records it while sampling. Engines that report none are not
    probed.

    Args:
        prompts: prompts of the current batch to probe (the first ones).
        tokens: new tokens sampled per probe prompt.
        max_median_diff: fail (RuntimeError) when the median per-token |difference| exceeds this (nats).
            The median, not the max or mean: a bf16 engine against an fp32 trainer has rare spikes of
            several nats on single tokens (docs/scale.md) while a desync moves every token. A desync alarm, not a
            precision test.
    """

    prompts: Annotated[int, integer(1)] = 2
    tokens: Annotated[int, integer(1)] = 8
    max_median_diff: Annotated[float, DIFF] = 0.1

    def __call__(self, logprobs: LogprobFn, engine: RolloutEngine, prompts: list[Prompt], sampling: SamplingSettings,
                 seed: int) -> dict[str, float]:
        """-> ``{"sync/max_logprob_diff": ..., "sync/median_logprob_diff": ...}``, or {} when not probed."""
        probe = SamplingSettings(temperature=sampling.temperature, top_p=1.0, top_k=0,
                                 max_new_tokens=self.tokens, stop=[])
        r = engine.generate(prompts[: self.prompts], 1, probe, seed=seed)
        if r.sampler_logprobs is None or not any(r.completion_ids):
            return {}
        with torch.no_grad():
            logp, mask, _ = logprobs(r.prompt_ids, r.completion_ids, 1)  # [b, T] the trainer's
        reported = torch.zeros_like(logp)
        for i, row in enumerate(r.sampler_logprobs):
            reported[i, : len(row)] = torch.tensor(row, dtype=logp.dtype)
        diff = (logp - reported).abs()[mask]  # [tokens]
        out = {"sync/max_logprob_diff": float(diff.max()), "sync/median_logprob_diff": float(diff.median())}
        if out["sync/median_logprob_diff"] > self.max_median_diff:
            raise RuntimeError(
                f"weight sync check failed: the engine's log-probs differ from the trainer's by a median "
                f"{out['sync/median_logprob_diff']:.3f} nats per token (> rollout.probe.max_median_diff="
                f"{self.max_median_diff}); the engine is not sampling from the trained weights")
        return out
