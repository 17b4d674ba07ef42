#!/usr/bin/env bash
# The default curriculum climb (chain_sum, three levels x 10 steps, self-reward) and its control: the same
# 30 steps trained on the hardest level only, evaluated on every level; one pair per seed (default 0 1 2).
# Then a per-level table over the seeds (mean ± standard error). Usage:
# [SEEDS="0 1 2"] experiments/curriculum_climb.sh [OUT] [overrides]
set -euo pipefail
# DRY_RUN=1: print each srtlab command (shell-quoted) instead of running it, and stop before the summary.
dry() { [[ -n "${DRY_RUN:-}" ]] && { printf '%q ' "$@"; echo; }; }
out=${1:-outputs/curriculum_climb}; shift || true
mkdir -p "$out"
run() {  # name, overrides...
  local name=$1; shift
  local cmd=(python -m srtlab fit experiment=curriculum run_dir="$out/$name" trainer.enable_progress_bar=false "$@")
  dry "${cmd[@]}" && return
  /usr/bin/time -f "wall_s %e max_rss_kb %M" -o "$out/$name.time" "${cmd[@]}" > "$out/$name.log" 2>&1
  echo "$name: $(cat "$out/$name.time")"
}
for seed in ${SEEDS:-0 1 2}; do
  run climb-s$seed seed=$seed "$@"
  run top_only-s$seed seed=$seed callbacks.curriculum.tasks.chain_sum.start=2 "$@"
done
[[ -n "${DRY_RUN:-}" ]] && exit 0
climbs=(); tops=()
for seed in ${SEEDS:-0 1 2}; do climbs+=("$out/climb-s$seed"); tops+=("$out/top_only-s$seed"); done
python experiments/curriculum_summary.py "${climbs[@]}" "${tops[@]}"
