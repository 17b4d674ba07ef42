"""Prompt sources: Reasoning Gym tasks (procedural, seeded) and files or data sets (MATH, GSM8K, yours).

A source is a finite, indexable list of ``Prompt`` objects; the same (config, seed) always gives the
same prompts. The held-out set of a Reasoning Gym task is drawn first (its own seed, distinct
questions), and the training set leaves its questions out, so held-out questions are never trained
on, even for tasks with few distinct questions (single-digit products have 100).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from srtlab.data.files import BUILTINS, FieldMap, RowsError, read_rows
from srtlab.data.prompts import PromptBudget, PromptFormat
from srtlab.settings import (
    Annotated,
    Problem,
    SettingError,
    boolean,
    checked,
    choice,
    fail,
    integer,
    mapping,
    problem,
    text,
)
from srtlab.types import Prompt

ANSWER_KINDS = ("math", "text")  # how answers are compared: math-verify, or the normalised string


def task_problems(task: Any, config: dict[str, Any]) -> list[Problem]:
    """What is wrong with a Reasoning Gym task name and its config (``task``, ``task_config.<key>``), by the
    task's own rules (reasoning-gym's ``validate()``, a bare AssertionError there); [] when nothing is."""
    from reasoning_gym.factory import DATASETS

    if not isinstance(task, str) or task not in DATASETS:
        near = [t for t in DATASETS if isinstance(task, str) and task[:4] in t][:8]
        hint = f" (close: {', '.join(near)})" if near else ""
        return [problem("task", task, f"a Reasoning Gym task{hint}, any of the {len(DATASETS)} names in "
                                      "reasoning_gym.factory.DATASETS")]
    config_cls = DATASETS[task][1]
    fields = set(config_cls.__dataclass_fields__) - {"seed", "size"}
    unknown = sorted(set(config) - fields)
    if unknown:
        return [problem(f"task_config.{k}", config[k], f"a key task {task!r} takes: {sorted(fields)}")
                for k in unknown]
    try:
        config_cls(**config).validate()
    except (AssertionError, TypeError, ValueError) as err:
        named = [f for f in config if re.search(rf"\b{re.escape(f)}\b", str(err))] or sorted(config)
        reason = str(err) or type(err).__name__
        accepted = f"what reasoning-gym {config_cls.__name__} allows ({reason})"
        if len(named) == 1:
            return [problem(f"task_config.{named[0]}", config[named[0]], accepted)]
        return [problem("task_config", {f: config[f] for f in named}, accepted)]  # the values that clash, one line
    return []


def check_task(task: str, config: dict[str, Any]) -> None:
    """Fail fast on an unknown task, a config key the task does not have, or a value it refuses."""
    found = task_problems(task, config)
    if found:
        raise SettingError(found)


@dataclass
class ReasoningGymSource:
    """``size`` prompts of Reasoning Gym ``task`` generated with ``seed``."""

    task: str
    config: dict[str, Any] = field(default_factory=dict)
    size: int = 1000
    seed: int = 0
    split: str = "train"
    prompt: PromptFormat = field(default_factory=PromptFormat)
    exclude_questions: frozenset[str] = frozenset()  # questions to leave out (the held-out set's)
    distinct: bool = False  # keep each question once (held-out sets)
    level: int | None = None  # curriculum level of these prompts (their ids then read "<task>@<level>/...")
    budget: PromptBudget | None = None  # prompts that do not fit are left out, counted in ``overlong``

    def __post_init__(self) -> None:
        import reasoning_gym

        check_task(self.task, self.config)
        # Item i depends only on (seed, i), so generating more items keeps the first ones: generate
        # 4x when some will be dropped, then keep the first ``size`` that remain.
        factor = 4 if self.exclude_questions or self.distinct else 1
        dataset = reasoning_gym.create_dataset(self.task, **self.config, size=factor * self.size, seed=self.seed)
        entries, seen, self.overlong = [], set(), 0
        for entry in dataset:
            q = entry["question"]
            if q in self.exclude_questions or (self.distinct and q in seen):
                continue
            seen.add(q)
            if self.budget is not None and not self.budget.fits(self.prompt.messages(q)):
                self.overlong += 1
                continue
            entries.append(entry)
            if len(entries) == self.size:
                break
        if not entries:
            why = (f"every prompt is longer than {self.budget.max_tokens} tokens ({self.budget.why})" if self.overlong
                   else "all generated questions are held out; use a harder config or a smaller data.val_size")
            raise ValueError(f"no {self.split} prompts left for task {self.task!r} with config {self.config}: {why}")
        self.prompts = [self._to_prompt(i, e) for i, e in enumerate(entries)]

    def _to_prompt(self, index: int, entry: dict[str, Any]) -> Prompt:
        name = self.task if self.level is None else f"{self.task}@{self.level}"
        return Prompt(id=f"{name}/{self.split}/{index}", messages=self.prompt.messages(entry["question"]),
                      task=self.task, answer_kind="text", level=self.level or 0, answer=str(entry["answer"]),
                      metadata={"entry": entry})

    @property
    def name(self) -> str:
        """The prompts' task name (as :class:`DatasetSource` has one)."""
        return self.task

    def questions(self) -> frozenset[str]:
        return frozenset(p.metadata["entry"]["question"] for p in self.prompts)

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, i: int) -> Prompt:
        return self.prompts[i]


@checked
@dataclass
class DatasetSource:
    """Prompts from a file or data set (``srtlab.data.files.read_rows``): jsonl, parquet, a saved
    ``datasets`` folder, a built-in set (``math12k``, ``math500``, ``gsm8k_train``, ...) or a hub name.

    It takes the arguments of :class:`ReasoningGymSource` (``config`` is a row filter, e.g. MATH's
    ``{level: 3}``), so the datamodule draws held-out and training prompts, and curriculum levels, from
    either kind the same way. With ``seed=None`` rows keep the file's order; with a seed, a seeded
    permutation of them (the datamodule's draws). ``split="val"`` reads ``val_path`` when it is given
    (MATH-500 for MATH-12k, GSM8K's test split for its train split), else ``path``.
    """

    path: Annotated[str, text()]
    config: Annotated[dict[str, Any], mapping()] = field(default_factory=dict)  # keep rows whose fields equal these
    size: Annotated[int | None, integer(1, null=True)] = None  # the first ``size`` rows left after filtering, or all
    seed: Annotated[int | None, integer(0, null=True)] = None
    split: Annotated[str, text()] = "test"
    prompt: PromptFormat = field(default_factory=PromptFormat)
    exclude_questions: frozenset[str] = frozenset()  # questions to leave out (the held-out set's)
    distinct: Annotated[bool, boolean()] = False  # keep each question once (held-out sets)
    level: Annotated[int | None, integer(0, null=True)] = None  # curriculum level (ids "<name>@<level>/...")
    name: Annotated[str | None, text(null=True)] = None  # the prompts' task name (default: the file's stem)
    val_path: Annotated[str | None, text(null=True)] = None
    answer_kind: Annotated[str, choice(ANSWER_KINDS)] = "math"
    question_field: Annotated[str | None, text(null=True)] = None  # None: question / problem / prompt
    answer_field: Annotated[str | None, text(null=True)] = None  # None: answer, the last \\boxed{} of solution, none
    budget: PromptBudget | None = None  # prompts that do not fit are left out, counted in ``overlong``

    def __post_init__(self) -> None:
        path, part = self._rows_to_read()
        key = "val_path" if self.split == "val" and self.val_path else "path"  # the key that names the file
        self.name = self.name or Path(self.path).stem
        fields = FieldMap(self.question_field, self.answer_field)
        try:
            rows = read_rows(path, part)
        except RowsError as err:
            fail(type(self), [problem(key, path, str(err))])
        fail(type(self), fields.problems(rows.columns, repr(path)))
        fail(type(self), [problem(key, path, found) for found in fields.row_problems(rows)])
        if self.config:
            rows = rows.filter(self._matches(rows.columns, repr(path)))
        questions = [fields.question_of(row) for row in rows.records]
        self.duplicates = len(questions) - len(set(questions))  # rows repeating an earlier row's question
        order = range(len(questions)) if self.seed is None else torch.randperm(
            len(questions), generator=torch.Generator().manual_seed(self.seed)).tolist()
        kept, seen, self.overlong = [], set(), 0
        for i in order:
            q = questions[i]
            if q in self.exclude_questions or (self.distinct and q in seen):
                continue
            seen.add(q)
            if self.budget is not None and not self.budget.fits(self.prompt.messages(q)):
                self.overlong += 1
                continue
            kept.append((q, fields.gold_of(rows.records[i]), rows.records[i]))
            if len(kept) == self.size:
                break
        if not kept and self.overlong:
            longer = "its one row is longer" if self.overlong == 1 else f"all {self.overlong} rows are longer"
            fail(type(self), [problem(key, path, f"rows whose prompt fits in {self.budget.max_tokens} tokens "
                                                 f"({self.budget.why}); {longer}")])
        if not kept:
            raise ValueError(f"no {self.split} prompts in {path!r} with data.task_config={self.config} once the "
                             f"held-out questions are left out")
        self.prompts = [self._to_prompt(i, *k) for i, k in enumerate(kept)]

    def _rows_to_read(self) -> tuple[str, str]:
        """(path, split of a saved DatasetDict or hub set): held-out rows come from ``val_path``'s test split,
        or without one from the training rows (which then leave them out); others from ``split``."""
        if self.split != "val":
            return self.path, self.split
        return (self.val_path, "test") if self.val_path else (self.path, "train")

    def _matches(self, columns: list[str], where: str) -> Callable[[dict[str, Any]], bool]:
        missing = [k for k in self.config if k not in columns]
        if missing:
            raise ValueError(f"data.task_config filters on {missing}, not columns of {where}; columns: {columns}")
        return lambda row: all(row.get(k) == v for k, v in self.config.items())

    def _to_prompt(self, index: int, question: str, answer: str | None, row: dict[str, Any]) -> Prompt:
        name = self.name if self.level is None else f"{self.name}@{self.level}"
        return Prompt(id=f"{name}/{self.split}/{index}", messages=self.prompt.messages(question), task=self.name,
                      answer_kind=self.answer_kind, level=self.level or 0, answer=answer,
                      metadata={"row": row, "question": question})

    def questions(self) -> frozenset[str]:
        return frozenset(p.metadata["question"] for p in self.prompts)

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, i: int) -> Prompt:
        return self.prompts[i]


JsonlSource = DatasetSource  # the name it had when it read jsonl held-out sets only


def reads_builtins_only(source: Callable[..., DatasetSource]) -> bool:
    """Whether a ``DatasetSource`` partial reads built-in sets only (``path`` and ``val_path``)."""
    keywords = getattr(source, "keywords", {})
    return keywords.get("path") in BUILTINS and keywords.get("val_path") in (None, *BUILTINS)


def read_labels(path: str | Path) -> dict[str, dict[str, Any]]:
    """The kept rows of a teacher labels file (``python -m srtlab label``), by prompt id.

    Each row has at least ``id``, ``question`` and ``label`` (the teacher's majority answer, or null);
    rows with ``"kept": false`` (vote share below the labelling run's ``min_share``) are left out.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"labels file {str(path)!r} does not exist; write it first with "
                                "`python -m srtlab label` (same data settings and seed)")
    rows = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
    return {row["id"]: row for row in rows if row.get("kept", True)}


def keep_labelled(prompts: list[Prompt], labels: dict[str, dict[str, Any]], path: str) -> list[Prompt]:
    """The prompts whose ids are in ``labels``, checking that each labelled question is the prompt's own
    (a labels file made with other data settings or another seed would silently mismatch otherwise)."""
    if not labels:
        raise ValueError(f"labels file {path!r} keeps no prompt (no label, or every vote share below min_share)")
    by_id = {p.id: p for p in prompts}
    missing = [i for i in labels if i not in by_id]
    if missing:
        raise ValueError(f"labels file {path!r} has prompt ids the training set lacks (e.g. {missing[0]!r}): "
                         "it was written with other data settings; label again with these")
    for i, row in labels.items():
        own = [m["content"] for m in by_id[i].messages if m.get("role") == "user"][-1]  # the question asked
        if row.get("question") is not None and row["question"] != own:
            raise ValueError(f"labels file {path!r}: prompt {i!r} has another question than the training set's; "
                             "it was written with other data settings or seed; label again with these")
    return [p for p in prompts if p.id in labels]
