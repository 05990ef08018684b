"""`lipschitz-dd reproduce`: the catalogue lists every finding, pending ones refuse in one line, every real
finding's sweep is valid at every scale, and (slow) each real finding runs end to end at quick scale."""

from __future__ import annotations

import pytest

from lipschitz_dd.cli import main
from lipschitz_dd.reproduce import SCALES, findings, get_finding, run_finding, scaled_sweep
from lipschitz_dd.sweep.config import validate_sweep_config

# The study's findings and experiments (numbered findings 1-5 and every experiment described in detail),
# plus the companion issue's training-side ones.
EXPECTED = {
    "evolution", "evolution_bound", "double_descent", "bias_variance", "heatmap", "optimizer", "loss", "depth",
    "train_size", "toy2d", "cnn_double_descent", "cnn_fashion_mnist_dd", "pairwise", "linearisation",
    "out_of_distribution", "adversarial", "constrained", "jacobian_distributions", "regulariser", "softmax",
    "dropout_weight_decay", "imagenet", "sandwich",
}  # fmt: skip
REAL = [f.name for f in findings() if not f.needs]


def test_listing_names_every_finding(capsys):
    assert main(["reproduce"]) == 0
    listed = capsys.readouterr().out
    assert EXPECTED <= {f.name for f in findings()}
    for name in EXPECTED:
        assert f"{name} " in listed
    for finding in findings():
        assert finding.claim in listed
        assert (f"needs: {finding.needs}" if finding.needs else finding.cost["cpu"]) in listed


def test_pending_findings_refuse_in_one_line(capsys, tmp_path):
    pending = [f for f in findings() if f.needs]
    assert {"constrained", "regulariser", "imagenet", "sandwich", "cnn_fashion_mnist_dd"} <= {f.name for f in pending}
    assert main(["reproduce", "imagenet", "--quick", "--out", str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "needs:" in error
    assert not any(tmp_path.iterdir())
    assert main(["reproduce", "no_such_finding"]) == 1
    assert "known:" in capsys.readouterr().err


@pytest.mark.parametrize("name", REAL)
def test_scaled_sweeps_are_valid_and_only_the_knobs_change(name):
    finding = get_finding(name)
    for scale in SCALES:
        config = scaled_sweep(finding, scale)
        validate_sweep_config(config, source=f"{name}/{scale}")
        for key, value in finding.scales.get(scale, {}).items():
            if key != "sweep":
                assert config["parameters"][key] in (
                    {"value": value},
                    {"values": list(value)} if isinstance(value, list) else None,
                )
        config_path = config["command"][config["command"].index("--config") + 1]
        assert config_path.startswith("/"), "shipped configs are resolved to absolute paths"
    assert set(finding.cost) >= set(SCALES)


@pytest.mark.slow
@pytest.mark.parametrize("name", REAL)
def test_quick_scale_runs_end_to_end(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MNIST-1D's cache and the runs stay in the test's folder
    summary = run_finding(get_finding(name), "quick", tmp_path / "out", progress=False)
    text = summary.read_text()
    assert "## Numbers here" in text and "## Verdict" in text
    assert "failed this time" not in text
    assert "(no verdict" not in text
    assert list(summary.parent.glob("*.png")), "every real finding draws a figure"
