import json

import pytest

from srtlab.data.datamodule import PromptDataModule
from srtlab.data.prompts import PromptFormat
from srtlab.data.sources import JsonlSource


def test_jsonl_source_reads_math_rows_and_gsm8k_answers(tmp_path):
    f = tmp_path / "set.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in [
        {"problem": "What is 1/2 + 0?", "answer": "\\frac{1}{2}"},
        {"question": "Tom has 3 apples...", "answer": "He has 3+2=5.\n#### 5"},
    ]))
    src = JsonlSource(str(f), prompt=PromptFormat(answer_style="boxed"))
    assert len(src) == 2 and src.name == "set"
    assert src[0].answer == "\\frac{1}{2}" and src[0].answer_kind == "math"
    assert src[1].answer == "5"
    assert src[0].messages == [{"role": "user", "content": "What is 1/2 + 0?"}]
    assert JsonlSource(str(f), size=1).prompts[0].id == "set/test/0"


def test_missing_jsonl_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        JsonlSource(str(tmp_path / "nope.jsonl"))


def test_extra_held_out_sets_get_their_own_loader(tmp_path):
    f = tmp_path / "m.jsonl"
    f.write_text(json.dumps({"problem": "1+1?", "answer": "2"}))
    dm = PromptDataModule("letter_counting", PromptFormat(), {"min_words": 1, "max_words": 2}, train_size=20,
                          val_size=3, val_batch_size=2, extra_val={"m": lambda: JsonlSource(str(f))})
    dm.setup()
    assert dm.val_names == ["letter_counting", "m"]
    loaders = dm.val_dataloader()
    assert [len(list(dl)) for dl in loaders] == [2, 1]
    assert next(iter(loaders[1])).source == "m"
