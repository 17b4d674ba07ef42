"""Every rule on hand-made metric sequences: it fires on the collapse it is for, not on a healthy run."""

import re

import pytest

from srtlab.guard import rules as rules_module
from srtlab.guard.remedy import BEST_BY
from srtlab.guard.rules import (
    AnswerConcentration,
    AnswerDiversity,
    AnswerRateDrop,
    BaseDrift,
    EntropyCollapse,
    FlipRisk,
    KLJump,
    LengthDrift,
    MajorityCollapse,
    ProbeDrop,
    RephraseDrop,
    RewardDivergence,
    TopAnswerShare,
    VoteRateDrop,
)
from srtlab.guard.signals import History

RULES = [MajorityCollapse(), AnswerConcentration(), EntropyCollapse(), LengthDrift(), AnswerRateDrop(),
         RewardDivergence(), TopAnswerShare()]
PROBE_RULES = [FlipRisk(), BaseDrift(), VoteRateDrop(), AnswerDiversity(), KLJump(), RephraseDrop()]


def make_history(train: dict[str, list[float]], val: dict[str, list[float]] | None = None, every: int = 5,
                 baseline_steps: int = 3) -> History:
    """Training series logged at steps 1..n; held-out series at steps 0, every, 2*every, ..."""
    h = History()
    for name, values in train.items():
        for step, v in enumerate(values, start=1):
            h.add(step, {name: v})
    for name, values in (val or {}).items():
        for i, v in enumerate(values):
            h.add(i * every, {name: v})
    h.freeze_baselines(baseline_steps)
    return h


# A healthy SRT run: majority share and reward rise slowly, entropy eases a little, held-out accuracy rises.
HEALTHY = make_history(
    {"train/majority_share": [0.55, 0.6, 0.62, 0.65, 0.7, 0.72, 0.75, 0.74, 0.78, 0.8],
     "train/answer_concentration": [0.2, 0.22, 0.18, 0.25, 0.2, 0.24, 0.22, 0.23, 0.2, 0.21],
     "train/entropy": [0.9, 0.88, 0.9, 0.86, 0.85, 0.84, 0.85, 0.83, 0.8, 0.82],
     "train/response_length": [120, 118, 125, 119, 115, 117, 112, 116, 110, 114],
     "train/answer_rate": [0.9, 0.92, 0.9, 0.93, 0.94, 0.95, 0.94, 0.95, 0.96, 0.95],
     "train/reward/vote": [0.5, 0.55, 0.57, 0.6, 0.63, 0.66, 0.68, 0.7, 0.72, 0.75]},
    {"val/set/mean@8": [0.3, 0.34, 0.37], "val/set/top_answer_share": [0.15, 0.18, 0.2]})


def probe_history(signals: dict[str, list[float]], every: int = 2, steps: int | None = None) -> History:
    """The unlabelled probe's signals at steps 0, every, 2*every, ... and a training metric at every step up to
    the last probe (or ``steps``), as the callback fills the history."""
    h = History()
    last = (max(len(v) for v in signals.values()) - 1) * every
    for step in range(1, (steps if steps is not None else last) + 1):
        h.add(step, {"train/loss": 0.0})
    for name, values in signals.items():
        for i, v in enumerate(values):
            h.add(i * every, {f"guard/probe/{name}": v})
    return h


# A healthy run as the probe sees it: the policy sharpens onto the base model's votes.
HEALTHY_PROBE = probe_history({"at_risk": [0, 0, 0, 0, 0.125], "eligible": [0, 0, 8, 8, 8],
                               "base_agreement": [1.0, 0.875, 0.875, 1.0, 0.875],
                               "vote_rate": [0.6, 0.66, 0.7, 0.72, 0.74], "distinct_ratio": [1.0, 1.0, 0.9, 1.0, 0.9],
                               "kl": [0.0, 0.2, 0.4, 0.5, 0.6], "rephrase_agreement": [0.75, 0.75, 0.625, 0.75, 0.75]})


@pytest.mark.parametrize("rule", RULES, ids=lambda r: type(r).__name__)
def test_no_rule_fires_on_a_healthy_run(rule):
    finding = rule.check(HEALTHY)
    assert finding is not None and not finding.fired, finding


@pytest.mark.parametrize("rule", PROBE_RULES, ids=lambda r: type(r).__name__)
def test_no_probe_rule_fires_on_a_healthy_run(rule):
    finding = rule.check(HEALTHY_PROBE)
    assert finding is not None and not finding.fired, finding


@pytest.mark.parametrize("rule", PROBE_RULES, ids=lambda r: type(r).__name__)
def test_probe_rules_are_checked_only_at_the_steps_the_probe_ran(rule):
    """Between probes (a training step logged after the last probe) a probe rule has nothing new to say."""
    between = probe_history({"at_risk": [0, 1.0], "eligible": [8, 8], "base_agreement": [1.0, 0.0],
                             "vote_rate": [0.9, 0.1], "distinct_ratio": [1.0, 0.1], "kl": [0.0, 9.0],
                             "rephrase_agreement": [1.0, 0.0]}, steps=3)
    assert rule.check(between) is None


@pytest.mark.parametrize("rule", RULES + PROBE_RULES + [ProbeDrop()], ids=lambda r: type(r).__name__)
def test_every_rule_declares_what_it_reads(rule):
    """``reads`` names its metrics; ``labels`` is True exactly for the rules that read gold answers."""
    assert rule.reads and all(isinstance(name, str) for name in rule.reads)
    gold = any(name.startswith(("val/", "guard/labelled/")) and "top_answer_share" not in name for name in rule.reads)
    assert rule.labels == gold == isinstance(rule, (RewardDivergence, ProbeDrop))


def test_every_rule_class_and_criterion_declares_labels():
    classes = [c for c in vars(rules_module).values() if isinstance(c, type) and hasattr(c, "check")]
    assert classes and all(isinstance(c.labels, bool) for c in classes)
    assert {name for name, c in BEST_BY.items() if c.labels} == {"heldout_mean"}


def test_flip_risk_reads_the_share_of_prompts_at_risk():
    rule = FlipRisk(threshold=0.25)
    finding = rule.check(probe_history({"at_risk": [0, 0.125, 0.375], "eligible": [0, 8, 8]}))
    assert finding.fired and finding.values == {"at_risk": 0.375, "eligible": 8}
    assert not rule.check(probe_history({"at_risk": [0, 0.125, 0.125], "eligible": [0, 8, 8]})).fired
    assert rule.check(probe_history({"at_risk": [0, 0], "eligible": [0, 0]})) is None  # no prompt has 5 visits yet
    train = History()
    train.add(7, {"guard/train/at_risk": 0.5, "guard/train/eligible": 4})
    assert FlipRisk(source="train").check(train).fired and rule.check(train) is None


def test_base_drift_needs_the_whole_window_below():
    assert BaseDrift(min_agreement=0.5).check(probe_history({"base_agreement": [1.0, 0.75, 0.5]})).fired
    rule = BaseDrift(min_agreement=0.5, window=2)
    assert not rule.check(probe_history({"base_agreement": [1.0, 0.75, 0.5]})).fired
    assert rule.check(probe_history({"base_agreement": [1.0, 0.375, 0.5]})).fired


def test_base_drift_spares_majorities_that_moved_and_became_confident():
    """Moved and split (the vote amplifying noise) fires; moved and unanimous (learned) does not."""
    rule = BaseDrift(min_agreement=0.5, max_majority_share=0.85)
    split = probe_history({"base_agreement": [1.0, 0.5], "majority_share": [0.66, 0.72]})
    assert rule.check(split).fired and rule.check(split).values == {"base_agreement": 0.5, "majority_share": 0.72}
    assert not rule.check(probe_history({"base_agreement": [1.0, 0.5], "majority_share": [0.66, 0.94]})).fired


def test_vote_rate_drop_is_against_its_best_so_far():
    rule = VoteRateDrop(max_drop=0.15)
    rise_then_fall = probe_history({"vote_rate": [0.6, 0.8, 0.75, 0.6]})  # SRT's gain, then the policy leaves it
    finding = rule.check(rise_then_fall)
    assert finding.fired and finding.values == {"vote_rate": 0.6, "vote_rate_best": 0.8}
    assert not rule.check(probe_history({"vote_rate": [0.6, 0.8, 0.7]})).fired


def test_answer_diversity_kl_and_rephrase():
    assert AnswerDiversity(min_ratio=0.5).check(probe_history({"distinct_ratio": [1.0, 0.75, 0.5]})).fired
    assert not AnswerDiversity(min_ratio=0.5).check(probe_history({"distinct_ratio": [1.0, 0.75, 0.625]})).fired
    assert KLJump(max_kl=2.0).check(probe_history({"kl": [0.0, 1.0, 2.5]})).fired
    jump = KLJump(max_kl=None, max_jump=1.0)
    assert jump.check(probe_history({"kl": [0.0, 0.2, 1.5]})).fired
    assert not jump.check(probe_history({"kl": [0.0, 0.9, 1.8]})).fired
    assert RephraseDrop(max_drop=0.25).check(probe_history({"rephrase_agreement": [0.75, 0.75, 0.375]})).fired
    h = probe_history({"rephrase_agreement": [0.75, 0.75, 0.375]})
    h.clear_windows()  # a rollback: the base model's value stays the reference
    h.add(8, {"guard/probe/rephrase_agreement": 0.5})
    assert RephraseDrop(max_drop=0.2).check(h).values == {"rephrase_agreement": 0.5, "rephrase_base": 0.75}


@pytest.mark.parametrize("rule", RULES, ids=lambda r: type(r).__name__)
def test_rules_wait_for_enough_history(rule):
    assert rule.check(make_history({"train/majority_share": [1.0], "train/entropy": [0.1]})) is None


def test_majority_collapse_needs_the_share_high_for_the_whole_window_and_entropy_falling():
    rule = MajorityCollapse(threshold=0.95, window=4)
    collapse = make_history({"train/majority_share": [0.7, 0.96, 0.97, 1.0, 1.0],
                             "train/entropy": [0.8, 0.5, 0.3, 0.2, 0.1]})
    finding = rule.check(collapse)
    assert finding.fired and finding.values["min_majority_share"] == 0.96 and finding.values["entropy_slope"] < 0
    one_dip = make_history({"train/majority_share": [0.96, 0.97, 0.9, 1.0, 1.0],
                            "train/entropy": [0.8, 0.5, 0.3, 0.2, 0.1]})
    assert not rule.check(one_dip).fired
    steady_entropy = make_history({"train/majority_share": [0.7, 0.96, 0.97, 1.0, 1.0],
                                   "train/entropy": [0.3, 0.3, 0.31, 0.3, 0.32]})  # an easy task, learned
    assert not rule.check(steady_entropy).fired
    assert MajorityCollapse(window=4, require_falling_entropy=False).check(steady_entropy).fired


def test_answer_concentration_fires_on_one_answer_for_every_prompt():
    rule = AnswerConcentration(threshold=0.5, window=3, min_rise=0.25)
    assert rule.check(make_history({"train/answer_concentration": [0.2, 0.2, 0.2, 0.6, 0.8, 0.95]})).fired
    assert not rule.check(make_history({"train/answer_concentration": [0.2, 0.2, 0.2, 0.6, 0.4, 0.95]})).fired
    # letter_counting: "1" is most of the base model's answers from the start; rising from 0.7 is not a collapse
    concentrated = make_history({"train/answer_concentration": [0.7, 0.78, 0.87, 0.87, 0.93, 0.89]})
    assert not rule.check(concentrated).fired and AnswerConcentration(min_rise=0.0).check(concentrated).fired


def test_entropy_collapse_is_relative_to_the_start_and_falling():
    rule = EntropyCollapse(ratio=0.3, window=3)
    falling = make_history({"train/entropy": [1.0, 1.0, 1.0, 0.4, 0.2, 0.1]})
    finding = rule.check(falling)
    assert finding.fired and finding.values["entropy_ratio"] == pytest.approx(0.7 / 3)
    recovering = make_history({"train/entropy": [1.0, 1.0, 1.0, 0.1, 0.2, 0.3]})  # low but rising again
    assert not rule.check(recovering).fired


def test_length_drift_fires_both_ways():
    rule = LengthDrift(max_change=0.5, window=2)
    assert rule.check(make_history({"train/response_length": [100, 100, 100, 30, 20]})).fired  # "Answer: 1"
    assert rule.check(make_history({"train/response_length": [100, 100, 100, 200, 256]})).fired  # runaway
    assert not rule.check(make_history({"train/response_length": [100, 100, 100, 80, 120]})).fired


def test_answer_rate_drop():
    rule = AnswerRateDrop(max_drop=0.3, window=2)
    assert rule.check(make_history({"train/answer_rate": [0.9, 0.9, 0.9, 0.5, 0.4]})).fired
    assert not rule.check(make_history({"train/answer_rate": [0.9, 0.9, 0.9, 0.7, 0.8]})).fired


def test_reward_divergence_self_reward_rises_while_heldout_does_not():
    rule = RewardDivergence(window=5, min_rise=0.005, evals=3)
    rising = {"train/reward/vote": [0.5, 0.6, 0.7, 0.8, 0.9, 0.95]}
    hacked = make_history(rising, {"val/set/mean@8": [0.4, 0.42, 0.35]})
    finding = rule.check(hacked)
    assert finding.fired and finding.values["reward_slope"] > 0.05 and finding.values["heldout_slope"] < 0
    # the same reward curve with held-out accuracy rising is learning, not hacking
    assert not rule.check(make_history(rising, {"val/set/mean@8": [0.4, 0.45, 0.5]})).fired
    # a flat self-reward with flat held-out accuracy is a plateau, not hacking
    flat = make_history({"train/reward/vote": [0.7] * 6}, {"val/set/mean@8": [0.4, 0.4, 0.4]})
    assert not rule.check(flat).fired
    # any held-out set falling counts; the mixed reward stands in when the vote is not logged
    two_sets = make_history({"train/reward/mixed": [0.5, 0.6, 0.7, 0.8, 0.9]},
                            {"val/a/mean@8": [0.4, 0.5, 0.6], "val/b/mean@8": [0.5, 0.5, 0.4]})
    assert rule.check(two_sets).fired


def test_top_answer_share_reads_the_latest_evaluation_against_the_first():
    rule = TopAnswerShare(threshold=0.5, min_rise=0.25)
    assert rule.check(make_history({}, {"val/a/top_answer_share": [0.2, 0.99]})).fired
    assert not rule.check(make_history({}, {"val/a/top_answer_share": [0.99, 0.2]})).fired
    assert not rule.check(make_history({}, {"val/a/top_answer_share": [0.72, 0.93]})).fired  # concentrated task
    assert TopAnswerShare(min_rise=0.0).check(make_history({}, {"val/a/top_answer_share": [0.72, 0.93]})).fired


def test_probe_drop_reads_the_labelled_probe_against_its_best():
    rule = ProbeDrop(max_drop=0.1)
    assert rule.check(HEALTHY) is None  # no probe configured: nothing to read
    rising = make_history({"guard/labelled/probe/mean@4": [0.3, 0.35, 0.4, 0.38]})  # a dip of 0.02: noise
    assert not rule.check(rising).fired
    falling = make_history({"guard/labelled/probe/mean@4": [0.3, 0.45, 0.4, 0.3]})  # 0.15 below its best
    finding = rule.check(falling)
    assert finding.fired and finding.values == {"probe_mean": 0.3, "probe_best": 0.45}


@pytest.mark.parametrize("rule, settings, message", [
    (MajorityCollapse, {"threshold": 1.5}, "MajorityCollapse.threshold=1.5; accepted: a number in [0, 1]"),
    (MajorityCollapse, {"window": 1}, "MajorityCollapse.window=1; accepted: an integer >= 2"),
    (LengthDrift, {"max_change": 0}, "LengthDrift.max_change=0; accepted: a number > 0"),
    (RewardDivergence, {"evals": 1}, "RewardDivergence.evals=1; accepted: an integer >= 2"),
    (RewardDivergence, {"heldout": "train/reward"}, "RewardDivergence.heldout='train/reward'"),
    (ProbeDrop, {"max_drop": 2.0}, "ProbeDrop.max_drop=2.0; accepted: a number in [0, 1]"),
    (FlipRisk, {"source": "val"}, "FlipRisk.source='val'; accepted: probe, train"),
    (BaseDrift, {"window": 0}, "BaseDrift.window=0; accepted: an integer >= 1"),
    (VoteRateDrop, {"max_drop": 0}, "VoteRateDrop.max_drop=0; accepted: a number in (0, 1]"),
    (KLJump, {"max_kl": -1.0}, "KLJump.max_kl=-1.0; accepted: a number > 0 or null"),
])
def test_bad_settings_name_the_field(rule, settings, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        rule(**settings)
