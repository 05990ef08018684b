"""Subsets, label noise, the in-memory loader and the shared datamodule behaviour (lipschitz_dd.data)."""

import math

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer

from lipschitz_dd.data import (
    ArrayDataModule,
    SyntheticDataModule,
    TensorBatchLoader,
    corrupt_labels,
    nested_subset_indices,
)

MODES = ("shuffle", "random", "random_wrong")


def balanced_labels(n: int, k: int = 10) -> torch.Tensor:
    return torch.arange(n) % k


# ---------------------------------------------------------------- subsets


def test_subsets_are_nested_sorted_and_fixed_by_the_data_seed():
    small, medium, large = (nested_subset_indices(1000, size, seed=3) for size in (10, 100, 500))
    assert len(small) == 10 and len(medium) == 100 and len(large) == 500
    assert set(small.tolist()) <= set(medium.tolist()) <= set(large.tolist())
    assert torch.equal(large, large.sort().values) and len(set(large.tolist())) == 500
    torch.manual_seed(123)  # the global RNG must not matter
    assert torch.equal(nested_subset_indices(1000, 100, seed=3), medium)
    assert not torch.equal(nested_subset_indices(1000, 100, seed=4), medium)


@pytest.mark.parametrize("size", [0, 1001])
def test_subset_size_outside_the_data_is_a_value_error(size):
    with pytest.raises(ValueError, match="train_subset"):
        nested_subset_indices(1000, size, seed=0)


# ---------------------------------------------------------------- label noise


@pytest.mark.parametrize("mode", MODES)
def test_noisy_sets_are_nested_deterministic_and_of_size_round_alpha_n(mode):
    labels = balanced_labels(1000)
    masks = []
    for alpha in (0.0, 0.1, 0.25, 0.6, 1.0):
        noisy, mask = corrupt_labels(labels, alpha, 10, mode, seed=7)
        assert mask.dtype == torch.bool and int(mask.sum()) == round(alpha * 1000)
        assert torch.equal(noisy[~mask], labels[~mask])  # only the noisy set may change
        again, again_mask = corrupt_labels(labels, alpha, 10, mode, seed=7)
        assert torch.equal(again, noisy) and torch.equal(again_mask, mask)
        masks.append(mask)
    for smaller, larger in zip(masks, masks[1:], strict=False):
        assert not (smaller & ~larger).any()
    assert torch.equal(labels, balanced_labels(1000))  # input untouched
    other_seed = corrupt_labels(labels, 0.25, 10, mode, seed=8)[1]
    assert not torch.equal(other_seed, masks[2])


def test_shuffle_keeps_the_class_histogram_and_changes_about_alpha_times_one_minus_sum_p_squared():
    n, alpha = 20000, 0.4
    labels = balanced_labels(n)
    noisy, mask = corrupt_labels(labels, alpha, 10, "shuffle", seed=0)
    assert torch.equal(noisy.bincount(minlength=10), labels.bincount(minlength=10))
    assert torch.equal(noisy[mask].sort().values, labels[mask].sort().values)  # a permutation of the set
    changed = (noisy != labels).float().mean().item()
    assert changed == pytest.approx(alpha * (1 - 10 * 0.1**2), abs=0.015)


def test_random_changes_about_alpha_times_one_minus_one_over_k_with_uniform_classes():
    n, alpha, k = 20000, 0.5, 10
    noisy, mask = corrupt_labels(balanced_labels(n, k), alpha, k, "random", seed=1)
    assert (noisy != balanced_labels(n, k)).float().mean().item() == pytest.approx(alpha * (1 - 1 / k), abs=0.015)
    frequencies = noisy[mask].bincount(minlength=k).float() / mask.sum()
    assert torch.allclose(frequencies, torch.full((k,), 1 / k), atol=0.015)


def test_random_wrong_changes_exactly_the_noisy_set_to_uniform_other_classes():
    n, alpha, k = 20000, 0.5, 10
    labels = balanced_labels(n, k)
    noisy, mask = corrupt_labels(labels, alpha, k, "random_wrong", seed=2)
    assert torch.equal(noisy != labels, mask)
    from_zero = noisy[mask & (labels == 0)]
    frequencies = from_zero.bincount(minlength=k).float() / len(from_zero)
    assert frequencies[0] == 0
    assert torch.allclose(frequencies[1:], torch.full((k - 1,), 1 / (k - 1)), atol=0.04)


@pytest.mark.parametrize("mode", ["random", "random_wrong"])
def test_a_sample_gets_the_same_noisy_label_for_every_alpha(mode):
    labels = balanced_labels(500)
    small, small_mask = corrupt_labels(labels, 0.2, 10, mode, seed=4)
    large, _ = corrupt_labels(labels, 0.7, 10, mode, seed=4)
    assert torch.equal(small[small_mask], large[small_mask])


@pytest.mark.parametrize(
    "alpha, mode, num_classes, message",
    [(-0.1, "shuffle", 10, "label_noise"), (1.5, "random", 10, "label_noise"), (math.nan, "shuffle", 10, "label_noise"),
     (0.1, "flip", 10, "noise_mode"), (0.1, "random_wrong", 1, "num_classes")],
)  # fmt: skip
def test_bad_noise_arguments_are_value_errors(alpha, mode, num_classes, message):
    with pytest.raises(ValueError, match=message):
        corrupt_labels(balanced_labels(20), alpha, num_classes, mode)


# ---------------------------------------------------------------- loader


def test_fixed_order_loader_yields_consecutive_slices_and_keeps_the_last_partial_batch():
    x, y = torch.randn(23, 3), torch.arange(23)
    loader = TensorBatchLoader(x, y, batch_size=5)
    assert len(loader) == 5
    for _ in range(2):  # re-iterable, same order each time
        batches = list(loader)
        assert [len(b[1]) for b in batches] == [5, 5, 5, 5, 3]
        assert torch.equal(torch.cat([b[0] for b in batches]), x)
        assert torch.equal(torch.cat([b[1] for b in batches]), y)


def test_shuffled_loader_uses_a_permutation_seeded_with_seed_plus_epoch():
    x, y = torch.arange(40.0)[:, None], torch.arange(40)
    loader = TensorBatchLoader(x, y, batch_size=16, shuffle=True, seed=11)
    epochs = [torch.cat([b[1] for b in loader]) for _ in range(3)]
    for epoch, order in enumerate(epochs):
        expected = torch.randperm(40, generator=torch.Generator().manual_seed(11 + epoch))
        assert torch.equal(order, expected)
    assert not torch.equal(epochs[0], epochs[1])
    loader.sampler.set_epoch(1)  # what Lightning calls at the start of epoch 1
    assert torch.equal(torch.cat([b[1] for b in loader]), epochs[1])


def test_loader_rejects_bad_sizes():
    with pytest.raises(ValueError, match="batch_size"):
        TensorBatchLoader(torch.zeros(4, 2), torch.zeros(4), batch_size=0)
    with pytest.raises(ValueError, match="lengths"):
        TensorBatchLoader(torch.zeros(4, 2), torch.zeros(3), batch_size=2)


# ---------------------------------------------------------------- datamodule


def test_shape_and_classes_are_known_before_setup_and_attributes_after():
    dm = SyntheticDataModule(input_shape=(2, 3), num_classes=4, num_train=50, num_test=20, label_noise=0.2)
    assert dm.num_classes == 4 and dm.input_shape == (2, 3) and dm.train_x is None
    dm.setup("fit")
    assert dm.train_x.shape == (50, 2, 3) and dm.train_x.dtype == torch.float32
    assert dm.test_x.shape == (20, 2, 3) and dm.test_y.dtype == torch.int64
    assert dm.noisy_mask.shape == (50,) and int(dm.noisy_mask.sum()) == 10
    expected_noisy, expected_mask = corrupt_labels(dm.train_y_clean, 0.2, 4, "shuffle", seed=0)
    assert torch.equal(dm.train_y, expected_noisy) and torch.equal(dm.noisy_mask, expected_mask)


def test_subset_and_noise_are_independent_of_the_training_seed_and_apply_to_training_labels_only():
    def build(seed):
        torch.manual_seed(seed)
        dm = SyntheticDataModule(num_train=200, num_test=50, train_subset=80, data_seed=5, label_noise=0.5)
        dm.setup()
        return dm

    first, second = build(0), build(1)
    assert torch.equal(first.train_x, second.train_x) and torch.equal(first.train_y, second.train_y)
    full = SyntheticDataModule(num_train=200, num_test=50)
    full.setup()
    keep = nested_subset_indices(200, 80, seed=5)
    assert torch.equal(first.train_x, full.train_x[keep]) and torch.equal(first.train_y_clean, full.train_y[keep])
    assert torch.equal(first.test_y, full.test_y)  # test labels stay clean
    assert (first.train_y != first.train_y_clean).any()


def test_loaders_serve_train_batches_and_test_then_full_noisy_train_for_validation():
    dm = SyntheticDataModule(num_train=30, num_test=12, batch_size=8, eval_batch_size=7, label_noise=0.5)
    dm.setup()
    train = dm.train_dataloader()
    assert len(train) == 4 and torch.equal(torch.cat([y for _, y in train]), dm.train_y)
    test_loader, train_eval = dm.val_dataloader()
    assert len(test_loader) == 2 and len(train_eval) == 5
    assert torch.equal(torch.cat([y for _, y in test_loader]), dm.test_y)
    assert torch.equal(torch.cat([x for x, _ in train_eval]), dm.train_x)
    assert torch.equal(torch.cat([y for _, y in train_eval]), dm.train_y)
    assert torch.equal(torch.cat([y for _, y in dm.test_dataloader()]), dm.test_y)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"batch_size": -1}, "batch_size"), ({"eval_batch_size": 0}, "eval_batch_size"),
     ({"label_noise": 1.2}, "label_noise"), ({"noise_mode": "flip"}, "noise_mode"),
     ({"train_subset": 0}, "train_subset")],
)  # fmt: skip
def test_bad_common_arguments_are_value_errors_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SyntheticDataModule(**kwargs)


def test_subset_larger_than_the_data_is_a_value_error_at_setup():
    dm = SyntheticDataModule(num_train=30, train_subset=31)
    with pytest.raises(ValueError, match="train_subset=31.*30"):
        dm.setup()


def test_dataloader_before_setup_is_a_clear_error():
    with pytest.raises(RuntimeError, match="setup"):
        SyntheticDataModule().train_dataloader()


# ---------------------------------------------------------------- Lightning integration


class RecordingModel(LightningModule):
    """A linear classifier that records the labels of every batch it sees."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(6, 3)
        self.train_labels: dict[int, list[torch.Tensor]] = {}
        self.val_batches = {0: 0, 1: 0}

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.train_labels.setdefault(self.current_epoch, []).append(y)
        return torch.nn.functional.cross_entropy(self.layer(x), y)

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self.val_batches[dataloader_idx] += 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_fits_on_the_loaders_and_reshuffles_per_epoch_from_data_seed_plus_epoch():
    dm = SyntheticDataModule(input_shape=(6,), num_classes=3, num_train=20, num_test=9, batch_size=8,
                             eval_batch_size=4, shuffle=True, data_seed=2)  # fmt: skip
    model = RecordingModel()
    trainer = Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0)  # fmt: skip
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 2 * 3
    for epoch in (0, 1):
        order = torch.randperm(20, generator=torch.Generator().manual_seed(2 + epoch))
        assert torch.equal(torch.cat(model.train_labels[epoch]), dm.train_y[order])
    assert model.val_batches == {0: 2 * 3, 1: 2 * 5}  # test: ceil(9/4), train eval: ceil(20/4), per epoch


def test_lightning_cli_builds_datamodules_from_dotted_arguments(monkeypatch):
    from lightning.pytorch.cli import LightningCLI

    monkeypatch.setattr("sys.argv", ["lipschitz-dd"])
    args = ["--data", "lipschitz_dd.data.SyntheticDataModule", "--data.label_noise", "0.2",
            "--data.noise_mode", "random_wrong", "--data.input_shape", "[1, 4, 4]", "--data.train_subset", "10",
            "--trainer.logger", "false"]  # fmt: skip
    cli = LightningCLI(RecordingModel, ArrayDataModule, subclass_mode_data=True, run=False, args=args)
    assert isinstance(cli.datamodule, SyntheticDataModule)
    assert cli.datamodule.label_noise == 0.2 and cli.datamodule.noise_mode == "random_wrong"
    assert cli.datamodule.input_shape == (1, 4, 4) and cli.datamodule.train_subset == 10


@pytest.mark.parametrize(
    "class_name, extra, num_classes, input_shape",
    [("MNIST1DDataModule", [], 10, (40,)), ("DigitsDataModule", ["--data.as_images", "true"], 10, (1, 8, 8)),
     ("MNISTDataModule", [], 10, (1, 28, 28)),
     ("FashionMNISTDataModule", ["--data.normalize", "true"], 10, (1, 28, 28)),
     ("CIFAR10DataModule", [], 10, (3, 32, 32)), ("CIFAR100DataModule", ["--data.coarse", "true"], 20, (3, 32, 32)),
     ("Toy2DDataModule", [], 3, (2,))],
)  # fmt: skip
def test_every_datamodule_is_configurable_and_knows_classes_and_shape_without_loading(
    class_name, extra, num_classes, input_shape, tmp_path, monkeypatch
):
    from lightning.pytorch.cli import LightningCLI

    monkeypatch.setattr("sys.argv", ["lipschitz-dd"])
    args = ["--data", f"lipschitz_dd.data.{class_name}", "--data.data_dir", str(tmp_path / "nothing_here"),
            "--data.batch_size", "7", "--data.label_noise", "0.1", "--trainer.logger", "false", *extra]  # fmt: skip
    cli = LightningCLI(RecordingModel, ArrayDataModule, subclass_mode_data=True, run=False, args=args)
    assert type(cli.datamodule).__name__ == class_name and cli.datamodule.batch_size == 7
    assert cli.datamodule.num_classes == num_classes and cli.datamodule.input_shape == input_shape
    assert cli.datamodule.train_x is None and not (tmp_path / "nothing_here").exists()


def test_test_subset_is_fixed_by_the_data_seed_nested_and_independent_of_the_training_subset():
    def test_set(size, data_seed=0, train_subset=None):
        dm = SyntheticDataModule(
            num_train=50, num_test=40, train_subset=train_subset, test_subset=size, data_seed=data_seed
        )
        dm.setup()
        return dm

    full = test_set(None)
    small, large = test_set(10), test_set(25)
    assert len(small.test_x) == 10 and len(large.test_x) == 25 and len(full.test_x) == 40
    rows = lambda dm: {tuple(r.tolist()) for r in dm.test_x}  # noqa: E731
    assert rows(small) <= rows(large) <= rows(full)  # nested in the size, rows of the full test set
    assert torch.equal(test_set(10).test_x, small.test_x)  # fixed by the data seed
    assert not torch.equal(test_set(10, data_seed=1).test_x, small.test_x)
    assert torch.equal(test_set(10, train_subset=20).test_x, small.test_x)  # the training subset does not move it
    labels = {tuple(r.tolist()): int(y) for r, y in zip(full.test_x, full.test_y, strict=True)}
    assert all(labels[tuple(r.tolist())] == int(y) for r, y in zip(small.test_x, small.test_y, strict=True))
    with pytest.raises(ValueError, match="test_subset"):
        test_set(41)
    with pytest.raises(ValueError, match="test_subset"):
        SyntheticDataModule(test_subset=0)
