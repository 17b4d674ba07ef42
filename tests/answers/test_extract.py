"""Answer extraction: each style on its own, the auto order, and the cleaning rules."""

import pytest

from srtlab.answers.extract import ANSWER_STYLES, extract_answer


@pytest.mark.parametrize(
    ("text", "style", "expected"),
    [
        (r"so the result is \boxed{\frac{1}{2}} done", "boxed", r"\frac{1}{2}"),
        (r"\boxed{\{1, \{2\}\}}", "boxed", r"\{1, \{2\}\}"),  # nested braces
        (r"first \boxed{1}, then \boxed{2}, finally \boxed{3}", "boxed", "3"),  # several boxes -> last
        (r"\fbox{42}", "boxed", "42"),
        (r"\boxed{1} and \fbox{x^{2}}", "boxed", "x^{2}"),
        (r"\boxed{7} then \boxed{8", "boxed", None),  # last box never closed (truncated)
        ("no answer here", "boxed", None),
        ("<answer> 12 </answer> ... <answer>13</answer>", "answer_tag", "13"),
        ("<ANSWER>\nmulti\nline\n</answer>", "answer_tag", "multi\nline"),
        ("<answer>unclosed", "answer_tag", None),
        ("Answer: 3.", "answer_line", "3"),
        ("answer: 1\nthinking more\nFinal ANSWER: two words\nextra", "answer_line", "two words"),
        ("**Answer:** $5$", "answer_line", "5"),
        ('Answer: "cat"', "answer_line", "cat"),
        ("Answer:   \nnext line", "answer_line", None),  # empty after cleaning
        ("Answer: 1, 2, 3, ...", "answer_line", "1, 2, 3, ..."),  # an ellipsis is kept
        ("nothing at all", "answer_line", None),
    ],
)
def test_extract_styles(text: str, style: str, expected: str | None) -> None:
    assert extract_answer(text, style) == expected


def test_auto_prefers_boxed_then_tag_then_line() -> None:
    text = r"Answer: 1 <answer>2</answer> \boxed{3}"
    assert extract_answer(text) == "3"
    assert extract_answer("Answer: 1 <answer>2</answer>") == "2"
    assert extract_answer("Answer: 1") == "1"
    assert extract_answer("just prose") is None


def test_auto_skips_a_style_that_finds_only_emptiness() -> None:
    assert extract_answer(r"\boxed{ $ $ } Answer: 9") == "9"


def test_cleaning_rules() -> None:
    assert extract_answer(r"\boxed{ **$x+1$.** }") == "x+1"
    assert extract_answer("<answer>'yes'</answer>") == "yes"
    assert extract_answer(r"\boxed{}") is None


def test_unknown_style_names_it_and_the_accepted_ones() -> None:
    with pytest.raises(ValueError, match="'last_line'.*auto, boxed, answer_tag, answer_line"):
        extract_answer("Answer: 1", "last_line")
    assert ANSWER_STYLES == ("auto", "boxed", "answer_tag", "answer_line")


def test_large_inputs_are_read_correctly() -> None:
    # correctness on 1 MB texts (their cost is measured in experiments/bench_vote.py, not here)
    filler = "reasoning step {x}. " * 50_000
    assert extract_answer(filler + r"so \boxed{\frac{1}{\sqrt{2}}}" + filler) == r"\frac{1}{\sqrt{2}}"
    assert extract_answer("<answer>" * 100_000 + "7</answer>") == "7"
    assert extract_answer("<answer>1</answer> stray </answer>") == "1"
    assert extract_answer("answer: x " * 100_000) == "x"
    assert extract_answer(r"\boxed{" + "$" * 1_000_000 + "}") is None  # too long: no answer


def test_overlong_answers_are_no_answer() -> None:
    assert extract_answer(r"\boxed{" + "1" * 512 + "}") == "1" * 512
    assert extract_answer(r"\boxed{" + "1" * 513 + "}") is None
    assert extract_answer(r"\boxed{" + "1" * 513 + "} Answer: 2") == "2"  # auto moves on to the next style
    assert extract_answer("<answer>" + "a" * 600 + "</answer>", "answer_tag") is None
    assert extract_answer("Answer: " + "a" * 600, "answer_line") is None
    assert extract_answer("Answer: " + "a" * 600, "answer_line", max_chars=1000) == "a" * 600


def test_cleaning_many_layers() -> None:
    assert extract_answer(r"\boxed{" + "**$" * 50 + "5" + "$**" * 50 + "}") == "5"
    assert extract_answer("Answer: " + "'" * 200) is None
