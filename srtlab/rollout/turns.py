"""Token-level pieces of multi-turn rollout programs (reflect-and-retry): the turns a chat template adds,
read off the template itself, so sampled tokens are continued as they are, never re-encoded."""

from __future__ import annotations

QUESTION = "{question}"  # in an instruction: replaced by the prompt's question (its last user message)
PLACEHOLDER = "\u2063R3\u2063"  # an assistant turn's content, to find where the template closes the turn


def turn_text(tokenizer, instruction: str) -> str:
    """The text that closes an assistant turn and adds a user turn ``instruction`` plus a new assistant turn.

    Read off the tokenizer's chat template: a conversation rendered with and without the extra user
    turn (the first must be a prefix of the second). For ChatML:
    ``"<|im_end|>\\n<|im_start|>user\\n{instruction}<|im_end|>\\n<|im_start|>assistant\\n"``.
    """
    base = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": PLACEHOLDER}]
    before = tokenizer.apply_chat_template(base, tokenize=False)
    after = tokenizer.apply_chat_template(base + [{"role": "user", "content": instruction}], tokenize=False,
                                          add_generation_prompt=True)
    if not after.startswith(before) or PLACEHOLDER not in before:
        raise ValueError("the chat template does not render a conversation as a prefix of its continuation; "
                         "reflect-and-retry needs a template that appends turns (ChatML, Llama, ...)")
    return before[before.rindex(PLACEHOLDER) + len(PLACEHOLDER):] + after[len(before):]


def turn_ids(tokenizer, instruction: str) -> list[int]:
    """:func:`turn_text` as token ids (special tokens in it recognised, none added)."""
    return tokenizer(turn_text(tokenizer, instruction), add_special_tokens=False)["input_ids"]


def continue_after(turn: list[int], finished: bool, next_turn: list[int]) -> list[int]:
    """A sampled assistant turn followed by ``next_turn`` (see :func:`turn_ids`).

    A finished turn (it ended with an end-of-turn token) loses that token, because ``next_turn`` starts
    by closing the turn itself; a truncated turn is closed by ``next_turn``.
    """
    return (turn[:-1] if finished and turn else turn) + next_turn


def episode(reflection: list[int], finished: bool, retry_turn: list[int],
            retry: list[int]) -> tuple[list[int], list[int]]:
    """-> (completion ids, loss mask) of one reflection and its retry.

    The completion is reflection, retry instruction turn, retry. The mask is 1 on the first
    ``len(reflection)`` tokens: the reflection as sampled, its end-of-turn token included when it
    finished (that position holds the turn's closing token); 0 on the instruction turn and the retry.
    """
    ids = continue_after(reflection, finished, retry_turn) + retry
    return ids, [1] * len(reflection) + [0] * (len(ids) - len(reflection))
