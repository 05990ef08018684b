"""How the report reads runs: old results.json files, the divergence rule, sweep attempts, W&B runs."""

import json
import math

import pytest

from lipschitz_dd.report.build import build_report
from lipschitz_dd.report.records import ReportInputError, load_run, load_runs
from lipschitz_dd.report.wandb_runs import (
    WandbRunData,
    find_wandb_run_dirs,
    load_wandb_api_runs,
    load_wandb_run_dir,
    read_wandb_file,
    run_from_wandb,
)

OLD_RESULTS = {  # written before schema_version existed
    "status": "finished",
    "config": {"model.width": 8, "data.label_noise": 0.0, "seed_everything": 0},
    "final": {"train/loss": 0.1, "test/loss": 0.8},
    "max": {"train/loss": 2.3, "test/loss": 2.3},
    "epochs": 2,
    "seconds": 1.0,
    "versions": {},
}


def write_run(folder, results, losses=(2.3, 1.0, 0.1)):
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(results))
    rows = ["step,train/loss,test/loss"] + [f"{i},{loss},{loss + 0.5}" for i, loss in enumerate(losses)]
    (folder / "metrics.csv").write_text("\n".join(rows) + "\n")


def test_old_results_without_schema_version_are_read(tmp_path):
    write_run(tmp_path / "exp" / "a", OLD_RESULTS)
    run = load_run(tmp_path / "exp" / "a")
    assert run.status == "finished" and run.completed and run.epochs == 2 and run.seconds == 1.0
    assert run.config["model.width"] == 8 and run.final_value("test/loss") == 0.8
    assert run.problems == []


@pytest.mark.e2e
def test_a_finished_run_whose_loss_blew_up_is_diverged_and_left_out_of_means(tmp_path):
    for seed in (0, 1):
        write_run(
            tmp_path / "exp" / f"ok{seed}",
            {**OLD_RESULTS, "config": {**OLD_RESULTS["config"], "seed_everything": seed}},
        )
    blown = {**OLD_RESULTS, "config": {**OLD_RESULTS["config"], "seed_everything": 2}}
    blown["final"] = {"train/loss": 1e8, "test/loss": 1e8}
    write_run(tmp_path / "exp" / "blown", blown, losses=(2.3, 50.0, 1e8))
    run = load_run(tmp_path / "exp" / "blown")
    assert run.status == "diverged" and "counted as diverged" in run.problems[-1]
    summary = build_report(tmp_path, out=tmp_path / "report", hue=None)
    assert summary.statuses == {"finished": 2, "diverged": 1}
    runs_csv = (tmp_path / "report" / "runs.csv").read_text()
    assert "diverged" in runs_csv
    means = (tmp_path / "report" / "runs_mean_over_seeds.csv").read_text()
    assert "1e+08" not in means and "100000000" not in means


def test_only_the_latest_attempt_of_a_sweep_run_is_read(tmp_path):
    sweep = tmp_path / "sweep"
    failed = {**OLD_RESULTS, "status": "failed", "error": "boom"}
    write_run(sweep / "attempts" / "abcd1234-1" / "abcd1234", failed)
    write_run(sweep / "attempts" / "abcd1234-2" / "abcd1234", {**failed, "status": "interrupted"})
    write_run(sweep / "runs" / "sweep" / "abcd1234", OLD_RESULTS)
    write_run(sweep / "attempts" / "efgh5678-1" / "efgh5678", failed)  # never retried: its only attempt
    write_run(sweep / "attempts" / "efgh5678-2" / "efgh5678", {**failed, "status": "interrupted"})
    runs = sorted(load_runs(sweep), key=lambda r: r.name)
    assert [(r.name, r.status, r.attempt) for r in runs] == [
        ("abcd1234", "finished", None),
        ("efgh5678", "interrupted", 2),
    ]


def test_a_folder_of_links_to_runs_is_read_once_per_run(tmp_path):
    for name in ("a", "b"):
        write_run(tmp_path / "sweep" / "runs" / name, OLD_RESULTS)
    chosen = tmp_path / "chosen"
    chosen.mkdir()
    (chosen / "a").symlink_to(tmp_path / "sweep" / "runs" / "a", target_is_directory=True)
    (chosen / "loop").symlink_to(chosen, target_is_directory=True)  # a cycle is walked once
    (chosen / "a" / "checkpoints").mkdir()
    write_run(chosen / "a" / "checkpoints" / "inner", OLD_RESULTS)  # skipped folder, also behind a link
    assert [r.path for r in load_runs(chosen)] == [chosen / "a"]
    assert sorted(r.path.name for r in load_runs(tmp_path / "sweep")) == ["a", "b"]


def _offline_run(tmp_path, run_id="wb000001", exit_code=0, losses=(2.3, 1.0, 0.5)):
    wandb = pytest.importorskip("wandb")
    run = wandb.init(
        mode="offline",
        dir=str(tmp_path),
        project="lipschitz_dd",
        group="fcn_dd",
        id=run_id,
        config={"model": {"class_path": "lipschitz_dd.models.FCN", "width": 16}, "seed_everything": 3},
        settings=wandb.Settings(silent=True),
    )
    for epoch, loss in enumerate(losses):  # as Lightning's WandbLogger: the logger step in trainer/global_step
        row = {"train/loss": loss, "test/acc": 0.1 * epoch, "trainer/global_step": epoch}
        if epoch == 0:
            row["lipschitz/lower"] = 4.0
        run.log(row)
    run.finish(exit_code=exit_code)
    wandb.teardown()  # stops the W&B service: its transaction log is flushed to disk
    (folder,) = find_wandb_run_dirs(tmp_path)
    return folder


@pytest.mark.e2e
def test_an_offline_wandb_run_becomes_the_same_record(tmp_path):
    folder = _offline_run(tmp_path)
    assert folder.name.startswith("offline-run-") and folder.name.endswith("wb000001")
    data = read_wandb_file(next(folder.glob("run-*.wandb")))
    assert data.run_id == "wb000001" and data.exit_code == 0 and len(data.history) == 3
    run = load_wandb_run_dir(folder)
    assert run.source == "wandb" and run.name == "wb000001" and run.experiment == "fcn_dd"
    assert run.status == "finished"
    assert run.config == {"model.class_path": "lipschitz_dd.models.FCN", "model.width": 16, "seed_everything": 3}
    assert list(run.metrics.index) == [0, 1, 2] and run.epochs == 2
    assert run.metrics["train/loss"].tolist() == [2.3, 1.0, 0.5]
    assert run.metrics["lipschitz/lower"].iloc[0] == 4.0 and math.isnan(run.metrics["lipschitz/lower"].iloc[2])
    assert run.final["train/loss"] == 0.5 and run.final["lipschitz/lower"] == 4.0
    assert run.max["train/loss"] == 2.3 and run.final_value("test/acc") == pytest.approx(0.2)
    assert run.seconds is not None and run.seconds >= 0


@pytest.mark.e2e
def test_wandb_runs_gathered_in_a_folder_are_reported_with_run_folders(tmp_path):
    gathered = tmp_path / "gathered"
    _offline_run(gathered / "machine1", "wb000001")
    _offline_run(gathered / "machine2", "wb000002", exit_code=1)
    write_run(gathered / "runs" / "exp" / "local", OLD_RESULTS)
    # a run folder's own wandb/ copy is not read twice
    _offline_run(gathered / "runs" / "exp" / "local", "local")
    runs = sorted(load_runs(gathered), key=lambda r: r.name)
    assert [(r.name, r.status, r.source) for r in runs] == [
        ("local", "finished", "folder"),
        ("wb000001", "finished", "wandb"),
        ("wb000002", "failed", "wandb"),
    ]


def test_a_wandb_run_that_blew_up_is_diverged(tmp_path):
    run = load_wandb_run_dir(_offline_run(tmp_path, losses=(2.3, 50.0, 1e8)))
    assert run.status == "diverged"


class _ApiRun:
    """The attributes of wandb.apis.public.Run that load_wandb_api_runs reads, from an offline run's data."""

    def __init__(self, data: WandbRunData, state: str):
        self.id, self.project, self.group, self.state = data.run_id, data.project, data.group, state
        self.config, self.summary, self._history = data.config, data.summary, data.history

    def scan_history(self):
        return iter(self._history)


class _Api:
    def __init__(self, runs):
        self._runs = runs

    def runs(self, path):
        assert path == "me/lipschitz_dd"
        return self._runs


def test_api_path_converts_runs_the_same_way(tmp_path):
    folder = _offline_run(tmp_path)
    data = read_wandb_file(next(folder.glob("run-*.wandb")))
    (run,) = load_wandb_api_runs("me/lipschitz_dd", api=_Api([_ApiRun(data, "finished")]))
    offline = run_from_wandb(data)
    assert run.status == "finished" and run.config == offline.config and run.final == offline.final
    (killed,) = load_wandb_api_runs("me/lipschitz_dd", api=_Api([_ApiRun(data, "killed")]))
    assert killed.status == "interrupted"
    with pytest.raises(ReportInputError, match="ENTITY/PROJECT"):
        load_wandb_api_runs("just-a-project")


@pytest.mark.e2e
def test_report_cli_takes_a_folder_or_wandb(tmp_path, capsys):
    from lipschitz_dd.report.cli import main

    with pytest.raises(SystemExit, match="ENTITY/PROJECT"):
        main(["--wandb", "no-entity"])
    with pytest.raises(SystemExit, match="give a runs or sweep folder, or --wandb"):
        main([])
    write_run(tmp_path / "exp" / "a", OLD_RESULTS)
    main([str(tmp_path), "--hue", "null"])
    assert "report of 1 runs (1 finished)" in capsys.readouterr().out
