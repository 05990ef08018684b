"""Local sweep runner: W&B sweep files run without a server (sweeps engine + SQLite state + processes)."""

from .command import DEFAULT_SWEEP_COMMAND, command_args, expand_command
from .config import SweepFileError, load_sweep_config, validate_sweep_config
from .runner import SweepResult, SweepRunner, run_sweep, sweep_folder
from .state import SweepRunRow, SweepState
from .table import format_progress, format_runs, sweep_progress

__all__ = [
    "DEFAULT_SWEEP_COMMAND",
    "SweepFileError",
    "SweepResult",
    "SweepRunRow",
    "SweepRunner",
    "SweepState",
    "command_args",
    "expand_command",
    "format_progress",
    "format_runs",
    "load_sweep_config",
    "run_sweep",
    "sweep_folder",
    "sweep_progress",
    "validate_sweep_config",
]


def __getattr__(name: str):
    """Deprecated names (see lipschitz_dd/compat.py)."""
    from lipschitz_dd.compat import deprecated_name

    return deprecated_name(__name__, name)
