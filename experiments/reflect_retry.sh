#!/usr/bin/env bash
# Reflect, Retry, Reward on single-digit products: the gold answer, then the majority vote of the first
# attempts, as the failure signal; same task, seed and steps. Each run evaluates the held-out set before
# and after training in three modes (first attempt, retry after a reflection, plain retry); the "before"
# columns are the base model. Usage: experiments/reflect_retry.sh [OUT] [overrides]
# then: python experiments/summarize_retry.py OUT/*/
set -euo pipefail
# DRY_RUN=1: print each srtlab command (shell-quoted) instead of running it, and stop before the summary.
dry() { [[ -n "${DRY_RUN:-}" ]] && { printf '%q ' "$@"; echo; }; }
out=${1:-outputs/reflect_retry}; shift || true
mkdir -p "$out"
for exp in reflect_retry reflect_retry_vote; do
  cmd=(python -m srtlab fit experiment=$exp run_dir="$out/$exp" trainer.enable_progress_bar=false "$@")
  dry "${cmd[@]}" && continue
  /usr/bin/time -f "wall_s %e max_rss_kb %M" -o "$out/$exp.time" "${cmd[@]}" > "$out/$exp.log" 2>&1
  grep -A30 "^run folder" "$out/$exp.log"; cat "$out/$exp.time"
done
[[ -n "${DRY_RUN:-}" ]] || python experiments/summarize_retry.py "$out"/*/
