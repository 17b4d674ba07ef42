#!/usr/bin/env bash
# SRT (majority-vote self-reward) against RLVR (ground-truth reward), same settings, on the CPU default
# model, one run per (data set, reward, seed): by default the demo's data (addition) and single-digit
# products, seeds 0 1 2. Then, per data set and reward, the seed table (mean ± standard error,
# experiments/seed_table.py). Usage: [DATA="addition products"] [SEEDS="0 1 2"] experiments/srt_vs_rlvr.sh [OUT] [overrides]
set -euo pipefail
# DRY_RUN=1: print each srtlab command (shell-quoted) instead of running it, and stop before the tables.
dry() { [[ -n "${DRY_RUN:-}" ]] && { printf '%q ' "$@"; echo; }; }
out=${1:-outputs/srt_vs_rlvr}; shift || true
mkdir -p "$out"
for data in ${DATA:-addition products}; do
  for exp in srt rlvr; do
    for seed in ${SEEDS:-0 1 2}; do
      name=$exp-$data-s$seed
      cmd=(python -m srtlab fit experiment=$exp data=$data seed=$seed name=$name run_dir="$out/$name"
           trainer.enable_progress_bar=false "$@")
      dry "${cmd[@]}" && continue
      /usr/bin/time -f "wall_s %e max_rss_kb %M" -o "$out/$name.time" "${cmd[@]}" > "$out/$name.log" 2>&1
      echo "$name: $(cat "$out/$name.time")"
    done
  done
done
[[ -n "${DRY_RUN:-}" ]] && exit 0
for data in ${DATA:-addition products}; do
  for exp in srt rlvr; do
    echo; echo "## $exp on $data"
    python experiments/seed_table.py $(for seed in ${SEEDS:-0 1 2}; do echo "$out/$exp-$data-s$seed"; done)
  done
done
