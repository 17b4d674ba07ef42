"""The reward mix: NaN handling, weights, abstention, and every metric worked out by hand."""

import math

import pytest
import torch

from conftest import make_batch
from srtlab.rewards.ground_truth import GroundTruth
from srtlab.rewards.mix import RewardMix
from srtlab.rewards.vote import MajorityVote
from srtlab.types import Prompt, RewardOutput, RolloutBatch

NAN = math.nan


class Fixed:
    """A reward source that returns fixed rewards, standing in for a judge."""

    def __init__(self, rewards: list[float]) -> None:
        self.rewards = rewards

    def __call__(self, rollouts: RolloutBatch, ctx) -> RewardOutput:
        return RewardOutput(torch.tensor(self.rewards, dtype=torch.float32), {"calls": 1.0})




def small_batch() -> RolloutBatch:
    """B=3, G=4.

    group 0 (text, gold "3"):  3, 3, 4, -    clusters 0,0,1,-  majority "3" (2/4)  vote 1,1,0,0  gold 1,1,0,0
    group 1 (math, gold "2"):  0.5, 2, 2, \\frac{1}{2}  tie 2-2 -> first, "0.5" (2/4)  vote 1,0,0,1  gold 0,1,1,0
    group 2 (text, no gold):   -, -, -, -    abstains          vote NaN x4       gold NaN x4
    """
    prompts = [
        Prompt(id="a/0", messages=[], task="a", answer="3"),
        Prompt(id="m/0", messages=[], task="m", answer_kind="math", answer="2"),
        Prompt(id="a/1", messages=[], task="a"),
    ]
    answers = ["3", "3", "4", None, "0.5", "2", "2", r"\frac{1}{2}", None, None, None, None]
    return make_batch(prompts, answers)


JUDGE = [1, 1, 1, 0, NAN, NAN, NAN, NAN, NAN, 1, NAN, NAN]


def test_mix_rewards_and_metrics_by_hand() -> None:
    mix = RewardMix(
        {"vote": MajorityVote(), "judge": Fixed(JUDGE), "ground_truth": GroundTruth()},
        {"vote": 1.0, "judge": 0.5, "ground_truth": 0.0},
        abstain_value=-1.0,
    )
    out = mix(small_batch())
    # vote*1 + judge*0.5 over the non-NaN ones; index 9 has only the judge; 8, 10, 11 have nobody
    expected = [1.5, 1.5, 0.5, 0.0, 1.0, 0.0, 0.0, 1.0, -1.0, 0.5, -1.0, -1.0]
    torch.testing.assert_close(out.rewards, torch.tensor(expected, dtype=torch.float32))
    assert out.metrics == pytest.approx(
        {
            "reward/vote": 4 / 8,
            "reward/judge": 4 / 5,
            "reward/ground_truth": 4 / 8,
            "reward/mixed": 3.0 / 12,
            "agreement/vote": 4 / 8,  # group 0 agrees everywhere, group 1 nowhere
            "agreement/judge": 3 / 4,  # indices 0..3 (index 9 has no gold): 1=1, 1=1, 1!=0, 0=0
            "majority_share": (0.5 + 0.5 + 0.0) / 3,
            "answer_rate": 7 / 12,
            "answer_concentration": 2 / 12,  # "3" and "2" twice each, across prompts; no answer counts below
            "gt_accuracy": 4 / 8,
            "score_timeouts": 0.0,
            "score_text_only": 0.0,
            "label_accuracy": 1 / 2,  # group 0's "3" is right, group 1's "0.5" wrong, group 2 has no gold
            "vote/majority_share": 1 / 3,
            "vote/abstain_rate": 1 / 3,
            "judge/calls": 1.0,
        }
    )
    assert not torch.isnan(out.rewards).any()


def test_gold_monitor_is_added_when_not_a_source() -> None:
    mix = RewardMix({"vote": MajorityVote()}, {"vote": 1.0})
    out = mix(small_batch())
    torch.testing.assert_close(out.rewards, torch.tensor([1, 1, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0], dtype=torch.float32))
    assert out.metrics["reward/ground_truth"] == pytest.approx(0.5)
    assert out.metrics["gt_accuracy"] == pytest.approx(0.5)
    assert out.metrics["agreement/vote"] == pytest.approx(0.5)
    assert "agreement/ground_truth" not in out.metrics


def test_gold_source_is_reused_as_the_monitor() -> None:
    gold = GroundTruth()
    mix = RewardMix({"gt": gold, "judge": Fixed(JUDGE)}, {"gt": 1.0, "judge": 0.0})
    assert mix.gold is gold
    out = mix(small_batch())
    # supervised reward; group 2 has no gold and the judge's weight is 0, so it gets abstain_value 0
    torch.testing.assert_close(out.rewards, torch.tensor([1, 1, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0], dtype=torch.float32))
    assert "reward/ground_truth" not in out.metrics and out.metrics["reward/gt"] == pytest.approx(0.5)
    # vote is no source, yet the monitors are still computed
    assert out.metrics["majority_share"] == pytest.approx(1 / 3)
    assert out.metrics["label_accuracy"] == pytest.approx(0.5)


def test_votes_and_gold_are_computed_once_per_call(monkeypatch) -> None:
    import srtlab.rewards.mix as mix_module
    from srtlab.rewards.hybrid import Hybrid

    calls = {"votes": 0, "gold": 0}
    real_votes, real_gold = mix_module.vote_groups, GroundTruth.verdicts

    def counting_votes(rollouts, stats=None):
        calls["votes"] += 1
        return real_votes(rollouts, stats)

    def counting_gold(self, rollouts, stats=None):
        calls["gold"] += 1
        return real_gold(self, rollouts, stats)

    monkeypatch.setattr(mix_module, "vote_groups", counting_votes)
    monkeypatch.setattr(GroundTruth, "verdicts", counting_gold)
    mix = RewardMix({"vote": MajorityVote(), "hybrid": Hybrid(0.5), "ground_truth": GroundTruth()},
                    {"vote": 1.0, "hybrid": 0.0, "ground_truth": 0.0})
    out = mix(small_batch())
    assert calls == {"votes": 1, "gold": 1}  # three sources and the monitors share one vote and one gold pass
    assert out.metrics["vote/abstain_rate"] == pytest.approx(1 / 3)
    assert set(out.by_source) == {"vote", "hybrid", "ground_truth"}


def test_level_statistics_per_task_and_level() -> None:
    out = RewardMix({"vote": MajorityVote()}, {"vote": 1.0})(small_batch())
    a, m = out.by_level["a/0"], out.by_level["m/0"]  # task "a": groups 0 and 2; task "m": group 1
    assert a == pytest.approx({"groups": 2.0, "majority_share": 0.25, "gt_accuracy": 2 / 8, "answer_rate": 3 / 8})
    assert m == pytest.approx({"groups": 1.0, "majority_share": 0.5, "gt_accuracy": 0.5, "answer_rate": 1.0})


def test_infinite_reward_names_the_source() -> None:
    bad = [math.inf] + [0.0] * 11
    with pytest.raises(ValueError, match="'judge' returned an infinite reward"):
        RewardMix({"judge": Fixed(bad)}, {"judge": 1.0})(small_batch())


def test_with_weights_may_name_the_gold_monitor() -> None:
    mix = RewardMix({"vote": MajorityVote()}, {"vote": 1.0})
    gold_only = mix.with_weights({"ground_truth": 1.0})
    assert gold_only.weights == {"vote": 0.0, "ground_truth": 1.0} and gold_only.gold is mix.gold
    torch.testing.assert_close(gold_only(small_batch()).rewards,
                               torch.tensor([1, 1, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0], dtype=torch.float32))
    with pytest.raises(ValueError, match="unknown sources"):
        mix.with_weights({"judge": 1.0})


def test_weights_must_match_sources() -> None:
    with pytest.raises(ValueError, match="judge"):
        RewardMix({"vote": MajorityVote()}, {"vote": 1.0, "judge": 1.0})


def test_some_weight_must_be_non_zero() -> None:
    with pytest.raises(ValueError, match="positive sum"):
        RewardMix({"vote": MajorityVote()}, {"vote": 0.0})


def test_wrong_reward_shape_names_the_source() -> None:
    with pytest.raises(ValueError, match="'judge'"):
        RewardMix({"judge": Fixed([1.0, 0.0])}, {"judge": 1.0})(small_batch())


def test_adversarial_answers_are_counted_not_waited_for() -> None:
    prompt = Prompt(id="m", messages=[], task="m", answer_kind="math", answer="2")
    bad = ["2^{2^{2^{30}}}", "10^{10^{10^{10}}}", "9!!!!!!!!!!!!", "\\frac{" * 5000]
    out = RewardMix({"vote": MajorityVote()}, {"vote": 1.0})(make_batch([prompt], bad + ["2", "2", "4", "1/2"]))
    assert out.metrics["score_timeouts"] >= 4  # refused before any comparison, counted (vote and gold)
    assert out.metrics["gt_accuracy"] == pytest.approx(2 / 8)  # the two readable "2"s
