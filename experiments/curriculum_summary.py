"""Print a markdown table of per-level held-out accuracy, first against last evaluation, from climb runs.

Usage: python experiments/curriculum_summary.py RUN_DIR [RUN_DIR ...]  (each with curriculum/levels.csv)
"""

import csv
import sys
from pathlib import Path

from srtlab.curriculum.evaluate import before_after


def main(runs: list[str]) -> None:
    print("| run | level | config | mean@k before | after | maj@k before | after | top-answer share after |")
    print("|---" * 8 + "|")
    for run in runs:
        with open(Path(run) / "curriculum" / "levels.csv") as f:
            rows = list(csv.DictReader(f))
        for row in rows:
            row["level"] = int(row["level"])
            for key in ("mean", "maj", "top_answer_share"):
                row[key] = float(row[key])
        for r in before_after(rows):
            print(f"| {Path(run).name} | {r['name']} | {r['config']} | {r['mean_before']:.3f} | {r['mean_after']:.3f} "
                  f"| {r['maj_before']:.3f} | {r['maj_after']:.3f} | {r['top_answer_share_after']:.3f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
