"""Print a markdown table of before/after held-out metrics from run folders (their results.json)."""

import json
import sys
from pathlib import Path


def main(runs: list[str]) -> None:
    print("| run | mean@k before | mean@k after | maj@k before | maj@k after | pass@k before | pass@k after "
          "| top-answer share after | steps |")
    print("|---" * 9 + "|")
    for run in runs:
        res = json.loads((Path(run) / "results.json").read_text())
        b, a = res.get("before", {}), res.get("after", {})

        def get(d, stat):
            keys = [k for k in d if k.split("/")[-1].startswith(stat)]
            return f"{d[keys[0]]:.3f}" if keys else "-"

        print(f"| {Path(run).name} | {get(b, 'mean@')} | {get(a, 'mean@')} | {get(b, 'maj@')} | {get(a, 'maj@')} "
              f"| {get(b, 'pass@')} | {get(a, 'pass@')} | {get(a, 'top_answer_share')} | {res.get('steps')} |")


if __name__ == "__main__":
    main(sys.argv[1:])
