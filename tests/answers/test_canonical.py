"""Canonical forms: text normalisation, math equivalence through math-verify, and clustering."""

import threading

import pytest

from srtlab.answers.canonical import (
    ScoreBudget,
    ScoreStats,
    answers_equivalent,
    cluster_answers,
    normalize_text,
    parse_answer,
    parsed_equivalent,
)

ADVERSARIAL = [  # each ran math-verify to its 5 s timeout, or hung in C, before the pre-checks
    r"2^{2^{2^{30}}}", r"10^{10^{10^{10}}}", "9!!!!!!!!!!!!", "\\frac{" * 5000,
    "(" * 30 + "1" + ")" * 30, r"3^{10^{9}}", r"\sum_{i=1}^{10^{10}} i", "1" * 100_000,
]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  Hello   World. ", "hello world"),
        ("3.0", "3"),
        ("03", "3"),
        ("1,000", "1000"),
        ("1,000.50", "1000.5"),
        ("-0.50", "-0.5"),
        ("+7", "7"),
        ("100", "100"),
        ("-0", "0"),
        ("3.", "3"),
        ("1,2", "1,2"),  # not a well-formed thousands group: a list, left alone
        ("v3.0", "v3.0"),  # numbers are normalised only when they are the whole string
    ],
)
def test_normalize_text(raw: str, expected: str) -> None:
    assert normalize_text(raw) == expected


def test_math_forms_are_equivalent() -> None:
    assert answers_equivalent("1/2", "0.5", "math")
    assert answers_equivalent(r"\frac{1}{2}", "1/2", "math")
    assert answers_equivalent("1,000", "1000", "math")
    assert not answers_equivalent("1/2", "0.25", "math")


def test_text_kind_does_not_do_math() -> None:
    assert answers_equivalent(" Paris. ", "paris", "text")
    assert not answers_equivalent("1/2", "0.5", "text")


def test_math_falls_back_to_text_when_parsing_fails() -> None:
    # "" parses to nothing; text equality then decides
    assert not answers_equivalent("", "1", "math")
    assert answers_equivalent("  ", "", "math")


def test_cluster_math_votes_equal_forms_together() -> None:
    answers = ["1/2", "3", None, "0.5", r"\frac{1}{2}", "03", "7"]
    assert cluster_answers(answers, "math") == [0, 1, None, 0, 0, 1, 2]


def test_cluster_text_in_order_of_first_appearance() -> None:
    answers = ["b", "A", None, "a.", "B ", "c"]
    assert cluster_answers(answers, "text") == [0, 1, None, 1, 0, 2]
    assert cluster_answers([None, None], "text") == [None, None]
    assert cluster_answers([], "math") == []


def test_unknown_kind_is_rejected() -> None:
    with pytest.raises(ValueError, match="'code'"):
        cluster_answers(["1"], "code")


def test_math_vote_puts_equivalent_forms_together() -> None:
    answers = ["1/2", "0.5", r"\frac{1}{2}", r"\dfrac{1}{2}", r"\tfrac12", " 1 / 2 ",
               r"\left( 1,2 \right)", "(1,2)", "( 1 , 2 )",
               r"10\text{ cm}", "10", r"10 \text{ cm}",
               r"2\sqrt{2}", r"\sqrt{8}",
               r"[1, 3)", r"\left[1,3\right)"]
    ids = cluster_answers(answers, "math")
    assert ids == [0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 4, 4]


def test_math_vote_keeps_distinct_answers_apart() -> None:
    answers = ["1/2", "1/3", "(1,2)", "[1,2]", "(2,1)", "[1,3)", "(1,3]", r"\sqrt{2}", "2", "-2", "0.05"]
    assert cluster_answers(answers, "math") == list(range(len(answers)))


def test_adversarial_group_is_refused_before_sympy_and_counted() -> None:
    stats = ScoreStats()
    assert cluster_answers(ADVERSARIAL, "math", stats=stats) == [None] * 8  # no answer
    assert stats == ScoreStats(refused=8, timeouts=0, text_only=0)
    assert stats.dropped == 8


def test_adversarial_answers_next_to_good_ones() -> None:
    stats = ScoreStats()
    answers = ["3", ADVERSARIAL[0], "03", None, ADVERSARIAL[2], r"\frac{6}{2}", ADVERSARIAL[0]]
    assert cluster_answers(answers, "math", stats=stats) == [0, None, 0, None, None, 0, None]
    assert stats.refused == 2  # a repeated answer is scored once


def test_math_vote_works_in_a_thread() -> None:
    out: dict[str, list[int | None]] = {}
    worker = threading.Thread(target=lambda: out.update(ids=cluster_answers(["1/2", "0.5", ADVERSARIAL[1]], "math")))
    worker.start()
    worker.join()
    assert out["ids"] == [0, 0, None]


def test_slow_answer_past_its_budget_is_no_answer() -> None:
    # a legal answer whose parse takes ~0.1 s, given a 1 ms budget: timed out, counted, no answer
    slow = r"\frac{(x+1)(x+2)}{(x+3)((x+4)(x+5))}"
    stats = ScoreStats()
    assert cluster_answers(["1", slow], "math", stats=stats, budget=ScoreBudget(answer_s=0.001)) == [0, None]
    assert stats.timeouts >= 1 and stats.dropped >= 1
    parsed = parse_answer(slow, "math", stats=stats, budget=ScoreBudget(answer_s=0.001))
    assert parsed.dropped and not parsed_equivalent(parsed, parse_answer("1", "math"))


def test_spent_group_budget_falls_back_to_text() -> None:
    stats = ScoreStats()
    answers = ["1/2", "0.5", "1/2 ", "0.50"]
    ids = cluster_answers(answers, "math", stats=stats, budget=ScoreBudget(group_s=1e-9))
    assert ids == [0, 1, 0, 1]  # text keys only: "0.5" == "0.50", but no math
    assert stats == ScoreStats(refused=0, timeouts=0, text_only=3)


def test_budget_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match=r"ScoreBudget.answer_s=0: expected a number of seconds > 0"):
        ScoreBudget(answer_s=0)


def test_gold_comparison_of_adversarial_answer_is_false_and_bounded() -> None:
    stats = ScoreStats()
    assert not answers_equivalent("4", ADVERSARIAL[0], "math", stats=stats)
    assert answers_equivalent(ADVERSARIAL[0], ADVERSARIAL[0], "math")  # identical text still matches
    assert stats.refused == 1


@pytest.mark.parametrize("kind", ["math", "text"])
def test_format_characters_are_invisible_in_votes_and_against_gold(kind) -> None:
    """A right-to-left mark and a zero-width joiner around 4 (category Cf) read as 4."""
    from srtlab.answers.extract import extract_answer
    from srtlab.answers.gold import is_correct
    from srtlab.types import Prompt

    marked = "\u200f4\u200d"
    assert extract_answer(f"Answer: {marked}") == "4" and extract_answer(rf"\boxed{{{marked}}}") == "4"
    assert cluster_answers(["4", marked, "5"], kind) == [0, 0, 1]  # one vote with 4
    assert normalize_text("1\u200b000") == "1000"
    gold = lambda answer: Prompt(id="p", messages=[], task="t", answer_kind=kind, answer=answer)
    assert is_correct(marked, gold("4")) and is_correct("4", gold(marked))
    assert not is_correct(marked, gold("5"))
