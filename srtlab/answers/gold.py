"""Gold-answer verdicts: is a completion's answer right by its prompt's gold answer.

The scoring primitive under the ground-truth reward (``srtlab.rewards.ground_truth``), every held-out
evaluation and every gold monitor; math answers through math-verify, Reasoning Gym answers through the
task's own scorer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import reasoning_gym
import torch

from srtlab.answers.canonical import ScoreStats, answers_equivalent, normalize_text, parse_answer, parsed_equivalent
from srtlab.types import Prompt, RolloutBatch

ScoreAnswer = Callable[[str | None, dict[str, Any]], float]  # reasoning-gym's score_answer(answer, entry)


def has_gold(prompt: Prompt) -> bool:
    """Whether the prompt carries a gold answer to check against."""
    return prompt.answer is not None


def is_correct(answer: str | None, prompt: Prompt, scorer: ScoreAnswer | None = None) -> bool:
    """Whether ``answer`` is right for ``prompt``; False for no answer or no gold answer.

    ``"math"`` prompts: math-verify against the gold answer, at a bounded cost (``srtlab.answers.bounds``; any thread).
    ``"text"`` prompts with a reasoning-gym item in ``metadata["entry"]``: the task's own scorer
    (``scorer``, or a fresh ``get_score_answer_fn(prompt.task)``) must give 1.0 to the raw answer or to
    its :func:`normalize_text` form. Other ``"text"`` prompts: normalised text equality.
    """
    if answer is None or not has_gold(prompt):
        return False
    gold = str(prompt.answer)
    if prompt.answer_kind == "math":
        return answers_equivalent(gold, answer, "math")
    entry = prompt.metadata.get("entry")
    if entry is not None:
        score = scorer if scorer is not None else reasoning_gym.get_score_answer_fn(prompt.task)
        return any(score(candidate, entry) == 1.0 for candidate in (answer, normalize_text(answer)))
    return answers_equivalent(gold, answer, "text")


class GoldScorer:
    """1.0 if a completion's answer is correct by its prompt's gold answer, 0.0 if wrong or unreadable,
    NaN when the prompt has no gold answer; keeps one Reasoning Gym scorer per task."""

    def __init__(self) -> None:
        self._scorers: dict[str, ScoreAnswer] = {}  # task name -> reasoning-gym scorer (building one is slow)

    def verdicts(self, rollouts: RolloutBatch, stats: ScoreStats | None = None) -> torch.Tensor:
        """[B*G] 1.0 correct, 0.0 wrong or unreadable, NaN where the prompt has no gold answer; math answers
        refused or timed out by the bounded comparison are wrong and counted in ``stats``."""
        rewards: list[float] = []
        for prompt, group in zip(rollouts.prompts, rollouts.groups()):
            answers = [rollouts.answers[i] for i in group]
            if not has_gold(prompt):
                rewards.extend([math.nan] * len(answers))
            else:
                rewards.extend(float(ok) for ok in self._group_correct(answers, prompt, stats))
        return torch.tensor(rewards, dtype=torch.float32)

    def _group_correct(self, answers: list[str | None], prompt: Prompt, stats: ScoreStats | None) -> list[bool]:
        """:func:`is_correct` for one group, parsing a math gold answer once rather than G times."""
        if prompt.answer_kind == "math":
            gold = parse_answer(str(prompt.answer), "math")
            return [a is not None and parsed_equivalent(gold, parse_answer(a, "math", stats=stats), stats=stats)
                    for a in answers]
        scorer = self._scorer(prompt.task) if prompt.metadata.get("entry") is not None else None
        return [is_correct(a, prompt, scorer) for a in answers]

    def _scorer(self, task: str) -> ScoreAnswer:
        if task not in self._scorers:
            self._scorers[task] = reasoning_gym.get_score_answer_fn(task)
        return self._scorers[task]
