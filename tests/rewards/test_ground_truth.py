"""Gold-answer reward: a reasoning-gym item, a math prompt, a text prompt and a prompt without gold."""

import math

import pytest
import reasoning_gym
import torch

from conftest import make_batch
from srtlab.answers import gold as ground_truth
from srtlab.answers.gold import is_correct
from srtlab.rewards.ground_truth import GOLD, GroundTruth
from srtlab.types import Prompt

NAN = math.nan




@pytest.fixture(scope="module")
def letter_prompt() -> Prompt:
    item = reasoning_gym.create_dataset("letter_counting", min_words=1, max_words=3, size=5, seed=1)[0]
    assert item["answer"] == "1"  # 'How many times does the letter "h" appear in the text: "hundred"?'
    messages = [{"role": "user", "content": item["question"]}]
    return Prompt(
        id="letter_counting/train/0",
        messages=messages,
        task="letter_counting",
        answer=item["answer"],
        metadata={"entry": item},
    )


def math_prompt(answer: str | None = r"\frac{1}{2}") -> Prompt:
    return Prompt(id="math/test/0", messages=[], task="math", answer_kind="math", answer=answer)


def test_reasoning_gym_scorer(letter_prompt: Prompt) -> None:
    assert is_correct("1", letter_prompt)
    assert is_correct(" 01 ", letter_prompt)  # raw " 01 " gets partial credit 1/4; normalised "1" scores 1.0
    assert not is_correct("2", letter_prompt)
    assert not is_correct("it is 1", letter_prompt)  # partial credit is not correct
    assert not is_correct(None, letter_prompt)


def test_math_prompt() -> None:
    assert is_correct("0.5", math_prompt())
    assert is_correct("1/2", math_prompt())
    assert not is_correct("2", math_prompt())


def test_text_prompt_without_entry_uses_normalised_equality() -> None:
    capital = Prompt(id="geo/0", messages=[], task="geo", answer="Paris")
    assert is_correct(" paris. ", capital)
    assert not is_correct("Lyon", capital)


def test_ground_truth_rewards_by_hand(letter_prompt: Prompt) -> None:
    batch = make_batch(
        [letter_prompt, math_prompt(), math_prompt(answer=None)],
        ["1", "2", None, "0.5", r"\frac{2}{4}", "3", "1/2", "1/2", "1/2"],
    )
    verdicts = GroundTruth().verdicts(batch)
    expected = torch.tensor([1, 0, 0, 1, 1, 0, NAN, NAN, NAN])
    torch.testing.assert_close(verdicts, expected, equal_nan=True)
    assert verdicts.dtype == torch.float32
    assert GOLD == "ground_truth"


def test_scorer_is_built_once_per_task(letter_prompt: Prompt, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = reasoning_gym.get_score_answer_fn

    def counting(name: str) -> ground_truth.ScoreAnswer:
        calls.append(name)
        return real(name)

    monkeypatch.setattr(ground_truth.reasoning_gym, "get_score_answer_fn", counting)
    source = GroundTruth()
    batch = make_batch([letter_prompt, letter_prompt], ["1", "3", "1", "1"])
    source.verdicts(batch)
    source.verdicts(batch)
    assert calls == ["letter_counting"]
