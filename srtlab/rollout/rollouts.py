"""The rollout stage: the engine's life cycle and the sampling of training and held-out batches.

The policy module owns one :class:`Rollouts` and calls it from its steps (see
``srtlab.modules.policy``): the engine is built on first use (after the policy loaded, or was restored
from a checkpoint), sampled from, put to sleep for the training pass, sent the new weights tensor by
tensor after each optimizer step (``srtlab.rollout.sync.policy_weights``: LoRA merged out of place,
FSDP shards gathered one at a time; a no-op when the engine shares the policy in process) and, with a
probe, checked against the trainer's log-probs. Every seed comes from ``srtlab.seeds``, a function of
(run seed, step), so a resumed run samples exactly what an uninterrupted run would have.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from srtlab.models.forward import LogprobFn
from srtlab.rollout.engine import RolloutEngine, SamplingSettings
from srtlab.rollout.sync import LogprobProbe, policy_weights
from srtlab.seeds import seed_for, train_seed
from srtlab.settings import Annotated, checked, integer, node
from srtlab.types import Prompt, RewardOutput, RolloutBatch

Scorer = Callable[[RolloutBatch], RewardOutput]  # the reward mix, bound to this step


class RolloutProgram(Protocol):
    """Turns a batch of prompts into a scored :class:`RolloutBatch` (``rewards`` and unprefixed ``metrics``
    filled), calling the engine and ``score`` as often as it needs (reflect-and-retry: several times)."""

    def __call__(self, engine: RolloutEngine, prompts: list[Prompt], n: int, sampling: SamplingSettings, seed: int,
                 score: Scorer) -> RolloutBatch: ...


def plain_program(engine: RolloutEngine, prompts: list[Prompt], n: int, sampling: SamplingSettings, seed: int,
                  score: Scorer) -> RolloutBatch:
    """The default rollout program: G samples per prompt, scored once by the reward mix."""
    rollouts = engine.generate(prompts, n, sampling, seed=seed)
    return attach(rollouts, score(rollouts))


def attach(rollouts: RolloutBatch, scored: RewardOutput) -> RolloutBatch:
    """Put the mix's output on the batch: mixed rewards, per-source rewards, per-level statistics, each group's
    majority vote, metrics."""
    rollouts.rewards, rollouts.metrics = scored.rewards, dict(scored.metrics)
    rollouts.source_rewards, rollouts.level_stats = dict(scored.by_source), dict(scored.by_level)
    rollouts.majorities = list(scored.majorities)
    return rollouts


@checked
class Rollouts:
    """Samples training and held-out batches with one engine, and keeps the engine in step with the policy
    (``configs/rollout/``).

    Args:
        engine: a factory ``(model, tokenizer) -> RolloutEngine`` (Hydra ``_partial_``), built on first use.
        n: samples per training prompt (G); group advantages and the vote need at least 2.
        sampling: training sampling settings.
        val_n: samples per held-out prompt (k of mean@k, maj@k, pass@k).
        val_sampling: evaluation sampling settings (default: ``sampling``).
        seed: the run seed.
        program: the rollout program for training batches (default :func:`plain_program`).
        probe: after each weight sync, compare the engine's log-probs with the trainer's (engines that
            report log-probs only); None: no check.
    """

    def __init__(self, engine: Callable[..., RolloutEngine], n: Annotated[int, integer(2)] = 8,
                 sampling: SamplingSettings | None = None, val_n: Annotated[int, integer(1)] = 8,
                 val_sampling: SamplingSettings | None = None, seed: Annotated[int, integer(0)] = 0,
                 program: Annotated[RolloutProgram | None, node("a rollout program")] = None,
                 probe: Annotated[LogprobProbe | None, node("a log-prob probe")] = None) -> None:
        self.make_engine = engine
        self.sampling = sampling or SamplingSettings()
        self.n, self.val_n, self.val_sampling, self.seed = n, val_n, val_sampling or self.sampling, seed
        self.program = program or plain_program
        self.probe = probe
        self._engine: RolloutEngine | None = None

    def engine(self, model: torch.nn.Module, tokenizer) -> RolloutEngine:
        """The engine, built on first use and synced to ``model`` (it may have been restored since loading)."""
        if self._engine is None:
            self._engine = self.make_engine(model=model, tokenizer=tokenizer)
            self.sync(model)
        return self._engine

    def sync(self, model: torch.nn.Module) -> None:
        """The policy's current weights into the engine, one tensor at a time (collective under FSDP)."""
        if self._engine is not None and not getattr(self._engine, "shares_policy", False):
            self._engine.load_weights(policy_weights(model))

    def train_batch(self, engine: RolloutEngine, prompts: list[Prompt], step: int, score: Scorer,
                    rank: int = 0) -> RolloutBatch:
        """G samples per prompt by the rollout program, scored; the engine then sleeps for the training pass.
        ``rank``: this data-parallel rank (its prompts are its share of the step; its seed is its own)."""
        rollouts = self.program(engine, prompts, self.n, self.sampling, train_seed(self.seed, step, rank), score)
        engine.sleep()  # free the engine's memory for the training pass; it wakes when next used
        return rollouts

    @torch.no_grad()
    def val_batch(self, engine: RolloutEngine, prompts: list[Prompt], set_index: int, batch_index: int) -> RolloutBatch:
        """k samples per held-out prompt; the seeds depend on (set, batch) only, so every evaluation of a run
        sees the same randomness and before/after differences come from the weights."""
        return engine.generate(prompts, self.val_n, self.val_sampling, seed=seed_for(self.seed, "val", set_index,
                                                                                     batch_index))

    def check(self, logprobs: LogprobFn, prompts: list[Prompt], step: int) -> dict[str, float]:
        """The probe after a sync: ``sync/*`` metrics ({} without a probe or an engine)."""
        if self.probe is None or self._engine is None:
            return {}
        with torch.no_grad():
            return self.probe(logprobs, self._engine, prompts, self.sampling, seed=seed_for(self.seed, "probe", step))
