"""Held-out evaluation: k samples per prompt drawn with an engine, scored by gold.

The curriculum's per-level evaluations, the guard's probes and the reflect-and-retry evaluation sample through
:func:`evaluate_prompts`; the scoring itself (mean@k, maj@k, pass@k, answer rate, top-answer share) is
``srtlab.answers.metrics``, which the policy's validation loop uses directly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from srtlab.answers.gold import GoldScorer
from srtlab.answers.metrics import heldout_metrics, score_groups
from srtlab.rollout.engine import RolloutEngine, SamplingSettings
from srtlab.types import Prompt


@torch.no_grad()
def evaluate_prompts(engine: RolloutEngine, prompts: Sequence[Prompt], k: int, sampling: SamplingSettings,
                     seed: int, gold: GoldScorer, batch_size: int = 8) -> tuple[dict[str, float], list[dict]]:
    """:func:`heldout_metrics` of ``k`` samples per prompt drawn with ``engine``, and the sample rows."""
    scores, samples = [], []
    for start in range(0, len(prompts), batch_size):
        r = engine.generate(list(prompts[start:start + batch_size]), k, sampling, seed=seed + start)
        batch_scores, batch_samples = score_groups(r, gold.verdicts(r))
        scores += batch_scores
        samples += batch_samples
    return heldout_metrics(scores, samples), samples
