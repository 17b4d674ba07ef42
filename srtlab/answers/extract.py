"""Reading the final answer out of a completion, in time linear in its length.

The policy is asked to end with ``\\boxed{...}``, an ``<answer>`` tag or an ``Answer:`` line; which one
depends on the prompt template, so ``"auto"`` tries them in that order. Extraction is purely textual:
model text is never evaluated. Every step is one pass over the text or a non-backtracking regex, and an
answer longer than ``max_chars`` (``MAX_ANSWER_CHARS`` by default) is no answer, so a 1 MB completion
costs about as much as reading it once.
"""

from __future__ import annotations

import re
import unicodedata
from types import MappingProxyType

ANSWER_STYLES: tuple[str, ...] = ("auto", "boxed", "answer_tag", "answer_line")
MAX_ANSWER_CHARS = 512  # longer is no answer: it would only be noise to the vote and cost to compare

_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
_TAG_OPEN = re.compile(r"<answer>", re.IGNORECASE)
_TAG_CLOSE = re.compile(r"</answer>", re.IGNORECASE)
_ANSWER_LINE = re.compile(r"answer:", re.IGNORECASE)
_QUOTES = ('"', "'", "`")


def extract_answer(text: str, style: str = "auto", *, max_chars: int = MAX_ANSWER_CHARS) -> str | None:
    """The cleaned final answer of ``text`` in the given style, or None when there is none.

    Styles: ``"boxed"`` (content of the last ``\\boxed{...}`` or ``\\fbox{...}``, nested braces
    handled; None if that box is never closed, e.g. a truncated completion), ``"answer_tag"`` (content
    of the last complete ``<answer>...</answer>``), ``"answer_line"`` (rest of the line after the last
    ``Answer:``, case-insensitive) and ``"auto"`` (the first of boxed, answer_tag, answer_line that
    gives a non-empty answer). A raw answer longer than ``max_chars`` counts as none.
    """
    if style not in ANSWER_STYLES:
        raise ValueError(f"unknown answer style {style!r}; accepted styles: {', '.join(ANSWER_STYLES)}")
    order = ("boxed", "answer_tag", "answer_line") if style == "auto" else (style,)
    for name in order:
        raw = _EXTRACTORS[name](text, max_chars)
        answer = clean_answer(raw) if raw is not None else None
        if answer is not None:
            return answer
    return None


def without_format_chars(text: str) -> str:
    """``text`` without Unicode format characters (category Cf: zero-width joiners and spaces, direction marks,
    the BOM): invisible, so ``"\u200f4\u200d"`` reads as ``4`` and must vote and score as ``4``."""
    if text.isascii():
        return text
    return "".join(c for c in text if unicodedata.category(c) != "Cf")


def clean_answer(answer: str) -> str | None:
    """Drop format characters (:func:`without_format_chars`), then strip whitespace, markdown bold, surrounding
    ``$`` and quotes, and one trailing period; None if empty.

    The rules are applied until nothing changes, so ``"**$3$.**"`` becomes ``"3"``. A trailing
    ellipsis (``"..."``) is kept, since it is part of the answer rather than sentence punctuation.
    Moves two indices inward rather than copying the string, so the cost is linear in its length.
    """
    answer = without_format_chars(answer)
    lo, hi = 0, len(answer)
    while True:
        before = (lo, hi)
        while lo < hi and answer[lo].isspace():
            lo += 1
        while hi > lo and answer[hi - 1].isspace():
            hi -= 1
        if answer.startswith("**", lo, hi):
            lo += 2
        if answer.endswith("**", lo, hi):
            hi -= 2
        if hi - lo >= 2 and answer[lo] == answer[hi - 1] and answer[lo] in ("$", *_QUOTES):
            lo, hi = lo + 1, hi - 1
        if answer.endswith(".", lo, hi) and not answer.endswith("..", lo, hi):
            hi -= 1
        if (lo, hi) == before:
            return answer[lo:hi] or None


def _last(pattern: re.Pattern[str], text: str, start: int = 0, end: int | None = None) -> re.Match[str] | None:
    """The last match of a non-backtracking pattern in ``text[start:end]`` (one pass)."""
    found = None
    for match in pattern.finditer(text, start, len(text) if end is None else end):
        found = match
    return found


def _last_boxed(text: str, max_chars: int) -> str | None:
    """Content of the last ``\\boxed{`` / ``\\fbox{``, matching nested braces; None if absent, unclosed or too long."""
    opened = _last(_BOX_OPEN, text)
    if opened is None:
        return None
    start = opened.end()
    depth = 1
    for i in range(start, min(len(text), start + max_chars + 1)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
    return None


def _last_answer_tag(text: str, max_chars: int) -> str | None:
    """Content of the last complete ``<answer>...</answer>`` pair; None if absent or too long."""
    closed = _last(_TAG_CLOSE, text)
    if closed is None:
        return None
    opened = _last(_TAG_OPEN, text, 0, closed.start())
    if opened is None:
        return None
    end = _TAG_CLOSE.search(text, opened.end()).start()  # the close of this open (exists: `closed`)
    return text[opened.end() : end] if end - opened.end() <= max_chars else None


def _last_answer_line(text: str, max_chars: int) -> str | None:
    """The rest of the line after the last ``Answer:``; None if absent or too long."""
    found = _last(_ANSWER_LINE, text)
    if found is None:
        return None
    stop = text.find("\n", found.end())
    stop = len(text) if stop < 0 else stop
    return text[found.end() : stop] if stop - found.end() <= max_chars else None


_EXTRACTORS = MappingProxyType(
    {"boxed": _last_boxed, "answer_tag": _last_answer_tag, "answer_line": _last_answer_line}
)
