"""The interface every reward source implements (see docs: adding a reward source)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from srtlab.types import RewardOutput, RolloutBatch


@dataclass
class RewardContext:
    """What a source may need besides the rollouts: the policy, the engine, and where the run is.

    ``policy`` is the policy LightningModule (its ``model``, ``tokenizer`` and ``token_logprobs``), for
    sources that score with the trainer's weights (confidence); ``engine`` is the rollout engine, for
    sources that ask the policy a question (self-judge: one more batched generate call); ``seed`` is a
    seed derived from (run seed, step) for any sampling the source does.
    """

    policy: Any = None
    engine: Any = None
    step: int = 0
    seed: int = 0
    stage: str = "train"  # "train" or "val"


@runtime_checkable
class RewardSource(Protocol):
    """Scores a whole batch at once, because some rewards (majority vote) need the whole group.

    Returns ``RewardOutput.rewards`` as a float32 tensor ``[B*G]`` in the batch's group-major order,
    NaN where the source has no opinion about a completion, plus its own metrics (unprefixed).
    A source that sets the class attribute ``uses_context = True`` is called as
    ``source(rollouts, context)`` with a :class:`RewardContext`.
    """

    name: str

    def __call__(self, rollouts: RolloutBatch) -> RewardOutput: ...
