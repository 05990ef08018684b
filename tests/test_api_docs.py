"""The API reference builds from the docstrings (tools/build_api_docs.py, pdoc) and a module that cannot be
imported fails the build instead of silently dropping out of it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import build_api_docs  # noqa: E402

pytestmark = pytest.mark.slow


def test_reference_builds_with_every_package(tmp_path):
    assert build_api_docs.build(tmp_path) == []
    for page in ("lipschitz_dd.html", "lipschitz_dd/bounds.html", "lipschitz_dd/callbacks.html"):
        assert (tmp_path / page).is_file(), page
    assert "LipschitzCallback" in (tmp_path / "lipschitz_dd" / "callbacks.html").read_text()


def test_a_module_that_fails_to_import_fails_the_build(tmp_path, monkeypatch):
    package = tmp_path / "src" / "brokenpkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('"""A package."""\n')
    (package / "bad.py").write_text('"""Imports something that is not there."""\nimport not_a_module_anywhere\n')
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    monkeypatch.setattr(build_api_docs, "MODULES", ("brokenpkg",))
    problems = build_api_docs.build(tmp_path / "out")
    assert any("brokenpkg.bad" in p for p in problems), problems
