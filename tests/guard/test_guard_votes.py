"""Per-prompt majority histories (TTRL-Guard's flip rate) and the probe's signals, on hand-made votes."""

import pytest

from srtlab.guard.probe import REPHRASE, rephrased_question, unlabelled
from srtlab.guard.skips import ids_by_question, skip_map
from srtlab.guard.votes import (
    FlipSettings,
    PromptVotes,
    Visit,
    agreement,
    at_risk,
    clear_agreement,
    distinct,
    flip_rate,
    majorities,
    same_answer,
    vote_rate,
)
from srtlab.types import Prompt


def visits(answers, shares=None):
    """A prompt's visits at steps 1, 2, ... with the given majority answers (and shares, default 0.9)."""
    votes = PromptVotes()
    for step, answer in enumerate(answers, start=1):
        votes.record("q", step, answer, (shares or [0.9] * len(answers))[step - 1])
    return votes.visits["q"]


def test_flip_rate_counts_changes_between_consecutive_visits():
    assert flip_rate(visits(["3"])) is None  # one visit: nothing to compare
    assert flip_rate(visits(["3", "3", "3"])) == 0.0
    assert flip_rate(visits(["3", "4", "3", "3", "5"])) == pytest.approx(3 / 4)
    assert flip_rate(visits(["3", None, None])) == pytest.approx(1 / 2)  # no answer is an answer of its own
    assert [v.flipped for v in visits(["3", "03", "3.0"])] == [False, False, False]  # one normalised answer


def test_at_risk_is_ttrl_guards_test():
    """Flip rate > 0.3 after at least 5 visits, while the recent majority share is > 0.7."""
    wandering = visits(["1", "2", "2", "3", "3"], [0.9] * 5)  # 2 flips in 4 revisits: 0.5
    assert at_risk(wandering)
    assert not at_risk(wandering[:4])  # 4 visits: too few to judge
    assert not at_risk(visits(["1", "2", "2", "3", "3"], [0.9, 0.9, 0.6, 0.6, 0.6]))  # not confident: exploring
    assert not at_risk(visits(["1", "1", "1", "2", "2"]))  # one change in 4 revisits: 0.25, settling
    assert at_risk(visits(["1", "1", "1", "2", "2"]), max_flip_rate=0.2)


def test_prompt_votes_keep_a_bounded_history_and_round_trip():
    votes = PromptVotes(keep=3)
    for step, answer in enumerate(["1", "2", "1", "1", "2"], start=1):
        votes.record("a", step, answer, 0.8)
    votes.record("b", 1, "7", 1.0)
    votes.record("b", 1, "8", 0.5)  # the same step again (a resumed step) replaces, never counts as a flip
    assert [v.step for v in votes.visits["a"]] == [3, 4, 5] and votes.visits["b"] == [Visit(1, "8", 0.5, False)]
    again = PromptVotes.from_state(votes.state_dict())
    assert again.visits == votes.visits and again.keep == 3
    stats = PromptVotes().flip_stats()
    assert stats == {"revisited": 0.0, "flip_rate": 0.0, "eligible": 0.0, "at_risk": 0.0}
    votes = PromptVotes()
    for step, (a, b) in enumerate(zip(["1", "2", "1", "2", "1"], ["5", "5", "5", "5", "5"]), start=1):
        votes.record("risky", step, a, 0.9)
        votes.record("steady", step, b, 0.9)
    assert votes.flip_stats() == {"revisited": 2.0, "flip_rate": 0.5, "eligible": 2.0, "at_risk": 0.5}
    assert votes.risky() == ["risky"] and votes.risky(**FlipSettings(min_visits=6).test()) == []


def test_agreement_vote_rate_and_distinct():
    base = ["1", "2", None, "4"]
    assert agreement(["1", "2", None, "5"], base) == 0.75
    # samples giving the base model's majority: 2 + 1 + 0 (no base majority) + 0 of 8
    assert vote_rate([["1", "1"], ["2", "3"], ["1", None], ["5", "5"]], base) == pytest.approx(3 / 8)
    assert distinct(["1", "1.0", "2", None]) == 2
    with pytest.raises(ValueError, match="one label per prompt"):
        vote_rate([["1"]], ["1", "2"])


def test_agreement_with_the_base_models_clear_votes_only():
    """A base majority of 3 in 8 is a coin the first update may flip; only the clear ones (share > 0.5) count."""
    base, shares = ["1", "2", "3", "4", "5"], [0.75, 0.375, 1.0, 0.5, 0.875]
    now = ["1", "9", "3", "9", "9"]  # kept 2 of the 3 clear ones; the two unclear ones moved
    assert clear_agreement(now, base, shares) == pytest.approx(2 / 3) and agreement(now, base) == 0.4
    assert clear_agreement(now, base, [0.25] * 5) == 0.4  # no clear vote at all: every prompt counts


def test_math_answers_compare_by_value():
    assert same_answer("1/2", "0.5", "math") and not same_answer("1/2", "0.5", "text")
    assert same_answer(None, None) and not same_answer("1", None)
    assert majorities([["1/2", "0.5", "3"], [None, None]], "math") == [("1/2", pytest.approx(2 / 3)), (None, 0.0)]


def _rg_prompt(task, metadata, question="Q?", row=None):
    entry = {"question": question, "answer": "GOLD", "metadata": metadata}
    messages = [{"role": "user", "content": "shot"}, {"role": "assistant", "content": "Answer: 1"},
                {"role": "user", "content": f"{question}\nThink."}]
    meta = {"entry": entry} if row is None else {"row": row, "question": question}
    return Prompt(id=f"{task}/train/0", messages=messages, task=task, answer="GOLD", metadata=meta)


def test_rephrasings_come_from_the_task_item_and_never_carry_the_gold_answer():
    prompt = _rg_prompt("chain_sum", {"expression": "3 - 4"}, "State the final answer to ...: 3 - 4 =")
    assert rephrased_question(prompt, "auto") == "What is 3 - 4?"
    assert rephrased_question(prompt, None) is None
    letters = _rg_prompt("letter_counting", {"target_letter": "r", "span": ["red", "car"]})
    assert rephrased_question(letters, "auto") == 'Count the letter "r" in "red car". How many times does it occur?'
    assert rephrased_question(_rg_prompt("gcd", {"x": 1}), "auto") is None  # no template known: no signal
    row = _rg_prompt("mine", {}, "What is 2+2?", row={"question": "What is 2+2?", "answer": "4", "alt": "2 plus 2?"})
    assert rephrased_question(row, "alt") == "2 plus 2?" and rephrased_question(row, "auto") is None
    copy = unlabelled(prompt, "What is 3 - 4?")
    assert copy.answer is None and copy.metadata == {"question": prompt.messages[-1]["content"]}
    assert copy.messages[-1]["content"] == "What is 3 - 4?\nThink." and copy.messages[:2] == prompt.messages[:2]
    assert copy.id.endswith("#rephrased") and "GOLD" not in repr(copy)
    assert set(REPHRASE) >= {"basic_arithmetic", "chain_sum", "products", "letter_counting"}


def test_skips_reach_every_training_prompt_that_asks_an_at_risk_question():
    prompts = [Prompt(id=f"t/train/{i}", messages=[{"role": "user", "content": q}], task="t")
               for i, q in enumerate(["1+1", "2+2", "1+1"])]
    ids = ids_by_question(prompts)
    assert ids == {"1+1": ["t/train/0", "t/train/2"], "2+2": ["t/train/1"]}
    assert skip_map(["1+1", "other/id"], ids, 0.7) == {"t/train/0": 0.7, "t/train/2": 0.7, "other/id": 0.7}
