"""One real sweep: `lipschitz-dd fit` on a 2 x 1 grid of the tiny test config, through the local runner."""

import math
from pathlib import Path

import pytest
import yaml

from lipschitz_dd.sweep import run_sweep

TINY_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "test_tiny.yaml"


@pytest.mark.slow  # two real `lipschitz-dd fit` processes
def test_real_fit_two_widths(tmp_path):
    assert TINY_CONFIG.is_file(), f"{TINY_CONFIG} is missing"
    sweep = {
        "method": "grid",
        "metric": {"name": "test/loss", "goal": "minimize"},
        "parameters": {"model.width": {"values": [4, 8]}, "trainer.max_epochs": {"value": 1}},
        "command": ["${env}", "lipschitz-dd", "fit", "--config", str(TINY_CONFIG), "${args}"],
    }
    sweep_file = tmp_path / "tiny.yaml"
    sweep_file.write_text(yaml.safe_dump(sweep))
    result = run_sweep(sweep_file, out=tmp_path / "out", workers=2, progress=False)
    assert [r.values["model.width"] for r in result.runs] == [4, 8]
    for run in result.runs:
        assert run.state == "finished", run.log_tail
        assert run.exit_code == 0 and run.results["status"] in ("finished", "stopped_converged")
        config = run.results["config"]
        assert config.get("model.init_args.width", config.get("model.width")) == run.values["model.width"]
        assert run.results["epochs"] == 1
        assert math.isfinite(run.final_metric("test/loss"))
        assert run.final_metric("lipschitz/lower") > 0
        run_dir = result.folder / "runs" / "tiny" / run.id
        assert (run_dir / "results.json").is_file() and (run_dir / "metrics.csv").is_file()
