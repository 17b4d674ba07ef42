"""Reading the final answer out of a completion.

The policy is asked to end with ``\\boxed{...}``, an ``<answer>`` tag or an ``Answer:`` line; which one
depends on the prompt template, so ``"auto"`` tries them in that order. Extraction is purely textual:
model text is never evaluated.
"""

from __future__ import annotations

import re
from types import MappingProxyType

ANSWER_STYLES: tuple[str, ...] = ("auto", "boxed", "answer_tag", "answer_line")

_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)
_ANSWER_LINE = re.compile(r"answer:", re.IGNORECASE)
_QUOTES = ('"', "'", "`")


def extract_answer(text: str, style: str = "auto") -> str | None:
    """The cleaned final answer of ``text`` in the given style, or None when there is none.

    Styles: ``"boxed"`` (content of the last ``\\boxed{...}`` or ``\\fbox{...}``, nested braces
    handled; None if that box is never closed, e.g. a truncated completion), ``"answer_tag"`` (content
    of the last ``<answer>...</answer>``), ``"answer_line"`` (rest of the line after the last
    ``Answer:``, case-insensitive) and ``"auto"`` (the first of boxed, answer_tag, answer_line that
    gives a non-empty answer).
    """
    if style not in ANSWER_STYLES:
        raise ValueError(f"unknown answer style {style!r}; accepted styles: {', '.join(ANSWER_STYLES)}")
    order = ("boxed", "answer_tag", "answer_line") if style == "auto" else (style,)
    for name in order:
        raw = _EXTRACTORS[name](text)
        answer = clean_answer(raw) if raw is not None else None
        if answer is not None:
            return answer
    return None


def clean_answer(answer: str) -> str | None:
    """Strip whitespace, markdown bold, surrounding ``$`` and quotes, and one trailing period; None if empty.

    The rules are applied until nothing changes, so ``"**$3$.**"`` becomes ``"3"``. A trailing
    ellipsis (``"..."``) is kept, since it is part of the answer rather than sentence punctuation.
    """
    previous = None
    while answer != previous:
        previous = answer
        answer = answer.strip()
        if answer.startswith("**"):
            answer = answer[2:]
        if answer.endswith("**"):
            answer = answer[:-2]
        if len(answer) >= 2 and answer[0] == answer[-1] and answer[0] in ("$", *_QUOTES):
            answer = answer[1:-1]
        if answer.endswith(".") and not answer.endswith(".."):
            answer = answer[:-1]
    return answer or None


def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{`` / ``\\fbox{``, matching nested braces; None if absent or unclosed."""
    opens = list(_BOX_OPEN.finditer(text))
    if not opens:
        return None
    start = opens[-1].end()
    depth = 1
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
    return None


def _last_answer_tag(text: str) -> str | None:
    """Content of the last complete ``<answer>...</answer>`` pair."""
    found = _ANSWER_TAG.findall(text)
    return found[-1] if found else None


def _last_answer_line(text: str) -> str | None:
    """The rest of the line after the last ``Answer:``."""
    found = list(_ANSWER_LINE.finditer(text))
    if not found:
        return None
    return text[found[-1].end() :].split("\n", 1)[0]


_EXTRACTORS = MappingProxyType(
    {"boxed": _last_boxed, "answer_tag": _last_answer_tag, "answer_line": _last_answer_line}
)
