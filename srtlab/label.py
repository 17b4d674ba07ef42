"""``python -m srtlab label``: frozen-teacher labels for the training prompts (the SRT paper's baseline).

A fixed model (the base model, or a fit checkpoint with ``ckpt_path``) samples k answers per training
prompt (once per distinct question); each prompt's majority answer is its label, and the majority's
share of the k samples its vote share. Every prompt is written to a jsonl file, one row each::

    {"id", "task", "answer_kind", "question", "entry", "answers", "label", "share", "kept", "gold", "label_correct"}

``kept`` is false where the share is below ``label.min_share`` (the paper's "easy" curriculum keeps only
the most self-consistent prompts) or no sample had an answer; ``reward=teacher`` and
``data.train_ids_from`` read only kept rows. ``gold`` and ``label_correct`` are for monitoring: the
teacher never reads them. The same config tree as ``fit`` (model, data, rollout, seed) decides the
prompts and the sampling, so a teacher run with the same settings trains on exactly these prompts.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch
from omegaconf import DictConfig

from srtlab.answers.gold import GoldScorer
from srtlab.answers.votes import vote_groups
from srtlab.seeds import seed_for
from srtlab.settings import Annotated, checked, integer, real, text
from srtlab.types import question_of


@checked
@dataclass
class LabelSettings:
    """What ``label`` does: k samples per prompt, the kept threshold, how many prompts, where to write."""

    out: Annotated[str, text()]
    k: Annotated[int, integer(1)] = 16
    min_share: Annotated[float, real(0, 1)] = 0.0
    size: Annotated[int | None, integer(1, null=True)] = None  # the first ``size`` training prompts, or all
    prompts_per_call: Annotated[int, integer(1)] = 32  # prompts sampled per engine call (progress per call)


@contextmanager
def open_beside(out: Path) -> Iterator[TextIO]:
    """Open a partial file beside ``out`` for writing now; on success it replaces ``out`` atomically.

    So an unwritable ``out`` fails before the work, and a failed or killed run leaves the previous
    ``out`` (labels of an earlier run) as it was, with no half-written file in its place.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    try:
        with open(partial, "w") as f:
            yield f
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)


def load_policy(cfg: DictConfig):
    """The policy module of ``cfg`` with its model loaded (``model.path``), and the weights of ``ckpt_path`` when
    given; the same builder as ``fit`` (``srtlab.train.build_module``)."""
    from srtlab.models.load import load_policy_weights
    from srtlab.train import build_module

    module = build_module(cfg)
    module.configure_model()
    if cfg.get("ckpt_path"):  # weights_only: a crafted checkpoint cannot run code when unpickled
        load_policy_weights(module.model, cfg.ckpt_path)
    module.model.eval()
    return module


def label_rows(engine, prompts: list, settings: LabelSettings, sampling, seed: int) -> list[dict[str, Any]]:
    """Sample k answers per distinct question with ``engine``; one labels-file row per prompt.

    Training sets of small tasks repeat questions (single-digit products: 2000 prompts, 68 questions),
    so each distinct question is sampled once and its label shared by the prompts that ask it.
    """
    firsts: dict[str, Any] = {}  # question -> the first prompt asking it
    for p in prompts:
        firsts.setdefault(question_of(p), p)
    unique = list(firsts.values())
    gold_monitor = GoldScorer()
    results: dict[str, dict[str, Any]] = {}  # question -> the columns its prompts share
    for start in range(0, len(unique), settings.prompts_per_call):
        chunk = unique[start:start + settings.prompts_per_call]
        with torch.no_grad():
            rollouts = engine.generate(chunk, settings.k, sampling, seed=seed_for(seed, "label", start))
        correct = gold_monitor.verdicts(rollouts)  # [b*k], NaN without gold
        for prompt, group, vote in zip(chunk, rollouts.groups(), vote_groups(rollouts)):
            rep = vote.representative
            results[question_of(prompt)] = {
                "answers": [rollouts.answers[i] for i in group], "label": vote.answer, "share": vote.share,
                "kept": vote.answer is not None and vote.share >= settings.min_share,
                "label_correct": None if rep is None or torch.isnan(correct[rep]) else bool(correct[rep] > 0.5),
            }
        print(f"labelled {min(start + len(chunk), len(unique))}/{len(unique)} distinct questions "
              f"({len(prompts)} prompts)", flush=True)
    rows = []
    for p in prompts:
        q = question_of(p)
        rows.append({"id": p.id, "task": p.task, "answer_kind": p.answer_kind, "question": q,
                     "entry": p.metadata.get("entry"), **results[q], "gold": p.answer})
    return rows


def summarize(rows: list[dict[str, Any]], min_share: float) -> dict[str, float]:
    """Label accuracy against gold (all labelled prompts, and the kept ones) and the kept fraction."""
    def accuracy(sel: list[dict[str, Any]]) -> float | None:
        judged = [r["label_correct"] for r in sel if r["label_correct"] is not None]
        return sum(judged) / len(judged) if judged else None

    kept = [r for r in rows if r["kept"]]
    return {"prompts": len(rows), "distinct_questions": len({r["question"] for r in rows}), "kept": len(kept),
            "kept_fraction": len(kept) / max(len(rows), 1),
            "min_share": min_share, "label_accuracy": accuracy(rows), "kept_label_accuracy": accuracy(kept),
            "mean_share": sum(r["share"] for r in rows) / max(len(rows), 1)}


def label(cfg: DictConfig) -> dict[str, Any]:
    """Write the teacher labels file for the training prompts and print how good the labels are."""
    from srtlab.builder import Builder
    from srtlab.train import prepare_run

    run_dir = prepare_run(cfg)  # checks every value, label.out and ckpt_path included
    settings: LabelSettings = Builder(cfg)("label")
    start = time.time()
    out = Path(settings.out)
    with open_beside(out) as partial:  # opened now: a bad path fails before any sampling
        datamodule = Builder(cfg)("data")
        datamodule.setup("fit")
        prompts = list(datamodule.train.prompts)[: settings.size]
        module = load_policy(cfg)
        rows = label_rows(module.engine(), prompts, settings, module.rollouts.sampling, cfg.seed)
        partial.writelines(json.dumps(row, default=str) + "\n" for row in rows)
    summary = {**summarize(rows, settings.min_share), "k": settings.k, "file": str(out),
               "wall_s": round(time.time() - start, 1)}
    (run_dir / "results.json").write_text(json.dumps(summary, indent=2))
    fmt = lambda x: "-" if x is None else f"{x:.3f}"
    print(f"\nlabels: {out}\n{summary['prompts']} prompts ({summary['distinct_questions']} distinct questions) x "
          f"{settings.k} samples; "
          f"label accuracy vs gold {fmt(summary['label_accuracy'])}; kept (share >= {settings.min_share}) "
          f"{summary['kept']}/{summary['prompts']} = {summary['kept_fraction']:.3f}, "
          f"their label accuracy {fmt(summary['kept_label_accuracy'])}; mean vote share {summary['mean_share']:.3f}")
    return summary
