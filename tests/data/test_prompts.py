import pytest

from srtlab.data.prompts import PromptFormat


def test_shots_become_earlier_turns_and_instruction_is_appended():
    fmt = PromptFormat(instruction="End with Answer:", system="Be brief.",
                       shots=[{"question": "1+1?", "response": "Answer: 2"}])
    assert fmt.messages("2+2?") == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "1+1?\nEnd with Answer:"},
        {"role": "assistant", "content": "Answer: 2"},
        {"role": "user", "content": "2+2?\nEnd with Answer:"},
    ]


def test_unknown_answer_style_is_named():
    with pytest.raises(ValueError, match="'boxd'.*accepted"):
        PromptFormat(answer_style="boxd")
