"""Sample-based accuracy metrics: mean@n, maj@n and unbiased pass@k over a prompt's n samples, and one way
to score a held-out set with them.

``val/<set>/mean@k``, ``val/<set>/maj@k`` and ``val/<set>/pass@k`` are :func:`heldout_metrics` of the
:func:`score_groups` of a held-out set: every evaluation (the policy's validation loop, the curriculum's
per-level evaluations, the guard's probes, the reflect-and-retry evaluation) scores through these two.
"""

from __future__ import annotations

from collections import Counter

import torch

from srtlab.answers.canonical import cluster_answers, normalize_text
from srtlab.types import RolloutBatch


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct (Chen et al. 2021, Codex).

    ``1 - C(n-c, k) / C(n, k)``, computed as ``1 - prod_{i=n-c+1}^{n} (1 - k/i)`` to avoid huge binomials.
    """
    if n < 1 or c < 0 or k < 1:
        raise ValueError(f"pass@k needs n >= 1, c >= 0, k >= 1; got n={n}, c={c}, k={k}")
    if k > n or c > n:
        raise ValueError(f"pass@k needs k <= n and c <= n; got n={n}, c={c}, k={k}")
    if n - c < k:  # every subset of size k contains a correct sample
        return 1.0
    none_correct = 1.0
    for i in range(n - c + 1, n + 1):
        none_correct *= 1.0 - k / i
    return 1.0 - none_correct


def majority_vote(cluster_ids: list[int | None]) -> tuple[int | None, float]:
    """The most common cluster and its share of the whole group (None answers count in the denominator).

    Ties go to the smallest cluster id, which is the first to appear when ids come from
    :func:`~srtlab.answers.canonical.cluster_answers`. ``(None, 0.0)`` when there is no answer at all.
    """
    counts = Counter(i for i in cluster_ids if i is not None)
    if not counts:
        return None, 0.0
    majority = min(counts, key=lambda cluster: (-counts[cluster], cluster))
    return majority, counts[majority] / len(cluster_ids)


def group_scores(correct: list[bool], cluster_ids: list[int | None], k: int | None = None) -> dict[str, float]:
    """mean (fraction correct), maj (whether the majority answer is correct) and pass@k of one prompt.

    A cluster counts as correct when its first member is; ``k`` defaults to the number of samples.
    """
    n = len(correct)
    if n == 0 or len(cluster_ids) != n:
        raise ValueError(f"need as many cluster ids as samples (at least one); got {n} and {len(cluster_ids)}")
    majority, _ = majority_vote(cluster_ids)
    maj = 0.0 if majority is None else float(correct[cluster_ids.index(majority)])
    return {"mean": sum(correct) / n, "maj": maj, "pass": pass_at_k(n, sum(correct), n if k is None else k)}


def aggregate_scores(scores: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each key over the prompts that report it."""
    totals: dict[str, list[float]] = {}
    for row in scores:
        for key, value in row.items():
            totals.setdefault(key, []).append(value)
    return {key: sum(values) / len(values) for key, values in totals.items()}


def answer_concentration(answers: list[str | None]) -> float:
    """Share of all answers (no answer counted in the denominator) that equal the single most common
    answer (text-normalised), across prompts. Near 1 is "one answer for every question": the collapse
    SRT is known for. Logged as ``train/answer_concentration`` and ``val/<set>/top_answer_share``."""
    counts = Counter(normalize_text(a) for a in answers if a is not None)
    return counts.most_common(1)[0][1] / len(answers) if counts and answers else 0.0


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
