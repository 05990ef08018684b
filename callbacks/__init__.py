"""Lightning callbacks of lipschitz_dd. They work on any LightningModule: they import only lipschitz_dd.bounds
(and the package's plain-Python contracts, lipschitz_dd.run_folder and lipschitz_dd.epoch_axis).

Names are loaded on first use, so `from lipschitz_dd.callbacks import LipschitzMeter` (the measurement engine,
callbacks/meter.py) works in a plain PyTorch loop without importing Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "EvolutionBound": "evolution",
    "LipschitzCallback": "lipschitz",
    "MLPBounds": "_mlp_bounds",
    "OptimisedBound": "options",
    "PointOptions": "options",
    "UpperBound": "options",
    "LipschitzMeter": "meter",
    "Measurement": "meter",
    "InterpolatedPoints": "point_sets",
    "NoisePoints": "point_sets",
    "PGDPoints": "point_sets",
    "PointSet": "point_sets",
    "SoftmaxTrainPoints": "point_sets",
    "TestPoints": "point_sets",
    "TrainPoints": "point_sets",
    "ResultsWriter": "records",
    "FunctionSnapshot": "snapshot",
    "GradNormStopping": "stopping",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:  # RunRecord, ResultsWriter's deprecated name: see lipschitz_dd/compat.py
        from lipschitz_dd.compat import deprecated_name

        return deprecated_name(__name__, name)
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
