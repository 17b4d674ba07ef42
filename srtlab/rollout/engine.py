"""The rollout engine interface: G samples per prompt, and the weights kept in step with the policy."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from srtlab.types import Prompt, RolloutBatch


@dataclass
class SamplingSettings:
    """How completions are sampled. ``temperature=0`` means greedy."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    max_new_tokens: int = 128
    stop: list[str] = field(default_factory=list)  # extra stop strings besides the eos token

    def validate(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"rollout.sampling.temperature={self.temperature}; must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"rollout.sampling.top_p={self.top_p}; must be in (0, 1]")
        if self.max_new_tokens < 1:
            raise ValueError(f"rollout.sampling.max_new_tokens={self.max_new_tokens}; must be >= 1")


class RolloutEngine(Protocol):
    """Generates completions; ``hf`` shares the policy in process, ``vllm`` gets weights pushed to it."""

    def generate(self, prompts: list[Prompt], n: int, sampling: SamplingSettings, seed: int) -> RolloutBatch:
        """B prompts -> a RolloutBatch of B*n completions, group-major; reproducible from ``seed``."""
        ...

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Receive new policy weights (tensor by tensor) after an optimizer step."""
        ...

    def sleep(self) -> None: ...

    def wake(self) -> None: ...
