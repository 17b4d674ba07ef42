"""Held-out accuracy with and without a retry: the evaluation of Reflect, Retry, Reward.

The reflect-and-retry *program* (``srtlab.rollout.reflect``) trains; this measures, always by the gold
answer, whether a reflection helps a second attempt more than a plain "try again" does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch

from srtlab.logs import at_step, write_samples
from srtlab.rollout.engine import RolloutEngine, SamplingSettings
from srtlab.rollout.reflect import Case, ReflectRetry, mean_or_nan
from srtlab.seeds import seed_for
from srtlab.settings import Annotated, checked, integer
from srtlab.types import Prompt


def evaluate_retry(program: ReflectRetry, engine: RolloutEngine, prompts: list[Prompt], k: int,
                   sampling: SamplingSettings, seed: int) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Held-out accuracy of one attempt, two attempts with a reflection between, two attempts without.

    k first attempts per prompt; every attempt that is wrong by the gold answer gets one reflection and
    one retry, and (separately) one plain retry. Returns metrics (unprefixed) and one sample row per
    prompt. ``first``: mean first-attempt accuracy; ``reflect``: solved within two attempts with a
    reflection; ``plain``: solved within two attempts with a plain "try again"; ``fixed`` and
    ``plain_fixed``: share of failed attempts that the second attempt turns into successes.
    """
    prompts = [p for p in prompts if p.answer is not None]
    if not prompts:
        return {}, []
    gold = program.gold
    attempts = engine.generate(prompts, k, sampling, seed=seed_for(seed, "program", 0))
    first = [x > 0.5 for x in gold.verdicts(attempts).tolist()]  # [B*k]
    cases = [Case(i // k, i) for i, ok in enumerate(first) if not ok]
    fixed, plain_fixed, reflections, retries, plain = [], [], None, None, None
    if cases:
        reflections, retries, plain = program.reflect_and_retry(engine, prompts, attempts, cases, 1, sampling,
                                                             seed, plain_retry=True)
        fixed = [x > 0.5 for x in gold.verdicts(retries).tolist()]  # [C]
        plain_fixed = [x > 0.5 for x in gold.verdicts(plain).tolist()]  # [C]
    second, second_plain = list(first), list(first)
    for c, case in enumerate(cases):
        second[case.attempt], second_plain[case.attempt] = fixed[c], plain_fixed[c]
    metrics = {"first": mean_or_nan([float(x) for x in first]), "reflect": mean_or_nan([float(x) for x in second]),
               "plain": mean_or_nan([float(x) for x in second_plain])}
    if cases:
        metrics.update({"fixed": mean_or_nan([float(x) for x in fixed]),
                        "plain_fixed": mean_or_nan([float(x) for x in plain_fixed]),
                        "reflection_length": mean_or_nan([float(len(c)) for c in reflections.completion_ids])})
    rows, where = [], {case.attempt: c for c, case in enumerate(cases)}
    for b, p in enumerate(prompts):
        row = {"id": p.id, "gold": p.answer, "attempts": []}
        for i in range(b * k, (b + 1) * k):
            item = {"text": attempts.texts[i], "answer": attempts.answers[i], "correct": first[i]}
            if i in where:
                c = where[i]
                item.update(reflection=reflections.texts[c], retry=retries.texts[c], retry_correct=fixed[c],
                            plain_retry=plain.texts[c], plain_retry_correct=plain_fixed[c])
            row["attempts"].append(item)
        rows.append(row)
    return metrics, rows


@checked
class RetryEvaluation(L.Callback):
    """Adds held-out accuracy with and without a retry to every evaluation (``callbacks.retry_eval``).

    At the end of each evaluation, runs :func:`evaluate_retry` on every held-out set with the
    policy's engine and adds ``val/<set>/r3_<metric>`` to the evaluation's metrics (so the
    before/after table of ``fit`` and the output of ``eval`` show them); writes every sample to
    ``<run_dir>/samples/<set>_r3_step<N>.jsonl``. The seeds depend only on (seed, set), so evaluations
    before and after training see the same randomness.

    Args:
        program: the reflect-and-retry settings (instructions, reflection budget).
        k: first attempts per held-out prompt.
        sampling: sampling settings of attempts and retries.
        seed: the run seed.
    """

    def __init__(self, program: ReflectRetry, sampling: SamplingSettings, k: Annotated[int, integer(1)] = 4,
                 seed: Annotated[int, integer(0)] = 0) -> None:
        self.program, self.sampling, self.k, self.seed = program, sampling, k, seed

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        engine = pl_module.engine()
        sets: dict[str, list[Prompt]] = {}
        loaders = trainer.val_dataloaders
        for loader in loaders if isinstance(loaders, list) else [loaders]:
            for batch in loader:
                sets.setdefault(batch.source, []).extend(batch.prompts)
        metrics: dict[str, float] = {}
        with torch.no_grad():
            for s, (name, prompts) in enumerate(sets.items()):
                seed = seed_for(self.seed, "retry_eval", s)
                found, rows = evaluate_retry(self.program, engine, prompts, self.k, self.sampling, seed)
                metrics.update({f"val/{name}/r3_{key}": value for key, value in found.items()})
                self._write(trainer, name, rows, pl_module.global_step)
        if metrics:  # logged like the policy's own held-out metrics, so fit's before/after table shows them
            pl_module.log_dict(at_step(pl_module.global_step, metrics), add_dataloader_idx=False)

    @staticmethod
    def _write(trainer: L.Trainer, name: str, rows: list[dict], step: int) -> None:
        if trainer.is_global_zero:
            write_samples(rows, Path(trainer.default_root_dir) / "samples" / f"{name}_r3_step{step}.jsonl")
