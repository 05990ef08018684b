#!/usr/bin/env bash
# Work through a sweep in short sessions: each call runs at most COUNT runs, then exits (wandb agent --count),
# e.g. from cron or at the end of a batch job. Start it again to continue; the W&B server keeps the queue.
#   bash agent_count.sh ENTITY/PROJECT/SWEEP_ID [COUNT]
set -euo pipefail
sweep=${1:?usage: agent_count.sh ENTITY/PROJECT/SWEEP_ID [COUNT]}
exec wandb agent --count "${2:-1}" "$sweep"
