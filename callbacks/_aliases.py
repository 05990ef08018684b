"""The earlier flat keyword names of `LipschitzCallback`, kept one release as deprecated aliases.

Each maps onto an option group (`PointOptions`, `UpperBound`, `OptimisedBound`) or a built-in point set, in the
order the built-ins were always measured (train, test, interp, noise, pgd), so a call with the old names measures
exactly what it did. A LightningCLI config must use the new names (jsonargparse reads the signature).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lipschitz_dd.callbacks.options import OptimisedBound, PointOptions, UpperBound
from lipschitz_dd.callbacks.point_sets import (
    InterpolatedPoints,
    NoisePoints,
    PGDPoints,
    PointSet,
    TestPoints,
    TrainPoints,
)

POINT_FIELDS = {f.name for f in dataclasses.fields(PointOptions)}
OPTIMISED_FIELDS = {"optimised_every": "every", "optimised_top_m": "top_m", "optimised_steps": "steps"}
POINT_SET_FLAGS = {
    "lower",
    "average",
    "test",
    "interp",
    "interp_points",
    "interp_lambdas",
    "noise",
    "noise_sigma",
    "pgd",
    "pgd_eps",
    "pgd_steps",
    "data_box",
}
KNOWN = POINT_FIELDS | set(OPTIMISED_FIELDS) | POINT_SET_FLAGS | {"upper_certified", "jacobian_method", "upper"}


@dataclass
class Resolved:
    points: PointOptions
    upper: UpperBound
    optimised: OptimisedBound
    point_sets: list[PointSet]  # the built-ins switched on by the old flags, in their old order
    train: TrainPoints | None  # the training points' set (None: lower=False and average=False)
    jacobian_method: str | None


def deprecated_options(
    old: dict[str, Any], points: PointOptions | None, upper: UpperBound | bool | None, optimised: OptimisedBound | None
) -> Resolved:
    """The option groups with the old keyword arguments `old` applied (a DeprecationWarning names them); a
    clear error for an unknown name."""
    unknown = sorted(set(old) - KNOWN)
    if unknown:
        raise TypeError(f"LipschitzCallback got unexpected keyword arguments {unknown}")
    points = points if points is not None else PointOptions()
    if not isinstance(points, PointOptions):
        raise ValueError(f"LipschitzCallback: points must be a PointOptions, got {points!r}")
    if isinstance(upper, bool):  # the old `upper: bool`
        old = {**old, "upper": upper}
        upper = None
    upper = upper if upper is not None else UpperBound()
    optimised = optimised if optimised is not None else OptimisedBound()
    if old:
        warnings.warn(
            f"LipschitzCallback: {sorted(old)} are deprecated; use points=PointOptions(...), point_sets=[...], "
            "upper=UpperBound(...), optimised=OptimisedBound(...) (see the class docstring)",
            DeprecationWarning,
            stacklevel=3,
        )
    point_options = {k: v for k, v in old.items() if k in POINT_FIELDS}
    if point_options:
        points = dataclasses.replace(points, **point_options)
    data_box = old.get("data_box")
    if "upper" in old or "upper_certified" in old:
        upper = UpperBound(
            enabled=old.get("upper", upper.enabled), certified=old.get("upper_certified", upper.certified)
        )
    optimised_options = {OPTIMISED_FIELDS[k]: v for k, v in old.items() if k in OPTIMISED_FIELDS}
    if optimised_options or data_box is not None:
        optimised = dataclasses.replace(optimised, **optimised_options, data_box=data_box or optimised.data_box)
    sets, train = _builtin_sets(old, data_box)
    return Resolved(points, upper, optimised, sets, train, old.get("jacobian_method"))


def _builtin_sets(old: dict[str, Any], data_box) -> tuple[list[PointSet], TrainPoints | None]:
    lower, average = old.get("lower", True), old.get("average", True)
    train = TrainPoints(lower=lower, average=average) if lower or average else None
    interp = InterpolatedPoints(old.get("interp_points", 10_000), tuple(old.get("interp_lambdas", _LAMBDAS)))
    noise = NoisePoints(old.get("noise_sigma", 0.1), data_box)
    pgd = PGDPoints(old.get("pgd_eps", 0.5), old.get("pgd_steps", 10), data_box)  # each checks its options
    sets: Sequence[tuple[str, PointSet]] = (("test", TestPoints()), ("interp", interp), ("noise", noise), ("pgd", pgd))
    return [point_set for flag, point_set in sets if old.get(flag, False)], train


_LAMBDAS = (0.1, 0.2, 0.3, 0.4, 0.5)
