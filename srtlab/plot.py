"""Read a run's metrics (all CSV versions merged) and plot them against the optimizer step."""

from __future__ import annotations

import csv
import math
from pathlib import Path

DEFAULT_METRICS = ["train/reward/mixed", "train/gt_accuracy", "train/label_accuracy", "train/majority_share",
                   "val/*/mean@*", "val/*/maj@*", "train/response_length", "train/entropy"]


def read_metrics(run_dir: str | Path) -> dict[str, dict[int, float]]:
    """metric -> {step: value}. A resumed run logs into a new version folder; where two versions logged
    the same step (the steps after the last checkpoint of a killed run), the later version wins."""
    files = sorted(Path(run_dir).glob("logs/version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    out: dict[str, dict[int, float]] = {}
    for file in files:
        with open(file) as f:
            for row in csv.DictReader(f):
                step = int(float(row["step"]))
                for key, value in row.items():
                    if key not in ("step", "epoch") and value not in ("", None):
                        out.setdefault(key, {})[step] = float(value)
    return out


def _select(names: list[str], patterns: list[str]) -> list[str]:
    from fnmatch import fnmatch

    return [n for p in patterns for n in sorted(names) if fnmatch(n, p)]


def plot_run(run_dir: str | Path, metrics: list[str] | None = None) -> Path:
    """Write ``<run_dir>/metrics.png``: one panel per metric (glob patterns allowed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = read_metrics(run_dir)
    if not data:
        raise FileNotFoundError(f"no logs/version_*/metrics.csv under {run_dir}")
    names = list(dict.fromkeys(_select(list(data), metrics or DEFAULT_METRICS)))
    if not names:
        raise ValueError(f"none of {metrics} is among the logged metrics: {sorted(data)}")
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        steps = sorted(data[name])
        ax.plot(steps, [data[name][s] for s in steps], marker="o" if len(steps) < 20 else None, ms=3)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    out = Path(run_dir) / "metrics.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
