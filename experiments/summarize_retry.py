"""Print the Reflect-Retry-Reward table from run folders: held-out accuracy with and without a retry,
before (the base model) and after training, and the wall time (``<run>.time`` beside the folder, written
by experiments/reflect_retry.sh, else the fit time from results.json).

python experiments/summarize_retry.py RUN_DIR [RUN_DIR ...]
"""

import json
import re
import sys
from pathlib import Path

COLUMNS = [("r3_first", "1st attempt"), ("r3_reflect", "2nd, reflection"), ("r3_plain", "2nd, plain retry"),
           ("r3_fixed", "failures fixed, reflection"), ("r3_plain_fixed", "failures fixed, plain"),
           ("r3_reflection_length", "reflection tokens")]


def pick(metrics: dict, name: str) -> str:
    keys = [k for k in metrics if k.endswith("/" + name)]
    return f"{metrics[keys[0]]:.3f}" if keys else "-"


def wall(run: Path, results: dict) -> str:
    timing = run.parent / f"{run.name}.time"
    seconds = None
    if timing.exists():
        found = re.search(r"wall_s ([\d.]+)", timing.read_text())
        seconds = float(found.group(1)) if found else None
    seconds = seconds or results.get("wall_s_this_process")
    return "-" if seconds is None else f"{int(seconds // 60)} min {int(seconds % 60)} s"


def main(runs: list[str]) -> None:
    print("| run | when | " + " | ".join(title for _, title in COLUMNS) + " | steps | wall |")
    print("|---" * (len(COLUMNS) + 4) + "|")
    for run in map(Path, runs):
        run = run.resolve()
        results = json.loads((run / "results.json").read_text())
        for when in ("before", "after"):
            metrics = results.get(when, {})
            cells = " | ".join(pick(metrics, key) for key, _ in COLUMNS)
            tail = f"{results.get('steps', '-')} | {wall(run, results)}" if when == "after" else " | "
            print(f"| {run.name} | {when} | {cells} | {tail} |")


if __name__ == "__main__":
    main(sys.argv[1:])
