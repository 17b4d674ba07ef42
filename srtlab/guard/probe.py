"""The guard's probes: a fixed set of prompts sampled every few steps, between the run's own evaluations.

**The unlabelled probe** (``callbacks.guard.probe``, :class:`UnlabelledProbe`; on in ``guard=warn|stop|rollback``)
reads no gold answer. It samples ``size`` training-distribution prompts (the first distinct questions of the
training set, copied without their gold answer) with ``k`` samples every ``every`` optimizer steps, and once
before training, which gives the base model's own votes and samples. Each probe logs, under ``guard/probe/``
(:mod:`srtlab.guard.votes` has the definitions):

- ``majority_share``: the mean majority share of the probe prompts;
- ``base_agreement``: the share of prompts whose majority is the base model's majority, over the prompts where the
  base's vote was clear (majority share above 0.5); ``base_agreement_all`` over every probe prompt;
- ``vote_rate``: the share of samples giving the base model's majority answer (mean@k against the base's votes);
- ``distinct_ratio``: distinct majority answers over the prompts, relative to the base's count;
- ``kl``: KL(base || policy) per sequence, estimated on the base model's own probe samples (their log-prob under
  the base, stored before training, minus under the policy now): one forward pass, no reference model kept;
- ``rephrase_agreement``: where the task can ask the question another way (:func:`rephrased_question`), the share
  of prompts whose majority is the same both ways (Co-Reward; Self-Harmony);
- ``flip_rate`` and ``at_risk`` (the callback, from each probe prompt's history of majorities; TTRL-Guard).

The same sampling seed serves every probe (common random numbers), so a change between probes comes from the
weights, not from the draw. Cost: ``size`` x ``k`` samples (twice that with a rephrasing) and one scoring
forward pass every ``every`` steps.

**The labelled probe** (``callbacks.guard.labelled_probe``, :class:`LabelledProbe`; off by default, and refused
by the label-free presets) **uses labels**: it scores ``size`` held-out prompts (the first ones with a gold answer
of the run's first held-out set, never trained on) with ``k`` samples every ``every`` optimizer steps and logs
``guard/labelled/probe/mean@k``, ``maj@k``, ``pass@k`` and ``top_answer_share``. Its rule (``labelled_probe``,
:class:`srtlab.guard.rules.ProbeDrop`) fires when the probe's mean@k falls more than ``max_drop`` below its best::

    python -m srtlab fit experiment=srt guard=labelled callbacks.guard.labelled_probe='{size: 32, every: 4, k: 4}'

Cost: ``size`` x ``k`` samples every ``every`` steps (32 x 4 every 4 steps is 1/4 of a default evaluation per
step on the CPU). Every rank scores the same prompts with the same seed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch

from srtlab.answers.metrics import named_metrics
from srtlab.eval.heldout import evaluate_prompts
from srtlab.guard.votes import agreement, clear_agreement, distinct, majorities, vote_rate
from srtlab.seeds import seed_for
from srtlab.settings import Annotated, Rule, boolean, checked, integer, real
from srtlab.types import Prompt, question_of

# How a Reasoning Gym task's question can be asked another way, from the item's metadata (never its answer).
# The arithmetic ones use one of basic_arithmetic's own "natural" templates.
REPHRASE: dict[str, Callable[[dict[str, Any]], str]] = {
    "basic_arithmetic": lambda m: f"What is {m['expression']}?",
    "chain_sum": lambda m: f"What is {m['expression']}?",
    "products": lambda m: f"What is {m['expression']}?",
    "letter_counting": lambda m: f'Count the letter "{m["target_letter"]}" in "{" ".join(m["span"])}". How many '
                                 "times does it occur?",
}
PARAPHRASE_COLUMN = "paraphrase"  # a data file's column that ``rephrase: auto`` reads when it exists
REPHRASE_RULE = Rule(lambda v: v is None or (isinstance(v, str) and v != ""),
                     "auto (a Reasoning Gym task's template, or a data column named paraphrase), a column name, "
                     "or null")


def rephrased_question(prompt: Prompt, how: str | None) -> str | None:
    """The prompt's question asked another way, or None: ``auto`` renders a known Reasoning Gym task from its
    item's metadata (:data:`REPHRASE`) or reads a data row's ``paraphrase`` column; any other value names the
    column of a data file to read."""
    if how is None:
        return None
    entry, row = prompt.metadata.get("entry"), prompt.metadata.get("row")
    if how == "auto" and isinstance(entry, dict) and prompt.task in REPHRASE:
        try:
            return REPHRASE[prompt.task](entry.get("metadata", {}))
        except (KeyError, TypeError):
            return None
    column = PARAPHRASE_COLUMN if how == "auto" else how
    text = row.get(column) if isinstance(row, dict) else None
    return text if isinstance(text, str) and text.strip() else None


def unlabelled(prompt: Prompt, question: str | None = None) -> Prompt:
    """A copy of ``prompt`` with no gold answer and no item metadata (so nothing downstream can read a label),
    asked as ``question`` when given (the last user message's question replaced)."""
    original = question_of(prompt)
    messages = [dict(m) for m in prompt.messages]
    tag = ""
    if question is not None:
        source = prompt.metadata.get("entry", {}).get("question") or prompt.metadata.get("question") or original
        last = max(i for i, m in enumerate(messages) if m.get("role") == "user")
        content = messages[last]["content"]
        messages[last]["content"] = content.replace(source, question, 1) if source in content else question
        tag = "#rephrased"
    return dataclasses.replace(prompt, id=prompt.id + tag, messages=messages, answer=None,
                               metadata={"question": original})


@checked
@dataclass
class UnlabelledProbe:
    """``callbacks.guard.probe``: label-free signals on a fixed set of training prompts (the module docstring).

    Args:
        size: probe prompts (the first ``size`` distinct questions of the training set).
        every: probe every this many optimizer steps (and once before training: the base model's votes).
        k: samples per prompt.
        rephrase: ``auto`` | a data column | null: ask each question a second way too (``rephrase_agreement``);
            ``auto`` covers the Reasoning Gym tasks in :data:`REPHRASE` and data files with a ``paraphrase``
            column, and logs nothing for the others. Costs a second sampling of the probe (more where the other
            wording leaves the few-shot format and the completions run long).
        kl: estimate KL(base || policy) on the base model's probe samples (a scoring pass over the probe prompts and
            the base's completions per probe: about one more sampling of the probe on a CPU).
    """

    size: Annotated[int, integer(1)] = 16
    every: Annotated[int, integer(1)] = 2
    k: Annotated[int, integer(2)] = 4
    rephrase: Annotated[str | None, REPHRASE_RULE] = None
    kl: Annotated[bool, boolean()] = False
    base: dict[str, Any] | None = field(default=None, init=False, repr=False)  # the base model's probe (state)
    _prompts: list[Prompt] | None = field(default=None, init=False, repr=False)
    _rephrased: list[Prompt] | None = field(default=None, init=False, repr=False)
    last: dict[str, Any] | None = field(default=None, init=False, repr=False)  # the latest probe's votes

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def prompts(self, trainer: L.Trainer) -> tuple[list[Prompt], list[Prompt]]:
        """(the probe prompts, their rephrasings: [] where the task has none), built once from the training set."""
        if self._prompts is None:
            train = getattr(getattr(trainer, "datamodule", None), "train", None)
            chosen, seen = [], set()
            for prompt in getattr(train, "prompts", None) or []:
                if question_of(prompt) not in seen:
                    seen.add(question_of(prompt))
                    chosen.append(prompt)
                if len(chosen) == self.size:
                    break
            if not chosen:
                raise ValueError("callbacks.guard.probe is set but the datamodule has no training prompts; accepted: "
                                 "a datamodule with a train set, or callbacks.guard.probe=null")
            others = [rephrased_question(p, self.rephrase) for p in chosen]
            self._prompts = [unlabelled(p) for p in chosen]
            self._rephrased = [unlabelled(p, q) for p, q in zip(chosen, others)] if all(others) else []
        return self._prompts, self._rephrased

    def run(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int
            ) -> tuple[dict[str, float], list[tuple[str, str | None, float, str]]]:
        """Sample the probe with the current weights -> (``guard/probe/*`` values, each prompt's vote as
        (question, majority answer, share, answer kind)). The first run (before training) is the base."""
        prompts, rephrased = self.prompts(trainer)
        rollouts, engine = pl_module.rollouts, pl_module.engine()
        kinds = [p.answer_kind for p in prompts]
        r = engine.generate(prompts, self.k, rollouts.sampling, seed=seed_for(rollouts.seed, "guard_watch", "original"))
        samples = [[r.answers[i] for i in group] for group in r.groups()]
        votes = [majorities([s], kind)[0] for s, kind in zip(samples, kinds)]
        answers = [a for a, _ in votes]
        other = None
        if rephrased:
            r2 = engine.generate(rephrased, self.k, rollouts.sampling,
                                 seed=seed_for(rollouts.seed, "guard_watch", "rephrased"))
            other = [majorities([[r2.answers[i] for i in g]], kind)[0][0] for g, kind in zip(r2.groups(), kinds)]
        kind = kinds[0]
        if self.base is None:
            self.base = {"step": step, "answers": answers, "shares": [s for _, s in votes],
                         "distinct": distinct(answers), "prompt_ids": r.prompt_ids, "completion_ids": r.completion_ids,
                         "logp": sequence_logprobs(pl_module, r.prompt_ids, r.completion_ids, self.k) if self.kl
                         else None}
        base = self.base
        base_shares = base.get("shares") or [1.0] * len(answers)
        values = {"majority_share": sum(s for _, s in votes) / len(votes),
                  "answer_rate": sum(a is not None for s in samples for a in s) / sum(map(len, samples)),
                  "base_agreement": clear_agreement(answers, base["answers"], base_shares, kind),
                  "base_agreement_all": agreement(answers, base["answers"], kind),
                  "vote_rate": vote_rate(samples, base["answers"], kind),
                  "distinct_ratio": distinct(answers) / max(base["distinct"], 1)}
        if self.kl and base["logp"] is not None:
            if base["step"] == step:  # the base model itself
                values["kl"] = 0.0
            else:
                now = sequence_logprobs(pl_module, base["prompt_ids"], base["completion_ids"], self.k)
                values["kl"] = sum(b - n for b, n in zip(base["logp"], now)) / len(now)
        if other is not None:
            values["rephrase_agreement"] = agreement(answers, other, kind)
        keyed = [(p.metadata["question"], a, s, kind) for p, (a, s), kind in zip(prompts, votes, kinds)]
        self.last = {"step": step, "answers": answers, "shares": [s for _, s in votes], "rephrased": other}
        return {f"guard/probe/{k}": v for k, v in values.items()}, keyed

    def state_dict(self) -> dict[str, Any] | None:
        return self.base

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        self.base = state


@torch.no_grad()
def sequence_logprobs(pl_module: L.LightningModule, prompt_ids: list[list[int]], completion_ids: list[list[int]],
                      n: int, prompts_per_pass: int = 8) -> list[float]:
    """Each completion's summed log-prob under the policy's current weights (eval mode, no grad): [B*n]."""
    model = pl_module.model
    was_training = model.training
    model.eval()
    out: list[float] = []
    try:
        for start in range(0, len(prompt_ids), prompts_per_pass):
            lp = pl_module.policy_logprobs(prompt_ids[start:start + prompts_per_pass],
                                           completion_ids[start * n:(start + prompts_per_pass) * n], n)
            out += (lp.logp.float() * lp.mask).sum(-1).tolist()
    finally:
        model.train(was_training)
    return out


@checked
@dataclass
class LabelledProbe:
    """``callbacks.guard.labelled_probe`` (USES LABELS): held-out prompts with gold scored every few steps."""

    size: Annotated[int, integer(1)] = 32
    every: Annotated[int, integer(1)] = 4
    k: Annotated[int, integer(1)] = 4
    max_drop: Annotated[float, real(0, 1, open_low=True)] = 0.1  # the rule fires this far below the best so far

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def prompts(self, trainer: L.Trainer) -> list[Prompt]:
        """The first ``size`` prompts with a gold answer of the datamodule's first held-out set."""
        sets = getattr(trainer.datamodule, "val", None) or {}
        name, prompts = next(iter(sets.items()), (None, []))
        chosen = [p for p in prompts if p.answer is not None][: self.size]
        if not chosen:
            raise ValueError(f"callbacks.guard.labelled_probe is set but the held-out set {name!r} has no prompt with "
                             "a gold answer; accepted: data with gold answers, or callbacks.guard.labelled_probe=null")
        return chosen

    def run(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> dict[str, float]:
        """Score the probe with the policy's engine and held-out sampling -> ``guard/labelled/probe/*`` values."""
        rollouts = pl_module.rollouts
        metrics, _ = evaluate_prompts(pl_module.engine(), self.prompts(trainer), self.k, rollouts.val_sampling,
                                      seed_for(rollouts.seed, "guard_probe", step), pl_module.gold)
        kept = {key: metrics[key] for key in ("mean", "maj", "pass", "top_answer_share")}
        return named_metrics("probe", self.k, kept, prefix="guard/labelled")
