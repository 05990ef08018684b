"""lipschitz_dd: Lipschitz bounds of neural networks during training (PyTorch Lightning).

The public face, loaded on first use (``import lipschitz_dd`` imports neither torch nor Lightning):

    from lipschitz_dd import LipschitzCallback, LipschitzMeter, PointSet, lower_bound, upper_bound

* callbacks: `LipschitzCallback` (bounds during `fit`), its option groups `PointOptions`, `UpperBound`,
  `OptimisedBound`, `MLPBounds`, the point sets (`PointSet` to subclass, `TrainPoints`, `TestPoints`,
  `InterpolatedPoints`, `NoisePoints`, `PGDPoints`), `EvolutionBound`, `FunctionSnapshot`, `GradNormStopping`;
* the engine without Lightning: `LipschitzMeter` and its `Measurement`;
* bounds of any nn.Module (see `lipschitz_dd.bounds` for all of them): `lower_bound`, `upper_bound`,
  `optimised_lower_bound`, `pairwise_lipschitz`, `exact_lipschitz`, `eclipse_fast`, `product_bound`, and what
  they return (`BoundResult`: value, kind, errs, certified; `Bound`, `LowerBoundStats`, `UpperBoundResult`).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_WHERE = {
    # callbacks (Lightning)
    "LipschitzCallback": "lipschitz_dd.callbacks",
    "PointOptions": "lipschitz_dd.callbacks",
    "UpperBound": "lipschitz_dd.callbacks",
    "OptimisedBound": "lipschitz_dd.callbacks",
    "MLPBounds": "lipschitz_dd.callbacks",
    "PointSet": "lipschitz_dd.callbacks",
    "TrainPoints": "lipschitz_dd.callbacks",
    "TestPoints": "lipschitz_dd.callbacks",
    "InterpolatedPoints": "lipschitz_dd.callbacks",
    "NoisePoints": "lipschitz_dd.callbacks",
    "PGDPoints": "lipschitz_dd.callbacks",
    "EvolutionBound": "lipschitz_dd.callbacks",
    "FunctionSnapshot": "lipschitz_dd.callbacks",
    "GradNormStopping": "lipschitz_dd.callbacks",
    # the measurement engine (plain PyTorch)
    "LipschitzMeter": "lipschitz_dd.callbacks",
    "Measurement": "lipschitz_dd.callbacks",
    # bounds (plain PyTorch)
    "lower_bound": "lipschitz_dd.bounds",
    "upper_bound": "lipschitz_dd.bounds",
    "optimised_lower_bound": "lipschitz_dd.bounds",
    "pairwise_lipschitz": "lipschitz_dd.bounds",
    "exact_lipschitz": "lipschitz_dd.bounds",
    "eclipse_fast": "lipschitz_dd.bounds",
    "product_bound": "lipschitz_dd.bounds",
    "Bound": "lipschitz_dd.bounds",
    "BoundResult": "lipschitz_dd.bounds",
    "LowerBoundStats": "lipschitz_dd.bounds",
    "UpperBoundResult": "lipschitz_dd.bounds",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
