#!/usr/bin/env bash
# Multi-node SRT with FSDP on SLURM: one task per GPU, Lightning reads the SLURM environment
# (ranks, master address) itself. Submit from the repository root:
#
#   sbatch --nodes=2 experiments/slurm_fit.sh outputs/srt-2x8 experiment=srt model.path=/models/Qwen2.5-7B
#
# The first argument is the run folder (every rank must be given the same one: under SLURM each
# rank resolves its own config), the rest are fit overrides. vLLM runs colocated, one engine per
# GPU, sleeping during the training step (rollout=vllm; drop it to sample with the HF engine, which
# then needs rollout.engine.dtype=null under FSDP).
#SBATCH --job-name=srtlab-fit
#SBATCH --ntasks-per-node=8          # one task per GPU: must equal trainer.devices
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=12
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail
run_dir=${1:?usage: sbatch --nodes=N experiments/slurm_fit.sh RUN_DIR [overrides]}; shift
gpus=${SLURM_GPUS_ON_NODE:-8}
launch=(srun python -m srtlab fit trainer=fsdp trainer.devices="$gpus" trainer.num_nodes="${SLURM_JOB_NUM_NODES:-1}"
        rollout=vllm run_dir="$run_dir" "$@")

# The same command on every task; Lightning's SLURMEnvironment sets the ranks from SLURM_PROCID etc.
# DRY_RUN=1: print the command (shell-quoted) instead of running it.
if [[ -n "${DRY_RUN:-}" ]]; then printf '%q ' "${launch[@]}"; echo; else "${launch[@]}"; fi

# Without SLURM, the same run with torchrun on each node (node_rank 0..N-1, same run_dir everywhere):
#   torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 \
#     -m srtlab fit trainer=fsdp trainer.devices=8 trainer.num_nodes=2 run_dir=outputs/srt-2x8 experiment=srt
# On one machine Lightning's own launcher starts the ranks: python -m srtlab fit trainer=fsdp trainer.devices=8
