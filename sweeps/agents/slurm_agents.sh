#!/usr/bin/env bash
# A SLURM job array: each array task holds one GPU and runs one `wandb agent` on the sweep.
#   wandb sweep --project PROJECT sweeps/fcn_mnist1d_dd.yaml        # prints ENTITY/PROJECT/SWEEP_ID
#   sbatch --array=0-7 slurm_agents.sh ENTITY/PROJECT/SWEEP_ID [RUNS_PER_TASK]
# Eight tasks = eight agents working through the same sweep; the W&B server hands each a different run.
# Compute nodes need network access to the W&B server (else use the local runner: lipschitz-dd sweep).
# Adjust the #SBATCH lines to your cluster (partition, account, time limit).
#SBATCH --job-name=lipschitz-dd-agent
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=4
#SBATCH --mem=16G
#SBATCH --time=24:00:00
#SBATCH --output=agent-%A_%a.log
set -euo pipefail
sweep=${1:?usage: sbatch --array=0-N slurm_agents.sh ENTITY/PROJECT/SWEEP_ID [RUNS_PER_TASK]}
count=${2:-}
# Activate the environment that has lipschitz_dd installed, e.g.:
#   source ~/venvs/lipschitz_dd/bin/activate
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
# One run folder tree per array job, shared by its tasks (run folders are named by W&B run id).
export LIPSCHITZ_DD_SAVE_DIR=${LIPSCHITZ_DD_SAVE_DIR:-runs}
echo "task ${SLURM_ARRAY_TASK_ID:-0} on $(hostname), GPU ${CUDA_VISIBLE_DEVICES:-none}"
exec wandb agent ${count:+--count "$count"} "$sweep"
