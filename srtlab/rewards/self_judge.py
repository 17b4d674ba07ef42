"""Self-judge reward: the policy grades its own answers, and the reward is its probability of "correct".

Each (question, answer) pair is put to the policy in a judging prompt that asks for a one-word verdict
("Yes" / "No"). The reward is read from the next-token distribution, not parsed from generated text:

    P(correct) = p(yes) / (p(yes) + p(no))

the softmax over the two verdicts' first tokens (the rest of the vocabulary is ignored, so a judge that
would rather say something else still gives a number in [0, 1]). With ``threshold`` set, the reward is
1.0 where P(correct) >= threshold and 0.0 elsewhere. Completions with no readable answer get NaN (no
opinion), as do prompts where no completion has one. Seeds: "Self Rewarding Self Improving" (Simonds
et al. 2025, the policy judges its own Countdown / integration answers) and Meta-Rewarding (Wu et al. 2024).

Simplifications: the judge sees the extracted answer, not the reasoning (``show="completion"`` shows the
whole completion); each distinct (prompt, shown text) pair is judged once, so G samples with the same
answer cost one judging row. The judge is the engine's current weights (the sampling copy), scored with
``engine.next_token_logprobs``: one batched forward pass, no generation, so on vLLM it is one more call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from srtlab.rewards.base import RewardContext
from srtlab.settings import Annotated, Rule, checked, choice, fail, listing, problem, real, strings, text
from srtlab.types import RewardOutput, RolloutBatch, question_of

DEFAULT_TEMPLATE = (
    "Here is a question and a proposed answer.\n\nQuestion: {question}\n\nProposed answer: {answer}\n\n"
    "Is the proposed answer correct? Reply with Yes or No."
)


@dataclass
class JudgeShot:
    """A worked judging example, given as an earlier user/assistant turn."""

    question: str
    answer: str
    verdict: bool  # True: the assistant replies with the "correct" verdict word


VERDICTS = Rule(lambda v: strings().ok(v) and len(v) == 2 and v[0] != v[1], "two different words: [correct, incorrect]")
SHOTS = "a list of {question, answer, verdict} or null"


@checked
class SelfJudge:
    """Reward = the policy's probability that an answer is correct, read from its next-token distribution.

    Args:
        template: the judging request, with ``{question}`` and ``{answer}`` fields.
        verdicts: the words for "correct" and "incorrect"; the first token of each is read (they must differ).
        system: an optional system message for the judge.
        shots: worked judging examples (``JudgeShot`` or dicts with question, answer, verdict).
        threshold: None for the probability itself, or a cut in (0, 1) for a 0/1 reward.
        show: ``"answer"`` (the extracted answer) or ``"completion"`` (the whole completion text).
    """

    def __init__(self, template: Annotated[str, text()] = DEFAULT_TEMPLATE,
                 verdicts: Annotated[list[str], VERDICTS] = ("Yes", "No"),
                 system: Annotated[str | None, text(null=True)] = None,
                 shots: Annotated[list[JudgeShot | dict] | None, listing(null=True, what=SHOTS)] = None,
                 threshold: Annotated[float | None, real(0, 1, open_low=True, open_high=True, null=True)] = None,
                 show: Annotated[str, choice(("answer", "completion"))] = "answer") -> None:
        fail(type(self), [problem("template", template, f"a text with the field {field}")
                          for field in ("{question}", "{answer}") if field not in template])
        self.template, self.system = template, system
        self.yes, self.no = verdicts
        self.shots = [s if isinstance(s, JudgeShot) else JudgeShot(**s) for s in shots or []]
        self.threshold, self.show = threshold, show

    # -- the judging prompt ---------------------------------------------------------------------
    def messages(self, question: str, answer: str) -> list[dict[str, str]]:
        """The judge's chat messages for one (question, answer) pair."""
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        for shot in self.shots:
            msgs += [{"role": "user", "content": self.template.format(question=shot.question, answer=shot.answer)},
                     {"role": "assistant", "content": self.yes if shot.verdict else self.no}]
        return msgs + [{"role": "user", "content": self.template.format(question=question, answer=answer)}]

    def verdict_ids(self, tokenizer) -> list[int]:
        """[yes id, no id]: the first token of each verdict word."""
        ids = [tokenizer(word, add_special_tokens=False)["input_ids"] for word in (self.yes, self.no)]
        if not ids[0] or not ids[1] or ids[0][0] == ids[1][0]:
            raise ValueError(f"self_judge verdicts {self.yes!r} and {self.no!r} must start with different tokens")
        return [ids[0][0], ids[1][0]]

    # -- scoring --------------------------------------------------------------------------------
    def __call__(self, rollouts: RolloutBatch, ctx: RewardContext) -> RewardOutput:
        if ctx.engine is None:
            raise ValueError("self_judge needs the rollout engine (RewardContext.engine) to ask the policy")
        tokenizer = ctx.engine.tokenizer
        # 1. one judging row per distinct (prompt, shown text); completions without an answer get none
        rows: dict[tuple[int, str], int] = {}
        row_of: list[int | None] = []
        for i, answer in enumerate(rollouts.answers):
            if answer is None:
                row_of.append(None)
                continue
            key = (i // rollouts.n, answer if self.show == "answer" else rollouts.texts[i])
            row_of.append(rows.setdefault(key, len(rows)))
        # 2. one batched scoring call: log p(yes), log p(no) per row
        conversations = [self.messages(question_of(rollouts.prompts[b]), shown) for b, shown in rows]
        if conversations:
            logp = ctx.engine.next_token_logprobs(conversations, self.verdict_ids(tokenizer))  # [R, 2]
            p_yes = torch.softmax(logp.float(), dim=-1)[:, 0]  # [R]: P(correct) over the two verdicts
        else:
            p_yes = torch.empty(0)
        # 3. rewards: P(correct), or its threshold; NaN without an answer
        scores = p_yes if self.threshold is None else (p_yes >= self.threshold).float()
        rewards = torch.tensor([math.nan if r is None else float(scores[r]) for r in row_of], dtype=torch.float32)
        metrics = {"judged_rows": float(len(rows))}
        if len(rows):
            metrics["p_correct"] = p_yes.mean().item()
        return RewardOutput(rewards=rewards, metrics=metrics)
