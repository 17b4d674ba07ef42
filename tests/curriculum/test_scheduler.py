"""The scheduler's state machine on scripted per-step statistics: rules, warm-up, mixing, resume."""

import copy
import io

import pytest
import torch

from srtlab.curriculum.scheduler import CurriculumScheduler


def scheduler(**kwargs) -> CurriculumScheduler:
    kwargs.setdefault("advance", {"kind": "steps", "steps": 2})
    return CurriculumScheduler(tasks={"chain_sum": {"levels": [0, 1, 2]}}, evaluate=False, **kwargs)


def stats(majority_share=0.5, gt_accuracy=0.1):
    return {"chain_sum": {"majority_share": majority_share, "gt_accuracy": gt_accuracy, "answer_rate": 1.0}}


def test_fixed_steps_climb_and_stay_at_the_top():
    s = scheduler()
    levels = []
    for step in range(1, 8):
        s.observe(step, stats())
        levels.append(s.level["chain_sum"])
    assert levels == [0, 1, 1, 2, 2, 2, 2]
    assert [(c["step"], c["level"]) for c in s.changes] == [(2, 1), (4, 2)]
    assert s.mixture() == [("chain_sum", 2, 1.0)]


def test_label_free_threshold_reads_majority_share():
    s = scheduler(advance={"kind": "threshold", "metric": "majority_share", "threshold": 0.8, "window": 2})
    for step, share in enumerate([0.5, 0.9, 0.7, 0.85, 0.9], start=1):
        moved, _ = s.observe(step, stats(majority_share=share))
        assert moved == (["chain_sum"] if step == 5 else [])
    assert s.level["chain_sum"] == 1 and s.history["chain_sum"] == []


def test_gold_threshold_reads_gt_accuracy_only():
    s = scheduler(advance={"kind": "threshold", "metric": "gt_accuracy", "threshold": 0.5, "window": 1})
    s.observe(1, stats(majority_share=1.0, gt_accuracy=0.2))  # confident but wrong: stays
    assert s.level["chain_sum"] == 0
    s.observe(2, stats(majority_share=0.1, gt_accuracy=0.6))
    assert s.level["chain_sum"] == 1


def test_steps_without_prompts_of_the_level_do_not_count():
    s = scheduler()
    s.observe(1, {})
    s.observe(2, {})
    assert s.level["chain_sum"] == 0 and s.history["chain_sum"] == []


def test_ground_truth_warmup_on_the_previous_level():
    s = scheduler(advance={"kind": "steps", "steps": 1}, gt_warmup_steps=2)
    assert s.observe(1, stats()) == (["chain_sum"], False)
    assert s.mixture() == [("chain_sum", 0, 1.0)] and s.changes[-1]["gt_warmup"] == 2
    assert s.observe(2, stats()) == ([], False)  # warm-up steps do not count towards the rule
    assert s.observe(3, stats()) == ([], True)
    assert s.mixture() == [("chain_sum", 1, 1.0)] and s.history["chain_sum"] == []
    assert s.observe(4, stats()) == (["chain_sum"], False) and s.level["chain_sum"] == 2


def test_mixing_blends_earlier_levels():
    s = scheduler(earlier_share=0.25)
    assert s.mixture() == [("chain_sum", 0, 1.0)]
    for step in range(1, 5):
        s.observe(step, stats())
    assert s.mixture() == [("chain_sum", 2, 0.75), ("chain_sum", 0, 0.125), ("chain_sum", 1, 0.125)]


def test_resume_restores_levels_and_rule_history():
    rule = {"kind": "plateau", "window": 2, "min_delta": 0.05}
    # level 0: at step 6 the last two (0.6, 0.3) average 0.45 against 0.61 before: plateau (and the
    # interruption after step 5 falls inside this window); level 1: at step 10, 0.615 against 0.61
    shares = [0.2, 0.4, 0.6, 0.62, 0.6, 0.3, 0.6, 0.62, 0.61, 0.62]
    straight = scheduler(advance=rule)
    for step, share in enumerate(shares, start=1):
        straight.observe(step, stats(majority_share=share))
    first = scheduler(advance=rule)
    for step, share in enumerate(shares[:5], start=1):
        first.observe(step, stats(majority_share=share))
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)  # as Lightning stores it in a checkpoint
    buffer.seek(0)
    resumed = scheduler(advance=rule)
    resumed.load_state_dict(torch.load(buffer, weights_only=False))
    assert resumed.level == first.level and resumed.history == first.history
    for step, share in enumerate(shares[5:], start=6):
        resumed.observe(step, stats(majority_share=share))
    assert resumed.state_dict() == straight.state_dict()
    assert straight.level["chain_sum"] == 2  # the comparison is not between two idle schedulers
    assert [c["step"] for c in straight.changes] == [6, 10]


def test_checkpoint_of_another_curriculum_is_refused():
    state = copy.deepcopy(scheduler().state_dict())
    state["level"]["products"] = 1
    with pytest.raises(ValueError, match="tasks \\['products'\\] this config lacks"):
        scheduler().load_state_dict(state)


@pytest.mark.parametrize("kwargs,message", [
    ({"earlier_share": 1.0}, "earlier_share=1.0"),
    ({"advance": {"kind": "never"}}, "kind='never'"),
    ({"gt_warmup_steps": -1}, "gt_warmup_steps=-1"),
])
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        scheduler(**kwargs)


def test_bad_level_fails_when_built():
    with pytest.raises(ValueError, match="'num_letters' does not exist for task 'chain_sum'"):
        CurriculumScheduler(tasks={"chain_sum": {"levels": [{"attributes": {"num_letters": 0}}]}})


def test_start_level_and_its_bounds():
    s = CurriculumScheduler(tasks={"chain_sum": {"levels": [0, 1, 2], "start": 2}}, evaluate=False)
    assert s.mixture() == [("chain_sum", 2, 1.0)]
    s.observe(1, stats())
    assert s.level["chain_sum"] == 2 and not s.changes  # already at the top
    with pytest.raises(ValueError, match=r"tasks.chain_sum.start=3; accepted: a level of the task, 0..2"):
        CurriculumScheduler(tasks={"chain_sum": {"levels": [0, 1, 2], "start": 3}})


def test_warmup_swaps_in_the_gold_reward_and_back():
    from types import SimpleNamespace

    weights, mixtures = [], []
    policy = SimpleNamespace(override_reward_weights=lambda owner, w: weights.append(w))  # the public method it calls
    s = scheduler(advance={"kind": "steps", "steps": 1}, gt_warmup_steps=1)
    s._datamodule = SimpleNamespace(set_mixture=mixtures.append)
    s._apply(policy)
    assert weights[-1] is None  # the config's own reward
    s.observe(1, stats())
    s._apply(policy)
    assert weights[-1] == {"ground_truth": 1.0} and mixtures[-1] == [("chain_sum", 0, 1.0)]
    s.observe(2, stats())
    s._apply(policy)
    assert weights[-1] is None and mixtures[-1] == [("chain_sum", 1, 1.0)]
