"""The tighter bounds of `LipschitzCallback` for MLPs: ECLipsE-Fast, LipSDP-Neuron and the exact constant.

They apply when the measured network is an MLP in the sense of `lipschitz_dd.bounds.mlp_from_module` (an
nn.Sequential of Linear / ReLU / LeakyReLU / Tanh / Sigmoid / Flatten / Identity / Dropout layers): either the
measured module itself, or its attribute `net` when that is such a Sequential and the module's output is
`logit_temperature * net(x)` (lipschitz_dd's models; `logit_temperature` defaults to 1, i.e. forward is net(x)).
That relation is checked once per run on a batch of training points; a module whose forward does anything else
gets "not available". The bounds of the measured function are then |tau| times those of `net`.

    lipschitz/upper_eclipse   ECLipsE-Fast (closed form, milliseconds)          certified upper bound
    lipschitz/upper_sdp       LipSDP-Neuron (first-order, warm-started; or       certified upper bound
                              cvxpy + Clarabel with sdp_solver="interior_point")
    lipschitz/exact           max over activation regions of ||J_R||_2        the exact constant (ReLU / LeakyReLU)
    lipschitz/exact_lower     when the time limit cut the search: a Jacobian norm at a verified point (errs low)
    lipschitz/exact_upper       and a certified upper bound (errs high); then lipschitz/exact is not logged

A metric is logged only at the measurements where it ran, so a run's final lipschitz/exact (results.json's last
value) is that of the last measurement where the search finished: a later cut one logged exact_lower / _upper.
All are global (over all of R^n, not only the data) and in the Euclidean norm, like the other bounds. Every
rank computes them from its own copy of the (identical) weights; ECLipsE-Fast and LipSDP are deterministic,
the exact search's time limit is not, so its ends are reduced across ranks (max of the lower ends, min of the
upper ends: both stay valid) and it counts as exact when any rank finished.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lipschitz_dd.bounds import (
    MLP,
    FirstOrderLipSDPResult,
    eclipse_fast,
    exact_lipschitz,
    lipsdp_first_order,
    mlp_from_module,
)

Warn = Callable[[str, str], None]

ECLIPSE, SDP, EXACT = "lipschitz/upper_eclipse", "lipschitz/upper_sdp", "lipschitz/exact"
EXACT_LOWER, EXACT_UPPER = "lipschitz/exact_lower", "lipschitz/exact_upper"

# hidden neurons up to which each LipSDP solver runs by default (MLPBounds.sdp_max_neurons=None); first order:
# sdp_time_limit plus its certificate (a dense eigvalsh of the LMI: ~10 s at 2,048 neurons, 784-1024-1024-10, on
# one CPU core, growing as the cube)
SDP_MAX_NEURONS = {"first_order": 4096, "interior_point": 100}

# per-rank scalars (keys of the reduction) and how they combine across ranks
REDUCTIONS = {
    "mlp/eclipse": "min",
    "mlp/sdp": "min",
    "mlp/exact_lower": "max",
    "mlp/exact_upper": "min",
    "mlp/exact_done": "max",
}


@dataclass(frozen=True)
class MeasuredMLP:
    """The measured function is `scale * mlp` (scale = |logit_temperature|)."""

    mlp: MLP
    scale: float

    @property
    def hidden_neurons(self) -> int:
        return sum(self.mlp.hidden_widths)


@dataclass(frozen=True)
class MLPBounds:
    """Options of `LipschitzCallback`'s certified bounds for MLPs (`LipschitzCallback(mlp_bounds=MLPBounds(...))`,
    `--lipschitz.mlp_bounds.exact_every 1`, or `lipschitz: {mlp_bounds: {exact_every: 1}}` in a config).

    upper_eclipse, eclipse_max_neurons: lipschitz/upper_eclipse (ECLipsE-Fast) at every measurement, for MLPs of
        at most eclipse_max_neurons hidden neurons (its cost grows as the cube of the widths: milliseconds at 256,
        ~0.5 s at 1,024, seconds at 2,048). None (default): wherever the network qualifies, silently skipped for
        others (CNNs, ResNets); True: also warn once when it does not qualify; False: never.
    sdp_every, sdp_max_neurons: lipschitz/upper_sdp (LipSDP-Neuron) at every k-th measurement (counted from 0,
        the measurement at epoch 0) and the last one; 0 = never; for MLPs of at most sdp_max_neurons hidden
        neurons (None: the solver's own limit, 4,096 for "first_order", 100 for "interior_point").
    sdp_solver, sdp_time_limit: "first_order" (default; `lipschitz_dd.bounds.lipsdp_first_order`, L-BFGS on the
        multipliers, warm-started from the previous measurement's result, stopped after sdp_time_limit seconds
        plus its certificate; a stopped run is still certified and errs high; for the study's FCN 40-256-256-10
        on one core: converged in 5 s at init, the 10 s limit 0.5 % above the optimum after training) or
        "interior_point" (`lipsdp_neuron`, cvxpy + Clarabel, the SDP's optimum to solver accuracy; needs the
        `sdp` extra; seconds at 32-64 hidden neurons, minutes beyond 100).
    exact_every, exact_time_limit, exact_max_neurons: lipschitz/exact (ReLU / LeakyReLU MLPs of at most
        exact_max_neurons hidden neurons) at every k-th measurement and the last one (0 = never); a search cut
        by exact_time_limit seconds logs the certified interval lipschitz/exact_lower / _upper instead.
    Hidden neurons are counted in the MLP normal form (an output activation counts as a hidden layer). A bound
    switched on that does not apply gets one warning "not available: <reason>" and no metric."""

    upper_eclipse: bool | None = None
    eclipse_max_neurons: int = 1024
    sdp_every: int = 0
    sdp_max_neurons: int | None = None
    sdp_solver: str = "first_order"
    sdp_time_limit: float = 10.0
    exact_every: int = 0
    exact_time_limit: float = 30.0
    exact_max_neurons: int = 256

    def __post_init__(self) -> None:
        if self.upper_eclipse not in (None, True, False):
            raise ValueError(f"MLPBounds: upper_eclipse must be None, True or False, got {self.upper_eclipse!r}")
        for name in ("eclipse_max_neurons", "sdp_every", "sdp_max_neurons", "exact_every", "exact_max_neurons"):
            value = getattr(self, name)
            if name == "sdp_max_neurons" and value is None:
                continue
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"MLPBounds: {name} must be a non-negative integer, got {value!r}")
        if self.sdp_solver not in SDP_MAX_NEURONS:
            raise ValueError(f"MLPBounds: sdp_solver must be one of {sorted(SDP_MAX_NEURONS)}, got {self.sdp_solver!r}")
        limit = self.sdp_time_limit
        if not isinstance(limit, (int, float)) or not limit > 0:
            raise ValueError(f"MLPBounds: sdp_time_limit must be > 0 seconds, got {limit!r}")
        limit = self.exact_time_limit
        if not isinstance(limit, (int, float)) or not limit > 0:
            raise ValueError(f"MLPBounds: exact_time_limit must be > 0 seconds, got {limit!r}")

    @property
    def scheduled(self) -> bool:
        """Whether LipSDP or the exact constant runs at some measurements (they also run at the last one)."""
        return self.sdp_every > 0 or self.exact_every > 0


class MLPBoundsTracker:
    """Which MLP bounds run at a measurement (options: `MLPBounds`), their values, and the one-time "not
    available" warnings."""

    def __init__(self, options: MLPBounds | None = None) -> None:
        options = MLPBounds() if options is None else options
        self.eclipse, self.eclipse_max_neurons = options.upper_eclipse is not False, options.eclipse_max_neurons
        # on by default: no warning where it cannot run
        self._quiet = {"eclipse"} if options.upper_eclipse is None else set()
        self.sdp_every, self.sdp_solver, self.sdp_time_limit = (
            options.sdp_every,
            options.sdp_solver,
            options.sdp_time_limit,
        )
        self.sdp_max_neurons = (
            SDP_MAX_NEURONS[options.sdp_solver] if options.sdp_max_neurons is None else options.sdp_max_neurons
        )
        self._sdp_previous: FirstOrderLipSDPResult | None = None  # warm start of the first-order solver
        self.exact_every, self.exact_time_limit = options.exact_every, options.exact_time_limit
        self.exact_max_neurons = options.exact_max_neurons
        self._checked: weakref.ref | None = None  # the module whose forward = scale * net(x) was verified
        self._failure: str | None = None  # why the measured module is not an MLP (then never retried)

    @property
    def enabled(self) -> bool:
        return self.eclipse or self.sdp_every > 0 or self.exact_every > 0

    def due(self, measurement: int, last: bool) -> dict[str, bool]:
        """{"eclipse", "sdp", "exact"}: whether each runs at the `measurement`-th measurement (0-based)."""

        def scheduled(every: int) -> bool:
            return every > 0 and (last or measurement % every == 0)

        return {"eclipse": self.eclipse, "sdp": scheduled(self.sdp_every), "exact": scheduled(self.exact_every)}

    def compute(
        self, model: nn.Module, examples: Callable[[], Tensor | None], measurement: int, last: bool, warn: Warn
    ) -> dict[str, float]:
        """This rank's scalars (keys of REDUCTIONS) of the bounds due now; bounds not available are warned once
        with the reason and left out. Call with the model in eval mode and finite parameters."""
        due = self.due(measurement, last)
        if not any(due.values()):
            return {}
        measured = self._measured_mlp(model, examples)
        if measured is None:
            for name, on in due.items():
                if on and name not in self._quiet:
                    warn(f"mlp-{name}", f"LipschitzCallback: {_metric(name)} not available: {self._failure}")
            return {}
        out: dict[str, float] = {}
        if due["eclipse"] and measured.hidden_neurons > self.eclipse_max_neurons:
            if "eclipse" not in self._quiet:
                warn(
                    "mlp-eclipse",
                    f"LipschitzCallback: {ECLIPSE} not available: {measured.hidden_neurons} hidden neurons > "
                    f"eclipse_max_neurons={self.eclipse_max_neurons}",
                )
        elif due["eclipse"]:
            try:
                out["mlp/eclipse"] = measured.scale * eclipse_fast(measured.mlp)
            except (ValueError, ArithmeticError) as error:  # LinAlgError (a ValueError) on extreme weights
                warn("mlp-eclipse-failed", f"LipschitzCallback: {ECLIPSE} failed ({error}); skipped")
        if due["sdp"]:
            out.update(self._sdp(measured, warn))
        if due["exact"]:
            out.update(self._exact(measured, warn))
        return out

    @staticmethod
    def metrics(scalars: dict[str, float]) -> dict[str, float]:
        """The reduced scalars -> the logged metrics (module doc)."""
        out: dict[str, float] = {}
        if "mlp/eclipse" in scalars:
            out[ECLIPSE] = scalars["mlp/eclipse"]
        if "mlp/sdp" in scalars:
            out[SDP] = scalars["mlp/sdp"]
        if "mlp/exact_done" in scalars:
            if scalars["mlp/exact_done"] > 0:
                out[EXACT] = scalars["mlp/exact_lower"]
            else:
                out[EXACT_LOWER], out[EXACT_UPPER] = scalars["mlp/exact_lower"], scalars["mlp/exact_upper"]
        return out

    # ------------------------------------------------------------------ the bounds
    def _sdp(self, measured: MeasuredMLP, warn: Warn) -> dict[str, float]:
        if measured.hidden_neurons > self.sdp_max_neurons:
            warn(
                "mlp-sdp",
                f"LipschitzCallback: {SDP} not available: {measured.hidden_neurons} hidden neurons > "
                f"sdp_max_neurons={self.sdp_max_neurons}",
            )
            return {}
        try:
            if self.sdp_solver == "first_order":
                result = lipsdp_first_order(measured.mlp, init=self._sdp_previous, time_limit=self.sdp_time_limit)
                self._sdp_previous, value = result, result.value
            else:
                from lipschitz_dd.bounds.lipsdp import lipsdp_neuron

                value = lipsdp_neuron(measured.mlp).value
        except ImportError:
            warn(
                "mlp-sdp",
                f"LipschitzCallback: {SDP} not available: cvxpy / clarabel are not installed "
                "(pip install 'lipschitz_dd[sdp]')",
            )
            return {}
        except (RuntimeError, ValueError, ArithmeticError) as error:  # solver failure: this time only
            warn("mlp-sdp-failed", f"LipschitzCallback: {SDP} failed ({type(error).__name__}: {error}); skipped")
            return {}
        return {"mlp/sdp": measured.scale * value}

    def _exact(self, measured: MeasuredMLP, warn: Warn) -> dict[str, float]:
        if not measured.mlp.piecewise_linear:
            names = sorted({a.name for a in measured.mlp.activations if a.pieces is None})
            warn(
                "mlp-exact", f"LipschitzCallback: {EXACT} not available: needs ReLU / LeakyReLU, got {', '.join(names)}"
            )
            return {}
        if measured.hidden_neurons > self.exact_max_neurons:
            warn(
                "mlp-exact",
                f"LipschitzCallback: {EXACT} not available: {measured.hidden_neurons} hidden neurons > "
                f"exact_max_neurons={self.exact_max_neurons}",
            )
            return {}
        result = exact_lipschitz(measured.mlp, time_limit=self.exact_time_limit)
        return {
            "mlp/exact_lower": measured.scale * result.lower,
            "mlp/exact_upper": measured.scale * result.upper,
            "mlp/exact_done": float(result.exact),
        }

    # ------------------------------------------------------------------ which network
    def _measured_mlp(self, model: nn.Module, examples: Callable[[], Tensor | None]) -> MeasuredMLP | None:
        """The measured function as scale * MLP (weights read now), or None with `self._failure` set."""
        if self._failure is not None:
            return None
        try:
            return MeasuredMLP(mlp_from_module(model), 1.0)
        except ValueError as error:
            direct = str(error)
        net = getattr(model, "net", None)
        if not isinstance(net, nn.Sequential):
            self._failure = direct
            return None
        try:
            mlp = mlp_from_module(net)
        except ValueError as error:
            self._failure = f"{type(model).__name__}.net is {error}"
            return None
        scale = float(getattr(model, "logit_temperature", 1.0))
        if self._checked is None or self._checked() is not model:
            reason = _forward_is_scaled_net(model, net, scale, examples())
            if reason is not None:
                self._failure = reason
                return None
            self._checked = weakref.ref(model)
        return MeasuredMLP(mlp, abs(scale))


def _forward_is_scaled_net(model: nn.Module, net: nn.Module, scale: float, x: Tensor | None) -> str | None:
    """None if model(x) == scale * net(x) on the points x (float tolerance), else why not."""
    if x is None:
        return f"no input points to check that {type(model).__name__}'s output is logit_temperature * net(x)"
    with torch.no_grad():
        out, ref = model(x), net(x)
    if not isinstance(out, Tensor) or out.shape != ref.shape:
        return f"{type(model).__name__}'s output is not logit_temperature * net(x) (another shape)"
    ref = scale * ref
    tolerance = 1e-4 * float(ref.abs().max()) + 1e-6
    if not math.isfinite(tolerance) or float((out - ref).abs().max()) > tolerance:
        return f"{type(model).__name__}'s output is not logit_temperature * net(x) (checked on training points)"
    return None


def _metric(name: str) -> str:
    return {"eclipse": ECLIPSE, "sdp": SDP, "exact": EXACT}[name]
