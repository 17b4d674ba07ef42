"""The guard's actions on the tiny model: stop, rollback (weights and learning rate), resume, bad settings."""

import json

import lightning as L
import pytest
import torch

from conftest import PARITY_REWARD
from srtlab.guard.callback import CollapseGuard
from srtlab.guard.remedy import Remedy, best_score
from srtlab.guard.rules import MajorityCollapse
from srtlab.plot import read_metrics
from srtlab.train import build, check_config, fit

# The tiny model never answers, so its majority share is 0 every step: a threshold of 0 makes the
# majority rule fire as soon as its window (2 steps) is full, at step 2. The other rules and the unlabelled probe
# are removed (its own tests are below), so the rollback target is chosen at evaluations.
OTHER_RULES = ("concentration", "entropy", "length", "answer_rate", "top_answer", "flips", "drift", "vote_drop")
FIRE_AT_2 = ["callbacks.guard.rules.majority.threshold=0.0", "callbacks.guard.rules.majority.window=2",
             "callbacks.guard.rules.majority.require_falling_entropy=false",
             *[f"~callbacks.guard.rules.{name}" for name in OTHER_RULES],
             "callbacks.guard.probe=null", "callbacks.guard.best_by=top_answer_share"]
QUIET = [*PARITY_REWARD, "eval_before=false", "eval_after=false", "trainer.val_check_interval=100",
         "optim.lr=1e-3", "rollout.sampling.temperature=1.0"]


def _events(run):
    return [json.loads(line) for line in (run / "guard" / "events.jsonl").read_text().splitlines()]


def test_stop_ends_the_fit_cleanly_with_the_reason_saved(tiny_cfg, tmp_path):
    run = tmp_path / "run"
    results = fit(tiny_cfg(*QUIET, "guard=stop", *FIRE_AT_2, "trainer.max_steps=6", run_dir=run))
    assert results["steps"] == 2  # stopped at the first event, not at max_steps
    stop = json.loads((run / "guard" / "stop.json").read_text())
    assert stop["step"] == 2 and stop["rules"] == ["majority"] and "majority fired at step 2" in stop["reason"]
    assert stop["values"]["majority"]["min_majority_share"] == 0.0
    assert [e["action"] for e in _events(run)] == ["stop"]
    ckpt = torch.load(run / "guard" / "stop.ckpt", weights_only=True)  # resumable: full training state
    assert ckpt["global_step"] == 2 and ckpt["optimizer_states"] and ckpt["callbacks"]["CollapseGuard"]["events"] == 1
    metrics = read_metrics(run)  # rows at optimizer steps taken: the guard stopped after step 2
    assert metrics["guard/majority/fired"] == {2: 1.0} and metrics["guard/events"][2] == 1.0


def test_warn_keeps_training_and_respects_the_cooldown(tiny_cfg, tmp_path):
    run = tmp_path / "run"
    results = fit(tiny_cfg(*QUIET, "guard=warn", *FIRE_AT_2, "callbacks.guard.cooldown=3", "trainer.max_steps=6",
                           run_dir=run))
    assert results["steps"] == 6
    assert [e["step"] for e in _events(run)] == [2, 5]  # fires every step; acts at 2, then after 3 quiet steps


class _WeightsAfter(L.Callback):
    """Records the policy's weights and learning rates after every other callback's on_train_batch_end."""

    def __init__(self):
        self.weights, self.lrs = {}, {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.weights[trainer.global_step] = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}
        self.lrs[trainer.global_step] = [g["lr"] for g in trainer.optimizers[0].param_groups]


def test_rollback_restores_the_best_weights_and_lowers_the_learning_rate(tiny_cfg, tmp_path):
    cfg = tiny_cfg(*QUIET, "guard=rollback", *FIRE_AT_2, "callbacks.guard.cooldown=10", "trainer.max_steps=3",
                   "callbacks.guard.remedy.lr_factor=0.25")
    check_config(cfg)
    module, datamodule, trainer = build(cfg)
    probe = _WeightsAfter()
    trainer.callbacks.append(probe)  # after the guard: sees the restored weights
    trainer.fit(module, datamodule=datamodule)

    # no evaluation ran during training, so the best checkpoint is the starting weights (step 0)
    [event] = _events(tmp_path / "run")
    assert event["action"] == "rollback" and event["step"] == 2 and event["restored_step"] == 0
    assert event["remedy"] == {"lr": [pytest.approx(2.5e-4)]}
    best = torch.load(tmp_path / "run" / "guard" / "best.ckpt", weights_only=True)["state_dict"]
    start = {k.removeprefix("model."): v for k, v in best.items() if k.startswith("model.")}
    assert any(not torch.equal(start[k], v) for k, v in probe.weights[1].items())  # step 1 had trained
    for k, v in probe.weights[2].items():  # after the rollback at step 2: the starting weights again
        torch.testing.assert_close(v, start[k], rtol=0, atol=0)
    # the lower rate is used by the next step (the scheduler's base rate was lowered too)
    assert probe.lrs[1] == [pytest.approx(1e-3)] and probe.lrs[3] == [pytest.approx(2.5e-4)]
    assert read_metrics(tmp_path / "run")["train/lr"] == pytest.approx({1: 1e-3, 2: 1e-3, 3: 2.5e-4})
    assert trainer.lr_scheduler_configs[0].scheduler.base_lrs == [pytest.approx(2.5e-4)]
    assert any(not torch.equal(probe.weights[3][k], v) for k, v in start.items())  # and training went on


def test_rollback_target_follows_the_evaluations(tiny_cfg, tmp_path):
    """With evaluations during training, the best checkpoint is the latest best-scoring one (ties: later)."""
    run = tmp_path / "run"
    fit(tiny_cfg(*PARITY_REWARD, "eval_after=false", "optim.lr=1e-3", "guard=rollback", *FIRE_AT_2,
                 "callbacks.guard.cooldown=10", "trainer.max_steps=4", "trainer.val_check_interval=2", run_dir=run))
    # rolled back at step 2 to the evaluation before training (step 0); the evaluation at step 2 ties, so it
    # becomes the target (last.ckpt is written at step 4 before that step's evaluation); step 4 is in the cooldown
    assert [(e["step"], e["restored_step"]) for e in _events(run)] == [(2, 0)]
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"]["CollapseGuard"]
    assert state["best"]["step"] == 2 and state["best"]["score"] == 0.0 and state["rollbacks"] == 1


def test_best_score():
    metrics = {"val/a/top_answer_share": 0.2, "val/b/top_answer_share": 0.6, "val/a/mean@8": 0.5,
               "val/b/mean@8": 0.3, "val/a/maj@8": 0.9}
    assert best_score(metrics, "top_answer_share") == -0.6  # the worst set counts
    assert best_score(metrics, "heldout_mean") == pytest.approx(0.4)
    assert best_score({"val/a/maj@8": 0.9}, "heldout_mean") is None


def test_resume_keeps_the_guards_state(tiny_cfg, tmp_path):
    steps = [*QUIET, "guard=warn", *FIRE_AT_2, "callbacks.guard.cooldown=3"]
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    fit(tiny_cfg(*steps, "trainer.max_steps=6", run_dir=straight))
    fit(tiny_cfg(*steps, "trainer.max_steps=3", run_dir=interrupted))  # "killed" after step 3, in the cooldown
    fit(tiny_cfg(*steps, "trainer.max_steps=6", "resume=true", run_dir=interrupted))

    def state(run):
        return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"]["CollapseGuard"]

    a, b = state(straight), state(interrupted)
    assert a["history"]["series"] == b["history"]["series"] and len(a["history"]["series"]["train/loss"]) == 6
    assert (a["quiet_until"], a["events"]) == (b["quiet_until"], b["events"]) == (8, 2)
    # the resumed run kept the cooldown: its events are the uninterrupted run's
    assert [e["step"] for e in _events(interrupted)] == [e["step"] for e in _events(straight)] == [2, 5]


def test_bad_guard_settings_fail_in_check_config(tiny_cfg):
    with pytest.raises(ValueError, match=r"callbacks.guard.action='explode'; accepted: warn, stop, rollback"):
        check_config(tiny_cfg("guard=warn", "callbacks.guard.action=explode"))
    with pytest.raises(ValueError, match=r"callbacks.guard.rules.majority.threshold=2.0; accepted"):
        check_config(tiny_cfg("guard=warn", "callbacks.guard.rules.majority.threshold=2.0"))
    with pytest.raises(ValueError, match=r"callbacks.guard.remedy.lr_factor=0.0; accepted"):
        check_config(tiny_cfg("guard=rollback", "callbacks.guard.remedy.lr_factor=0.0"))


class _Trainer:
    def __init__(self):
        self.callbacks = []


def test_remedies_without_their_hook_fail_before_training():
    by_evals = {"best_by": "top_answer_share"}  # no unlabelled probe here to score the rollback target
    guard = CollapseGuard("rollback", {"m": MajorityCollapse()}, remedy=Remedy(kl_coef=0.1), **by_evals)
    with pytest.raises(ValueError, match=r"callbacks.guard.remedy.kl_coef=0.1 needs object.set_kl_coef"):
        guard.setup(_Trainer(), object(), "fit")
    guard = CollapseGuard("rollback", {"m": MajorityCollapse()}, remedy=Remedy(curriculum_back=True), **by_evals)
    with pytest.raises(ValueError, match=r"curriculum_back=true but no callback has step_back"):
        guard.setup(_Trainer(), object(), "fit")
    guard = CollapseGuard("rollback", {"m": MajorityCollapse()}, remedy=Remedy(gold_mix={"vote": 1.0}, gold_mix_steps=3),
                          label_free=False, **by_evals)
    with pytest.raises(ValueError, match=r"gold_mix=\{'vote': 1.0\} needs object.override_reward_weights"):
        guard.setup(_Trainer(), object(), "fit")
    with pytest.raises(ValueError, match=r"gold_mix_steps=0; accepted"):
        CollapseGuard("rollback", {"m": MajorityCollapse()}, remedy=Remedy(gold_mix={"vote": 1.0}), **by_evals)
    CollapseGuard("warn", {"m": MajorityCollapse()}, remedy=Remedy(kl_coef=0.1)).setup(_Trainer(), object(), "fit")
    with pytest.raises(ValueError, match=r"CollapseGuard.skip=.*; accepted"):
        CollapseGuard("warn", {"m": MajorityCollapse()}, skip=3)
    guard = CollapseGuard("warn", {"m": MajorityCollapse()}, skip={"probability": 0.7})
    with pytest.raises(ValueError, match=r"callbacks.guard.skip needs object.set_update_skips"):
        guard.setup(_Trainer(), object(), "fit")


class _Curriculum(L.Callback):
    def __init__(self):
        self.backs = 0

    def step_back(self, pl_module):
        self.backs += 1


def test_rollback_applies_kl_gold_mix_and_curriculum_remedies(tiny_cfg, tmp_path):
    """The hooks the remedies call (the module's set_kl_coef / override_reward_weights, a curriculum's step_back)."""
    cfg = tiny_cfg(*QUIET, "guard=rollback", *FIRE_AT_2, "callbacks.guard.cooldown=10", "trainer.max_steps=4",
                   "callbacks.guard.label_free=false",  # the gold mix reads gold answers
                   "callbacks.guard.remedy.lr_factor=null", "callbacks.guard.remedy.kl_coef=0.05",
                   "+callbacks.guard.remedy.gold_mix={parity: 0.5, ground_truth: 0.5}",
                   "callbacks.guard.remedy.gold_mix_steps=1", "callbacks.guard.remedy.curriculum_back=true")
    module, datamodule, trainer = build(cfg)
    calls = []
    module.set_kl_coef = lambda x: calls.append(("kl", x))
    module.override_reward_weights = lambda owner, w: calls.append((owner, w))
    curriculum = _Curriculum()
    trainer.callbacks.append(curriculum)
    trainer.fit(module, datamodule=datamodule)
    # at step 2: KL up, gold mixed in for one step, curriculum back; at step 3 the guard ends its own override
    assert calls == [("kl", 0.05), ("guard", {"parity": 0.5, "ground_truth": 0.5}), ("guard", None)]
    assert curriculum.backs == 1
    [event] = _events(tmp_path / "run")
    assert event["remedy"] == {"kl_coef": 0.05, "gold_mix": {"weights": {"parity": 0.5, "ground_truth": 0.5},
                                                            "until_step": 3}, "curriculum_back": True}


class _RewardWeights(L.Callback):
    """The reward weights in force for each training step (read before the step: what it trains on)."""

    def __init__(self):
        self.by_step = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.by_step[trainer.global_step + 1] = dict(pl_module.reward.weights)


# A two-level climb (level 1 is the top: it never climbs again) moving up after step 1, and a guard that rolls
# back after step 2 with a gold mix for 2 steps (steps 3 and 4)
CLIMB_WITH_GUARD = ["experiment=curriculum", *PARITY_REWARD, "callbacks.curriculum.tasks.chain_sum.levels=[0,1]",
                    "callbacks.curriculum.advance.steps=1", "callbacks.curriculum.evaluate=false",
                    "data.prompt.shots=[]", "optim.lr=1e-3", "guard=rollback", *FIRE_AT_2,
                    "callbacks.guard.label_free=false",
                    "callbacks.guard.cooldown=100", "callbacks.guard.remedy.lr_factor=null",
                    "+callbacks.guard.remedy.gold_mix={parity: 0.5, ground_truth: 0.5}",
                    "callbacks.guard.remedy.gold_mix_steps=2", "trainer.max_steps=6"]
CONFIG, GOLD, MIX = {"parity": 1.0}, {"parity": 0.0, "ground_truth": 1.0}, {"parity": 0.5, "ground_truth": 0.5}


def _weights_by_step(tiny_cfg, run, *extra):
    module, datamodule, trainer = build(tiny_cfg(*CLIMB_WITH_GUARD, *extra, run_dir=run))
    seen = _RewardWeights()
    trainer.callbacks.append(seen)
    trainer.fit(module, datamodule=datamodule)
    [event] = _events(run)
    assert event["step"] == 2 and event["remedy"]["gold_mix"]["until_step"] == 4
    return seen.by_step


def test_the_curriculums_step_back_does_not_wipe_the_guards_gold_mix(tiny_cfg, tmp_path):
    """The guard sets its gold mix, then steps the curriculum back; the curriculum then ends only its own
    override (none here), so steps 3 and 4 train on the gold mix (before: the step back restored the config's)."""
    seen = _weights_by_step(tiny_cfg, tmp_path / "run", "callbacks.guard.remedy.curriculum_back=true")
    assert seen == {1: CONFIG, 2: CONFIG, 3: MIX, 4: MIX, 5: CONFIG, 6: CONFIG}


def test_a_gold_mix_during_a_warmup_ends_into_the_weights_in_force_then(tiny_cfg, tmp_path):
    """The guard fires during the curriculum's ground-truth warm-up (steps 2-3); its gold mix, the newest override,
    wins for steps 3-4; after it, the warm-up is over and the config's weights return (before: the guard restored
    the warm-up's gold weights it had seen when it fired, for the rest of the run)."""
    seen = _weights_by_step(tiny_cfg, tmp_path / "run", "callbacks.curriculum.gt_warmup_steps=2")
    assert seen == {1: CONFIG, 2: GOLD, 3: MIX, 4: MIX, 5: CONFIG, 6: CONFIG}


def test_reward_overrides_survive_a_resume(tiny_cfg, tmp_path):
    """The overrides in force are the module's state, saved in checkpoints: a run resumed mid-mix goes on with it."""
    straight = _weights_by_step(tiny_cfg, tmp_path / "straight", "callbacks.curriculum.gt_warmup_steps=2")
    module, datamodule, trainer = build(tiny_cfg(*CLIMB_WITH_GUARD, "callbacks.curriculum.gt_warmup_steps=2",
                                                 "trainer.max_steps=3", run_dir=tmp_path / "resumed"))
    trainer.fit(module, datamodule=datamodule)
    module, datamodule, trainer = build(tiny_cfg(*CLIMB_WITH_GUARD, "callbacks.curriculum.gt_warmup_steps=2",
                                                 "resume=true", run_dir=tmp_path / "resumed"))
    seen = _RewardWeights()
    trainer.callbacks.append(seen)
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(tmp_path / "resumed" / "checkpoints" / "last.ckpt"))
    assert seen.by_step == {k: v for k, v in straight.items() if k > 3}


LABEL_FREE_RULES = {"majority", "concentration", "entropy", "length", "answer_rate", "top_answer", "flips", "drift",
                    "vote_drop"}


@pytest.mark.parametrize("option", ["off", "warn", "stop", "rollback", "labelled"])
def test_guard_options_compose_and_validate(option, tiny_cfg):
    cfg = tiny_cfg(f"guard={option}", "experiment=curriculum")
    check_config(cfg)  # builds the guard (its rules and remedy validate) next to the curriculum
    assert set(cfg.callbacks) == {"guard", "curriculum"}
    assert (cfg.callbacks.guard is None) == (option == "off")
    if option == "labelled":  # the one choice that reads gold: the divergence rule, the best by held-out mean@k
        guard = cfg.callbacks.guard
        assert set(guard.rules) == LABEL_FREE_RULES | {"divergence"} and not guard.label_free
        assert guard.best_by == "heldout_mean" and guard.action == "rollback"
    elif option != "off":
        guard = cfg.callbacks.guard
        assert guard.action == option and set(guard.rules) == LABEL_FREE_RULES and guard.label_free
        assert guard.best_by == "vote_rate" and guard.probe is not None and guard.labelled_probe is None


def test_the_guard_sees_the_same_signals_wherever_it_is_listed(tiny_cfg, tmp_path):
    histories = []
    for place in ("first", "last"):
        cfg = tiny_cfg(*QUIET, "guard=warn", *FIRE_AT_2, "trainer.max_steps=3", run_dir=tmp_path / place)
        module, datamodule, trainer = build(cfg)
        [guard] = [cb for cb in trainer.callbacks if isinstance(cb, CollapseGuard)]
        trainer.callbacks.remove(guard)
        trainer.callbacks.insert(0 if place == "first" else len(trainer.callbacks), guard)  # before/after rollouts
        trainer.fit(module, datamodule=datamodule)
        histories.append(guard.history.series)
    first, last = histories
    assert first == last and len(first["train/majority_share"]) == 3 and "train/reward/mixed" in first


def test_labelled_probe_is_scored_logged_and_checked(tiny_cfg, tmp_path):
    """callbacks.guard.labelled_probe (guard=labelled only): the held-out prompts with gold scored every 2 steps,
    logged as guard/labelled/probe/*, and the rule that reads them added as "labelled_probe" (the tiny model never
    answers: mean 0, no drop)."""
    run = tmp_path / "run"
    cfg = tiny_cfg(*QUIET, "guard=labelled", "callbacks.guard.action=warn", "callbacks.guard.probe=null",
                   "callbacks.guard.labelled_probe={size: 2, every: 2, k: 2}", "trainer.max_steps=4", run_dir=run)
    check_config(cfg)
    fit(cfg)
    metrics = read_metrics(run)
    assert sorted(metrics["guard/labelled/probe/mean@2"]) == [2, 4] and metrics["guard/labelled/probe/mean@2"][2] == 0
    assert {"guard/labelled/probe/maj@2", "guard/labelled/probe/pass@2"} <= set(metrics)
    fired = metrics["guard/labelled/labelled_probe/fired"]  # checked at the probe's steps (repeated between)
    assert {2, 4} <= set(fired) and not any(fired.values())
    assert not any(k.startswith("guard/probe/") for k in metrics)


def test_bad_probe_settings_fail_in_check_config(tiny_cfg):
    with pytest.raises(ValueError, match=r"callbacks.guard.probe.every=0; accepted: an integer >= 1"):
        check_config(tiny_cfg("guard=warn", "callbacks.guard.probe.every=0"))
    with pytest.raises(ValueError, match=r"callbacks.guard.labelled_probe.every=0; accepted: an integer >= 1"):
        check_config(tiny_cfg("guard=labelled", "callbacks.guard.labelled_probe={every: 0}"))
    with pytest.raises(ValueError, match=r"callbacks.guard.flips.max_flip_rate=2.0; accepted"):
        check_config(tiny_cfg("guard=warn", "callbacks.guard.flips.max_flip_rate=2.0"))
    with pytest.raises(ValueError, match=r"callbacks.guard.skip.probability=0.0; accepted"):
        check_config(tiny_cfg("guard=warn", "callbacks.guard.skip={probability: 0.0}"))


@pytest.mark.parametrize("override, key", [
    ("+callbacks.guard.rules.divergence={_target_: srtlab.guard.rules.RewardDivergence}", "callbacks.guard.rules.divergence"),
    ("callbacks.guard.best_by=heldout_mean", "callbacks.guard.best_by='heldout_mean'"),
    ("callbacks.guard.labelled_probe={size: 2}", "callbacks.guard.labelled_probe"),
    ("callbacks.guard.remedy={gold_mix: {vote: 0.5, ground_truth: 0.5}, gold_mix_steps: 2}",
     "callbacks.guard.remedy.gold_mix"),
])
@pytest.mark.parametrize("option", ["warn", "stop", "rollback"])
def test_label_free_presets_refuse_what_reads_gold(option, override, key, tiny_cfg):
    """guard=warn|stop|rollback are label-free: a rule, rollback criterion, probe or remedy that reads gold answers
    is a one-line config error naming its key; guard=labelled (label_free: false) takes the same."""
    with pytest.raises(ValueError, match=r"accepted: .*label_free: true") as err:
        check_config(tiny_cfg(f"guard={option}", override))
    assert key in str(err.value) and len(str(err.value).splitlines()) == 1
    check_config(tiny_cfg("guard=labelled", override.lstrip("+")))  # the labelled guard takes it
