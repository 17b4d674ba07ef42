#!/usr/bin/env bash
# Collapse study (issue 13 item 6): self-rewarded training pushed too hard (lr 1e-5, five times the default)
# on the demo task (chain_sum, experiment=srt), evaluated every 2 steps, without the guard and with
# guard=rollback; and the gold-reward run on the same data with guard=warn, to count false alarms. Then a
# table of peak held-out mean@k, final mean@k, steps after the peak, rolled-back steps and guard events
# (experiments/collapse_summary.py). Usage: experiments/collapse_study.sh [OUT] [overrides]
set -euo pipefail
# DRY_RUN=1: print each srtlab command (shell-quoted) instead of running it, and stop before the summary.
dry() { [[ -n "${DRY_RUN:-}" ]] && { printf '%q ' "$@"; echo; }; }
out=${1:-outputs/collapse_study}; shift || true
mkdir -p "$out"
common=(data=chain_sum optim.lr=1e-5 trainer.max_steps=16 trainer.val_check_interval=2 data.val_size=32 checkpoint_every=100
        threads=1 trainer.enable_progress_bar=false)
# The divergence rule fires only when held-out mean@k falls by more than 0.02 per evaluation (now the shipped
# default; 0.0 warned on the gold-reward run's evaluation noise: docs/collapse.md). GUARD_TOLERANCE=0.0: the old one.
tuned=(callbacks.guard.rules.divergence.tolerance=${GUARD_TOLERANCE:--0.02})
run() {  # name, overrides...
  local name=$1; shift
  local cmd=(python -m srtlab fit name="$name" run_dir="$out/$name" "${common[@]}" "$@")
  dry "${cmd[@]}" && return
  /usr/bin/time -f "wall_s %e max_rss_kb %M" -o "$out/$name.time" "${cmd[@]}" > "$out/$name.log" 2>&1
  cat "$out/$name.time"
}
run srt_noguard experiment=srt guard=off "$@"
run srt_rollback experiment=srt guard=rollback "${tuned[@]}" "$@"
run rlvr_warn experiment=rlvr guard=warn "${tuned[@]}" "$@"
[[ -n "${DRY_RUN:-}" ]] || python experiments/collapse_summary.py "$out/srt_noguard" "$out/srt_rollback" "$out/rlvr_warn"
