"""Print a markdown before/after table of held-out metrics as mean and standard error over runs (one run per
seed, from each run folder's results.json), plus each run's values. `python -m srtlab report` aggregates
only the runs of one Hydra multirun; this takes any run folders. Usage: python experiments/seed_table.py RUN...
"""

import json
import statistics
import sys
from pathlib import Path


def mean_se(values: list[float]) -> str:
    """'mean ± standard error' (± 0 for one value)."""
    se = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {se:.3f}"


def main(runs: list[str]) -> None:
    results = [json.loads((Path(run) / "results.json").read_text()) for run in runs]
    metrics = sorted({k for r in results for k in r.get("after", {}) if k in r.get("before", {})})
    if not metrics:
        raise SystemExit(f"runs {runs}: no results.json with both before and after; accepted: finished fit runs")
    print(f"| metric (n = {len(runs)}) | before | after | change | per run (before -> after) |")
    print("|---" * 5 + "|")
    for m in metrics:
        pairs = [(r["before"][m], r["after"][m]) for r in results
                 if m in r.get("before", {}) and m in r.get("after", {})]
        print(f"| {m} | {mean_se([b for b, _ in pairs])} | {mean_se([a for _, a in pairs])} "
              f"| {mean_se([a - b for b, a in pairs])} | {', '.join(f'{b:.3f} -> {a:.3f}' for b, a in pairs)} |")


if __name__ == "__main__":
    main(sys.argv[1:])
