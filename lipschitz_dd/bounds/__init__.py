"""Lipschitz bounds of any nn.Module, in plain PyTorch (no Lightning).

Lower bounds: per-sample Jacobian spectral norms (exact or power iteration), streamed statistics over point
sets (data, convex combinations, perturbations, grids), an optimised bound and the pairwise bound.
Upper bound: product of per-layer constants over the traced graph (AutoLip style), power or certified mode.
MLPs only (nn.Sequential of Linear and activations): the exact constant of ReLU MLPs (region enumeration;
for 1- or 2-D inputs the planar arrangement of the regions),
ECLipsE-Fast (closed form) and LipSDP-Neuron (SDP, optional ``sdp`` extra), all certified.
"""

from lipschitz_dd.bounds.eclipse import eclipse_fast
from lipschitz_dd.bounds.exact import ExactLipschitz, exact_lipschitz
from lipschitz_dd.bounds.exact_planar import PlanarLipschitz, PlanarRegions, exact_lipschitz_planar, planar_regions
from lipschitz_dd.bounds.jacobian import (
    PowerIterationResult,
    SingularTriplets,
    float32_measurement,
    jacobian_rows,
    jacobian_spectral_norms,
    power_iteration_spectral_norms,
    top_singular_from_jacobians,
    top_singular_triplets,
)
from lipschitz_dd.bounds.lipsdp import LipSDPResult, lipsdp_neuron
from lipschitz_dd.bounds.lipsdp_fo import FirstOrderLipSDPResult, lipsdp_first_order
from lipschitz_dd.bounds.lower import LowerBoundStats, iterate_batches, lower_bound
from lipschitz_dd.bounds.mlp import MLP, Activation, is_mlp, mlp_from_module, product_bound
from lipschitz_dd.bounds.operator_norms import NormEstimate, conv_operator_norm, linear_operator_norm
from lipschitz_dd.bounds.optimised import OptimisedLowerBound, TopPoints, optimised_lower_bound
from lipschitz_dd.bounds.pairwise import pairwise_lipschitz
from lipschitz_dd.bounds.points import (
    convex_combinations,
    gaussian_perturbations,
    grid_2d,
    pgd_perturbations,
    project_to_box,
)
from lipschitz_dd.bounds.result import Bound, BoundResult
from lipschitz_dd.bounds.upper import LayerConstant, UpperBoundEstimator, UpperBoundResult, upper_bound
from lipschitz_dd.bounds.warm_lower import (
    LeftVectorStore,
    MethodChoice,
    WarmBatchResult,
    WarmLowerBound,
    WarmLowerResult,
    choose_method,
    warm_spectral_norms,
)

__all__ = [
    "Bound",
    "BoundResult",
    "LayerConstant",
    "LowerBoundStats",
    "OptimisedLowerBound",
    "PowerIterationResult",
    "SingularTriplets",
    "UpperBoundEstimator",
    "UpperBoundResult",
    "conv_operator_norm",
    "convex_combinations",
    "gaussian_perturbations",
    "grid_2d",
    "iterate_batches",
    "jacobian_rows",
    "jacobian_spectral_norms",
    "linear_operator_norm",
    "NormEstimate",
    "lower_bound",
    "optimised_lower_bound",
    "pairwise_lipschitz",
    "pgd_perturbations",
    "power_iteration_spectral_norms",
    "project_to_box",
    "top_singular_from_jacobians",
    "top_singular_triplets",
    "upper_bound",
    "TopPoints",
    "MLP",
    "Activation",
    "is_mlp",
    "mlp_from_module",
    "product_bound",
    "ExactLipschitz",
    "exact_lipschitz",
    "PlanarLipschitz",
    "PlanarRegions",
    "exact_lipschitz_planar",
    "planar_regions",
    "eclipse_fast",
    "LipSDPResult",
    "lipsdp_neuron",
    "FirstOrderLipSDPResult",
    "lipsdp_first_order",
    "LeftVectorStore",
    "MethodChoice",
    "WarmBatchResult",
    "WarmLowerBound",
    "WarmLowerResult",
    "choose_method",
    "float32_measurement",
    "warm_spectral_norms",
]

# Issue 13 measurements (linearisation check, evolution bound, softmax outputs, lower-bound diagnostics)
from lipschitz_dd.bounds.diagnostics import (  # noqa: E402
    CorrectnessSplit,
    SubsampleError,
    correctness_split,
    finite_difference_ratio,
    subsample_error,
)
from lipschitz_dd.bounds.evolution import (  # noqa: E402
    EvolutionBounds,
    data_radius,
    evolution_bounds,
    parameter_jacobian_norms,
)
from lipschitz_dd.bounds.hard_points import top_pair_midpoints  # noqa: E402
from lipschitz_dd.bounds.linearisation import (  # noqa: E402
    LinearisationCheck,
    linearisation_check,
    mixed_derivative_norms,
)
from lipschitz_dd.bounds.outputs import SoftmaxOutput  # noqa: E402

__all__ += [
    "CorrectnessSplit",
    "EvolutionBounds",
    "LinearisationCheck",
    "SoftmaxOutput",
    "SubsampleError",
    "correctness_split",
    "data_radius",
    "evolution_bounds",
    "finite_difference_ratio",
    "linearisation_check",
    "mixed_derivative_norms",
    "parameter_jacobian_norms",
    "subsample_error",
    "top_pair_midpoints",
]
