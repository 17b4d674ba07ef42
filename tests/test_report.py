"""The report on made-up run folders: two experiments (SRT that collapses, RLVR that learns) x two seeds.

``python tests/test_report.py OUT`` writes the made-up runs and their report under OUT, to look at it.
"""

from __future__ import annotations

import csv
import json
import math
import random
import re
import sys
from pathlib import Path

import pytest
import yaml

from srtlab.report import aggregate, find_runs, group_runs, main, write_report

STEPS, EVERY = 20, 5


def _curves(experiment: str, seed: int) -> tuple[list[dict], list[dict]]:
    """Train rows (steps 0..19) and val rows (0, 5, ..., 20) of one made-up run."""
    rng = random.Random(f"{experiment}{seed}")
    collapse = experiment == "srt"
    train, val = [], []
    for s in range(STEPS):
        t = s / (STEPS - 1)
        train.append({"step": s, "train/majority_share": min(1.0, 0.55 + (0.45 if collapse else 0.2) * t
                                                            + rng.uniform(0, 0.03)),
                      "train/label_accuracy": 0.6 - (0.3 * t if collapse else -0.2 * t) + rng.uniform(0, 0.05),
                      "train/entropy": 0.9 * (1 - 0.8 * t if collapse else 1 - 0.1 * t) + rng.uniform(0, 0.02),
                      "train/response_length": 120 - (80 * t if collapse else 5 * t) + rng.uniform(0, 3),
                      "train/reward/mixed": 0.5 + 0.45 * t + rng.uniform(0, 0.02),
                      "train/answer_concentration": 0.2 + (0.6 * t if collapse else 0.0)})
    for s in range(0, STEPS + 1, EVERY):
        t = s / STEPS
        mean = 0.3 + (0.3 * t - 0.45 * t * t if collapse else 0.2 * t) + 0.01 * seed
        val.append({"step": s, "val/letter_counting/mean@8": mean, "val/letter_counting/maj@8": mean + 0.1,
                    "val/letter_counting/pass@8": mean + 0.3, "val/letter_counting/top_answer_share":
                    0.2 + (0.7 * t if collapse else 0.0)})
    return train, val


def make_run(folder: Path, experiment: str, seed: int, lr: float = 2e-6, resumed: bool = False) -> Path:
    """A run folder as `python -m srtlab fit` leaves it; ``resumed``: the CSV split in two versions that
    overlap (steps 9-11 logged twice: the second version's values must win)."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({
        "name": experiment, "seed": seed, "run_dir": str(folder), "optim": {"lr": lr},
        "trainer": {"max_steps": STEPS, "default_root_dir": str(folder)}, "callbacks": {}}))
    train, val = _curves(experiment, seed)
    rows = sorted(train + val, key=lambda r: r["step"])
    versions = [rows] if not resumed else [[r for r in rows if r["step"] <= 11],
                                           [{**r, **({"train/entropy": 0.123} if "train/entropy" in r else {})}
                                            for r in rows if r["step"] >= 9]]
    for i, version in enumerate(versions):
        out = folder / "logs" / f"version_{i}"
        out.mkdir(parents=True)
        fields = ["epoch", "step"] + sorted({k for r in version for k in r if k != "step"})
        with open(out / "metrics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows({"epoch": 0, **r} for r in version)
    first, last = val[0], val[-1]
    (folder / "results.json").write_text(json.dumps({
        "before": {k: v for k, v in first.items() if k != "step"},
        "after": {k: v for k, v in last.items() if k != "step"}, "steps": STEPS}))
    if experiment == "srt":
        (folder / "guard").mkdir()
        (folder / "guard" / "events.jsonl").write_text(json.dumps(
            {"step": 12 + seed, "action": "warn", "rules": ["top_answer"],
             "values": {"top_answer": {"top_answer_share": 0.62}}}) + "\n")
    return folder


def make_runs(root: Path) -> Path:
    """outputs/srt/{0,1} and outputs/rlvr/{0,1}, the first SRT run resumed once."""
    for experiment in ("srt", "rlvr"):
        for seed in (0, 1):
            make_run(root / experiment / f"seed{seed}", experiment, seed, resumed=(experiment, seed) == ("srt", 0))
    return root


def test_aggregate_is_mean_and_standard_error():
    steps, mean, se = aggregate([{0: 1.0, 1: 2.0}, {0: 3.0}])
    assert steps == [0, 1] and mean == [2.0, 2.0]
    assert se == [pytest.approx(math.sqrt(2.0 / 2)), 0.0]  # sample variance 2, n 2; one run: no error bar


def test_runs_are_found_grouped_by_experiment_and_merged_across_versions(tmp_path):
    root = make_runs(tmp_path / "outputs")
    runs = find_runs([root])
    assert len(runs) == 4
    groups = group_runs(runs)
    assert {k: sorted(r.seed for r in v) for k, v in groups.items()} == {"srt": [0, 1], "rlvr": [0, 1]}
    resumed = next(r for r in groups["srt"] if r.seed == 0)
    assert resumed.metrics["train/entropy"][10] == 0.123 and resumed.metrics["train/entropy"][8] < 1.0
    assert sorted(resumed.metrics["train/entropy"]) == list(range(STEPS))
    # the seeds' mean at one step is what the figure draws
    steps, mean, _ = aggregate([r.metrics["val/letter_counting/mean@8"] for r in groups["rlvr"]])
    assert steps == [0, 5, 10, 15, 20] and mean[0] == pytest.approx(0.305)


def test_a_different_setting_with_the_same_name_is_its_own_line(tmp_path):
    make_run(tmp_path / "a", "srt", 0)
    make_run(tmp_path / "b", "srt", 1)
    make_run(tmp_path / "c", "srt", 0, lr=1e-5)
    groups = group_runs(find_runs([tmp_path / "a", tmp_path / "b", tmp_path / "c"]))
    assert sorted((k, len(v)) for k, v in groups.items()) == [("srt (lr=1e-05)", 1),
                                                              ("srt (lr=2e-06)", 2)]


def test_report_page_is_self_contained_with_figures_tables_and_events(tmp_path):
    out = write_report([make_runs(tmp_path / "outputs")], tmp_path / "site" / "report.html")
    page = out.read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 2 and all(len(b) > 20_000 for b in images)  # held-out and dynamics figures
    assert "http" not in page.replace("http-equiv", "") and "<script" not in page and "<link" not in page
    # the before/after table aggregates the two seeds (mean ± standard error)
    row = re.search(r"<tr><td>rlvr</td><td>val/letter_counting/mean@8</td><td>(.*?)</td><td>(.*?)</td>"
                    r"<td>(.*?)</td><td>2</td></tr>", page)
    assert row and row.groups() == ("0.305 ± 0.005", "0.505 ± 0.005", "0.200 ± 0.000")
    assert page.count("<td>warn</td>") == 2 and "top_answer_share" in page  # guard events, one per SRT seed


def test_report_command(tmp_path, capsys, monkeypatch):
    root = make_runs(tmp_path / "outputs")
    main([str(root / "srt"), str(root / "rlvr" / "seed0"), "--out", str(tmp_path / "r.html")])
    assert capsys.readouterr().out.strip() == str(tmp_path / "r.html") and (tmp_path / "r.html").exists()
    with pytest.raises(SystemExit, match=r"report: RUN '.*nowhere' is not a folder"):
        main([str(tmp_path / "nowhere")])
    from srtlab.__main__ import main as cli

    monkeypatch.setattr(sys, "argv", list(sys.argv))  # the command line sets both; restore them after
    monkeypatch.setenv("SRTLAB_COMMAND", "")
    cli(["report", str(root), "--out", str(tmp_path / "all.html")])  # python -m srtlab report ...
    assert (tmp_path / "all.html").stat().st_size > 40_000
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match=r"report: RUN '.*empty' holds no run folder"):
        main([str(tmp_path / "empty")])


if __name__ == "__main__":
    target = Path(sys.argv[1])
    print(write_report([make_runs(target / "outputs")], target / "report.html"))
