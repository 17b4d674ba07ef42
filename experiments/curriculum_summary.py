"""Print markdown tables of per-level held-out accuracy, first against last evaluation, from climb runs.

Each run gets its rows; runs whose folder names differ only by a ``-s<seed>`` suffix (``climb-s0``,
``climb-s1``, ...) are then aggregated per level as mean ± standard error over the seeds.

Usage: python experiments/curriculum_summary.py RUN_DIR [RUN_DIR ...]  (each with curriculum/levels.csv)
"""

import csv
import re
import sys
from collections import defaultdict
from pathlib import Path

from srtlab.curriculum.evaluate import before_after

sys.path.insert(0, str(Path(__file__).parent))
from seed_table import mean_se  # noqa: E402  (the same mean ± standard error as the seed tables)


def levels(run: str) -> list[dict]:
    with open(Path(run) / "curriculum" / "levels.csv") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["level"] = int(row["level"])
        for key in ("mean", "maj", "top_answer_share"):
            row[key] = float(row[key])
    return before_after(rows)


def main(runs: list[str]) -> None:
    print("| run | level | config | mean@k before | after | maj@k before | after | top-answer share after |")
    print("|---" * 8 + "|")
    arms: dict[str, dict[tuple, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        arm = re.sub(r"-s\d+$", "", Path(run).name)
        for r in levels(run):
            print(f"| {Path(run).name} | {r['name']} | {r['config']} | {r['mean_before']:.3f} | {r['mean_after']:.3f} "
                  f"| {r['maj_before']:.3f} | {r['maj_after']:.3f} | {r['top_answer_share_after']:.3f} |")
            arms[arm][(r["name"], r["config"])].append(r)
    if all(len(rs) < 2 for by_level in arms.values() for rs in by_level.values()):
        return
    print("\n| run (seeds) | level | mean@k before | after | change | maj@k after | top-answer share after |")
    print("|---" * 7 + "|")
    for arm, by_level in arms.items():
        for (name, _), rs in by_level.items():
            print(f"| {arm} ({len(rs)}) | {name} | {mean_se([r['mean_before'] for r in rs])} "
                  f"| {mean_se([r['mean_after'] for r in rs])} "
                  f"| {mean_se([r['mean_after'] - r['mean_before'] for r in rs])} "
                  f"| {mean_se([r['maj_after'] for r in rs])} | {mean_se([r['top_answer_share_after'] for r in rs])} |")


if __name__ == "__main__":
    main(sys.argv[1:])
