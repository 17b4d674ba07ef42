"""Which precision pays on this machine: bf16 where the device computes it natively, fp32 where it does not.

``trainer.precision: auto`` and ``rollout.engine.dtype: auto`` (the shipped defaults) resolve here. A GPU with bf16
support, or a CPU with native bf16 matmuls (AVX512-BF16, AMX), trains with ``bf16-mixed`` autocast and samples with
a bf16 copy of the policy; a CPU without them (AVX2 only) runs bf16 matmuls about 150x slower than fp32 (1 against
145 GFLOP/s, measured on a 2-core AMD EPYC), so there both stay fp32. The CPU is asked by timing one small matmul
in each dtype, once per process (a few milliseconds where bf16 is native, about 0.1 s where it is not).
"""

from __future__ import annotations

import functools
import time

import torch

AUTO = "auto"


@functools.cache
def fast_bf16(device_type: str = "cpu") -> bool:
    """Whether bf16 matmuls on ``device_type`` ("cpu", "cuda", ...) are at least as fast as fp32 ones."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type != "cpu":
        return False
    times = {}
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.ones(256, 256, dtype=dtype)
        a @ a  # warm-up
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            a @ a
            best = min(best, time.perf_counter() - start)
        times[dtype] = best
    return times[torch.bfloat16] <= times[torch.float32]


def device_type(accelerator: str | None) -> str:
    """The device kind a Lightning ``accelerator`` setting trains on."""
    if accelerator in ("gpu", "cuda") or (accelerator in (None, "auto") and torch.cuda.is_available()):
        return "cuda"
    return "cpu"


def trainer_precision(precision: str, accelerator: str | None = "cpu") -> str:
    """``trainer.precision``: ``auto`` -> ``bf16-mixed`` where bf16 is native on the training device, else
    ``32-true``; any other value as given."""
    if precision != AUTO:
        return precision
    return "bf16-mixed" if fast_bf16(device_type(accelerator)) else "32-true"


def sampling_dtype(dtype: str | None, model: torch.nn.Module) -> str | None:
    """``rollout.engine.dtype``: ``auto`` -> ``bfloat16`` where bf16 is native on the model's device, else None (sample
    with the policy itself); any other value as given."""
    if dtype != AUTO:
        return dtype
    return "bfloat16" if fast_bf16(next(model.parameters()).device.type) else None
