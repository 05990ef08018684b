"""The run-folder contract (lipschitz_dd.run_folder): results.json schema, atomic writes, old files, names."""

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest

from lipschitz_dd import run_folder
from lipschitz_dd.run_folder import (
    SCHEMA_VERSION,
    ResultsFileError,
    RunResults,
    loss_diverged,
    read_results,
    update_results,
    write_atomic,
    write_results,
)

# A results.json as written before schema_version existed (fields and values users rely on).
OLD_RESULTS = {
    "status": "finished",
    "config": {"model.width": 8, "data.label_noise": 0.1, "seed_everything": 3},
    "final": {"train/loss": 0.5, "test/loss": 1.25, "lipschitz/lower": 2.0},
    "max": {"train/loss": 2.3, "test/loss": 2.4, "lipschitz/lower": 2.5},
    "epochs": 4,
    "global_step": 40,
    "seconds": 1.5,
    "versions": {"python": "3.11.0", "torch": "2.3.0"},
}


def test_results_round_trip_keeps_every_field_and_unknown_keys(tmp_path):
    results = RunResults.from_dict({**OLD_RESULTS, "written_by": "someone", "env": {"A": "1"}})
    assert results.schema_version == 0  # no field: written before the version existed
    assert results.extra == {"written_by": "someone", "env": {"A": "1"}}
    results.schema_version = SCHEMA_VERSION
    write_results(tmp_path, results)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk == {**OLD_RESULTS, "written_by": "someone", "env": {"A": "1"}, "schema_version": SCHEMA_VERSION}
    assert read_results(tmp_path) == results


def test_optional_fields_are_left_out_and_bad_files_are_one_line(tmp_path):
    assert RunResults(status="failed").to_dict() == {
        "status": "failed",
        "config": {},
        "final": {},
        "max": {},
        "versions": {},
        "schema_version": SCHEMA_VERSION,
    }
    assert read_results(tmp_path) is None
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(ResultsFileError, match="results.json unreadable"):
        read_results(tmp_path)
    (tmp_path / "results.json").write_text(json.dumps({"status": "finished", "final": [1, 2]}))
    with pytest.raises(ResultsFileError, match="'final' is not a JSON object"):
        read_results(tmp_path)


def test_update_results_changes_one_field(tmp_path):
    assert update_results(tmp_path, outside_grid=True) is None  # nothing to update: nothing written
    assert not (tmp_path / "results.json").exists()
    (tmp_path / "results.json").write_text(json.dumps(OLD_RESULTS))
    update_results(tmp_path, outside_grid=True)
    assert json.loads((tmp_path / "results.json").read_text()) == {
        **OLD_RESULTS,
        "outside_grid": True,
        "schema_version": 0,
    }


def test_write_atomic_never_leaves_a_partial_file(tmp_path):
    path = tmp_path / "a.json"
    path.write_text("old")

    def fails(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, fails)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.json"]
    # the snapshot writer uses the same helper (np.savez adds .npz to names without it)
    from lipschitz_dd.callbacks.snapshot import _save_atomic

    _save_atomic(str(tmp_path / "snapshot.npz"), {"x": np.arange(3)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "snapshot.npz"]
    assert np.load(tmp_path / "snapshot.npz")["x"].tolist() == [0, 1, 2]


def test_divergence_rule():
    assert not loss_diverged([2.3, 0.5, 0.1])
    assert not loss_diverged([2.3, 20.0])  # < 10 x the first value
    assert loss_diverged([2.3, 1e8])  # blew up but stayed finite
    assert loss_diverged([2.3, float("nan")]) and loss_diverged([2.3, float("inf")])
    assert loss_diverged([float("nan"), 2.0, 30.0])  # first finite value is the reference
    assert not loss_diverged([5.0])


def test_contract_module_imports_nothing_heavy():
    code = "import sys, lipschitz_dd.run_folder; print(sorted(m for m in ('torch', 'lightning') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_three_classes_have_their_own_names_and_old_names_still_work():
    from lipschitz_dd.callbacks import ResultsWriter, RunRecord
    from lipschitz_dd.compat import DEPRECATED
    from lipschitz_dd.report import LoadedRun
    from lipschitz_dd.sweep import SweepRunRow

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from lipschitz_dd.report import RunRecord as ReportRunRecord
        from lipschitz_dd.report.records import RunRecord as RecordsRunRecord
        from lipschitz_dd.sweep import RunRecord as SweepRunRecord
    assert {str(w.message).split(" is ")[0] for w in caught if w.category is DeprecationWarning} == {
        "lipschitz_dd.report.RunRecord",
        "lipschitz_dd.report.records.RunRecord",
        "lipschitz_dd.sweep.RunRecord",
    }
    assert ReportRunRecord is RecordsRunRecord is LoadedRun and SweepRunRecord is SweepRunRow
    assert {name for _, name in DEPRECATED} == {"RunRecord"}  # every deprecated alias lives in lipschitz_dd.compat
    with pytest.raises(ImportError, match="NoSuchName"):
        from lipschitz_dd.sweep import NoSuchName  # noqa: F401
    assert issubclass(RunRecord, ResultsWriter)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        RunRecord(run_dir="x")
    assert any(issubclass(w.category, DeprecationWarning) and "ResultsWriter" in str(w.message) for w in caught)
    assert set(run_folder.STATUSES) >= set(run_folder.COMPLETED_STATUSES)
