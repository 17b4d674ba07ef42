"""The signal helpers on hand-made sequences."""

import pytest

from srtlab.guard.signals import History, relative_change, self_reward_name, slope, window


def test_slope_is_the_least_squares_slope():
    assert slope([1.0, 2.0, 3.0]) == pytest.approx(1.0)
    assert slope([3.0, 1.0, 2.0]) == pytest.approx(-0.5)  # x=0,1,2; cov=-1, var=2
    assert slope([5.0]) == 0.0 and slope([2.0, 2.0, 2.0]) == 0.0


def test_window_needs_enough_values():
    assert window([1.0, 2.0], 3) is None
    assert window([1.0, 2.0, 3.0, 4.0], 3) == [2.0, 3.0, 4.0]


def test_relative_change_with_a_zero_baseline():
    assert relative_change(15.0, 10.0) == pytest.approx(0.5)
    assert relative_change(5.0, 0.0) == 0.0


def test_history_replaces_a_repeated_step_freezes_baselines_and_round_trips():
    h = History()
    h.add(1, {"train/entropy": 1.0})
    h.add(1, {"train/entropy": 2.0})  # the same step logged again (resume): the later value wins
    h.add(2, {"train/entropy": 4.0, "val/a/mean@4": 0.3})
    assert h.values("train/entropy") == [2.0, 4.0]
    h.freeze_baselines(2)
    assert h.baseline == {"train/entropy": 3.0}  # val/a/mean@4 has one value only
    h.add(3, {"train/entropy": 100.0})
    h.freeze_baselines(2)
    assert h.baseline["train/entropy"] == 3.0  # frozen
    assert h.names("val/*/mean@*") == ["val/a/mean@4"]
    again = History.from_state(h.state_dict())
    assert again.series == h.series and again.baseline == h.baseline
    h.clear_windows()
    assert h.series == {} and h.baseline == {"train/entropy": 3.0}


def test_self_reward_prefers_the_vote():
    h = History()
    assert self_reward_name(h) is None
    h.add(1, {"train/reward/mixed": 0.5})
    assert self_reward_name(h) == "train/reward/mixed"
    h.add(1, {"train/reward/vote": 0.4})
    assert self_reward_name(h) == "train/reward/vote"
