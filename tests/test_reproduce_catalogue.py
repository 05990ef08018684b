"""The catalogue table of docs/reproduction.md is generated from the registry (`lipschitz-dd reproduce
--markdown`): the page must hold exactly the generated table, every finding whose verdict compares runs runs at
least 3 seeds at cpu scale, and a recorded result on fewer seeds reads undecided."""

from __future__ import annotations

from pathlib import Path

from lipschitz_dd.cli import main
from lipschitz_dd.reproduce.catalogue import BEGIN, END, HEADER, cpu_seeds, markdown, replace_in
from lipschitz_dd.reproduce.registry import Recorded, all_findings, get_finding
from lipschitz_dd.reproduce.verdict import MIN_SEEDS

DOCS = Path(__file__).resolve().parents[1] / "docs" / "reproduction.md"

#: The findings whose verdict compares widths, settings or epochs (issue 22 section 2).
COMPARING = {
    "double_descent", "cnn_fashion_mnist_dd", "constrained", "heatmap", "adversarial", "dropout_weight_decay",
    "weight_decay", "evolution", "evolution_bound", "out_of_distribution", "pairwise", "linearisation",
    "regulariser", "sandwich",
}  # fmt: skip


def test_docs_hold_the_generated_table():
    text = DOCS.read_text()
    generated = text[text.index(BEGIN) : text.index(END) + len(END)]
    assert generated == markdown(), (
        "docs/reproduction.md's catalogue table differs from the registry: regenerate it with "
        "`python -m lipschitz_dd.reproduce.catalogue --write docs/reproduction.md`"
    )


def test_the_markdown_flag_prints_the_table(capsys):
    assert main(["reproduce", "--markdown"]) == 0
    out = capsys.readouterr().out
    assert "| " + " | ".join(HEADER) + " |" in out
    for finding in all_findings():
        assert f"| `{finding.name}` |" in out


def test_findings_that_compare_run_three_seeds_at_cpu_scale():
    for name in COMPARING:
        finding = get_finding(name)
        assert finding.compares, name
        assert int(cpu_seeds(finding)) >= MIN_SEEDS, name


def test_a_recorded_result_on_one_seed_reads_undecided(monkeypatch):
    finding = get_finding("double_descent")
    monkeypatch.setattr(finding, "recorded", Recorded("holds", seeds=1, minutes=21, date="2026-12-01"))
    assert finding.catalogue_verdict() == "undecided (1 seed; rerun with 3); that run read: holds"
    monkeypatch.setattr(finding, "recorded", Recorded("holds", seeds=3, minutes=60, date="2026-12-08"))
    assert finding.catalogue_verdict() == "holds"
    assert "| `double_descent` |" in markdown() and "60 min, 3 seeds, 2026-12-08, idle cores" in markdown()


def test_replace_in_needs_the_markers():
    import pytest

    with pytest.raises(ValueError, match="markers"):
        replace_in("no table here")
    assert replace_in(f"a\n{BEGIN}\nold\n{END}\nb") == f"a\n{markdown()}\nb"
