"""The unlabelled probe, the per-prompt histories and TTRL-Guard's update skips on the tiny model."""

import json
from types import SimpleNamespace

import pytest
import torch
from test_guard_actions import OTHER_RULES, QUIET, _events

from srtlab.guard.callback import CollapseGuard
from srtlab.guard.rules import MajorityCollapse
from srtlab.plot import read_metrics
from srtlab.seeds import seed_for
from srtlab.train import build, check_config, fit
from srtlab.types import Prompt

PROBE = "callbacks.guard.probe={size: 2, every: 2, k: 2, kl: true, rephrase: auto}"
SIGNALS = {"majority_share", "answer_rate", "base_agreement", "base_agreement_all", "vote_rate", "distinct_ratio", "kl",
           "rephrase_agreement", "flip_rate", "at_risk", "eligible"}


class _Spy:
    """An engine wrapper that records every generate call's prompts and seed."""

    def __init__(self, engine, calls):
        self.engine, self.calls = engine, calls

    def generate(self, prompts, n, sampling, seed, prompt_ids=None):
        self.calls.append((list(prompts), seed))
        return self.engine.generate(prompts, n, sampling, seed, prompt_ids)

    def __getattr__(self, name):
        return getattr(self.engine, name)


def test_the_probe_logs_its_signals_every_few_steps_and_reads_no_gold(tiny_cfg, tmp_path):
    run = tmp_path / "run"
    cfg = tiny_cfg(*QUIET, "guard=warn", PROBE, "trainer.max_steps=4", run_dir=run)
    check_config(cfg)
    module, datamodule, trainer = build(cfg)
    calls = []
    real = module.engine
    module.engine = lambda: _Spy(real(), calls)
    trainer.fit(module, datamodule=datamodule)

    metrics = read_metrics(run)
    for name in SIGNALS:  # before training (the base model's votes) and every 2 steps
        assert sorted(metrics[f"guard/probe/{name}"]) == [0, 2, 4], name
    assert metrics["guard/probe/base_agreement"][0] == 1.0 and metrics["guard/probe/kl"][0] == 0.0
    assert sorted(metrics["time/guard"]) == [1, 2, 3, 4] and "time/guard_base_probe" in metrics
    assert [json.loads(line)["step"] for line in (run / "guard" / "probe.jsonl").read_text().splitlines()] == [0, 2, 4]
    # what the probe sampled: training questions, twice (as asked and rephrased), with no gold answer anywhere
    probe_seeds = {seed_for(0, "guard_watch", "original"), seed_for(0, "guard_watch", "rephrased")}
    sampled = [prompts for prompts, seed in calls if seed in probe_seeds]
    assert len(sampled) == 2 * 3 and all(len(p) == 2 for p in sampled)
    for prompt in (p for prompts in sampled for p in prompts):  # copies: no gold answer, no item metadata
        assert prompt.answer is None and set(prompt.metadata) == {"question"}
    assert {p.metadata["question"] for p in sampled[0]} <= {p.messages[-1]["content"] for p in datamodule.train.prompts}
    assert sampled[1][0].messages[-1]["content"].startswith("Count the letter")  # letter_counting, asked another way


def test_resume_keeps_the_per_prompt_histories_and_the_base_votes(tiny_cfg, tmp_path):
    """A run killed after step 3 and resumed guards as the uninterrupted one: the same history, per-prompt votes
    (training and probe), the base model's probe votes (not sampled again) and the same logged signals."""
    steps = [*QUIET, "guard=warn", PROBE, "callbacks.guard.skip={probability: 0.7}"]
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    fit(tiny_cfg(*steps, "trainer.max_steps=6", run_dir=straight))
    fit(tiny_cfg(*steps, "trainer.max_steps=3", run_dir=interrupted))
    fit(tiny_cfg(*steps, "trainer.max_steps=6", "resume=true", run_dir=interrupted))

    def state(run):
        return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"]["CollapseGuard"]

    a, b = state(straight), state(interrupted)
    assert a["train_votes"] == b["train_votes"] and sum(len(v) for v in a["train_votes"]["visits"].values()) == 6 * 2
    assert a["probe_votes"] == b["probe_votes"] and all(len(v) == 4 for v in a["probe_votes"]["visits"].values())
    assert a["probe_base"] == b["probe_base"] and a["probe_base"]["step"] == 0
    assert a["history"] == b["history"]
    probe_steps = [json.loads(line)["step"] for line in (interrupted / "guard" / "probe.jsonl").read_text().splitlines()]
    assert probe_steps == [0, 2, 4, 6]  # the base probe ran once
    for name in ("guard/probe/vote_rate", "guard/probe/kl", "guard/train/flip_rate"):
        assert read_metrics(straight)[name] == read_metrics(interrupted)[name]


def test_rollback_to_the_probe_step_closest_to_the_base_models_votes(tiny_cfg, tmp_path):
    """best_by: vote_rate scores the unlabelled probe (the tiny model never answers: a tie at 0 every probe, so the
    latest probe before the event wins); the event says what it read and that no gold was read."""
    run = tmp_path / "run"
    fit(tiny_cfg(*QUIET, "guard=rollback", "callbacks.guard.probe={size: 2, every: 2, k: 2}",
                 "callbacks.guard.rules.majority.threshold=0.0", "callbacks.guard.rules.majority.window=3",
                 "callbacks.guard.rules.majority.require_falling_entropy=false",
                 *[f"~callbacks.guard.rules.{name}" for name in OTHER_RULES],
                 "callbacks.guard.cooldown=10", "trainer.max_steps=4", run_dir=run))
    [event] = _events(run)
    assert event["step"] == 3 and event["restored_step"] == 2 and event["best_by"] == "vote_rate"
    assert event["uses_labels"] is False and event["reads"] == {"majority": ["train/majority_share", "train/entropy"]}


class _Module:
    def __init__(self):
        self.skips = []

    def set_update_skips(self, owner, skips):
        self.skips.append((owner, skips))


def test_update_skips_follow_the_prompts_at_risk():
    """TTRL-Guard: every training prompt whose question is at risk (in training or at the probe) is skipped with
    p = 0.7; a question that settles is released."""
    guard = CollapseGuard("warn", {"m": MajorityCollapse()}, skip={"probability": 0.7, "sources": ["train"]})
    prompts = [Prompt(id=f"t/train/{i}", messages=[{"role": "user", "content": q}], task="t")
               for i, q in enumerate(["1+1", "2+2", "1+1"])]
    trainer = SimpleNamespace(datamodule=SimpleNamespace(train=SimpleNamespace(prompts=prompts)))
    module = _Module()
    for step, answer in enumerate(["2", "3", "2", "3", "2"], start=1):
        guard._record_votes(trainer, step, [("t/train/0", answer, 0.9), ("t/train/1", "4", 0.9)])
    guard.probe_votes.record("2+2", 1, "4", 1.0)
    assert guard._update_skips(trainer, module) == 2
    assert module.skips[-1] == ("guard", {"t/train/0": 0.7, "t/train/2": 0.7})
    for step in range(6, 17):  # "1+1" settles on "2": 4 flips in its last 15 revisits, below 0.3
        guard._record_votes(trainer, step, [("t/train/2", "2", 0.9)])
    assert guard._update_skips(trainer, module) == 0 and module.skips[-1] == ("guard", None)


@pytest.mark.parametrize("bad, message", [
    ({"size": 0}, "callbacks.guard.probe.size=0; accepted: an integer >= 1"),
    ({"k": 1}, "callbacks.guard.probe.k=1; accepted: an integer >= 2"),
    ({"rephrase": ""}, "callbacks.guard.probe.rephrase=''; accepted: auto"),
])
def test_bad_unlabelled_probe_settings_name_the_key(bad, message, tiny_cfg):
    key, value = next(iter(bad.items()))
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        check_config(tiny_cfg("guard=warn", f"callbacks.guard.probe.{key}={value!r}" if isinstance(value, str)
                              else f"callbacks.guard.probe.{key}={value}"))
