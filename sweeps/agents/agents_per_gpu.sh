#!/usr/bin/env bash
# One `wandb agent` per GPU of this machine, each seeing only its own GPU (CUDA_VISIBLE_DEVICES).
#   bash agents_per_gpu.sh ENTITY/PROJECT/SWEEP_ID [RUNS_PER_AGENT]
# Without RUNS_PER_AGENT each agent runs until the sweep is exhausted. Stop all with Ctrl-C.
# The sweep's own `command` starts `lipschitz-dd fit --config <shipped name>`, so any directory works;
# run folders go under ./runs (LIPSCHITZ_DD_SAVE_DIR to change).
set -euo pipefail
sweep=${1:?usage: agents_per_gpu.sh ENTITY/PROJECT/SWEEP_ID [RUNS_PER_AGENT]}
count=${2:-}
gpus=$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null || true)
if [ -z "$gpus" ]; then
    echo "no GPU found by nvidia-smi; starting one agent on the CPU" >&2
    gpus="cpu"
fi
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' INT TERM
for gpu in $gpus; do
    if [ "$gpu" = cpu ]; then visible=""; else visible=$gpu; fi
    CUDA_VISIBLE_DEVICES=$visible wandb agent ${count:+--count "$count"} "$sweep" \
        > "agent-gpu${gpu}.log" 2>&1 &
    pids+=($!)
    echo "agent on GPU $gpu: pid $!, log agent-gpu${gpu}.log"
done
wait
