#!/usr/bin/env bash
# Reflect, Retry, Reward on single-digit products: the gold answer, then the majority vote of the first
# attempts, as the failure signal; same task, seed and steps. Each run evaluates the held-out set before
# and after training in three modes (first attempt, retry after a reflection, plain retry); the "before"
# columns are the base model. Usage: experiments/reflect_retry.sh [OUT] [overrides]
# then: python experiments/summarize_retry.py OUT/*/
set -euo pipefail
out=${1:-outputs/reflect_retry}; shift || true
mkdir -p "$out"
for exp in reflect_retry reflect_retry_vote; do
  /usr/bin/time -f "wall_s %e max_rss_kb %M" -o "$out/$exp.time" \
    python -m srtlab fit experiment=$exp run_dir="$out/$exp" trainer.enable_progress_bar=false "$@" \
    > "$out/$exp.log" 2>&1
  grep -A30 "^run folder" "$out/$exp.log"; cat "$out/$exp.time"
done
python experiments/summarize_retry.py "$out"/*/
