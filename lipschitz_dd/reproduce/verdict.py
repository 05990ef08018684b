"""Verdicts from declared checks: the one rule that turns a finding's measurements into its verdict.

A finding's analysis measures a few named quantities and declares, for each, the comparison the claim makes
(`Threshold`, a named constant in the finding's module); each becomes a `Check` whose status is `pass`, `fail`
or `not measured` (the value is NaN or None: e.g. no finite-difference ratio because PGD did not move a point).
No check is ever a string that is parsed back.

The rule (`decide`), applied in this order:

1. no check at all -> **undecided** ("nothing measured");
2. an *essential* check not measured -> **undecided** (the claim cannot be judged without it); a non-essential
   check that was not measured is left out of the rule (it is listed in the summary);
3. a measured check that compares widths, settings or epochs (`seeds` given) resting on fewer than `MIN_SEEDS`
   seeds in some compared setting -> **undecided** ("n seed(s); rerun with 3"): one seed cannot tell an effect
   from seed noise (identical configs have differed by 24 % in C_lower on this machine);
4. otherwise, over the measured checks: all pass -> **holds**; all fail -> **does not hold**; some pass and
   some fail -> **holds in part**.

A quick-scale run is a smoke test: run.write_summary lists its checks but gives no verdict.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

HOLDS, IN_PART, DOES_NOT_HOLD, UNDECIDED = "holds", "holds in part", "does not hold", "undecided"
VERDICTS = (HOLDS, IN_PART, DOES_NOT_HOLD, UNDECIDED)

#: The fewest seeds per compared setting for a check that compares widths, settings or epochs to decide.
MIN_SEEDS = 3

_OPERATORS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


class Status(str, Enum):
    PASS = "pass"
    FAIL = "fail"
    NOT_MEASURED = "not measured"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Threshold:
    """The comparison a claim makes of a measured value: `value <op> bound` (op one of <, <=, >, >=)."""

    op: str
    bound: float

    def __post_init__(self) -> None:
        if self.op not in _OPERATORS:
            raise ValueError(f"threshold operator {self.op!r}: use one of {', '.join(_OPERATORS)}")

    def passes(self, value: float) -> bool:
        return bool(_OPERATORS[self.op](value, self.bound))

    def __str__(self) -> str:
        return f"{self.op} {self.bound:g}"


def _number(value: Any) -> float:
    """`value` as a float; NaN for None, NaN, or anything that is not a number (not measured)."""
    if value is None or isinstance(value, bool):
        return float(value) if isinstance(value, bool) else math.nan
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number


@dataclass(frozen=True)
class Check:
    """One named measurement of a claim against its declared threshold.

    name: short name; measures: what the value is, in words; value: the measured number (NaN/None: not
    measured); threshold: the comparison the claim makes; essential: without it the claim cannot be judged
    (not measured -> undecided); seeds: for a check that compares widths, settings or epochs, the fewest seeds
    behind any compared setting (None: the check compares nothing across runs)."""

    name: str
    measures: str
    value: float | None
    threshold: Threshold
    essential: bool = True
    seeds: int | None = None

    @property
    def measured(self) -> float:
        return _number(self.value)

    @property
    def status(self) -> Status:
        value = self.measured
        if math.isnan(value):
            return Status.NOT_MEASURED
        return Status.PASS if self.threshold.passes(value) else Status.FAIL

    @property
    def too_few_seeds(self) -> bool:
        return self.seeds is not None and self.seeds < MIN_SEEDS and self.status is not Status.NOT_MEASURED


@dataclass(frozen=True)
class Verdict:
    """One of VERDICTS, the reason in a few words, and the checks it was derived from."""

    label: str
    reason: str
    checks: tuple[Check, ...] = ()

    def __str__(self) -> str:
        return f"{self.label}: {self.reason}" if self.reason else self.label


def decide(checks: Sequence[Check], min_seeds: int = MIN_SEEDS) -> Verdict:
    """The verdict of `checks` by the rule of the module docstring."""
    checks = tuple(checks)
    if not checks:
        return Verdict(UNDECIDED, "nothing measured", checks)
    missing = [c.name for c in checks if c.essential and c.status is Status.NOT_MEASURED]
    if missing:
        return Verdict(UNDECIDED, "not measured: " + ", ".join(missing), checks)
    thin = [c for c in checks if c.seeds is not None and c.seeds < min_seeds and c.status is not Status.NOT_MEASURED]
    if thin:
        fewest = min(c.seeds for c in thin)  # type: ignore[type-var]
        return Verdict(
            UNDECIDED,
            f"{fewest} seed{'s' if fewest != 1 else ''}; rerun with {min_seeds} "
            f"(compares across runs: {', '.join(c.name for c in thin)})",
            checks,
        )
    measured = [c for c in checks if c.status is not Status.NOT_MEASURED]
    passed = [c.name for c in measured if c.status is Status.PASS]
    failed = [c.name for c in measured if c.status is Status.FAIL]
    if not failed:
        return Verdict(HOLDS, "every check passes", checks)
    if not passed:
        return Verdict(DOES_NOT_HOLD, "every check fails", checks)
    return Verdict(IN_PART, "fails: " + ", ".join(failed) + "; passes: " + ", ".join(passed), checks)


def format_value(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.4g}"


def checks_table(checks: Sequence[Check]) -> list[str]:
    """The checks as Markdown lines: check | measures | value | threshold | seeds | status."""
    lines = ["| check | measures | value | threshold | seeds | status |", "|---|---|---|---|---|---|"]
    for c in checks:
        seeds = "-" if c.seeds is None else str(c.seeds)
        status = str(c.status) + ("" if c.essential else " (not essential)")
        lines.append(f"| {c.name} | {c.measures} | {format_value(c.measured)} | {c.threshold} | {seeds} | {status} |")
    return lines
