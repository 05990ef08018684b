"""Hand-made run folders for the reproduce findings' tests: results.json and metrics.csv as the training CLI
writes them (lipschitz_dd/run_folder.py), with the values a test chooses."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from lipschitz_dd.reproduce import get_finding
from lipschitz_dd.reproduce.run import analyse_folder


def write_run(
    folder: Path,
    config: Mapping,
    final: Mapping[str, float],
    initial: Mapping[str, float] | None = None,
    history: Sequence[Mapping[str, float]] | None = None,
    epochs: int = 5,
    status: str = "finished",
) -> Path:
    """A finished run: results.json (config, final values) and metrics.csv with one row per entry of
    `history` ({"step": epoch, metric: value}; a missing metric is an empty cell), else two rows: epoch 0
    (`initial`, default `final`) and epoch `epochs` (`final`)."""
    folder.mkdir(parents=True)
    payload = {"status": status, "config": dict(config), "final": dict(final), "max": {}, "epochs": epochs}
    payload["seconds"] = 1.0
    (folder / "results.json").write_text(json.dumps(payload))
    if history is None:
        history = [{"step": 0, **(initial or final)}, {"step": epochs, **final}]
    columns = sorted({k for row in history for k in row if k != "step"})
    lines = [",".join(["step", *columns])]
    lines += [",".join([str(row["step"]), *(str(row.get(c, "")) for c in columns)]) for row in history]
    (folder / "metrics.csv").write_text("\n".join(lines) + "\n")
    return folder


def verdict_of(name: str, runs: Path, out: Path) -> str:
    """The verdict line of `name`'s summary.md from the runs below `runs` (cpu scale)."""
    summary = analyse_folder(get_finding(name), "cpu", runs, out).summary.read_text()
    return summary.split("## Verdict\n\n")[1].splitlines()[0]
