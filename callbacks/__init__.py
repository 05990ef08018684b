"""Lightning callbacks of lipschitz_dd. They work on any LightningModule: they import only lipschitz_dd.bounds."""

from callbacks.lipschitz import LipschitzCallback
from callbacks.records import RunRecord
from callbacks.snapshot import FunctionSnapshot
from callbacks.stopping import GradNormStopping

__all__ = ["FunctionSnapshot", "GradNormStopping", "LipschitzCallback", "RunRecord"]
