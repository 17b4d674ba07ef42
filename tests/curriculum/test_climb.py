"""End to end on the tiny model: a climb across two levels, its table and plot, and an exact resume."""

import csv
import json

import torch

from conftest import PARITY_REWARD
from srtlab.plot import read_metrics
from srtlab.train import fit

# Two chain_sum levels, one step each, 1 held-out prompt a level, zero-shot (short prompts for the
# character-level tokenizer); the parity reward gives the tiny model varied rewards, so weights move.
CLIMB = ["experiment=curriculum", *PARITY_REWARD, "callbacks.curriculum.tasks.chain_sum.levels=[0,1]",
         "callbacks.curriculum.advance.steps=1", "callbacks.curriculum.eval_size=1", "data.prompt.shots=[]",
         "optim.lr=1e-3", "rollout.sampling.temperature=1.0"]


def _table(run):
    with open(run / "curriculum" / "levels.csv") as f:
        return list(csv.DictReader(f))


def _state(run):
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    [state] = [v for k, v in ckpt["callbacks"].items() if "CurriculumScheduler" in k]
    return ckpt, state


def test_tiny_climb_across_two_levels_and_exact_resume(tiny_cfg, tmp_path):
    straight = tmp_path / "straight"
    fit(tiny_cfg(*CLIMB, "trainer.max_steps=2", run_dir=straight))

    # the level is logged every step, and each step trained on prompts of its level (the step's
    # statistics are measured on the current level's prompts only)
    metrics = read_metrics(straight)
    assert metrics["curriculum/chain_sum/level"] == {1: 0.0, 2: 1.0}
    assert sorted(metrics["curriculum/chain_sum/answer_rate"]) == [1, 2]
    rows = _table(straight)
    assert [(r["step"], r["event"], r["level"]) for r in rows] == [
        ("0", "start", "0"), ("0", "start", "1"), ("1", "level_up", "0"), ("1", "level_up", "1"),
        ("2", "end", "0"), ("2", "end", "1")]
    assert rows[0]["config"] == "min_terms=2 max_terms=2 min_digits=1 max_digits=1"
    assert rows[1]["config"] == "min_terms=3 max_terms=3 min_digits=2 max_digits=2"
    assert (straight / "curriculum" / "climb.png").stat().st_size > 10_000
    samples = (straight / "curriculum" / "samples" / "chain_sum_L1_step2.jsonl").read_text().splitlines()
    assert len(samples) == 1 and len(json.loads(samples[0])["answers"]) == 2  # 1 prompt x k=2 samples
    ckpt, state = _state(straight)
    assert state["level"] == {"chain_sum": 1} and [c["step"] for c in state["changes"]] == [1]

    # stopped after step 1 (just after the level change), then resumed: the same run
    interrupted = tmp_path / "interrupted"
    fit(tiny_cfg(*CLIMB, "trainer.max_steps=1", run_dir=interrupted))
    assert _state(interrupted)[1]["level"] == {"chain_sum": 1}
    fit(tiny_cfg(*CLIMB, "trainer.max_steps=2", "resume=true", run_dir=interrupted))
    resumed_ckpt, resumed_state = _state(interrupted)
    assert resumed_state == state
    assert _table(interrupted) == rows
    for k, v in ckpt["state_dict"].items():
        torch.testing.assert_close(resumed_ckpt["state_dict"][k], v, rtol=0, atol=0)
