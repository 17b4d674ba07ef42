"""The rollout callback: generates and scores completions for every batch, and syncs weights.

Before each training step it samples G completions per prompt with the engine, scores them with the
reward mix, and attaches the result to the batch, then lets the engine sleep (free its memory) for the
training step; after each optimizer step it streams the new weights to the engine tensor by tensor
(``srtlab.rollout.sync.policy_weights``: LoRA merged out of place, FSDP shards gathered one at a time;
a no-op when the engine shares the policy in process) and, with a probe, checks that the engine's
log-probs match the trainer's. Before each evaluation batch it samples k completions per held-out
prompt. Sampling seeds are a function of (seed, step), so a resumed run samples exactly what an
uninterrupted run would have.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import lightning as L
import torch

from srtlab.rewards.base import RewardContext
from srtlab.rewards.mix import RewardMix
from srtlab.rollout.engine import RolloutEngine, SamplingSettings
from srtlab.rollout.sync import LogprobProbe, policy_weights
from srtlab.types import Prompt, PromptBatch, RewardOutput, RolloutBatch

VAL_SEED_OFFSET = 7_919  # evaluation samples use other seeds than training samples
PROBE_SEED_OFFSET = 104_729  # and the sync probe others again

Scorer = Callable[[RolloutBatch], RewardOutput]


def plain_program(engine: RolloutEngine, prompts: list[Prompt], n: int, sampling: SamplingSettings, seed: int,
                  score: Scorer) -> RolloutBatch:
    """The default rollout program: G samples per prompt, scored once by the reward mix.

    A rollout program turns a batch of prompts into a scored :class:`RolloutBatch` (``rewards`` and
    unprefixed ``metrics`` filled). Other programs (reflect-and-retry) call the engine several times.
    """
    rollouts = engine.generate(prompts, n, sampling, seed=seed)
    scored = score(rollouts)
    rollouts.rewards, rollouts.metrics = scored.rewards, dict(scored.metrics)
    return rollouts


class RolloutCallback(L.Callback):
    """Feeds the policy module with scored rollouts.

    Args:
        engine: a factory ``(model, tokenizer) -> RolloutEngine`` (Hydra ``_partial_``), built on first use,
            once the policy module has loaded its model.
        reward: the reward mix.
        n: samples per training prompt (G).
        sampling: training sampling settings.
        val_n: samples per held-out prompt (k of mean@k, maj@k, pass@k).
        val_sampling: evaluation sampling settings.
        seed: the run seed.
        program: the rollout program for training batches (default :func:`plain_program`).
        probe: after each weight sync, compare the engine's log-probs with the trainer's (engines that
            report log-probs only, e.g. vLLM); None: no check.
    """

    def __init__(self, engine: Callable[..., RolloutEngine], reward: RewardMix, n: int, sampling: SamplingSettings,
                 val_n: int, val_sampling: SamplingSettings, seed: int = 0, program: Callable | None = None,
                 probe: LogprobProbe | None = None) -> None:
        sampling.validate()
        val_sampling.validate()
        self.make_engine, self.reward = engine, reward
        self.n, self.sampling, self.val_n, self.val_sampling, self.seed = n, sampling, val_n, val_sampling, seed
        self.program = program or plain_program
        self.probe = probe
        self.engine: RolloutEngine | None = None

    def engine_for(self, pl_module: L.LightningModule) -> RolloutEngine:
        """The rollout engine, built on first use (after the policy loaded its model) and synced to it."""
        if self.engine is None:
            self.engine = self.make_engine(model=pl_module.model, tokenizer=pl_module.tokenizer)
            self._sync(pl_module)  # the policy may have been restored from a checkpoint since it was loaded
        return self.engine

    def _sync(self, pl_module: L.LightningModule) -> None:
        """The policy's current weights into the engine, one tensor at a time (collective under FSDP)."""
        if not getattr(self.engine, "shares_policy", False):
            self.engine.load_weights(policy_weights(pl_module.model))

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: PromptBatch,
                             batch_idx: int) -> None:
        engine = self.engine_for(pl_module)
        seed = self.seed * 1_000_003 + batch.step
        context = RewardContext(policy=pl_module, engine=engine, step=batch.step, seed=seed)
        reward_s = 0.0

        def score(rollouts: RolloutBatch) -> RewardOutput:
            nonlocal reward_s
            t = time.perf_counter()
            out = self.reward(rollouts, context)
            reward_s += time.perf_counter() - t
            return out

        t0 = time.perf_counter()
        rollouts = self.program(engine, batch.prompts, self.n, self.sampling, seed, score)
        t2 = time.perf_counter()
        t1 = t2 - reward_s  # generation time = program time less scoring time
        rollouts.metrics = {f"train/{k}": v for k, v in rollouts.metrics.items()}
        batch.rollouts = rollouts
        engine.sleep()  # free the engine's memory for the training step; it wakes when next used
        tokens = sum(len(c) for c in rollouts.completion_ids)
        self._t_step_start, self._t_train_start = t0, t2
        pl_module.log_dict({**rollouts.metrics, "time/generate": t1 - t0, "time/reward": t2 - t1,
                            "perf/tokens_per_s": tokens / max(t1 - t0, 1e-9),
                            "train/truncated": rollouts.finish_reasons.count("length") / len(rollouts)},
                           on_step=True, batch_size=len(batch))
        if "train/reward/mixed" in rollouts.metrics:
            pl_module.log("reward", rollouts.metrics["train/reward/mixed"], prog_bar=True, on_step=True,
                          logger=False, batch_size=len(batch))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch: PromptBatch,
                           batch_idx: int) -> None:
        t0 = time.perf_counter()
        engine = self.engine_for(pl_module)
        self._sync(pl_module)
        t1 = time.perf_counter()
        step_time = t1 - self._t_step_start
        metrics = {"time/train": t0 - self._t_train_start, "time/sync": t1 - t0}
        if self.probe is not None:  # the next step samples from these weights: check them now
            with torch.no_grad():
                metrics.update(self.probe(pl_module, engine, batch.prompts, self.sampling,
                                          seed=self.seed * 1_000_003 + batch.step + PROBE_SEED_OFFSET))
        pl_module.log_dict(metrics, on_step=True, batch_size=len(batch))
        pl_module.log("step_s", step_time, prog_bar=True,
                      on_step=True, logger=False, batch_size=len(batch))
        batch.rollouts = None  # free the rollouts; the next batch gets its own

    def on_validation_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: PromptBatch,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        engine = self.engine_for(pl_module)
        seed = (self.seed + VAL_SEED_OFFSET) * 1_000_003 + batch.step + 10_007 * dataloader_idx
        with torch.no_grad():
            batch.rollouts = engine.generate(batch.prompts, self.val_n, self.val_sampling, seed=seed)
