"""The catalogue of the study's findings: one `Finding` per claim, registered by name.

A finding says what it tests (section, claim, the study's numbers), what it runs (a shipped sweep file with
per-scale overrides of its parameters) and how its runs are read (`analyse`: run records -> figures and the
numbers of `summary.md`, and the checks its verdict is derived from: reproduce/verdict.py). Add one by writing a
module under lipschitz_dd/reproduce/findings/ that calls `register(Finding(...))`: every module of that package
is imported (and so registered) when the catalogue is first asked for.

Scales: "quick" (tens of seconds on one thread: CI smoke tests, a first look), "cpu" (the result that goes in
docs/reproduction.md), "full" (the study's own scale, for a GPU machine or a W&B agent). A scale is only a dict
of sweep parameter overrides ({"model.width": [8, 16], "trainer.max_epochs": 20}): the same finding at another
scale differs in nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lipschitz_dd.reproduce.verdict import MIN_SEEDS, Check, Verdict, decide

SCALES = ("quick", "cpu", "full")

# `Finding.data` of the findings whose runs read these sets (paths relative to the working directory, as the runs'
# data_dir "data"): what to install or where to put the files. No download happens without --data.download true.
FASHION_MNIST = "Fashion-MNIST (apt-get install dataset-fashion-mnist, or its four idx files in data/FashionMNIST/raw)"
CIFAR10 = "CIFAR-10 (python version) in data/cifar-10-batches-py"


@dataclass
class Analysis:
    """What `Finding.analyse` returns: the figures it wrote, Markdown lines of numbers, the declared checks
    (verdict.Check) its verdict is derived from, and a note (a sentence read with the verdict, never parsed);
    `error` (one line) when the analysis raised instead (set by run.safe_analyse, never by an analysis)."""

    figures: list[Path] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    note: str = ""
    error: str | None = None

    @property
    def verdict(self) -> Verdict | None:
        """verdict.decide over the checks (None when the analysis raised)."""
        return None if self.error is not None else decide(self.checks)


@dataclass(frozen=True)
class Recorded:
    """The last measured cpu-scale result of a finding, as the catalogue shows it: the verdict derived then, how
    many seeds it rested on, the measured wall time in minutes on this project's 2-core machine (None: not
    timed), the date, and whether the run shared the cores with other work (times then run long). rule:
    "checks" when the verdict is the declared checks' (derived by verdict.decide, or rederived from the run's
    recorded numbers), "former" when it was read by the rule in use before the declared checks (the catalogue
    says so: rerun to judge it)."""

    verdict: str
    seeds: int
    minutes: float | None
    date: str
    shared: bool = False
    note: str = ""
    rule: str = "checks"

    def __post_init__(self) -> None:
        if self.rule not in ("checks", "former"):
            raise ValueError(f"Recorded.rule {self.rule!r}: 'checks' or 'former'")


@dataclass
class Finding:
    """One finding of the study.

    name: the CLI name (`lipschitz-dd reproduce NAME`). section: where the study makes the claim. number: its
    section number in docs/reproduction.md ("5.2"); the catalogue is listed in that order.
    claim: the claim in one line. paper: the study's numbers the summary compares with ({label: value}).
    sweep: the shipped sweep file it runs (lipschitz_dd.shipped.resolve(name, "sweeps")). Or, for a finding
    of a few runs, config: a shipped config, and parameters: the grid ({key: value or list of values}) of the
    sweep generated around it. scales: {scale: {sweep parameter: value or list of values}} replacing the file's parameters.
    cost: {scale: estimated CPU time here, in words}. analyse(records, out) -> Analysis, with `records` the run
    records of the finding's sweep (lipschitz_dd.report.records.load_runs) and `out` its output folder.
    needs: a feature that is missing today; a finding with `needs` refuses to run with one line, always.
    data: the data set its runs read from disk and how to get it, in a few words (None: its runs generate their
    data). The listing marks it; `run_finding` checks the files before it starts any run (run.missing_data, which
    asks the data module itself, at the scale asked) and refuses in one line when they are absent.
    prepare(scale, folder) -> {sweep parameter: value}: called by `run_finding` before the sweep runs, in the
    finding's output folder: writes what the runs need (e.g. a tiny generated data set) and returns parameter
    overrides (e.g. its path); raises FileNotFoundError with one line when the runs cannot have what they need.
    setting: what the cpu scale runs, in a few words (the catalogue's "setting" column). compares: its verdict
    compares widths, settings or epochs (then the cpu scale runs at least MIN_SEEDS seeds, and a recorded
    result with fewer is shown as undecided). recorded: the last measured cpu-scale result (Recorded).
    analyse_only: {scale: {sweep parameter: value or list of values}}: at that scale the analysis reads only the
    runs with these values (for a finding that shares a larger grid trained for another one and measures something
    costly on part of it, e.g. PGD on 3 of 8 widths); its summary says how many runs it left out.
    """

    name: str
    section: str
    claim: str
    number: str = ""
    paper: dict[str, Any] = field(default_factory=dict)
    sweep: str | None = None
    config: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    scales: dict[str, dict[str, Any]] = field(default_factory=dict)
    cost: dict[str, str] = field(default_factory=dict)
    analyse: Callable[[Sequence[Any], Path], Analysis] | None = None
    needs: str | None = None
    data: str | None = None
    prepare: Callable[[str, Path], dict[str, Any]] | None = None
    setting: str = ""
    compares: bool = False
    recorded: Recorded | None = None
    analyse_only: dict[str, dict[str, Any]] = field(default_factory=dict)

    def catalogue_verdict(self) -> str:
        """The verdict the catalogue shows: the recorded one, or `undecided (n seed(s); rerun with 3)` when the
        verdict compares across runs and the recorded result rests on fewer than MIN_SEEDS seeds."""
        if self.needs:
            return "not runnable here"
        if self.recorded is None:
            return "not run yet"
        r = self.recorded
        former = " (by the former rule)" if r.rule == "former" else ""
        if self.compares and r.seeds < MIN_SEEDS:
            plural = "s" if r.seeds != 1 else ""
            return f"undecided ({r.seeds} seed{plural}; rerun with {MIN_SEEDS}); that run read: {r.verdict}{former}"
        if r.rule == "former":
            return f"{r.verdict} by the former rule; rerun to judge by the declared checks" + (
                f" ({r.note})" if r.note else ""
            )
        return r.verdict + (f" ({r.note})" if r.note else "")

    def __post_init__(self) -> None:
        if self.needs is None and ((self.sweep is None) == (self.config is None) or self.analyse is None):
            raise ValueError(f"finding {self.name!r}: give a sweep or a config, and analyse, or say what it needs")
        unknown = (set(self.scales) | set(self.analyse_only)) - set(SCALES)
        if unknown:
            raise ValueError(f"finding {self.name!r}: unknown scales {sorted(unknown)} (known: {SCALES})")


_FINDINGS: dict[str, Finding] = {}


def register(finding: Finding) -> Finding:
    """Add `finding` to the catalogue (names are unique)."""
    if finding.name in _FINDINGS:
        raise ValueError(f"finding {finding.name!r} is registered twice")
    _FINDINGS[finding.name] = finding
    return finding


def all_findings() -> list[Finding]:
    """Every registered finding, in the order of their section numbers (the study's order).

    Named `all_findings`, not `findings`: the subpackage `lipschitz_dd.reproduce.findings` (one module per finding)
    binds that name on its package when first imported."""
    import lipschitz_dd.reproduce.findings  # noqa: F401  (imports every module of the package: registers them)

    def key(finding: Finding) -> tuple[int, ...]:
        return tuple(int(part) for part in finding.number.split(".") if part.isdigit()) or (10**6,)

    return sorted(_FINDINGS.values(), key=key)


#: Former names of findings -> their names now (a renamed finding is found under its old name with a hint).
RENAMED = {"toy2d": "toy2d_variant"}


def get_finding(name: str) -> Finding:
    """The finding called `name`; KeyError with the known names otherwise (and the new name of a renamed one)."""
    known = {f.name: f for f in all_findings()}
    if name in RENAMED:
        raise KeyError(f"no finding {name!r}: it is now called {RENAMED[name]!r} (the study's own toy is study_toy2d)")
    if name not in known:
        raise KeyError(f"no finding {name!r} (known: {', '.join(known)})")
    return known[name]
