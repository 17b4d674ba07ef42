"""How a question becomes chat messages: optional system text, few-shot turns, an instruction.

Small models need the format shown, not described: SmolLM2-135M fails zero-shot ``\\boxed{}`` prompts
but follows a two-shot prompt whose answers end with a line ``Answer: <final answer>``. So the
format is part of the data config, and ``answer_style`` tells extraction what to look for.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from srtlab.answers.extract import ANSWER_STYLES


@dataclass
class Shot:
    question: str
    response: str


@dataclass
class PromptFormat:
    """Turns a question into chat messages.

    Args:
        instruction: appended to every question (e.g. how to write the answer); may be empty.
        shots: worked examples, given as earlier user/assistant turns.
        system: a system message, or None for the tokenizer's default.
        answer_style: the extraction style matching the format (see ``srtlab.answers.extract``).
    """

    instruction: str = ""
    shots: list[Shot] = field(default_factory=list)
    system: str | None = None
    answer_style: str = "answer_line"

    def __post_init__(self) -> None:
        self.shots = [s if isinstance(s, Shot) else Shot(**s) for s in self.shots]
        if self.answer_style not in ANSWER_STYLES:
            raise ValueError(f"data.prompt.answer_style={self.answer_style!r}; accepted: {', '.join(ANSWER_STYLES)}")

    def _user(self, question: str) -> str:
        return f"{question}\n{self.instruction}" if self.instruction else question

    def messages(self, question: str) -> list[dict[str, str]]:
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        for shot in self.shots:
            msgs += [{"role": "user", "content": self._user(shot.question)},
                     {"role": "assistant", "content": shot.response}]
        return msgs + [{"role": "user", "content": self._user(question)}]
