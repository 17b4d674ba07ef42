"""How a question becomes chat messages: optional system text, few-shot turns, an instruction.

Small models need the format shown, not described: SmolLM2-135M fails zero-shot ``\\boxed{}`` prompts
but follows a two-shot prompt whose answers end with a line ``Answer: <final answer>``. So the
format is part of the data config, and ``answer_style`` tells extraction what to look for.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
