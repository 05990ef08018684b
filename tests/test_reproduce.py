"""`lipschitz-dd reproduce`: the catalogue lists every finding (and the data each reads from disk), pending ones
and those without their data refuse in one line before any run, every real finding's sweep is valid at every
scale, a failed run or analysis makes the command fail, and (slow) each real finding runs end to end at quick
scale, on tiny fixture files where it reads a data set from disk."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from fixture_data import write_fashion_mnist

import lipschitz_dd.sweep.runner as sweep_runner
from lipschitz_dd.cli import main
from lipschitz_dd.data import FashionMNISTDataModule
from lipschitz_dd.data.vision import VisionDataModule
from lipschitz_dd.reproduce import SCALES, get_finding, run_finding, scaled_sweep
from lipschitz_dd.reproduce.registry import all_findings
from lipschitz_dd.reproduce.run import SMOKE_TEST, MissingData, missing_data, reads_from_disk, run_data_modules
from lipschitz_dd.shipped import resolve
from lipschitz_dd.sweep.config import validate_sweep_config

# The study's findings and experiments (numbered findings 1-5 and every experiment described in detail),
# plus the companion issue's training-side ones.
EXPECTED = {
    "evolution", "evolution_bound", "double_descent", "bias_variance", "heatmap", "optimizer", "loss", "depth",
    "train_size", "toy2d_variant", "lower_bound_diagnostics", "cnn_double_descent", "cnn_fashion_mnist_dd", "pairwise", "linearisation",
    "out_of_distribution", "adversarial", "constrained", "jacobian_distributions", "regulariser", "softmax",
    "dropout_weight_decay", "weight_decay", "imagenet", "sandwich",
}  # fmt: skip
REAL = [f.name for f in all_findings() if not f.needs]


def test_the_package_keeps_all_findings_after_its_subpackage_is_imported():
    import lipschitz_dd.reproduce as package
    import lipschitz_dd.reproduce.findings.double_descent  # noqa: F401

    assert callable(package.all_findings)
    assert "double_descent" in {f.name for f in package.all_findings()}


def test_listing_names_every_finding(capsys):
    assert main(["reproduce"]) == 0
    listed = capsys.readouterr().out
    assert EXPECTED <= {f.name for f in all_findings()}
    for name in EXPECTED:
        assert f"{name} " in listed
    numbers = [f.number for f in all_findings()]
    assert all(numbers) and len(set(numbers)) == len(numbers), "every finding has its own section number"
    first_words = [line.split()[0] for line in listed.splitlines() if line and not line[0].isspace()]
    positions = [first_words.index(f.name) for f in all_findings()]
    assert positions == sorted(positions), "listed in the order of their section numbers"
    for finding in all_findings():
        assert finding.claim in listed
        assert (f"needs: {finding.needs}" if finding.needs else f"cpu {finding.cost['cpu']}") in listed
        assert (f"data on disk: {finding.data}" in listed) == bool(finding.data)
    assert "data on disk: " not in listed.split("double_descent ")[1].split("\n")[1]  # MNIST-1D is generated


FASHION = {"cnn_fashion_mnist_dd", "dropout_weight_decay", "weight_decay", "adversarial"}


@pytest.mark.parametrize("name", REAL)
def test_a_finding_declares_the_data_its_runs_read_from_disk(name):
    """`data` is set exactly when some scale's runs build a data module that reads a data set from disk (asked
    from the sweep's own configs, so the listing cannot miss one)."""
    finding = get_finding(name)
    on_disk = {
        cls for scale in SCALES for cls, _ in run_data_modules(scaled_sweep(finding, scale)) if reads_from_disk(cls)
    }
    assert bool(finding.data) == bool(on_disk)
    if name in FASHION:
        assert FashionMNISTDataModule in on_disk and "apt-get install dataset-fashion-mnist" in finding.data


def test_without_its_data_on_disk_a_finding_refuses_in_one_line_before_any_run(tmp_path, capsys, monkeypatch):
    """No Fashion-MNIST under data/ or in the system folder: one line saying how to get it, and nothing started
    or written (no sweep, no run folder, no W&B offline run)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(FashionMNISTDataModule, "system_folders", (str(tmp_path / "not_installed"),))

    def no_sweep(*args, **kwargs):
        raise AssertionError("no run may start without the data")

    monkeypatch.setattr(sweep_runner, "run_sweep", no_sweep)
    assert main(["reproduce", "cnn_fashion_mnist_dd", "--quick", "--out", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Fashion-MNIST" in error and "apt-get install dataset-fashion-mnist" in error
    assert "data/FashionMNIST/raw" in error and "no run was started" in error
    assert list(tmp_path.iterdir()) == []

    # the same check passes once the files are there: the runs would start (here, the stand-in sweep raises)
    write_fashion_mnist(tmp_path / "data")
    finding = get_finding("cnn_fashion_mnist_dd")
    assert missing_data(finding, "quick", scaled_sweep(finding, "quick")) is None
    with pytest.raises(AssertionError, match="no run may start"):
        run_finding(finding, "quick", tmp_path / "out", progress=False)


def test_the_data_check_looks_where_the_runs_will(tmp_path, monkeypatch):
    """A data_dir override (a run parameter) moves the check with it; download true skips it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(FashionMNISTDataModule, "system_folders", (str(tmp_path / "not_installed"),))
    finding = get_finding("weight_decay")
    config = scaled_sweep(finding, "quick")
    assert "data/FashionMNIST/raw" in missing_data(finding, "quick", config)
    config["parameters"]["data.data_dir"] = {"value": str(write_fashion_mnist(tmp_path / "elsewhere"))}
    assert missing_data(finding, "quick", config) is None
    config["parameters"]["data.data_dir"] = {"values": [str(tmp_path / "elsewhere"), str(tmp_path / "empty")]}
    assert str(tmp_path / "empty" / "FashionMNIST" / "raw") in missing_data(finding, "quick", config)
    config["parameters"]["data.download"] = {"value": True}
    assert missing_data(finding, "quick", config) is None
    with pytest.raises(MissingData):
        run_finding(finding, "quick", tmp_path / "out", overrides={"data.data_dir": str(tmp_path / "empty")})
    assert not (tmp_path / "out").exists()


def test_pending_findings_refuse_in_one_line(capsys, tmp_path):
    pending = [f for f in all_findings() if f.needs]
    assert {"cnn_double_descent"} <= {f.name for f in pending}
    assert main(["reproduce", "cnn_double_descent", "--quick", "--out", str(tmp_path)]) == 1
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
        config_name = config["command"][config["command"].index("--config") + 1]
        # a shipped config's name, as the shipped sweeps give it: runs from any directory and on any machine
        assert "/" not in config_name and resolve(config_name, "configs").is_file()
    assert set(finding.cost) >= set(SCALES)


@pytest.fixture(scope="module")
def shared_folder(tmp_path_factory):
    """One working folder for all quick runs: MNIST-1D is generated once per setting into its data/ cache."""
    return tmp_path_factory.mktemp("reproduce_quick")


@pytest.mark.slow
@pytest.mark.parametrize("name", REAL)
def test_quick_scale_runs_end_to_end(name, shared_folder, tmp_path, monkeypatch):
    """Findings whose runs read an image set from disk run on tiny fixture files in its real format (passed as
    the runs' data.data_dir), so the suite needs no data set installed (nor uses one that is)."""
    monkeypatch.chdir(shared_folder)
    finding = get_finding(name)
    overrides = {}
    images = {cls for cls, _ in run_data_modules(scaled_sweep(finding, "quick")) if issubclass(cls, VisionDataModule)}
    if images:
        assert images == {FashionMNISTDataModule}, "add a fixture writer for this data set"
        overrides["data.data_dir"] = str(write_fashion_mnist(tmp_path / "fixture_data").resolve())
    outcome = run_finding(finding, "quick", tmp_path / "out", progress=False, overrides=overrides)
    assert outcome.ok, outcome.problems()
    summary = outcome.summary
    text = summary.read_text()
    assert "## Numbers here" in text and "## Verdict" in text
    assert "run(s) failed" not in text
    assert "analysis failed" not in text
    # a quick-scale run is a smoke test: its checks are listed, but no verdict is given
    assert text.split("## Verdict\n\n")[1].startswith(SMOKE_TEST)
    assert list(summary.parent.glob("*.png")), "every real finding draws a figure"


def test_an_analysis_that_raises_fails_the_command_and_says_so_in_the_summary(tmp_path, capsys, monkeypatch):
    runs = tmp_path / "runs"
    _fake_run(runs / "a", {"model.loss": "ce", "model.width": 16, "seed_everything": 0}, {"lipschitz/lower": 1.0})

    def broken(records, out):
        raise RuntimeError("the analysis broke\nsecond line")

    monkeypatch.setattr(get_finding("loss"), "analyse", broken)
    assert main(["reproduce", "loss", "--runs", str(runs), "--out", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "the analysis failed: RuntimeError: the analysis broke" in error
    folder = tmp_path / "out" / "loss" / "cpu"
    summary = (folder / "summary.md").read_text()
    assert "analysis failed: RuntimeError: the analysis broke\n" in summary and "second line" not in summary
    assert "second line" in (folder / "analysis_error.txt").read_text()
    monkeypatch.undo()
    assert main(["reproduce", "loss", "--runs", str(runs), "--out", str(tmp_path / "out")]) == 0
    assert not (folder / "analysis_error.txt").exists()


def test_failed_runs_fail_the_command_and_the_summary_counts_them(tmp_path, capsys, monkeypatch):
    """Two of three runs of the grid failed (one in an earlier call, not run again): exit 1, and the summary says
    2 of 3; runs outside the grid do not count."""
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "out" / "loss" / "quick" / "sweep" / "runs"
    _fake_run(runs / "ok", {"model.loss": "ce", "model.width": 16, "seed_everything": 0}, {"lipschitz/lower": 1.0})
    rows = [("finished", False), ("failed", False), ("killed", False), ("failed", True)]
    calls = []

    def fake_sweep(sweep_file, **options):
        calls.append(options)
        runs_state = [SimpleNamespace(state=s, outside_grid=o) for s, o in rows]
        return SimpleNamespace(runs=runs_state, folder=runs.parent, interrupted=False)

    monkeypatch.setattr(sweep_runner, "run_sweep", fake_sweep)
    assert main(["reproduce", "loss", "--quick", "--out", "out"]) == 1
    assert "2 of 3 run(s) failed" in capsys.readouterr().err
    assert "2 of 3 run(s) failed" in (tmp_path / "out" / "loss" / "quick" / "summary.md").read_text()
    assert calls[-1]["retry_failed"] is False
    rows[1:3] = [("finished", False), ("finished", False)]
    assert main(["reproduce", "loss", "--quick", "--out", "out", "--retry_failed"]) == 0
    assert calls[-1]["retry_failed"] is True
    assert "failed" not in (tmp_path / "out" / "loss" / "quick" / "summary.md").read_text()


@pytest.mark.slow
def test_a_run_that_really_fails_fails_the_command(tmp_path, capsys, monkeypatch):
    """A real run that exits non-zero (an option its config does not have): reproduce exits 1 and says so."""
    monkeypatch.chdir(tmp_path)
    finding = get_finding("toy2d_variant")
    monkeypatch.setitem(finding.scales, "quick", {**finding.scales["quick"], "model.no_such_option": 1})
    assert main(["reproduce", "toy2d_variant", "--quick", "--out", "out"]) == 1
    assert "1 of 1 run(s) failed" in capsys.readouterr().err
    assert "1 of 1 run(s) failed" in (tmp_path / "out" / "toy2d_variant" / "quick" / "summary.md").read_text()


def _fake_run(folder, config: dict, final: dict, initial: dict | None = None) -> None:
    """A run folder as the training CLI writes it: results.json and metrics.csv (epoch 0 and the last epoch)."""
    import json

    folder.mkdir(parents=True)
    payload = {"status": "finished", "config": config, "final": final, "max": {}, "epochs": 5, "seconds": 1.0}
    (folder / "results.json").write_text(json.dumps(payload))
    columns = sorted(final)
    rows = [["step", *columns], [0, *[(initial or final)[c] for c in columns]], [5, *[final[c] for c in columns]]]
    (folder / "metrics.csv").write_text("\n".join(",".join(map(str, row)) for row in rows) + "\n")


@pytest.mark.e2e
def test_ratio_analysis_on_hand_made_runs(tmp_path, capsys):
    runs = tmp_path / "runs"
    for loss, scale in (("ce", 1.0), ("mse", 0.5)):
        bounds = {"lipschitz/lower": 4 * scale, "lipschitz/avg": 2 * scale, "lipschitz/upper": 8.0}
        _fake_run(runs / loss, {"model.loss": loss, "model.width": 16, "seed_everything": 0}, bounds)
    assert main(["reproduce", "loss", "--runs", str(runs), "--out", str(tmp_path / "out")]) == 0
    summary = (tmp_path / "out" / "loss" / "cpu" / "summary.md").read_text()
    assert "| 16 | 0.5 | 0.5 | 1 |" in summary
    # no training accuracy logged: the comparison at equal accuracy is not measured, so no verdict
    assert "## Verdict\n\nundecided: not measured: also at equal training accuracy" in summary


def test_heatmap_finds_the_peak_width_per_noise_and_the_peak_noise_per_width(tmp_path):
    """A 4 x 3 grid whose C_lower peak moves from width 8 to 32 as the noise grows; per width, the noise of the
    peak is interior (0.1, 0.2) at widths 8 and 16 and at the edge (0.3) at 32. Test loss = C_lower / 2."""
    from lipschitz_dd.reproduce.run import analyse_folder

    grid = {0.0: [5, 3, 1], 0.1: [6, 8, 2], 0.2: [4, 9, 7], 0.3: [2, 4, 8]}  # noise -> C_lower at widths 8, 16, 32
    for noise, values in grid.items():
        for width, value in zip((8, 16, 32), values, strict=True):
            config = {"model.width": width, "data.label_noise": noise, "seed_everything": 0}
            final = {"lipschitz/lower": float(value), "test/loss": value / 2, "train/loss": 0.1}
            # all runs end at train loss 0.1, first reached there: the matched-loss reading equals the end's
            _fake_run(tmp_path / "runs" / f"w{width}_n{noise}", config, final, {**final, "train/loss": 2.0})
    summary = analyse_folder(get_finding("heatmap"), "cpu", tmp_path / "runs", tmp_path / "out").summary.read_text()
    for row in ("| 0 | 8 | 8 |", "| 0.1 | 16 | 16 |", "| 0.2 | 16 | 16 |", "| 0.3 | 32 | 32 |"):
        assert row in summary
    for row in ("| 8 | 0.1 |", "| 16 | 0.2 |", "| 32 | 0.3 |"):
        assert row in summary
    assert "| the C_lower peak moves to larger widths | width of the C_lower peak" in summary
    assert "| 4 | > 1 | 1 | pass |" in summary  # 32 / 8, one seed
    assert "| 0.6667 | >= 0.5 | 1 | pass |" in summary  # interior noise peaks at 2 of 3 widths
    assert "undecided: 1 seed" in summary


@pytest.mark.e2e
def test_optimizer_compares_c_lower_at_equal_training_loss(tmp_path):
    """SGD ends at train loss 1.0 with C_lower 2; Adam first reaches loss <= 1.0 at epoch 4 (C_lower 5 there,
    50 at its end): equal-epoch ratio 25, equal-loss ratio 5 / 2 = 2.5."""
    from lipschitz_dd.reproduce.run import analyse_folder

    runs = tmp_path / "runs"
    sgd = {"train/loss": 1.0, "lipschitz/lower": 2.0, "lipschitz/avg": 1.0, "lipschitz/upper": 9.0}
    _fake_run(runs / "sgd", {"model.optimizer": "sgd", "model.width": 16, "seed_everything": 0}, sgd)
    adam = {"train/loss": 0.1, "lipschitz/lower": 50.0, "lipschitz/avg": 10.0, "lipschitz/upper": 90.0}
    _fake_run(runs / "adam", {"model.optimizer": "adam", "model.width": 16, "seed_everything": 0}, adam)
    history = [(0, 2.3, 1.0), (2, 1.5, 3.0), (3, 0.95, ""), (4, 0.9, 5.0), (6, 0.1, 50.0)]  # step, loss, C_lower
    (runs / "adam" / "metrics.csv").write_text(
        "step,train/loss,lipschitz/lower\n" + "".join(f"{e},{loss},{c}\n" for e, loss, c in history)
    )
    summary = analyse_folder(get_finding("optimizer"), "cpu", runs, tmp_path / "out").summary.read_text()
    assert "| 16 | 25 | 10 | 10 |" in summary
    assert "| 16 | sgd | 1 | 1/1 | 4 | 5 | 2 | 2.5 |" in summary
    assert "| also at equal training loss |" in summary and "| 2.5 | > 1 | 1 | pass |" in summary


@pytest.mark.e2e
def test_loss_compares_c_lower_at_equal_training_accuracy(tmp_path):
    """MSE ends at train accuracy 0.6 with C_lower 2; of the two CE seeds, one first reaches accuracy >= 0.6 at
    epoch 3 (C_lower 8 there), the other never does: equal-accuracy ratio 2 / 8 = 0.25, from 1 of 2 runs."""
    from lipschitz_dd.reproduce.run import analyse_folder

    runs = tmp_path / "runs"
    mse = {"train/acc": 0.6, "lipschitz/lower": 2.0, "lipschitz/avg": 1.0, "lipschitz/upper": 9.0}
    _fake_run(runs / "mse", {"model.loss": "mse", "model.width": 16, "seed_everything": 0}, mse)
    for seed, history in enumerate(
        [
            [(0, 0.1, 1.0), (2, 0.55, 4.0), (3, 0.65, 8.0), (5, 0.9, 20.0)],  # step, train/acc, C_lower
            [(0, 0.1, 1.0), (2, 0.4, 3.0), (3, 0.5, 6.0), (5, 0.58, 10.0)],
        ]
    ):
        final = {"train/acc": history[-1][1], "lipschitz/lower": history[-1][2], "lipschitz/avg": 1.0}
        _fake_run(runs / f"ce{seed}", {"model.loss": "ce", "model.width": 16, "seed_everything": seed}, final)
        (runs / f"ce{seed}" / "metrics.csv").write_text(
            "step,train/acc,lipschitz/lower\n" + "".join(f"{e},{a},{c}\n" for e, a, c in history)
        )
    summary = analyse_folder(get_finding("loss"), "cpu", runs, tmp_path / "out").summary.read_text()
    assert "| 16 | mse | 0.6 | 1/2 | 3 | 8 | 2 | 0.25 |" in summary
    assert "| also at equal training accuracy |" in summary and "| 0.25 | < 1 | 1 | pass |" in summary


@pytest.mark.e2e
def test_cnn_double_descent_fits_each_widths_evolution_slopes(tmp_path):
    """Bounds logged as exact power laws of the epoch (C_lower = w e^0.5, C_avg = e^0.3, C_upper = 3 e^0.7 for
    epochs 10..80, 1 at epoch 0): the per-width table holds those exponents and C_lower's growth 80^0.5 w."""
    import json

    from lipschitz_dd.reproduce.run import analyse_folder

    runs = tmp_path / "runs"
    for width in (2, 4):
        folder = runs / f"w{width}"
        folder.mkdir(parents=True)
        config = {"model.width": width, "data.label_noise": 0.2, "seed_everything": 0}
        final = {"train/loss": 0.1, "test/loss": 1.0 + width, "lipschitz/lower": width * 80**0.5}
        payload = {"status": "finished", "config": config, "final": final, "max": {}, "epochs": 80, "seconds": 1.0}
        (folder / "results.json").write_text(json.dumps(payload))
        lines = ["step,lipschitz/lower,lipschitz/avg,lipschitz/upper,test/loss,train/loss"]
        lines += ["0,1,1,1,2.3,2.3"]
        lines += [f"{e},{width * e**0.5},{e**0.3},{3 * e**0.7},{1.0 + width},0.1" for e in range(10, 81, 10)]
        (folder / "metrics.csv").write_text("\n".join(lines) + "\n")
    summary = analyse_folder(get_finding("cnn_fashion_mnist_dd"), "cpu", runs, tmp_path / "out").summary.read_text()
    assert "log-log slope against the epoch from epoch 10 on" in summary
    assert f"| 2 | 0.3 | 0.5 | 0.7 | {2 * 80**0.5:.4g} |" in summary
    assert f"| 4 | 0.3 | 0.5 | 0.7 | {4 * 80**0.5:.4g} |" in summary


@pytest.mark.e2e
@pytest.mark.parametrize("damped", [True, False])
def test_constrained_verdict_compares_the_peak_heights_of_the_settings(tmp_path, damped):
    """Test loss and C_lower peak at width 8 with heights set per temperature: falling with each tighter
    constraint (or, undamped, rising at C = 1); the table holds max / smallest-width test loss."""
    from lipschitz_dd.reproduce.run import analyse_folder

    runs = tmp_path / "runs"
    peaks = {1.0: 4.0, 10.0: 2.0, 40.0: 1.5 if damped else 5.0}
    for temperature, peak in peaks.items():
        for width in (2, 8, 32):
            loss = peak if width == 8 else 1.0
            final = {"test/loss": loss, "train/loss": 0.1, "lipschitz/lower": 10 * loss, "lipschitz/upper": 100 * loss}
            config = {"model.logit_temperature": temperature, "model.width": width, "seed_everything": 0}
            _fake_run(runs / f"t{temperature}w{width}", config, final)
    summary = analyse_folder(get_finding("constrained"), "cpu", runs, tmp_path / "out").summary.read_text()
    assert "| 1 | 4 | 4..4 | 40 | 40..40 |" in summary
    status = "pass" if damped else "fail"
    assert f"| {1.333 if damped else 0.4:g} | > 1 | 1 | {status} |" in summary  # smallest looser / tighter peak
    assert "undecided: 1 seed" in summary


def test_slope_analysis_recovers_a_power_law(tmp_path):
    from lipschitz_dd.reproduce.run import analyse_folder

    runs = tmp_path / "runs"
    for depth in (1, 2, 4, 8):
        final = {"lipschitz/lower": 3.0 * depth**2.0, "lipschitz/avg": depth**1.2, "lipschitz/upper": 5 * depth**3.3}
        initial = {"lipschitz/lower": depth**-1.0, "lipschitz/avg": depth**-0.5, "lipschitz/upper": 2 * depth**0.1}
        _fake_run(runs / f"d{depth}", {"model.depth": depth, "seed_everything": 0}, final, initial)
    summary = analyse_folder(get_finding("depth"), "cpu", runs, tmp_path / "out").summary.read_text()
    assert "| at init | lipschitz/lower | -1 | 1 | 4 | -1..-1 |" in summary
    assert "| after training | lipschitz/upper | 3.3 | 1 | 4 | 3.3..3.3 | 3.3 |" in summary
    assert "undecided: 1 seed" in summary


def test_a_missing_finite_difference_ratio_is_left_out_of_the_maximum():
    import math

    import torch

    from lipschitz_dd.reproduce.measures import finite_max

    assert finite_max(torch.tensor([0.5, math.nan, 0.7])) == pytest.approx(0.7)
    assert math.isnan(finite_max(torch.tensor([math.nan])))


def test_imagenet_refuses_in_one_line_without_the_data_and_its_quick_folder_loads(tmp_path, capsys, monkeypatch):
    from lipschitz_dd.data import ImageFolderDataModule
    from lipschitz_dd.reproduce.findings.imagenet import prepare

    monkeypatch.chdir(tmp_path)
    assert main(["reproduce", "imagenet", "--out", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "data/imagenet/train" in error
    overrides = prepare("quick", tmp_path / "quick")
    data = ImageFolderDataModule(overrides["data.data_dir"], num_workers=0, crop_size=16, resize_size=20)
    data.setup()
    assert data.num_classes == 3 and len(data.train_set) == 24 and len(data.val_set) == 9


def test_noisy_test_loss_is_the_cross_entropy_at_the_noisy_points():
    import torch

    from lipschitz_dd.reproduce.findings.robustness import noisy_test_losses

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 3)).eval()
    x, y = torch.randn(40, 5), torch.randint(3, (40,))
    clean, noisy = noisy_test_losses(model, x, y, [0.0, 2.0])
    assert clean == pytest.approx(float(torch.nn.functional.cross_entropy(model(x), y)))
    shifted = x + 2.0 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    assert noisy == pytest.approx(float(torch.nn.functional.cross_entropy(model(shifted), y)), rel=1e-5)


def test_findings_running_the_same_sweep_train_once(tmp_path, monkeypatch):
    """evolution and linearisation run the same sweep (same training, same measurements): both calls hand the
    runner the same file in the same OUT/trained/ folder, so the second resumes the first's finished grid instead
    of training again; a finding with another sweep gets another folder, and the key ignores the sweep's name."""
    from lipschitz_dd.reproduce.run import training_key

    files = []

    def fake_sweep(sweep_file, **options):
        files.append((Path(sweep_file), Path(options["out"])))
        return SimpleNamespace(runs=[], folder=Path(options["out"]) / Path(sweep_file).stem, interrupted=False)

    monkeypatch.setattr(sweep_runner, "run_sweep", fake_sweep)
    for name in ("evolution", "linearisation", "pairwise"):
        run_finding(get_finding(name), "quick", out=tmp_path, progress=False)
    (evolution, out_e), (linearisation, out_l), (pairwise, _) = files
    assert evolution == linearisation and out_e == out_l and out_e.parent == tmp_path / "trained"
    assert pairwise != evolution
    config = scaled_sweep(get_finding("evolution"), "quick")
    assert training_key(config) == training_key({**config, "name": "other"})
    assert training_key(config) != training_key({**config, "parameters": {**config["parameters"], "x": {"value": 1}}})
    assert (tmp_path / "linearisation" / "quick" / "trained_in.txt").read_text().strip() == str(out_e.resolve())


#: Findings that analyse another finding's runs (docs/reproduction.md lists them), and the scales where they do.
SHARED_TRAINING = [
    ("evolution", "linearisation", SCALES),
    ("double_descent", "no_dd_at_init", SCALES),
    ("double_descent", "parameter_distance", SCALES),
    ("loss", "softmax", SCALES),
    ("optimizer", "parameter_distance_optimizer", SCALES),
    ("bias_variance_mse", "mse_double_descent", SCALES),
    ("cnn_fashion_mnist_dd", "adversarial", ("quick", "cpu")),  # PGD on 3 of its 8 widths
    ("adversarial", "jacobian_distributions_cnn", SCALES),
    ("label_noise_protocol_cnn", "adversarial_sgd_clean", ("quick", "cpu")),  # PGD on its clean-label runs
    ("dropout_weight_decay", "jacobian_distributions_resnet", ("quick", "cpu")),
    ("adversarial_mnist1d", "pgd_test_loss", ("quick", "cpu")),
    ("adversarial", "pgd_test_loss", ("full",)),  # the study's CIFAR-10 CNNs
]


@pytest.mark.parametrize(("first", "second", "scales"), SHARED_TRAINING)
def test_findings_that_analyse_the_same_runs_share_their_training_key(first, second, scales):
    from lipschitz_dd.reproduce.run import training_key

    for scale in scales:
        a, b = (scaled_sweep(get_finding(name), scale) for name in (first, second))
        assert training_key(a) == training_key(b), f"{first} and {second} train apart at scale {scale}"


def test_the_renamed_toy_finding_says_its_new_name(capsys):
    """`toy2d` was not the study's toy: it is `toy2d_variant` now, and the old name says so in one line."""
    assert main(["reproduce", "toy2d", "--quick"]) != 0
    err = capsys.readouterr().err
    assert "toy2d_variant" in err and "Traceback" not in err
