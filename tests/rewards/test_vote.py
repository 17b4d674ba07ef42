"""Majority vote: hard and soft rewards, ties, groups without answers, min_agreement abstention."""

import math

import pytest
import torch

from conftest import ctx_for, make_batch
from srtlab.answers.votes import vote_groups
from srtlab.rewards.base import RewardSource
from srtlab.rewards.vote import MajorityVote
from srtlab.types import Prompt

NAN = math.nan




def prompt(i: int, kind: str = "text") -> Prompt:
    return Prompt(id=f"t/train/{i}", messages=[{"role": "user", "content": "q"}], task="t", answer_kind=kind)


def assert_rewards(actual: torch.Tensor, expected: list[float]) -> None:
    assert actual.dtype == torch.float32
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=torch.float32), equal_nan=True)


def test_is_a_reward_source() -> None:
    assert isinstance(MajorityVote(), RewardSource)


def test_hard_vote_by_hand() -> None:
    # group 0: "7" x2 (as "7" and "07"), "8", no answer -> majority "7", share 2/4
    # group 1: math, 1/2 = 0.5 = \frac{1}{2} -> majority share 3/4
    batch = make_batch(
        [prompt(0), prompt(1, "math")],
        ["7", "8", "07", None, "1/2", "0.5", "2", r"\frac{1}{2}"],
    )
    out = MajorityVote()(batch, ctx_for(batch))
    assert_rewards(out.rewards, [1, 0, 1, 0, 1, 1, 0, 1])
    assert out.metrics == pytest.approx({"majority_share": (0.5 + 0.75) / 2, "abstain_rate": 0.0})


def test_tie_goes_to_first_appearance() -> None:
    batch = make_batch([prompt(0)], ["b", "a", "a", "b"])
    assert_rewards(MajorityVote()(batch, ctx_for(batch)).rewards, [1, 0, 0, 1])
    assert [v.answer for v in vote_groups(batch)] == ["b"]


def test_soft_vote_is_the_share_of_the_same_answer() -> None:
    # shares: "x" 3/5, "y" 1/5, no answer -> 0
    batch = make_batch([prompt(0)], ["x", "y", "x", None, "X"])
    assert_rewards(MajorityVote(soft=True)(batch, ctx_for(batch)).rewards, [0.6, 0.2, 0.6, 0.0, 0.6])


def test_group_without_answers_abstains() -> None:
    batch = make_batch([prompt(0), prompt(1)], [None, None, "1", "2"])
    out = MajorityVote()(batch, ctx_for(batch))
    assert_rewards(out.rewards, [NAN, NAN, 1, 0])
    assert out.metrics == pytest.approx({"majority_share": 0.25, "abstain_rate": 0.5})
    assert [v.answer for v in vote_groups(batch)] == [None, "1"]


def test_min_agreement_abstains_below_threshold() -> None:
    # group 0 majority share 2/4 = 0.5 < 0.6 abstains; group 1 share 3/4 = 0.75 votes
    batch = make_batch([prompt(0), prompt(1)], ["a", "a", "b", "c", "d", "d", "d", None])
    out = MajorityVote(min_agreement=0.6)(batch, ctx_for(batch))
    assert_rewards(out.rewards, [NAN, NAN, NAN, NAN, 1, 1, 1, 0])
    assert out.metrics["abstain_rate"] == 0.5
    # the threshold is inclusive: share 0.5 >= 0.5 votes
    assert_rewards(MajorityVote(min_agreement=0.5)(batch, ctx_for(batch)).rewards, [1, 1, 0, 0, 1, 1, 1, 0])


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_min_agreement_is_validated(bad: float) -> None:
    with pytest.raises(ValueError, match=str(bad)):
        MajorityVote(min_agreement=bad)


def test_vote_groups_representative_and_label() -> None:
    batch = make_batch([prompt(0, "math"), prompt(1)], ["2", "0.5", "1/2", None, None, None])
    first, second = vote_groups(batch)
    assert (first.cluster_ids, first.majority, first.share) == ([0, 1, 1], 1, pytest.approx(2 / 3))
    assert (first.representative, first.answer) == (1, "0.5")
    assert (second.majority, second.share, second.representative, second.answer) == (None, 0.0, None, None)
