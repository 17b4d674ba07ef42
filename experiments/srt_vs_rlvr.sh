#!/usr/bin/env bash
# SRT (majority-vote self-reward) against RLVR (ground-truth reward), same settings, on the CPU default
# model: letter_counting (1-3 words, the default) and single-digit products. Prints each run's table;
# then `python experiments/summarize.py OUT/*` collects them. Usage: experiments/srt_vs_rlvr.sh [OUT] [overrides]
set -euo pipefail
# DRY_RUN=1: print each srtlab command (shell-quoted) instead of running it, and stop before the summary.
dry() { [[ -n "${DRY_RUN:-}" ]] && { printf '%q ' "$@"; echo; }; }
out=${1:-outputs/srt_vs_rlvr}; shift || true
mkdir -p "$(dirname "$out")"
for data in letter_counting products; do
  for exp in srt rlvr; do
    cmd=(python -m srtlab fit experiment=$exp data=$data name=$exp-$data run_dir="$out/$exp-$data" "$@")
    dry "${cmd[@]}" && continue
    /usr/bin/time -f "wall_s %e max_rss_kb %M" -o "$out.$exp-$data.time" "${cmd[@]}" > "$out.$exp-$data.log" 2>&1
    grep -A9 "^run folder" "$out.$exp-$data.log"; cat "$out.$exp-$data.time"
  done
done
