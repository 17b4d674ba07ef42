"""The work a step does, counted from its shapes, and what this machine can do: for rooflines and MFU.

A stage's roofline time is ``max(flops / peak_flops, bytes / bandwidth)``: the least time the machine
needs to do that work. ``measured / roofline`` says how far the code is from the machine's limit.
FLOPs count the matmuls (2 per multiply-add; forward 2x, forward + backward 6x parameters per token),
the attention scores and values (4 x positions attended x hidden per token and layer), and the tied
head only where logits are taken.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ModelShape:
    """What the counts need of a decoder-only model."""

    layer_params: int  # parameters of the decoder layers (and final norm): used once per token
    head_params: int  # vocab x hidden: the (tied) output head, used where logits are taken
    layers: int
    hidden: int
    kv_dim: int  # key/value width per layer (kv heads x head dim)
    bytes_per_param: int = 2  # bf16 sampling copy

    @classmethod
    def of(cls, model: torch.nn.Module, bytes_per_param: int = 2) -> ModelShape:
        cfg = model.config
        head = cfg.vocab_size * cfg.hidden_size
        total = sum(p.numel() for p in model.parameters())
        embed = model.get_input_embeddings().weight.numel()
        tied = getattr(cfg, "tie_word_embeddings", False)
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        return cls(layer_params=total - embed - (0 if tied else head), head_params=head,
                   layers=cfg.num_hidden_layers, hidden=cfg.hidden_size,
                   kv_dim=cfg.num_key_value_heads * head_dim, bytes_per_param=bytes_per_param)

    @property
    def weight_bytes(self) -> int:
        return (self.layer_params + self.head_params) * self.bytes_per_param


@dataclass(frozen=True)
class Work:
    flops: float
    bytes: float

    def roofline_s(self, peak_flops: float, bandwidth: float) -> float:
        return max(self.flops / peak_flops, self.bytes / bandwidth)


def _attention_flops(shape: ModelShape, queries: float, context: float) -> float:
    return 4.0 * shape.layers * shape.hidden * queries * context


def train_work(shape: ModelShape, prompt_lens: list[int], completion_lens: list[list[int]]) -> Work:
    """Forward + backward of the shared-prefix pass: each prompt once, each completion after its prompt.

    ``completion_lens[b]``: the G completion lengths of prompt b. Bytes: the fp32 weights and their
    gradients and Adam moments, read and written once per step (a lower bound).
    """
    flops = 0.0
    for p, group in zip(prompt_lens, completion_lens):
        flops += 6.0 * shape.layer_params * p + 3 * _attention_flops(shape, p, p / 2)
        for c in group:
            flops += 6.0 * (shape.layer_params + shape.head_params) * c + 3 * _attention_flops(shape, c, p + c / 2)
    params = shape.layer_params + shape.head_params
    return Work(flops, bytes=params * 4 * 6)  # weights, grads, 2 moments: read + written


def generate_work(shape: ModelShape, prompt_lens: list[int], completion_lens: list[list[int]]) -> Work:
    """One shared prefill per prompt, then each row's own decode steps (``completion_lens[b]``: the lengths of
    prompt b's completions): a finished row leaves the batch (``srtlab.rollout.decode``), so the work is the sum
    of the lengths, not rows x the longest.

    Bytes: the weights once for the prefill and once per decode step (as many steps as the longest row), and
    at every step each present row's KV cache up to its position.
    """
    flops = sum(2.0 * shape.layer_params * p + _attention_flops(shape, p, p / 2) for p in prompt_lens)
    kv_bytes = 0.0
    per_position = shape.layers * 2 * shape.kv_dim * shape.bytes_per_param
    for p, group in zip(prompt_lens, completion_lens):
        for c in group:  # positions p .. p + c - 1: sum of contexts = c * p + c * (c - 1) / 2
            contexts = c * p + c * (c - 1) / 2
            flops += c * 2.0 * (shape.layer_params + shape.head_params) + _attention_flops(shape, 1, contexts)
            kv_bytes += contexts * per_position
    steps = max((c for group in completion_lens for c in group), default=0)
    return Work(flops, bytes=shape.weight_bytes * (steps + 1) + kv_bytes)


def measure_matmul_flops(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """Sustained FLOP/s of a square matmul in ``dtype`` on the CPU (the best of ``repeats``)."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2.0 * size**3 / best


def measure_bandwidth(megabytes: int = 512, repeats: int = 5) -> float:
    """Memory bandwidth (bytes/s) of a large copy: read + write counted."""
    src = torch.empty(megabytes * 2**20, dtype=torch.uint8).fill_(1)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t)
    return 2.0 * src.numel() / best
