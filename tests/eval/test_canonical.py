"""Canonical forms: text normalisation, math equivalence through math-verify, and clustering."""

import pytest

from srtlab.eval.canonical import answers_equivalent, cluster_answers, normalize_text


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
