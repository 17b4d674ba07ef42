#!/usr/bin/env bash
# The default curriculum climb (chain_sum, three levels x 10 steps, self-reward) and its control: the same
# 30 steps trained on the hardest level only, evaluated on every level. Then a per-level table of both.
# Usage: experiments/curriculum_climb.sh [OUT] [overrides]
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
  cat "$out/$name.time"
}
run climb "$@"
run top_only callbacks.curriculum.tasks.chain_sum.start=2 "$@"
[[ -n "${DRY_RUN:-}" ]] || python experiments/curriculum_summary.py "$out/climb" "$out/top_only"
