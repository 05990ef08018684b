"""Lightning callbacks of lipschitz_dd. They work on any LightningModule: they import only lipschitz_dd.bounds."""

from lipschitz_dd.callbacks.evolution import EvolutionBound
from lipschitz_dd.callbacks.lipschitz import LipschitzCallback
from lipschitz_dd.callbacks.records import RunRecord
from lipschitz_dd.callbacks.snapshot import FunctionSnapshot
from lipschitz_dd.callbacks.stopping import GradNormStopping

__all__ = ["EvolutionBound", "FunctionSnapshot", "GradNormStopping", "LipschitzCallback", "RunRecord"]
