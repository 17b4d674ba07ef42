"""Frozen-teacher reward: agreement with fixed labels that a fixed model gave once, before training.

The SRT paper's offline baseline (Shafayat et al. 2025): ``python -m srtlab label`` samples k answers
per training prompt from a fixed model (the base model by default) and writes each prompt's majority
answer and vote share to a labels file (``srtlab.label``); training with ``reward=teacher`` rewards
agreement with those labels, which never change. Online SRT's labels improve as the policy does, which
is the paper's explanation of why it beats this baseline. The datamodule trains only on the labelled
prompts (``data.train_ids_from``; the teacher experiment sets it to the same file).
"""

from __future__ import annotations

import math

import torch

from srtlab.answers.canonical import parse_answer, parsed_equivalent
from srtlab.data.sources import read_labels
from srtlab.rewards.base import RewardContext
from srtlab.settings import Annotated, checked, text
from srtlab.types import RewardOutput, RolloutBatch


@checked
class Teacher:
    """1.0 for a completion whose answer equals its prompt's teacher label (canonical comparison by the
    prompt's ``answer_kind``), 0.0 for another answer or none; NaN for a prompt without a kept label.

    Args:
        labels: the labels file written by ``python -m srtlab label`` (its kept rows are read once).
    """

    def __init__(self, labels: Annotated[str, text()]) -> None:
        self.path = labels
        self.labels = {pid: row["label"] for pid, row in read_labels(labels).items() if row.get("label") is not None}

    def __call__(self, rollouts: RolloutBatch, ctx: RewardContext) -> RewardOutput:
        rewards: list[float] = []
        covered = 0
        for prompt, group in zip(rollouts.prompts, rollouts.groups()):
            label = self.labels.get(prompt.id)
            if label is None:
                rewards.extend([math.nan] * len(group))
                continue
            covered += 1
            gold = parse_answer(label, prompt.answer_kind)
            rewards.extend(float(a is not None and parsed_equivalent(gold, parse_answer(a, prompt.answer_kind)))
                           for a in (rollouts.answers[i] for i in group))
        metrics = {"coverage": covered / max(len(rollouts.prompts), 1)}
        return RewardOutput(rewards=torch.tensor(rewards, dtype=torch.float32), metrics=metrics)
