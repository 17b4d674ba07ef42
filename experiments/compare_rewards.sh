#!/usr/bin/env bash
# The six reward methods on the same task, seed and number of steps: srt (vote), rlvr (gold), self_judge,
# confidence (self-certainty), teacher (fixed labels from the base model, labelled first) and mix (vote +
# 0.2 confidence). Then a markdown table: held-out mean@k / maj@k before and after, each run's train
# agreement with gold (mean over steps), wall time.
#
# Usage: experiments/compare_rewards.sh [OUT] [overrides...]
#   defaults: data=products trainer.max_steps=15 (evaluation before and after only, no checkpoints)
#   METHODS="srt mix" to run a subset; SRTLAB_LOCK=/path/to/lock to hold a flock around each run only;
#   SUMMARY_ONLY=1 to print the table of an existing OUT; DRY_RUN=1 to print the commands only.
set -euo pipefail
# DRY_RUN=1: print each srtlab command (shell-quoted) instead of running it, and stop before the summary.
dry() { [[ -n "${DRY_RUN:-}" ]] && { printf '%q ' "$@"; echo; }; }
out=${1:-outputs/compare_rewards}; shift || true
methods=${METHODS:-"srt rlvr self_judge confidence teacher mix"}
common=(data=products trainer.max_steps=15 trainer.val_check_interval=15 checkpoint_every=1000 "$@")
mkdir -p "$out"
lock() { if [[ -n "${SRTLAB_LOCK:-}" ]]; then flock "$SRTLAB_LOCK" "$@"; else "$@"; fi; }

if [[ -z "${SUMMARY_ONLY:-}" ]]; then
  for m in $methods; do
    if [[ $m == teacher && ! -f "$out/labels.jsonl" ]]; then
      # the base model's majority of 16 samples per training prompt, all prompts kept
      cmd=(python -m srtlab label "${common[@]}" label.out="$out/labels.jsonl" run_dir="$out/label")
      if ! dry "${cmd[@]}"; then
        lock /usr/bin/time -f "wall_s %e" -o "$out/label.time" "${cmd[@]}" > "$out/label.log" 2>&1
        tail -n 2 "$out/label.log"; cat "$out/label.time"
      fi
    fi
    extra=()
    [[ $m == teacher ]] && extra=(reward.sources.teacher.labels="$out/labels.jsonl")
    cmd=(python -m srtlab fit experiment=$m name=$m run_dir="$out/$m" "${common[@]}" "${extra[@]}")
    dry "${cmd[@]}" && continue
    lock /usr/bin/time -f "wall_s %e" -o "$out/$m.time" "${cmd[@]}" > "$out/$m.log" 2>&1
    echo "== $m"; grep -A8 "^run folder" "$out/$m.log" | tail -n 7; cat "$out/$m.time"
  done
fi

[[ -n "${DRY_RUN:-}" ]] && exit 0
python - "$out" $methods <<'EOF'
"""Markdown table of the runs under OUT."""
import json
import sys
from pathlib import Path

from srtlab.plot import read_metrics

out, methods = Path(sys.argv[1]), sys.argv[2:]
REWARD = {"srt": "vote", "rlvr": "ground_truth", "self_judge": "self_judge", "confidence": "confidence",
          "teacher": "teacher", "mix": "vote + 0.2 confidence"}
SOURCES = ["vote", "self_judge", "confidence", "teacher"]  # train/agreement/<source>, where a run logs it


def mean(series):
    return sum(series.values()) / len(series) if series else None


def fmt(x):
    return "-" if x is None else f"{x:.3f}"


print("| method | reward | mean@8 before -> after | maj@8 before -> after | top-answer share after | "
      + " | ".join(f"agreement/{s}" for s in SOURCES) + " | label accuracy | gt accuracy | wall |")
print("|---" * (8 + len(SOURCES)) + "|")
for m in methods:
    run = out / m
    if not (run / "results.json").exists():
        print(f"| {m} | (no results) |" + " |" * (6 + len(SOURCES)))
        continue
    res = json.loads((run / "results.json").read_text())
    b, a = res.get("before", {}), res.get("after", {})
    pick = lambda d, stat: next((v for k, v in d.items() if k.split("/")[-1].startswith(stat)), None)
    metrics = read_metrics(run)
    agree = " | ".join(fmt(mean(metrics.get(f"train/agreement/{s}", {}))) for s in SOURCES)
    wall = (out / f"{m}.time").read_text().split()[-1] if (out / f"{m}.time").exists() else "-"
    print(f"| {m} | {REWARD.get(m, m)} | {fmt(pick(b, 'mean@'))} -> {fmt(pick(a, 'mean@'))} "
          f"| {fmt(pick(b, 'maj@'))} -> {fmt(pick(a, 'maj@'))} | {fmt(pick(a, 'top_answer_share'))} | {agree} "
          f"| {fmt(mean(metrics.get('train/label_accuracy', {})))} | {fmt(mean(metrics.get('train/gt_accuracy', {})))} "
          f"| {wall} s |")
label = out / "label" / "results.json"
if label.exists():
    s = json.loads(label.read_text())
    print(f"\nteacher labels: {s['prompts']} prompts x {s['k']} samples, label accuracy {fmt(s['label_accuracy'])}, "
          f"kept {s['kept']} (min_share {s['min_share']}), mean vote share {fmt(s['mean_share'])}, {s['wall_s']} s")
EOF
