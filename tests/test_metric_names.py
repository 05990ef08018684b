"""Metric names live in lipschitz_dd/metric_names.py: the stable names, and the library's code uses them."""

from __future__ import annotations

import ast
from pathlib import Path

from lipschitz_dd import metric_names as M

ROOT = Path(__file__).resolve().parents[1]


def test_the_stable_names_are_the_constants():
    stable = {
        "lipschitz/lower", "lipschitz/avg", "lipschitz/rms", "lipschitz/upper", "lipschitz/upper_available",
        "lipschitz/lower_test", "lipschitz/lower_interp", "lipschitz/lower_noise", "lipschitz/lower_pgd",
        "lipschitz/lower_opt", "lipschitz/seconds", "params/dist_init", "params/path_length", "train/loss",
        "train/acc", "train/grad_norm", "test/loss", "test/acc", "lipschitz/avg_tol", "lipschitz/exact",
        "lipschitz/upper_eclipse", "lipschitz/upper_sdp",
    }  # fmt: skip
    assert stable <= set(M.NAMES.values())
    assert M.lower_of("test") == M.LOWER_TEST and M.lower_of("pgd") == M.LOWER_PGD
    assert len(set(M.NAMES.values())) == len(M.NAMES)  # no two constants for one name


def _code_literals(path: Path) -> list[str]:
    """String constants of a module that are metric names, docstrings left out."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body
        and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
    }  # fmt: skip
    names = set(M.NAMES.values())
    return [
        n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in names and id(n) not in docstrings
    ]


def test_callbacks_and_report_use_the_constants_not_literals():
    files = ["callbacks/meter.py", "callbacks/point_sets.py", "callbacks/evolution.py", "callbacks/stopping.py"]
    files += ["lipschitz_dd/report/tables.py", "lipschitz_dd/report/figures.py", "lipschitz_dd/sweep/table.py"]
    for name in files:
        assert not _code_literals(ROOT / name), name
