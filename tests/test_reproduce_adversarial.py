"""The adversarial findings (adversarial, adversarial_mnist1d, pgd_test_loss) and the Jacobian-norm distributions of
CNNs and ResNets, analysed on hand-made run folders whose networks are built so that the verdict is known: a
two-class network that is linear (constant Jacobian: PGD cannot move C_lower, finite differences stay below it)
and the same network plus a steep ReLU unit that is off at every training point but that PGD reaches within eps."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from reproduce_runs import verdict_of

from lipschitz_dd.data import SyntheticDataModule
from lipschitz_dd.models import FCN

DATA = {
    "class_path": "lipschitz_dd.data.SyntheticDataModule",
    "init_args": {"input_shape": [5], "num_classes": 2, "num_train": 40, "num_test": 40},
}
SEEDS = (0, 1, 2)


def training_points() -> tuple[torch.Tensor, torch.Tensor]:
    data = SyntheticDataModule(**DATA["init_args"])
    data.setup("fit")
    return data.train_x, data.train_y


def network(kind: str) -> FCN:
    """FCN 5 -> 3 -> 2 (biases, no output activation). logit0 = h1, logit1 = h2 - h3 with h1 = relu(a w.x + 100),
    h2 = relu(0.1 u.x + 100) (w, u orthonormal: ||J|| = max(a, 0.1) at every point where h3 is off) and
    h3 = relu(-K (m.x + c)), m the unit direction of the margin's gradient (logit1 - logit0 = 0.1 u.x - a w.x):
    "linear": K = 0; "steep": K = 20 and c just beyond the training points (h3 off at all of them), so PGD moving a
    label-1 point down the margin reaches it; "tail": K = 20, c such that h3 is on at exactly one training point.
    "flat": all weights 0 (a constant network)."""
    model = FCN(input_dim=5, width=3, depth=1, bias=True, output_activation="none", num_classes=2).eval()
    state = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    if kind != "flat":
        w, u, a = torch.eye(5)[0], torch.eye(5)[1], 1.0
        m = (0.1 * u - a * w) / (0.1 * u - a * w).norm()
        x, y = training_points()
        along = x @ m
        steep = {"linear": 0.0, "steep": 20.0, "tail": 20.0}[kind]
        c = -float(along.min()) + 0.01 if kind == "steep" else -float(along.min()) - 0.05
        state["net.1.weight"] = torch.stack([a * w, 0.1 * u, -steep * m])
        state["net.1.bias"] = torch.tensor([100.0, 100.0, -steep * c])
        state["net.3.weight"] = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, -1.0]])
    model.load_state_dict(state)
    return model


def write_runs(root, kind: str, widths=(16, 64), seeds=SEEDS, noise: float = 0.15) -> None:
    """One finished run folder per width and seed, each holding network(kind) as its final checkpoint."""
    model = network(kind)
    for width in widths:
        for seed in seeds:
            folder = root / f"w{width}_s{seed}"
            (folder / "checkpoints").mkdir(parents=True)
            config = {"model.width": width, "seed_everything": seed, "data.label_noise": noise}
            final = {"test/loss": 0.5, "lipschitz/lower": 1.0}
            payload = {"status": "finished", "config": config, "final": final, "max": {}, "epochs": 1}
            (folder / "results.json").write_text(json.dumps({**payload, "seconds": 1.0}))
            (folder / "metrics.csv").write_text("step,test/loss,lipschitz/lower\n0,0.7,0.5\n1,0.5,1.0\n")
            spec = {"class_path": "lipschitz_dd.models.FCN", "init_args": dict(model.hparams)}
            (folder / "config.yaml").write_text(yaml.safe_dump({"model": spec, "data": DATA}))
            saved = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
            torch.save(saved, folder / "checkpoints" / "epoch=1.ckpt")


def test_the_steep_network_is_what_the_tests_need():
    x, y = training_points()
    from lipschitz_dd.reproduce.measures import jacobian_norms

    for kind, expected in (("linear", 1.0), ("steep", 1.0)):
        norms = jacobian_norms(network(kind), x)
        torch.testing.assert_close(norms, torch.full_like(norms, expected))  # h3 off at every training point
    tail = jacobian_norms(network("tail"), x)
    assert int((tail > 2).sum()) == 1 and float(tail.max()) > 15  # h3 on at exactly one point
    m = (0.1 * torch.eye(5)[1] - torch.eye(5)[0]) / (0.1 * torch.eye(5)[1] - torch.eye(5)[0]).norm()
    along = x @ m
    # a label-1 point lies within 0.3 of the unit's threshold: PGD (eps 0.5) moving it down the margin reaches it
    assert float(along[y == 1].min()) < float(along.min()) + 0.3


@pytest.mark.slow
@pytest.mark.parametrize("name", ["adversarial", "adversarial_mnist1d", "adversarial_sgd_clean"])
def test_adversarial_verdict_both_ways(tmp_path, name):
    # runs the cpu scale attacks (adversarial: widths 2, 4, 8; adversarial_sgd_clean: noise 0)
    noise = 0.0 if name == "adversarial_sgd_clean" else 0.15
    write_runs(tmp_path / "linear", "linear", widths=(2, 8), noise=noise)
    assert verdict_of(name, tmp_path / "linear", tmp_path / "out1").startswith("holds")
    write_runs(tmp_path / "steep", "steep", widths=(2, 8), noise=noise)
    assert verdict_of(name, tmp_path / "steep", tmp_path / "out2").startswith("does not hold")
    summary = (tmp_path / "out2" / name / "cpu" / "summary.md").read_text()
    assert "former 10 steps, no box" in summary and (tmp_path / "out2" / name / "cpu" / "adversarial.png").is_file()


@pytest.mark.slow
def test_pgd_test_loss_verdict_both_ways(tmp_path):
    write_runs(tmp_path / "linear", "linear")
    assert verdict_of("pgd_test_loss", tmp_path / "linear", tmp_path / "out1").startswith("holds")
    write_runs(tmp_path / "flat", "flat")
    assert verdict_of("pgd_test_loss", tmp_path / "flat", tmp_path / "out2").startswith("does not hold")
    assert (tmp_path / "out1" / "pgd_test_loss" / "cpu" / "pgd_test_loss.png").is_file()


def test_pgd_test_loss_one_seed_is_undecided(tmp_path):
    write_runs(tmp_path / "runs", "linear", widths=(16,), seeds=(0,))
    assert verdict_of("pgd_test_loss", tmp_path / "runs", tmp_path / "out").startswith("undecided")


@pytest.mark.parametrize(
    "name, holding, failing",
    [("jacobian_distributions_cnn", "linear", "tail"), ("jacobian_distributions_resnet", "tail", "linear")],
)
def test_distribution_tails_both_ways(tmp_path, name, holding, failing):
    write_runs(tmp_path / "a", holding, widths=(8,), seeds=(0,))
    assert verdict_of(name, tmp_path / "a", tmp_path / "out1").startswith("holds")
    write_runs(tmp_path / "b", failing, widths=(8,), seeds=(0,))
    assert verdict_of(name, tmp_path / "b", tmp_path / "out2").startswith("does not hold")
    summary = (tmp_path / "out1" / name / "cpu" / "summary.md").read_text()
    assert "p99 / median" in summary


def test_data_box_is_the_unit_box_for_images_only(tmp_path):
    from lipschitz_dd.reproduce.findings.robustness import data_box_of

    class Record:
        path = tmp_path

    fashion = {"class_path": "lipschitz_dd.data.FashionMNISTDataModule", "init_args": {"data_dir": "data"}}
    for data, box in ((fashion, (0.0, 1.0)), (DATA, None)):
        (tmp_path / "config.yaml").write_text(yaml.safe_dump({"model": {}, "data": data}))
        assert data_box_of(Record()) == box
    normalised = {**fashion, "init_args": {"normalize": True}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"model": {}, "data": normalised}))
    assert data_box_of(Record()) is None


def test_adversarial_attacks_only_its_widths_of_the_shared_grid(tmp_path):
    """At cpu scale the adversarial finding reads cnn_fashion_mnist_dd's 8 widths but attacks only 2, 4 and 8: the
    other runs are left out of its table, and its summary says how many."""
    write_runs(tmp_path / "runs", "linear", widths=(1, 2, 16), seeds=(0,))
    verdict_of("jacobian_distributions_cnn", tmp_path / "runs", tmp_path / "out")
    summary = (tmp_path / "out" / "jacobian_distributions_cnn" / "cpu" / "summary.md").read_text()
    assert "Analysed 1 of the sweep's 3 runs: those with model.width in [2, 4, 8]." in summary
    widths = [
        line.split("|")[1].strip() for line in summary.splitlines() if line.startswith("| ") and "seed" not in line
    ]
    assert widths[0] == "2" and "1" not in widths and "16" not in widths, widths  # only width 2's run in the table


def test_adversarial_rows_are_kept_per_run_and_reused_only_for_the_same_checkpoint(tmp_path, monkeypatch):
    """A stopped adversarial analysis resumes: each run's row is kept as it is computed; analysing again reads it
    back (the same summary, no PGD run), and a retrained run (a new checkpoint file time) is attacked again."""
    import os

    from lipschitz_dd.reproduce.findings import robustness

    write_runs(tmp_path / "runs", "steep", widths=(2, 8), seeds=(0,))
    computed = []
    attack = robustness.adversarial_row
    monkeypatch.setattr(robustness, "adversarial_row", lambda r, eps: computed.append(r.path.name) or attack(r, eps))
    verdict_of("adversarial", tmp_path / "runs", tmp_path / "out")
    summary = (tmp_path / "out" / "adversarial" / "cpu" / "summary.md").read_text()
    assert sorted(computed) == ["w2_s0", "w8_s0"]
    assert sorted(p.name for p in (tmp_path / "out" / "adversarial" / "cpu" / "per_run").iterdir()) == [
        "w2_s0.json",
        "w8_s0.json",
    ]

    computed.clear()
    verdict_of("adversarial", tmp_path / "runs", tmp_path / "out")
    assert computed == [] and (tmp_path / "out" / "adversarial" / "cpu" / "summary.md").read_text() == summary

    checkpoint = tmp_path / "runs" / "w8_s0" / "checkpoints" / "epoch=1.ckpt"
    os.utime(checkpoint, ns=(checkpoint.stat().st_atime_ns, checkpoint.stat().st_mtime_ns + 10**9))
    verdict_of("adversarial", tmp_path / "runs", tmp_path / "out")
    assert computed == ["w8_s0"]
    assert (tmp_path / "out" / "adversarial" / "cpu" / "summary.md").read_text() == summary  # same network
