"""Lipschitz bounds of any nn.Module, in plain PyTorch (no Lightning).

Lower bounds: per-sample Jacobian spectral norms (exact or power iteration), streamed statistics over point
sets (data, convex combinations, perturbations, grids), an optimised bound and the pairwise bound.
Upper bound: product of per-layer constants over the traced graph (AutoLip style), power or certified mode.
MLPs only (nn.Sequential of Linear and activations): the exact constant of ReLU MLPs (region enumeration;
for 1- or 2-D inputs the planar arrangement of the regions),
ECLipsE-Fast (closed form) and LipSDP-Neuron (SDP, optional ``sdp`` extra; or first order), all certified.

Every bound returns a result that says what it is: ``value``, ``kind`` ("lower" / "upper" / "exact" /
"estimate"), ``errs`` ("low" / "high" / "none") and ``certified`` (`BoundResult`, bounds/result.py).

``__all__`` holds the public functions and result types; the building blocks (per-sample Jacobian rows and
singular triplets, power iteration, the warm estimator's parts, layer constants, point helpers) stay importable
from their modules (e.g. ``lipschitz_dd.bounds.jacobian.jacobian_rows``).
"""

from lipschitz_dd.bounds.diagnostics import (
    CorrectnessSplit,
    SubsampleError,
    correctness_split,
    finite_difference_ratio,
    subsample_error,
)
from lipschitz_dd.bounds.eclipse import eclipse_fast
from lipschitz_dd.bounds.evolution import EvolutionBounds, evolution_bounds
from lipschitz_dd.bounds.exact import ExactLipschitz, exact_lipschitz
from lipschitz_dd.bounds.exact_planar import PlanarLipschitz, exact_lipschitz_planar
from lipschitz_dd.bounds.jacobian import jacobian_spectral_norms
from lipschitz_dd.bounds.linearisation import LinearisationCheck, linearisation_check
from lipschitz_dd.bounds.lipsdp import LipSDPResult, lipsdp_neuron
from lipschitz_dd.bounds.lipsdp_fo import FirstOrderLipSDPResult, lipsdp_first_order
from lipschitz_dd.bounds.lower import LowerBoundStats, lower_bound
from lipschitz_dd.bounds.mlp import MLP, mlp_from_module, product_bound
from lipschitz_dd.bounds.operator_norms import NormEstimate, conv_operator_norm, linear_operator_norm
from lipschitz_dd.bounds.optimised import OptimisedLowerBound, optimised_lower_bound
from lipschitz_dd.bounds.outputs import SoftmaxOutput
from lipschitz_dd.bounds.pairwise import pairwise_lipschitz
from lipschitz_dd.bounds.points import (
    STUDY_PGD,
    convex_combinations,
    gaussian_perturbations,
    grid_2d,
    pgd_perturbations,
    project_ball_and_box,
)
from lipschitz_dd.bounds.result import Bound, BoundResult
from lipschitz_dd.bounds.upper import UpperBoundEstimator, UpperBoundResult, upper_bound
from lipschitz_dd.bounds.warm_lower import WarmLowerBound, WarmLowerResult

__all__ = [
    # the result protocol and the one-number bound
    "Bound",
    "BoundResult",
    # lower bounds
    "LowerBoundStats",
    "OptimisedLowerBound",
    "WarmLowerBound",
    "WarmLowerResult",
    "jacobian_spectral_norms",
    "lower_bound",
    "optimised_lower_bound",
    "pairwise_lipschitz",
    # upper bounds
    "UpperBoundEstimator",
    "UpperBoundResult",
    "upper_bound",
    "NormEstimate",
    "conv_operator_norm",
    "linear_operator_norm",
    # MLPs: exact constant and certified upper bounds
    "MLP",
    "mlp_from_module",
    "ExactLipschitz",
    "PlanarLipschitz",
    "exact_lipschitz",
    "exact_lipschitz_planar",
    "eclipse_fast",
    "product_bound",
    "LipSDPResult",
    "lipsdp_neuron",
    "FirstOrderLipSDPResult",
    "lipsdp_first_order",
    # evolution bounds, softmax outputs, points, diagnostics
    "EvolutionBounds",
    "evolution_bounds",
    "SoftmaxOutput",
    "convex_combinations",
    "gaussian_perturbations",
    "grid_2d",
    "pgd_perturbations",
    "project_ball_and_box",
    "STUDY_PGD",
    "CorrectnessSplit",
    "LinearisationCheck",
    "SubsampleError",
    "correctness_split",
    "finite_difference_ratio",
    "linearisation_check",
    "subsample_error",
]
