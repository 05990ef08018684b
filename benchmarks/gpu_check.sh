#!/usr/bin/env bash
# Device check for a machine with a CUDA GPU (CI never needs one): runs the bounds and callback tests on
# CUDA (tests/test_bounds_warm_lower.py picks `cuda` through its `device` fixture when available; the
# other tests run on the CPU as they always do) and the warm lower-bound benchmark on CUDA, printing its
# tables. Usage, from the repository root:
#     bash benchmarks/gpu_check.sh [python]      # default: .venv/bin/python, else python3
# Exits non-zero if CUDA is missing or a test fails.
set -euo pipefail
PY="${1:-}"
if [[ -z "$PY" ]]; then
    if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
"$PY" - <<'PYEOF'
import sys

import torch

if not torch.cuda.is_available():
    sys.exit("gpu_check: torch.cuda.is_available() is False; nothing to check on a GPU")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
PYEOF
export WANDB_MODE=disabled
"$PY" -m pytest -q -x -m "not slow" \
    tests/test_bounds_warm_lower.py tests/test_bounds_jacobian.py tests/test_bounds_lower.py \
    tests/test_bounds_lower_points.py tests/test_bounds_upper.py tests/test_lipschitz_callback.py
# the warm lower-bound benchmark on the GPU at full sizes (K = 10: 2,000 points; K = 100: 1,000 points,
# CNN 20; K = 1,000: resnet18 on 48 points), then the CPU memory table at quick sizes
"$PY" benchmarks/bench_warm_lower.py --device cuda --only jvp,k10,k100,k1000 --measurements 4
"$PY" benchmarks/bench_warm_lower.py --quick --only memory
