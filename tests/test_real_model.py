"""A handful of SRT steps on the real SmolLM2-135M (slow: prepares the model on first use)."""

import pytest

from conftest import compose_config
from srtlab.plot import read_metrics
from srtlab.train import fit


@pytest.mark.slow
def test_srt_steps_on_smollm2(tmp_path):
    run = tmp_path / "run"
    cfg = compose_config("fit", ["experiment=srt", f"run_dir={run}", "trainer.max_steps=3",
                                 "trainer.val_check_interval=100", "data.val_size=8", "data.batch_size=4",
                                 "rollout.n=4", "rollout.val_n=4", "checkpoint_every=100",
                                 "trainer.enable_progress_bar=false"])
    results = fit(cfg)
    assert results["steps"] == 3
    before, after = results["before"], results["after"]
    task = cfg.data.task  # the demo's data set names the held-out metrics
    # the two-shot prompt makes the real model answer in the expected format
    assert before[f"val/{task}/answer_rate"] > 0.8
    assert 0.0 < before[f"val/{task}/mean@4"] < 1.0
    metrics = read_metrics(run)
    for name in ["train/reward/vote", "train/label_accuracy", "train/gt_accuracy", "train/majority_share"]:
        assert sorted(metrics[name]) == [1, 2, 3], name  # metrics.csv step: optimizer steps taken
    assert all(0.0 <= v <= 1.0 for v in metrics["train/label_accuracy"].values())
    assert set(after) == set(before)
