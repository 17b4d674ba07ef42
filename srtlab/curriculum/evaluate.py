"""A climb's record: the per-level table, the before/after summary and the climb plot.

The per-level scores come from ``srtlab.eval.heldout.evaluate_prompts``, the same scoring as the
validation loop, on samples drawn with the rollout engine (a Lightning validation loop cannot run
inside a training step).
"""

from __future__ import annotations

import csv
from pathlib import Path

COLUMNS = ["step", "event", "task", "level", "name", "current_level", "prompts", "k", "mean", "maj", "pass",
           "answer_rate", "top_answer_share", "config"]


def write_table(records: list[dict], path: Path) -> Path:
    """All evaluation rows of the run, one per (evaluation, level): ``<run>/curriculum/levels.csv``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in records:
            writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})
    return path


def before_after(records: list[dict]) -> list[dict]:
    """Per (task, level): the first and the last evaluation's mean@k and maj@k."""
    out: dict[tuple[str, int], dict] = {}
    for row in records:
        key = (row["task"], row["level"])
        if key not in out:
            out[key] = {"task": row["task"], "level": row["level"], "name": row["name"], "config": row["config"],
                        "mean_before": row["mean"], "maj_before": row["maj"], "step_before": row["step"]}
        out[key].update(mean_after=row["mean"], maj_after=row["maj"], step_after=row["step"],
                        top_answer_share_after=row["top_answer_share"])
    return sorted(out.values(), key=lambda r: (r["task"], r["level"]))


def format_before_after(records: list[dict], k: int) -> str:
    rows = before_after(records)
    width = max([len(r["name"]) for r in rows] + [5])
    lines = [f"{'task':16s} {'level'.ljust(width)}  mean@{k} before  after   maj@{k} before  after   config",
             "-" * (width + 82)]
    for r in rows:
        lines.append(f"{r['task']:16s} {r['name'].ljust(width)}  {r['mean_before']:12.3f} {r['mean_after']:6.3f}  "
                     f"{r['maj_before']:11.3f} {r['maj_after']:6.3f}   {r['config']}")
    return "\n".join(lines)


def plot_climb(records: list[dict], changes: list[dict], path: Path) -> Path:
    """Accuracy (mean@k solid, maj@k dashed) of every level against the step; level changes marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in records})
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        rows = [r for r in records if r["task"] == task]
        for level in sorted({r["level"] for r in rows}):
            pts = sorted((r["step"], r["mean"], r["maj"], r["name"]) for r in rows if r["level"] == level)
            color = f"C{level % 10}"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "-o", color=color, ms=4, label=f"{pts[0][3]} mean@k")
            ax.plot([p[0] for p in pts], [p[2] for p in pts], "--", color=color, alpha=0.7, label=f"{pts[0][3]} maj@k")
        for change in (c for c in changes if c["task"] == task):
            ax.axvline(change["step"], color="grey", ls=":", lw=1)
            ax.text(change["step"], 0.98, f" L{change['level']}", fontsize=8, ha="left", va="top",
                    transform=ax.get_xaxis_transform())
        ax.set_title(f"{task}: held-out accuracy per level", fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
