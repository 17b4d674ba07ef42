"""Canonical forms of answers, so that equal answers vote together and match their gold answer.

Two kinds (``Prompt.answer_kind``): ``"math"`` answers are compared with math-verify (so ``1/2``, ``0.5``,
``\\frac{1}{2}``, ``\\dfrac{1}{2}``, ``\\left( 1,2 \\right)`` and ``(1,2)`` are equal), ``"text"`` answers by
string normalisation (:func:`normalize_text`).

Scoring model text has a bounded cost, in any thread (see :mod:`srtlab.answers.bounds`): a math answer is
refused before parsing when it is too long or nested too deep, and before comparing when it would make
sympy build huge numbers; parsing and comparing one answer run under ``ScoreBudget.answer_s`` and one
group under ``ScoreBudget.group_s``. A refused or timed-out answer counts as no answer and is counted in
:class:`ScoreStats`. math-verify's own ``SIGALRM`` timeouts are switched off (they work only in the main
thread, and cannot interrupt the C big-integer arithmetic that the pre-checks keep out).
"""

from __future__ import annotations

import functools
import logging
import re
import time
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from math_verify import parse, verify

from srtlab.answers.bounds import bounded, expression_problem, latex_problem
from srtlab.answers.extract import without_format_chars

ANSWER_KINDS: tuple[str, ...] = ("text", "math")

# A whole-string number: optional sign, digits with optional well-formed thousands commas, optional
# decimals. "1,2" is not a number (it reads as a list), "1,000" is.
_NUMBER = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|[+-]?\.\d+")
_SPACES = re.compile(r"\s+")


def normalize_text(answer: str) -> str:
    """Drop format characters (zero-width, direction marks), strip, collapse whitespace, lowercase, drop one
    trailing ``.``, and normalise whole-string numbers.

    Numbers lose leading zeros, trailing decimal zeros, thousands commas and a ``+`` sign:
    ``"03"`` -> ``"3"``, ``"3.0"`` -> ``"3"``, ``"1,000"`` -> ``"1000"``, ``"-0.50"`` -> ``"-0.5"``.
    """
    text = _SPACES.sub(" ", without_format_chars(answer).strip()).lower()
    if text.endswith("."):
        text = text[:-1].rstrip()
    if _NUMBER.fullmatch(text):
        try:
            value = Decimal(text.replace(",", ""))
        except InvalidOperation:  # pragma: no cover - the pattern only admits valid decimals
            return text
        if value == 0:
            return "0"
        return format(value.normalize(), "f")
    return text


@dataclass
class ScoreStats:
    """Counters of bounded-cost scoring, accumulated over calls (pass one per step and log it).

    ``dropped`` (refused + timed out) are answers treated as no answer: log it as
    ``train/score_timeouts``.
    """

    refused: int = 0  # a pre-check refused the answer (too long, too deep, too large numbers)
    timeouts: int = 0  # parsing or comparing the answer ran past ScoreBudget.answer_s
    text_only: int = 0  # the group's budget was spent: compared by normalised text only (still an answer)

    @property
    def dropped(self) -> int:
        """Answers treated as no answer because scoring them would cost too much."""
        return self.refused + self.timeouts


@dataclass(frozen=True)
class ScoreBudget:
    """Wall-clock budgets (seconds) for math scoring: one answer's parse and comparisons, one group."""

    answer_s: float = 1.0
    group_s: float = 5.0

    def __post_init__(self) -> None:
        for key in ("answer_s", "group_s"):
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"ScoreBudget.{key}={value!r}: expected a number of seconds > 0")


DEFAULT_BUDGET = ScoreBudget()


@dataclass(frozen=True)
class ParsedAnswer:
    """An answer with its comparison keys computed once (parsing is the slow part of comparing)."""

    text: str  # the answer as given
    key: str  # normalize_text(text)
    math: tuple[Any, ...]  # math-verify's parse of the answer; empty for "text" or when parsing failed
    dropped: bool = False  # refused or timed out: equal to nothing but its own exact text


def parse_answer(
    answer: str, kind: str, *, stats: ScoreStats | None = None, budget: ScoreBudget = DEFAULT_BUDGET
) -> ParsedAnswer:
    """Precompute what :func:`parsed_equivalent` needs; ``kind`` is ``"text"`` or ``"math"``.

    A math answer that a pre-check refuses, or whose parse runs past ``budget.answer_s``, comes back
    with ``dropped=True`` and is counted in ``stats``. Safe in any thread.
    """
    _check_kind(kind)
    if kind == "text":
        return ParsedAnswer(text=answer, key=normalize_text(answer), math=())
    _warm_up()
    finished, parsed = bounded(budget.answer_s, _parse_math, answer, stats)
    return parsed if finished else _timed_out(answer, stats)


def parsed_equivalent(
    a: ParsedAnswer, b: ParsedAnswer, *, stats: ScoreStats | None = None, budget: ScoreBudget = DEFAULT_BUDGET
) -> bool:
    """Whether two parsed answers are equal: math-verify when both parsed, else normalised text equality.

    ``a`` plays the role of math-verify's gold answer (its comparison is not fully symmetric). A
    dropped answer equals only its own exact text; a comparison past ``budget.answer_s`` is False and
    counted in ``stats.timeouts``. Safe in any thread.
    """
    if not (a.math and b.math):
        return _same(a, b)  # text only: no time limit needed
    finished, same = bounded(budget.answer_s, _same, a, b)
    if not finished:
        _count(stats, "timeouts")
    return bool(same)


def answers_equivalent(a: str, b: str, kind: str, *, stats: ScoreStats | None = None) -> bool:
    """Whether ``a`` and ``b`` are the same answer; ``kind`` is ``"text"`` or ``"math"``.

    ``"math"`` uses math-verify (``a`` as its gold side), falling back to text equality when either
    side does not parse; bounded as :func:`parse_answer` and :func:`parsed_equivalent` are.
    """
    return parsed_equivalent(parse_answer(a, kind, stats=stats), parse_answer(b, kind, stats=stats), stats=stats)


def cluster_answers(
    answers: list[str | None],
    kind: str,
    *,
    stats: ScoreStats | None = None,
    budget: ScoreBudget = DEFAULT_BUDGET,
) -> list[int | None]:
    """Cluster ids of ``answers`` in order of first appearance (the first distinct answer gets 0).

    None answers get None. ``"text"`` groups by :func:`normalize_text` (O(G)). ``"math"`` parses each
    distinct answer once and compares it with the first member of every existing cluster (math-verify,
    the representative as gold side). Each answer's parse and comparisons run under
    ``budget.answer_s``; an answer refused by a pre-check or past that budget gets None (no answer).
    Once the group has spent ``budget.group_s``, the remaining answers are compared by normalised text
    only. ``stats``, when given, accumulates the counts. Safe in any thread.
    """
    _check_kind(kind)
    if kind == "text":
        keys: dict[str, int] = {}
        return [None if a is None else keys.setdefault(normalize_text(a), len(keys)) for a in answers]
    deadline = time.perf_counter() + budget.group_s
    representatives: list[ParsedAnswer] = []
    seen: dict[str, int | None] = {}  # stripped text -> its cluster (None: dropped); repeats cost nothing
    ids: list[int | None] = []
    for answer in answers:
        if answer is None:
            ids.append(None)
            continue
        text = answer.strip()
        if text not in seen:
            seen[text] = _place(answer, representatives, deadline, stats, budget)
        ids.append(seen[text])
    return ids


def _place(
    answer: str, representatives: list[ParsedAnswer], deadline: float, stats: ScoreStats | None,
    budget: ScoreBudget,
) -> int | None:
    """The cluster of a new distinct math answer (appending a representative when it starts one)."""
    left = deadline - time.perf_counter()
    if left <= 0:
        _count(stats, "text_only")
        parsed = ParsedAnswer(text=answer, key=normalize_text(answer), math=())
        cluster = next((i for i, r in enumerate(representatives) if r.key == parsed.key), None)
    else:
        _warm_up()
        finished, found = bounded(min(budget.answer_s, left), _parse_and_find, answer, representatives, stats)
        if not finished:
            _timed_out(answer, stats)
            return None
        parsed, cluster = found
        if parsed.dropped:
            return None
    if cluster is None:
        representatives.append(parsed)
        cluster = len(representatives) - 1
    return cluster


def _parse_and_find(answer: str, representatives: list[ParsedAnswer],
                    stats: ScoreStats | None) -> tuple[ParsedAnswer, int | None]:
    """Parse a new answer and find the first representative equal to it (None: a new cluster)."""
    parsed = _parse_math(answer, stats)
    if parsed.dropped:
        return parsed, None
    return parsed, next((i for i, r in enumerate(representatives) if _same(r, parsed)), None)


@functools.cache
def _warm_up() -> None:
    """Parse and compare once, with no time limit, before the first bounded call: the first parse in a process
    builds the LaTeX parser's state and imports sympy's lazy modules (0.1 s here, seconds on a cold, loaded
    machine), and a time limit stopping that half-way would leave it half-built for every later answer."""
    _math_equal(_parse_math("\\frac{1}{2}", None), _parse_math("0.5", None))


def _same(a: ParsedAnswer, b: ParsedAnswer) -> bool:
    """:func:`parsed_equivalent` without a time limit of its own (the caller holds one)."""
    if a.text.strip() == b.text.strip():
        return True
    if a.dropped or b.dropped:
        return False
    if a.math and b.math:
        return _math_equal(a, b)
    return a.key == b.key


def _parse_math(answer: str, stats: ScoreStats | None) -> ParsedAnswer:
    """Pre-check, parse (no time limit of its own) and pre-check the parse; dropped when refused. Format
    characters are dropped first (a gold answer from a file was never cleaned)."""
    answer = without_format_chars(answer)
    key = normalize_text(answer)
    if latex_problem(answer) is not None:
        _count(stats, "refused")
        return ParsedAnswer(text=answer, key=key, math=(), dropped=True)
    # Wrapped in $...$ so that bare answers such as "1/2" or "\frac{1}{2}" parse as LaTeX.
    math = tuple(parse("$" + answer + "$", parsing_timeout=None))
    if any(expression_problem(item) is not None for item in math):
        _count(stats, "refused")
        return ParsedAnswer(text=answer, key=key, math=(), dropped=True)
    return ParsedAnswer(text=answer, key=key, math=math)


def _math_equal(gold: ParsedAnswer, target: ParsedAnswer) -> bool:
    """math-verify on two pre-checked parses, with its SIGALRM timeout off (the caller bounds the time)."""
    return bool(verify(list(gold.math), list(target.math), timeout_seconds=None))


def _timed_out(answer: str, stats: ScoreStats | None) -> ParsedAnswer:
    """The dropped form of an answer whose scoring ran out of time, counted."""
    _count(stats, "timeouts")
    return ParsedAnswer(text=answer, key=normalize_text(answer), math=(), dropped=True)


def _count(stats: ScoreStats | None, field: str) -> None:
    if stats is not None:
        setattr(stats, field, getattr(stats, field) + 1)


def _check_kind(kind: str) -> None:
    if kind not in ANSWER_KINDS:
        raise ValueError(f"unknown answer kind {kind!r}; accepted kinds: {', '.join(ANSWER_KINDS)}")


class _NoTimeoutWarning(logging.Filter):
    """Drops math-verify's one-time "Timeout is disabled" warning: the time limit here replaces it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_NoTimeoutWarning())
