"""Deprecated names, in one place. Each still works, with a DeprecationWarning that names its replacement; the
library itself uses none of them. Three unrelated classes were once all called `RunRecord`:

    lipschitz_dd.callbacks.RunRecord              -> lipschitz_dd.callbacks.ResultsWriter (writes results.json;
                                                     the old name warns when instantiated, so configs naming it
                                                     by class path keep working)
    lipschitz_dd.report.RunRecord,
    lipschitz_dd.report.records.RunRecord         -> lipschitz_dd.report.LoadedRun (a run folder read back)
    lipschitz_dd.sweep.RunRecord,
    lipschitz_dd.sweep.state.RunRecord            -> lipschitz_dd.sweep.SweepRunRow (a row of a sweep's state)

A module with deprecated names resolves them in its module `__getattr__` through `deprecated_name`. Nothing here
is imported before a deprecated name is used, and each name imports only its own layer (the report's alias
never imports training code).
"""

from __future__ import annotations

import functools
import importlib
import warnings
from typing import Any

__all__ = ["DEPRECATED", "deprecated_name"]

DEPRECATED: dict[tuple[str, str], tuple[str, str]] = {
    ("lipschitz_dd.callbacks", "RunRecord"): ("lipschitz_dd.callbacks.records", "ResultsWriter"),
    ("lipschitz_dd.callbacks.records", "RunRecord"): ("lipschitz_dd.callbacks.records", "ResultsWriter"),
    ("lipschitz_dd.report", "RunRecord"): ("lipschitz_dd.report.records", "LoadedRun"),
    ("lipschitz_dd.report.records", "RunRecord"): ("lipschitz_dd.report.records", "LoadedRun"),
    ("lipschitz_dd.sweep", "RunRecord"): ("lipschitz_dd.sweep.state", "SweepRunRow"),
    ("lipschitz_dd.sweep.state", "RunRecord"): ("lipschitz_dd.sweep.state", "SweepRunRow"),
}
"""(module, deprecated name) -> (module, name) of what replaces it."""

_PUBLIC_HOME = {
    "ResultsWriter": "lipschitz_dd.callbacks",
    "LoadedRun": "lipschitz_dd.report",
    "SweepRunRow": "lipschitz_dd.sweep",
}


def deprecated_name(module: str, name: str) -> Any:
    """The object behind `module.name` if that is a deprecated name (a DeprecationWarning names its replacement);
    an AttributeError otherwise (for a module's `__getattr__`)."""
    if (module, name) not in DEPRECATED:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    home, new = DEPRECATED[(module, name)]
    if new == "ResultsWriter":
        return _deprecated_results_writer()  # warns when instantiated (configs name it by class path)
    warnings.warn(f"{module}.{name} is deprecated; use {_PUBLIC_HOME[new]}.{new}", DeprecationWarning, stacklevel=3)
    return getattr(importlib.import_module(home), new)


@functools.cache
def _deprecated_results_writer() -> type:
    from lipschitz_dd.callbacks.records import ResultsWriter

    class RunRecord(ResultsWriter):
        """Deprecated name of :class:`ResultsWriter` (kept so existing configs and imports keep working)."""

        def __init__(self, run_dir: str | None = None, config: dict[str, Any] | None = None) -> None:
            warnings.warn(
                "lipschitz_dd.callbacks.RunRecord is deprecated; use lipschitz_dd.callbacks.ResultsWriter",
                DeprecationWarning,
                stacklevel=2,
            )
            super().__init__(run_dir=run_dir, config=config)

    RunRecord.__module__, RunRecord.__qualname__ = "lipschitz_dd.callbacks", "RunRecord"
    return RunRecord
