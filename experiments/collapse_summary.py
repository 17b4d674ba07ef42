"""Print the collapse study's table from run folders: held-out mean@k at every evaluation, its peak, the
final value, steps trained after the peak, steps discarded by rollbacks and guard events.

An evaluation's step is its metrics.csv step: optimizer steps taken before it (0: before training). Runs
made before srtlab logged that "step" (Lightning's own counter put an evaluation after step s at s - 1)
are read one step early. Usage: python experiments/collapse_summary.py RUN...
"""

import sys
from pathlib import Path

from srtlab.report import Run, load_run


def heldout_curve(run: Run) -> dict[int, float]:
    """{optimizer step: held-out mean@k} over every evaluation (the worst held-out set when there are several)."""
    keys = [k for k in run.metrics if k.startswith("val/") and k.split("/")[-1].startswith("mean@")]
    if not keys:
        raise ValueError(f"run {run.path}: no val/<set>/mean@k in its metrics.csv; accepted: a fit run that evaluated")
    steps = sorted({step for k in keys for step in run.metrics[k]})
    return {step: min(run.metrics[k][step] for k in keys if step in run.metrics[k]) for step in steps}


def summary_row(run: Run) -> dict[str, object]:
    """The table's cells for one run."""
    curve = heldout_curve(run)
    peak_step = max(curve, key=lambda s: (curve[s], -s))  # the earliest of equal peaks
    last_step = max(curve)
    rolled_back = sum(e["step"] - e.get("restored_step", e["step"])
                      for e in run.events if e.get("action") == "rollback")
    return {"run": run.path.name, "evaluations": len(curve), "peak": curve[peak_step], "peak_step": peak_step,
            "final": curve[last_step], "last_step": last_step, "after_peak": last_step - peak_step,
            "rolled_back": rolled_back, "events": len(run.events),
            "actions": ",".join(sorted({str(e.get("action")) for e in run.events})) or "-"}


def main(paths: list[str]) -> None:
    runs = [load_run(Path(p)) for p in paths]
    rows = [summary_row(run) for run in runs]
    print("| run | evaluations | peak mean@k (step) | final mean@k (step) | final - peak | steps after peak "
          "| steps rolled back | guard events (actions) |")
    print("|---" * 8 + "|")
    for r in rows:
        print(f"| {r['run']} | {r['evaluations']} | {r['peak']:.3f} ({r['peak_step']}) | {r['final']:.3f} "
              f"({r['last_step']}) | {r['final'] - r['peak']:+.3f} | {r['after_peak']} | {r['rolled_back']} "
              f"| {r['events']} ({r['actions']}) |")
    print()
    for run in runs:  # the curves behind the table, step:mean@k
        print(f"{run.path.name}: " + " ".join(f"{s}:{v:.3f}" for s, v in sorted(heldout_curve(run).items())))


if __name__ == "__main__":
    main(sys.argv[1:])
