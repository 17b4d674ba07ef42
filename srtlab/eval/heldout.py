"""Held-out evaluation: one way to score k samples per prompt, aggregate them and write the samples.

The policy's validation loop, the curriculum's per-level evaluations and the reflect-and-retry
evaluation all score through :func:`score_groups` and :func:`heldout_metrics`, and write through
:func:`write_samples`: mean@k, maj@k and pass@k (``srtlab.eval.metrics``) by the gold answer, the
answer rate, and the top-answer share (the collapse indicator).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from srtlab.eval.canonical import cluster_answers
from srtlab.eval.gold import GoldScorer
from srtlab.eval.metrics import aggregate_scores, answer_concentration, group_scores
from srtlab.rollout.engine import RolloutEngine, SamplingSettings
from srtlab.types import Prompt, RolloutBatch


def score_groups(r: RolloutBatch, correct: torch.Tensor) -> tuple[list[dict[str, float]], list[dict]]:
    """Per prompt with a gold answer: its scores (mean, maj, pass, answer_rate) and its sample row.

    ``correct`` is GroundTruth's ``[B*G]`` verdict (NaN where a prompt has no gold answer: skipped).
    Sample rows hold the prompt id, gold, the k answers, their correctness and texts.
    """
    scores, samples = [], []
    for b, rows in enumerate(r.groups()):
        if torch.isnan(correct[rows.start]):
            continue
        answers = [r.answers[i] for i in rows]
        ok = [bool(correct[i] > 0.5) for i in rows]
        row = group_scores(ok, cluster_answers(answers, r.prompts[b].answer_kind))
        row["answer_rate"] = sum(a is not None for a in answers) / len(answers)
        scores.append(row)
        samples.append({"id": r.prompts[b].id, "gold": r.prompts[b].answer, "answers": answers, "correct": ok,
                        "texts": [r.texts[i] for i in rows]})
    return scores, samples


def top_answer_share(samples: list[dict]) -> float:
    """Share of all held-out answers (no answer included) that are the single most common answer.

    Near 1.0 with a middling accuracy is the collapse SRT is known for: one answer for every question.
    """
    return answer_concentration([a for row in samples for a in row["answers"]])


def heldout_metrics(scores: list[dict[str, float]], samples: list[dict]) -> dict[str, float]:
    """mean, maj, pass, answer_rate (means over prompts) and top_answer_share of one held-out set."""
    return {**aggregate_scores(scores), "top_answer_share": top_answer_share(samples)}


def named_metrics(name: str, k: int, metrics: dict[str, float], prefix: str = "val") -> dict[str, float]:
    """``val/<set>/mean@k`` ... : the names every evaluation logs under (docs/metrics.md); the guard's
    labelled probe logs under ``guard/probe/``."""
    at_k = {"mean", "maj", "pass"}
    return {f"{prefix}/{name}/{key}@{k}" if key in at_k else f"{prefix}/{name}/{key}": value
            for key, value in metrics.items()}


def at_step(step: int, metrics: dict[str, float]) -> dict[str, float]:
    """``metrics`` plus ``"step"``, which Lightning takes as the row's step in metrics.csv: optimizer steps
    taken (a training step's row at the count after its update, an evaluation's at the count before it, 0
    before training). Lightning's own counter puts a training step's row one lower."""
    return {**metrics, "step": float(step)}


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


def write_samples(rows: list[dict], path: Path) -> Path:
    """One JSON object per line; the folder is created. Every samples file of a run is written here."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    return path


def train_sample_rows(r: RolloutBatch, adv: torch.Tensor) -> list[dict]:
    """One row per training completion: prompt id, sample index, gold, answer, text, mixed reward, advantage
    and each source's reward (null: no opinion). Reward hacking shows in these first."""
    rows = []
    for i in range(len(r)):
        prompt = r.prompts[i // r.n]
        rows.append({"id": prompt.id, "sample": i % r.n, "gold": prompt.answer, "answer": r.answers[i],
                     "text": r.texts[i], "reward": float(r.rewards[i]), "advantage": float(adv[i]),
                     "rewards": {k: _json_float(v[i]) for k, v in r.source_rewards.items()}})
    return rows


def _json_float(x: torch.Tensor) -> float | None:
    value = float(x)
    return None if value != value else value  # NaN (no opinion) -> null
