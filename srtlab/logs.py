"""What a run writes besides Lightning's own logs: the step of each metrics row and the samples files.

Every metrics row names its ``step`` through :func:`at_step`, every samples file of a run is written by
:func:`write_samples`, and training completions become rows through :func:`train_sample_rows`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from srtlab.types import RolloutBatch


def at_step(step: int, metrics: dict[str, float]) -> dict[str, float]:
    """``metrics`` plus ``"step"``, which Lightning takes as the row's step in metrics.csv: optimizer steps
    taken (a training step's row at the count after its update, an evaluation's at the count before it, 0
    before training). Lightning's own counter puts a training step's row one lower."""
    return {**metrics, "step": float(step)}


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
