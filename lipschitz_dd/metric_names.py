"""The logged metric names, in one place (plain Python: callbacks, report, reproduce and the sweep import it).

Keep them stable: sweeps' `metric`, the report and users' W&B dashboards depend on them (docs/architecture.md).
Step = epoch on the project's epoch axis; epoch 0 = before the first update. Which way each value errs is
documented where it is computed (callbacks/lipschitz.py, callbacks/evolution.py, callbacks/_mlp_bounds.py).
"""

from __future__ import annotations

# training and test (the models and GradNormStopping)
TRAIN_LOSS = "train/loss"
TRAIN_ACC = "train/acc"
TRAIN_GRAD_NORM = "train/grad_norm"
TEST_LOSS = "test/loss"
TEST_ACC = "test/acc"
PARAMS_COUNT = "params/count"

# LipschitzCallback: lower bounds and descriptions of ||J(x)||_2 over the training points
LOWER = "lipschitz/lower"
AVG = "lipschitz/avg"
RMS = "lipschitz/rms"
AVG_TOL = "lipschitz/avg_tol"
LOWER_PREFIX = "lipschitz/lower_"
LOWER_TEST = "lipschitz/lower_test"
LOWER_INTERP = "lipschitz/lower_interp"
LOWER_NOISE = "lipschitz/lower_noise"
LOWER_PGD = "lipschitz/lower_pgd"
LOWER_OPT = "lipschitz/lower_opt"
LOWER_SOFTMAX = "lipschitz/lower_softmax"
AVG_SOFTMAX = "lipschitz/avg_softmax"

# LipschitzCallback: upper bounds and the exact constant of small MLPs
UPPER = "lipschitz/upper"
UPPER_AVAILABLE = "lipschitz/upper_available"
UPPER_SOFTMAX = "lipschitz/upper_softmax"
UPPER_ECLIPSE = "lipschitz/upper_eclipse"
UPPER_SDP = "lipschitz/upper_sdp"
EXACT = "lipschitz/exact"
EXACT_LOWER = "lipschitz/exact_lower"
EXACT_UPPER = "lipschitz/exact_upper"
SECONDS = "lipschitz/seconds"

# LipschitzCallback: the parameters' path
DIST_INIT = "params/dist_init"
PATH_LENGTH = "params/path_length"

# EvolutionBound
EVOLUTION_PATH_LENGTH = "evolution/path_length"
EVOLUTION_C_THETA = "evolution/c_theta"
EVOLUTION_C_X0 = "evolution/c_x0"
EVOLUTION_RADIUS = "evolution/radius"
EVOLUTION_BOUND1 = "evolution/bound1"
EVOLUTION_BOUND2 = "evolution/bound2"


def lower_of(point_set: str) -> str:
    """The metric of a point set's lower bound: lipschitz/lower_<name> (e.g. "test" -> lipschitz/lower_test)."""
    return LOWER_PREFIX + point_set


NAMES: dict[str, str] = {
    k: v for k, v in globals().items() if k.isupper() and isinstance(v, str) and k != "LOWER_PREFIX"
}
"""Constant name -> metric name."""
