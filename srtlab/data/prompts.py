"""How a question becomes chat messages (optional system text, few-shot turns, an instruction), and how those
become the prompt's tokens.

Small models need the format shown, not described: SmolLM2-135M fails zero-shot ``\\boxed{}`` prompts
but follows a two-shot prompt whose answers end with a line ``Answer: <final answer>``. So the
format is part of the data config, and ``answer_style`` tells extraction what to look for.

:func:`render_messages` is how an engine turns chat messages into token ids; :class:`PromptBudget` counts a prompt
the same way, so the data layer drops the prompts that would leave no room for the completion.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from srtlab.answers.extract import ANSWER_STYLES
from srtlab.settings import Annotated, Rule, checked, choice, listing, text


@dataclass
class Shot:
    question: str
    response: str


SHOTS = "a list of {question: ..., response: ...}, both strings"


def _is_shot(s: object) -> bool:
    if isinstance(s, Shot):
        return True
    return hasattr(s, "keys") and set(s.keys()) == {"question", "response"} and all(
        isinstance(s[k], str) for k in ("question", "response"))


@checked
@dataclass
class PromptFormat:
    """Turns a question into chat messages.

    Args:
        instruction: appended to every question (e.g. how to write the answer); may be empty.
        shots: worked examples, given as earlier user/assistant turns.
        system: a system message, or None for the tokenizer's default.
        answer_style: the extraction style matching the format (see ``srtlab.answers.extract``).
    """

    instruction: Annotated[str, text(empty=True)] = ""
    shots: Annotated[list[Shot], Rule(lambda v: listing().ok(v) and all(_is_shot(s) for s in v), SHOTS)] = field(
        default_factory=list)
    system: Annotated[str | None, text(null=True)] = None
    answer_style: Annotated[str, choice(ANSWER_STYLES)] = "answer_line"

    def __post_init__(self) -> None:
        self.shots = [s if isinstance(s, Shot) else Shot(**s) for s in self.shots]

    def _user(self, question: str) -> str:
        return f"{question}\n{self.instruction}" if self.instruction else question

    def messages(self, question: str) -> list[dict[str, str]]:
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        for shot in self.shots:
            msgs += [{"role": "user", "content": self._user(shot.question)},
                     {"role": "assistant", "content": shot.response}]
        return msgs + [{"role": "user", "content": self._user(question)}]


def render_messages(tokenizer, conversations: list[list[dict[str, str]]]) -> list[list[int]]:
    """Chat-template each message list, generation prompt added, and tokenize it (no padding)."""
    ids = []
    for messages in conversations:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return ids


class PromptBudget:
    """Whether a prompt fits in ``max_tokens`` tokens, rendered as the engines render it (:func:`render_messages`).

    ``why`` says where the limit comes from, for messages. A text longer than ``max_tokens`` tokens of the
    vocabulary's longest token, with a margin of 4, cannot fit and is not tokenized: a 5 MB question costs a
    length check, not a tokenizer pass.
    """

    def __init__(self, tokenizer: Any, max_tokens: int, why: str) -> None:
        self.tokenizer, self.max_tokens, self.why = tokenizer, max_tokens, why
        longest = max((len(token) for token in tokenizer.get_vocab()), default=1)
        self.max_chars = 4 * max_tokens * max(longest, 1)

    def fits(self, messages: list[dict[str, str]]) -> bool:
        if sum(len(m["content"]) for m in messages) > self.max_chars:
            return False
        return len(render_messages(self.tokenizer, [messages])[0]) <= self.max_tokens
