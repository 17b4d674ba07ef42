"""Canonical forms of answers, so that equal answers vote together and match their gold answer.

Two kinds (``Prompt.answer_kind``): ``"math"`` answers are compared with math-verify (so ``1/2``, ``0.5``
and ``\\frac{1}{2}`` are equal), ``"text"`` answers by string normalisation (:func:`normalize_text`).

math-verify bounds its parsing and comparison time with ``SIGALRM``, which only works in the main thread
of a process: run the ``"math"`` functions here in the main thread or in worker processes, never in threads.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from math_verify import parse, verify

ANSWER_KINDS: tuple[str, ...] = ("text", "math")

# A whole-string number: optional sign, digits with optional well-formed thousands commas, optional
# decimals. "1,2" is not a number (it reads as a list), "1,000" is.
_NUMBER = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|[+-]?\.\d+")
_SPACES = re.compile(r"\s+")


def normalize_text(answer: str) -> str:
    """Strip, collapse whitespace, lowercase, drop one trailing ``.``, and normalise whole-string numbers.

    Numbers lose leading zeros, trailing decimal zeros, thousands commas and a ``+`` sign:
    ``"03"`` -> ``"3"``, ``"3.0"`` -> ``"3"``, ``"1,000"`` -> ``"1000"``, ``"-0.50"`` -> ``"-0.5"``.
    """
    text = _SPACES.sub(" ", answer.strip()).lower()
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


@dataclass(frozen=True)
class ParsedAnswer:
    """An answer with its comparison keys computed once (parsing is the slow part of comparing)."""

    text: str  # the answer as given
    key: str  # normalize_text(text)
    math: tuple[Any, ...]  # math-verify's parse of the answer; empty for "text" or when parsing failed


def parse_answer(answer: str, kind: str) -> ParsedAnswer:
    """Precompute what :func:`parsed_equivalent` needs; ``kind`` is ``"text"`` or ``"math"``."""
    _check_kind(kind)
    math: tuple[Any, ...] = ()
    if kind == "math":
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("math-verify uses SIGALRM: compare math answers in the main thread, not a thread")
        # Wrapped in $...$ so that bare answers such as "1/2" or "\frac{1}{2}" parse as LaTeX.
        math = tuple(parse("$" + answer + "$"))
    return ParsedAnswer(text=answer, key=normalize_text(answer), math=math)


def parsed_equivalent(a: ParsedAnswer, b: ParsedAnswer) -> bool:
    """Whether two parsed answers are equal: math-verify when both parsed, else normalised text equality.

    ``a`` plays the role of math-verify's gold answer (its comparison is not fully symmetric).
    """
    if a.text.strip() == b.text.strip():
        return True
    if a.math and b.math:
        return bool(verify(list(a.math), list(b.math)))
    return a.key == b.key


def answers_equivalent(a: str, b: str, kind: str) -> bool:
    """Whether ``a`` and ``b`` are the same answer; ``kind`` is ``"text"`` or ``"math"``.

    ``"math"`` uses math-verify (``a`` as its gold side), falling back to text equality when either
    side does not parse. Must run in the main thread (math-verify's timeouts use SIGALRM).
    """
    return parsed_equivalent(parse_answer(a, kind), parse_answer(b, kind))


def cluster_answers(answers: list[str | None], kind: str) -> list[int | None]:
    """Cluster ids of ``answers`` in order of first appearance (the first distinct answer gets 0).

    None answers get None. ``"text"`` groups by :func:`normalize_text` (O(G)); ``"math"`` compares each
    answer greedily with the first member of every existing cluster, parsing each answer once.
    Must run in the main thread for ``"math"`` (math-verify's timeouts use SIGALRM).
    """
    _check_kind(kind)
    ids: list[int | None] = []
    if kind == "text":
        keys: dict[str, int] = {}
        for answer in answers:
            ids.append(None if answer is None else keys.setdefault(normalize_text(answer), len(keys)))
        return ids
    representatives: list[ParsedAnswer] = []
    for answer in answers:
        if answer is None:
            ids.append(None)
            continue
        parsed = parse_answer(answer, kind)
        for cluster, representative in enumerate(representatives):
            if parsed_equivalent(representative, parsed):
                ids.append(cluster)
                break
        else:
            ids.append(len(representatives))
            representatives.append(parsed)
    return ids


def _check_kind(kind: str) -> None:
    if kind not in ANSWER_KINDS:
        raise ValueError(f"unknown answer kind {kind!r}; accepted kinds: {', '.join(ANSWER_KINDS)}")
