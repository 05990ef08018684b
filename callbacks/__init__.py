"""Lightning callbacks of lipschitz_dd. They work on any LightningModule: they import only lipschitz_dd.bounds
(and the package's plain-Python contracts, lipschitz_dd.run_folder and lipschitz_dd.epoch_axis)."""

from lipschitz_dd.callbacks.evolution import EvolutionBound
from lipschitz_dd.callbacks.lipschitz import LipschitzCallback, MLPBounds
from lipschitz_dd.callbacks.point_sets import (
    InterpolatedPoints,
    NoisePoints,
    PGDPoints,
    PointSet,
    SoftmaxTrainPoints,
    TestPoints,
    TrainPoints,
)
from lipschitz_dd.callbacks.records import ResultsWriter, RunRecord  # RunRecord: ResultsWriter's deprecated name
from lipschitz_dd.callbacks.snapshot import FunctionSnapshot
from lipschitz_dd.callbacks.stopping import GradNormStopping

__all__ = [
    "EvolutionBound",
    "FunctionSnapshot",
    "GradNormStopping",
    "InterpolatedPoints",
    "LipschitzCallback",
    "MLPBounds",
    "NoisePoints",
    "PGDPoints",
    "PointSet",
    "ResultsWriter",
    "RunRecord",
    "TestPoints",
    "TrainPoints",
    "SoftmaxTrainPoints",
]
