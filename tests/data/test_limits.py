"""What fits the model: prompts are counted as the engine renders them, those that leave no room for the
completion are left out and counted, the model's context is read from its config.json, and a file's rows are
read with their line numbers (duplicates kept and counted, numbers taken as gold answers)."""

import functools
import json
import logging

import pytest

from srtlab.data.datamodule import PromptDataModule
from srtlab.data.files import FieldMap, RowsError, read_rows
from srtlab.data.limits import limit_problems, prompt_limit
from srtlab.data.prompts import PromptBudget, PromptFormat, Shot, render_messages
from srtlab.data.sources import DatasetSource
from srtlab.models.load import ModelSettings, context_length


def _rows(n: int, start: int = 0) -> list[dict]:
    return [{"question": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(start, start + n)]


def _jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_prompts_are_counted_as_the_engine_renders_them(tiny_model_and_tokenizer):
    from srtlab.rollout import engine

    _, tokenizer = tiny_model_and_tokenizer
    fmt = PromptFormat(instruction="Answer: N", shots=[Shot("1 + 1?", "Answer: 2")], system="Be brief.")
    conversations = [fmt.messages("What is 3 + 4?"), PromptFormat().messages("x")]
    assert engine.render_messages is render_messages  # one function: what the data counts is what the engines send
    n = len(render_messages(tokenizer, conversations[:1])[0])
    assert PromptBudget(tokenizer, n, "test").fits(conversations[0])
    assert not PromptBudget(tokenizer, n - 1, "test").fits(conversations[0])


def test_overlong_prompts_are_left_out_and_counted_and_a_5mb_question_never_reaches_the_model(
        tiny_model_dir, tmp_path, caplog):
    huge = {"question": "x" * 5_000_000, "answer": "1"}
    long = {"question": "y" * 600, "answer": "2"}  # 600 characters: over the 1024 - 512 tokens left
    path = _jsonl(tmp_path / "rows.jsonl", [*_rows(30), huge, long, *_rows(10, 30)])
    source = functools.partial(DatasetSource, path=path)
    dm = PromptDataModule(None, PromptFormat(), source=source, batch_size=2, train_size=None, val_size=4,
                          model=ModelSettings(path=str(tiny_model_dir)), max_new_tokens=512, val_max_new_tokens=8)
    assert dm.budget.max_tokens == 1024 - 512 and "less rollout.sampling.max_new_tokens, 512" in dm.budget.why
    with caplog.at_level(logging.WARNING, logger="srtlab.data.datamodule"):
        dm.setup()
    questions = {p.metadata["question"] for p in dm.train} | {p.metadata["question"] for p in dm.val["rows"]}
    assert len(questions) == 40 and huge["question"] not in questions and long["question"] not in questions
    left_out = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert sum(int(m.split()[1]) for m in left_out) == 2, left_out
    assert "longer than 512 tokens (the model's context, 1024, less rollout.sampling.max_new_tokens, 512)" \
        in left_out[0]


def test_reasoning_gym_prompts_are_counted_at_setup(tiny_model_dir, caplog):
    """A task's prompts exist only at setup: those longer than data.max_prompt_tokens are left out there."""
    dm = PromptDataModule("letter_counting", PromptFormat(), {"min_words": 1, "max_words": 6}, batch_size=2,
                          train_size=30, val_size=4, model=ModelSettings(path=str(tiny_model_dir)),
                          max_prompt_tokens=100, max_new_tokens=8)
    assert dm.budget is None  # nothing was read up front
    with caplog.at_level(logging.WARNING, logger="srtlab.data.datamodule"):
        dm.setup()
    tokenizer = dm.budget.tokenizer
    lengths = [len(ids) for ids in render_messages(tokenizer, [p.messages for p in dm.train])]
    assert max(lengths) <= 100 and len(dm.train) == 30 and "train prompts of letter_counting left out" in caplog.text


def test_the_context_is_read_from_config_json_without_loading_the_model(tiny_model_dir, tmp_path, monkeypatch):
    size, where = context_length(ModelSettings(path=str(tiny_model_dir)))
    assert size == 1024 and where == tiny_model_dir / "config.json"
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text('{"text_config": {"n_positions": 2048}}')
    (gpt2 / "tokenizer.json").write_text("{}")
    assert context_length(ModelSettings(path=str(gpt2)))[0] == 2048
    monkeypatch.setenv("SRTLAB_CACHE", str(tmp_path / "empty"))  # the built-in, not prepared yet: unknown
    assert context_length(ModelSettings()) is None and not (tmp_path / "empty").exists()


def test_limits_name_both_numbers():
    context = (1024, "config.json")
    assert limit_problems(context, None, {"max_new_tokens": 100000000}) == [
        ("max_new_tokens", 100000000, "an integer below 1024, the model's context (max_position_embeddings in "
                                      "config.json), so that a prompt fits beside the completion")]
    (found,) = limit_problems(context, 1000, {"max_new_tokens": 32, "val_max_new_tokens": 64})
    assert found[:2] == ("max_prompt_tokens", 1000) and found[2].startswith("at most 960: the model's context, 1024")
    assert limit_problems(context, 960, {"max_new_tokens": 64}) == [] and limit_problems(None, 5, {}) == []
    assert prompt_limit(None, context, {"max_new_tokens": 32, "val_max_new_tokens": 64})[0] == 960
    assert prompt_limit(7, context, {}) == (7, "data.max_prompt_tokens") and prompt_limit(None, None, {}) is None


def test_rows_keep_their_line_numbers_and_numbers_are_gold_answers(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"question": "a?", "answer": 4}\n\n{"question": "b?", "answer": 2.5, "level": 1}\n')
    rows = read_rows(str(path))
    assert rows.places == ["line 1", "line 3"] and rows.columns == ["question", "answer", "level"]
    assert FieldMap().row_problems(rows) == [] and [p.answer for p in DatasetSource(str(path))] == ["4", "2.5"]
    listed = tmp_path / "rows.json"
    listed.write_text('[{"question": "a?"},\n {"question": 5}]')
    assert FieldMap().row_problems(read_rows(str(listed))) == [
        "rows whose question is a non-empty string (row 2: question is 5)"]
    listed.write_text('[{"question": "a?"},\n {"question": }]')
    with pytest.raises(RowsError, match=r"\(the file is not JSON: Expecting value at line 2 column 15\)"):
        read_rows(str(listed))
    path.write_bytes(b'{"question": "a?"}\n{"question": "\xff"}\n')
    with pytest.raises(RowsError, match=r"UTF-8 text \(line 2 is not\)"):
        read_rows(str(path))


def test_duplicate_questions_are_kept_and_counted_in_the_log(tmp_path, caplog):
    """Kept, not dropped: repeating a row is how a file weights a question; the warning says it happened."""
    path = _jsonl(tmp_path / "dup.jsonl", _rows(20) + _rows(5))
    dm = PromptDataModule(None, PromptFormat(), source=functools.partial(DatasetSource, path=path), batch_size=2,
                          train_size=None, val_size=4)
    with caplog.at_level(logging.WARNING, logger="srtlab.data.datamodule"):
        dm.setup()
    assert "data: 5 rows of dup repeat an earlier row's question; they are kept" in caplog.text
    held = {p.metadata["question"] for p in dm.val["dup"]}
    assert len(dm.train) == 25 - sum(r["question"] in held for r in _rows(20) + _rows(5))
