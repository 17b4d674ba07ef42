"""Each advancement rule on scripted per-step statistics."""

import pytest

from srtlab.curriculum.rules import AdvanceRule


def test_after_fixed_steps():
    rule = AdvanceRule(kind="steps", steps=3)
    assert not rule([0.1, 0.1]) and rule([0.1, 0.1, 0.1])


def test_threshold_needs_a_full_window_above():
    rule = AdvanceRule(kind="threshold", threshold=0.8, window=2)
    assert not rule([0.9])  # window not full
    assert not rule([0.9, 0.7, 0.85])  # last two: 0.7, 0.85
    assert rule([0.9, 0.7, 0.85, 0.8])  # last two 0.85, 0.8 >= 0.8


def test_plateau_compares_the_last_two_windows():
    rule = AdvanceRule(kind="plateau", window=2, min_delta=0.05)
    assert not rule([0.5, 0.6, 0.56])  # fewer than 2 windows
    assert not rule([0.1, 0.2, 0.5, 0.6])  # (0.5+0.6)/2 - (0.1+0.2)/2 = 0.4, still improving
    assert rule([0.5, 0.6, 0.56, 0.58])  # 0.57 - 0.55 = 0.02 < 0.05


def test_min_and_max_steps():
    rule = AdvanceRule(kind="threshold", threshold=0.5, window=1, min_steps=3, max_steps=5)
    assert not rule([0.9, 0.9])  # held back by min_steps
    assert rule([0.9, 0.9, 0.9])
    assert not rule([0.1] * 4) and rule([0.1] * 5)  # forced up by max_steps


@pytest.mark.parametrize("kwargs,message", [
    ({"kind": "accuracy"}, "kind='accuracy'; accepted: steps, threshold, plateau"),
    ({"metric": "reward"}, "metric='reward'; accepted: majority_share, gt_accuracy, answer_rate"),
    ({"window": 0}, "window=0"),
    ({"max_steps": 2, "min_steps": 3}, "max_steps=2"),
])
def test_bad_rules_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdvanceRule(**kwargs)
