"""A label-free climb of MATH-style levels on the tiny model, from a tiny jsonl of levels 1-3."""

import csv
import json

from conftest import PARITY_REWARD
from srtlab.plot import read_metrics
from srtlab.train import fit

LEVELS = "[" + ", ".join(f'{{name: "Level {i}", where: {{level: {i}}}}}' for i in (1, 2, 3)) + "]"


def test_climb_of_dataset_levels(tiny_cfg, tmp_path):
    rows = [{"problem": f"{lvl}00+{a}?", "solution": f"\\boxed{{{100 * lvl + a}}}", "level": lvl}
            for lvl in (1, 2, 3) for a in range(8)]
    data = tmp_path / "mini.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    run = tmp_path / "run"
    fit(tiny_cfg("experiment=curriculum_math", *PARITY_REWARD, f"data.source.path={data}", "data.source.val_path=null",
                 "data.prompt.instruction=''", f"callbacks.curriculum.tasks.math12k.levels={LEVELS}",
                 "callbacks.curriculum.advance.kind=steps", "callbacks.curriculum.advance.steps=1",
                 "callbacks.curriculum.advance.min_steps=1", "callbacks.curriculum.advance.max_steps=null",
                 "callbacks.curriculum.eval_size=1", "trainer.max_steps=2", run_dir=run))

    # one level up per step, each step's statistics measured on that level's prompts
    metrics = read_metrics(run)
    assert metrics["curriculum/math12k/level"] == {1: 0.0, 2: 1.0}
    assert sorted(metrics["curriculum/math12k/answer_rate"]) == [1, 2]
    with open(run / "curriculum" / "levels.csv") as f:
        table = list(csv.DictReader(f))
    events = [(step, event) for step, event in (("0", "start"), ("1", "level_up"), ("2", "level_up"), ("2", "end"))]
    assert [(r["step"], r["event"], r["level"], r["config"]) for r in table] == [
        (step, event, str(level), f"level={level + 1}") for step, event in events for level in range(3)]
    # each level's held-out prompt is a problem of that level, with its boxed gold
    for level in range(3):
        [sample] = [json.loads(x) for x in (run / "curriculum" / "samples" / f"math12k_L{level}_step2.jsonl")
                    .read_text().splitlines()]
        assert sample["id"] == f"math12k@{level}/val/0"
        assert int(sample["gold"]) // 100 == level + 1
