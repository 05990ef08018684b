"""The report after accidents: stale attempts and W&B-only folders left by killed sweep runs (each grid point counted
once), and damaged metrics.csv files (listed as damaged, the rest reported)."""

import json

import pandas as pd
import pytest

from lipschitz_dd.report.build import build_report
from lipschitz_dd.report.cli import main
from lipschitz_dd.report.records import attempt_of, load_run, load_runs, read_metrics_csv

# What a run killed during start-up leaves in <run folder>/wandb/: the 7-byte header of the transaction log
# (":W&B", magic 0xBEE1, version 0) and nothing else (copied from a test_tiny sweep killed with SIGKILL).
WANDB_HEADER_ONLY = b":W&B\xe1\xbe\x00"
WIDTHS = (4, 8, 16)
SEEDS = (0, 1)
N_TRAIN = 1000  # params/count = 100 * width crosses it between widths 8 and 16


def results(width, seed, status="finished", **extra):
    return {
        "status": status,
        "config": {"model.width": width, "seed_everything": seed},
        "final": {
            "train/loss": 0.1,
            "test/loss": 1.0 + width / 100 + seed / 1000,
            "train/acc": 1.0,
            "lipschitz/lower": float(width),
            "params/count": 100.0 * width,
            "data/train_size": float(N_TRAIN),
        },
        "max": {},
        "epochs": 3,
        "seconds": 1.0,
        "versions": {},
        **extra,
    }


def write_run(folder, record, lower=(1.0, 2.0, 4.0, 8.0)):
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(record))
    rows = ["step,train/loss,lipschitz/lower"] + [f"{i},{2.3 / (i + 1)},{v}" for i, v in enumerate(lower)]
    (folder / "metrics.csv").write_text("\n".join(rows) + "\n")


def write_wandb_only(folder, run_id, stamps=("20261206_153805",)):
    """A run folder holding only wandb/ (the run was killed during start-up), one offline run per start-up."""
    for stamp in stamps:
        offline = folder / "wandb" / f"offline-run-{stamp}-{run_id}"
        offline.mkdir(parents=True)
        (offline / f"run-{run_id}.wandb").write_bytes(WANDB_HEADER_ONLY)
        (folder / "wandb" / "debug.log").write_text("")


def killed_sweep(tmp_path):
    """A 6-point grid (3 widths x 2 seeds) after kill -9 of the runner and reruns:
    - every run finished in runs/, except run 'w16s1' whose latest attempt was killed during start-up (wandb/ only);
    - 'w4s0': an earlier attempt killed during start-up (wandb/ only, two start-ups) moved to attempts/;
    - 'w8s0': an earlier failed attempt (results.json + metrics.csv) and a wandb-only one in attempts/;
    - 'w16s1': an earlier finished-looking attempt in attempts/ is older than the wandb-only one in runs/."""
    sweep = tmp_path / "sweep"
    runs = sweep / "runs" / "sweep"
    for width in WIDTHS:
        for seed in SEEDS:
            run_id = f"w{width}s{seed}"
            if run_id != "w16s1":
                write_run(runs / run_id, results(width, seed))
    write_wandb_only(sweep / "attempts" / "w4s0-1" / "w4s0", "w4s0", stamps=("20261206_153805", "20261206_153901"))
    write_run(sweep / "attempts" / "w8s0-1" / "w8s0", results(8, 0, status="failed", error="boom"))
    write_wandb_only(sweep / "attempts" / "w8s0-2" / "w8s0", "w8s0")
    (sweep / "attempts" / "w8s0-2" / "w8s0.log").write_text("killed\n")
    write_run(sweep / "attempts" / "w16s1-1" / "w16s1", results(16, 1, status="interrupted"))
    write_wandb_only(runs / "w16s1", "w16s1")
    (sweep / "params").mkdir()
    for width in WIDTHS:
        for seed in SEEDS:
            (sweep / "params" / f"w{width}s{seed}.json").write_text(
                json.dumps({"model.width": width, "seed_everything": seed})
            )
    return sweep


def test_attempt_of_reads_any_path_below_attempts(tmp_path):
    assert attempt_of(tmp_path / "s" / "attempts" / "ab12-3" / "ab12") == ("ab12", 3)
    assert attempt_of(tmp_path / "s" / "attempts" / "ab12-3" / "ab12" / "wandb" / "offline-run-1-ab12") == ("ab12", 3)
    assert attempt_of(tmp_path / "s" / "runs" / "s" / "ab12") is None
    assert attempt_of(tmp_path / "s" / "attempts" / "no_number" / "x") is None


@pytest.mark.e2e
def test_killed_sweep_reports_each_grid_point_exactly_once(tmp_path):
    sweep = killed_sweep(tmp_path)
    runs = load_runs(sweep)
    assert sorted(r.name for r in runs) == sorted(f"w{w}s{s}" for w in WIDTHS for s in SEEDS)
    by_name = {r.name: r for r in runs}
    assert by_name["w8s0"].status == "finished" and by_name["w8s0"].attempt is None  # not the failed attempt
    latest = by_name["w16s1"]  # the latest attempt: killed during start-up, read from its W&B run
    assert latest.source == "wandb" and latest.status == "incomplete" and latest.attempt is None
    assert latest.config == {"model.width": 16, "seed_everything": 1}  # from the sweep's params/<run id>.json

    summary = build_report(sweep, out=tmp_path / "report", hue=None)
    assert summary.runs == 6 and summary.statuses == {"finished": 5, "incomplete": 1}
    assert any("interpolation threshold: model.width" in note and "params = n" in note for note in summary.notes)
    means = pd.read_csv(tmp_path / "report" / "runs_mean_over_seeds.csv")
    assert means["model.width"].notna().all() and sorted(means["model.width"]) == list(WIDTHS)
    assert means["runs"].tolist() == [2, 2, 2] and means["completed"].tolist() == [2, 2, 1]


def test_only_attempts_the_latest_wins_whatever_its_kind(tmp_path):
    """A run id with no record outside attempts/: its highest attempt number, whether run folder or W&B run."""
    sweep = tmp_path / "sweep"
    write_run(sweep / "attempts" / "aaaa-1" / "aaaa", results(4, 0, status="failed", error="boom"))
    write_wandb_only(sweep / "attempts" / "aaaa-2" / "aaaa", "aaaa")
    write_wandb_only(sweep / "attempts" / "bbbb-1" / "bbbb", "bbbb")
    write_run(sweep / "attempts" / "bbbb-2" / "bbbb", results(8, 0, status="interrupted"))
    runs = sorted(load_runs(sweep), key=lambda r: r.name)
    assert [(r.name, r.attempt, r.source, r.status) for r in runs] == [
        ("aaaa", 2, "wandb", "incomplete"),
        ("bbbb", 2, "folder", "interrupted"),
    ]


def _damage(folder, column, value="nan?x"):
    frame = pd.read_csv(folder / "metrics.csv", dtype=str)
    frame.loc[1, column] = value
    frame.to_csv(folder / "metrics.csv", index=False)


@pytest.mark.e2e
@pytest.mark.parametrize("column", ["train/loss", "lipschitz/lower"])  # the divergence rule; the power-law fit
def test_a_non_numeric_cell_marks_the_run_damaged_and_the_rest_is_reported(tmp_path, capsys, column):
    sweep = tmp_path / "sweep"
    for width in WIDTHS:
        for seed in SEEDS:
            write_run(sweep / "runs" / "sweep" / f"w{width}s{seed}", results(width, seed))
    damaged = sweep / "runs" / "sweep" / "w8s1"
    _damage(damaged, column)

    run = load_run(damaged)
    assert run.status == "damaged" and not run.completed
    assert run.problems == [f"metrics.csv damaged: line 3, column {column!r}: 'nan?x' is not a number"]

    main([str(sweep), "--out", str(tmp_path / "report"), "--hue", "null", "--power_law_from_epoch", "1"])
    console = capsys.readouterr().out
    damaged_lines = [line for line in console.splitlines() if "damaged run" in line]
    assert damaged_lines == [f"note: damaged run {damaged}: {run.problems[0]}"]
    assert "report of 6 runs (1 damaged, 5 finished)" in console
    report_md = (tmp_path / "report" / "report.md").read_text()
    assert f"- damaged run {damaged}: metrics.csv damaged" in report_md
    means = pd.read_csv(tmp_path / "report" / "runs_mean_over_seeds.csv")
    w8 = means[means["model.width"] == 8].iloc[0]
    assert (w8["runs"], w8["completed"]) == (2, 1) and w8["test/loss mean"] == pytest.approx(1.08)
    slopes = pd.read_csv(tmp_path / "report" / "power_law_slopes.csv")
    assert "w8s1" not in set(slopes["run"]) and len(slopes) == 5 * 1  # lipschitz/lower of the other 5 runs
    assert slopes["exponent"].notna().all()


def test_read_metrics_csv_names_the_bad_cell_and_reads_nan_and_inf(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("step,train/loss,test/loss\n0,2.0,\n0,,nan\n1,inf,1.5\n")
    frame = read_metrics_csv(path)
    assert frame.dtypes.tolist() == [float, float] and frame.loc[1, "train/loss"] == float("inf")
    assert frame.loc[0, "train/loss"] == 2.0 and pd.isna(frame.loc[0, "test/loss"])
    path.write_text("step,train/loss\n0,2.0\n1,oops\n")
    with pytest.raises(ValueError, match=r"line 3, column 'train/loss': 'oops' is not a number"):
        read_metrics_csv(path)
