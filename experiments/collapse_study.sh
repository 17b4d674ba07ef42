#!/usr/bin/env bash
# Collapse study (docs/collapse.md): does the label-free guard see self-rewarded training collapse, early enough,
# without alarms on healthy runs? Three collapse scenarios and four healthy controls, SmolLM2-135M, 32 held-out
# questions (their gold answers score the study only; the guard reads none):
#   collapse  chain_sum  SRT at lr 1e-5 (five times the default), 10 steps        (the old study's run)
#             addition   SRT at lr 1e-5 on the demo task, 8 steps                 (the demo pushed too hard)
#             letters    SRT on letter_counting 1-3 words, 8 steps                 (the collapse onto "1")
#   control   demo       SRT as the demo runs it (addition, lr 2e-6, 30 steps)
#             rlvr_*     the gold reward on each scenario's data and settings
# Phase "tune" (TUNE_SEEDS, default 0): guard=warn everywhere (warn never changes training; the guard logs every
# signal, so the thresholds are read from these runs), held-out mean@8 every 2 steps on the collapse scenarios.
# Phase "final" (FINAL_SEEDS, default 1 2 3: seeds the thresholds never saw): the shipped defaults as shipped,
# guard=rollback on the collapse scenarios (held-out every 2 steps: the peak before the first event is the
# unguarded run's, which is identical up to it) and guard=warn on the controls (held-out before and after only),
# so every false alarm counted is a real run's. Then the tables (experiments/collapse_summary.py --study OUT).
# At most JOBS (2) study runs at a time (counted over every study process, so a rerun waits for an old one),
# threads=1 each; a run whose log exists is skipped (delete it to run again).
# Usage: [PHASE=tune|final|all] [TUNE_SEEDS="0"] [FINAL_SEEDS="1 2 3"] [ARMS="chain_sum_srt ..."] [JOBS=2]
#        experiments/collapse_study.sh [OUT] [overrides]
set -euo pipefail
# DRY_RUN=1: print each srtlab command (shell-quoted) instead of running it, and stop before the summary.
out=${1:-outputs/collapse_study}; shift || true
phase=${PHASE:-all}
tune_seeds=${TUNE_SEEDS:-0}
final_seeds=${FINAL_SEEDS:-1 2 3}
parallel=${JOBS:-2}
mkdir -p "$out"
common=(data.val_size=32 checkpoint_every=1000 threads=1 trainer.enable_progress_bar=false)
declare -A setup=(
  [chain_sum]="data=chain_sum optim.lr=1e-5 trainer.max_steps=10"
  [addition]="data=addition optim.lr=1e-5 trainer.max_steps=8"
  [letters]="data=letter_counting trainer.max_steps=8"
  [demo]="data=addition trainer.max_steps=30"
)
# the probe's two costlier signals (KL to the base model, agreement across two wordings), measured on seed 0
# of chain_sum and its control only
extras=(callbacks.guard.probe.kl=true callbacks.guard.probe.rephrase=auto)

run() {  # folder (phase/arm-seed), overrides...; the run's name is its arm, so the report pools its seeds
  local name=$1; shift
  local arm=${name%-s*}
  local cmd=(python -m srtlab fit name="collapse_${arm//\//_}" run_dir="$(realpath -m "$out/$name")" "${common[@]}" "$@")
  if [[ -n "${DRY_RUN:-}" ]]; then printf '%q ' "${cmd[@]}"; echo; return; fi
  if [[ -e "$out/$name.log" ]]; then echo "$name: started already"; return; fi
  while (( $(pgrep -fc "^python -m srtlab fit name=collapse_" || true) >= parallel )); do sleep 15; done
  mkdir -p "$(dirname "$out/$name")"
  (
    /usr/bin/time -f "wall_s %e max_rss_kb %M" -o "$out/$name.time" "${cmd[@]}" > "$out/$name.log" 2>&1 \
      || echo "$name: FAILED (see $out/$name.log)"
    rm -f "$out/$name"/checkpoints/*.ckpt "$out/$name"/guard/*.ckpt  # 1.6 GB each; the tables need none
    echo "$name: $(cat "$out/$name.time" 2>/dev/null)"
  ) &
}

arms=(${ARMS:-chain_sum_srt addition_srt chain_sum_rlvr demo_srt addition_rlvr letters_srt letters_rlvr})
if [[ $phase == tune || $phase == all ]]; then
  for seed in $tune_seeds; do
    for arm in "${arms[@]}"; do
      s=${arm%_*}; exp=${arm##*_}
      every=2; [[ $s == demo || $exp == rlvr ]] && every=10  # a control's held-out curve decides nothing
      extra=(); [[ $s == chain_sum && $seed == 0 ]] && extra=("${extras[@]}")
      # shellcheck disable=SC2086
      run "tune/$arm-s$seed" experiment=$exp ${setup[$s]} seed=$seed guard=warn trainer.val_check_interval=$every \
        "${extra[@]}" "$@"
    done
  done
  [[ -n "${DRY_RUN:-}" ]] || wait
fi
if [[ $phase == final || $phase == all ]]; then
  for seed in $final_seeds; do
    for arm in "${arms[@]}"; do
      s=${arm%_*}; exp=${arm##*_}
      if [[ $s != demo && $exp == srt ]]; then  # a collapse scenario: the shipped rollback
        # shellcheck disable=SC2086
        run "final/$arm-s$seed" experiment=srt ${setup[$s]} seed=$seed guard=rollback trainer.val_check_interval=2 "$@"
      else  # a healthy control: the shipped warn; any event is a false alarm
        # shellcheck disable=SC2086
        run "final/$arm-s$seed" experiment=$exp ${setup[$s]} seed=$seed guard=warn trainer.val_check_interval=100 "$@"
      fi
    done
  done
  [[ -n "${DRY_RUN:-}" ]] || wait
fi
[[ -n "${DRY_RUN:-}" ]] || python experiments/collapse_summary.py --study "$out"
