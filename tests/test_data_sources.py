"""The data sources: MNIST-1D, digits, torchvision-layout image folders, synthetic data and the 2-D toy."""

import gzip
import pickle
import random
import socket
import struct
import urllib.request
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch

import lipschitz_dd.data.mnist1d as mnist1d_module
from lipschitz_dd.data import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    DigitsDataModule,
    FashionMNISTDataModule,
    MNIST1DDataModule,
    MNISTDataModule,
    SyntheticDataModule,
    Toy2DDataModule,
    nested_subset_indices,
)
from lipschitz_dd.data.vision import CIFAR100_COARSE_OF_FINE, DownloadError

# ---------------------------------------------------------------- MNIST-1D


def test_mnist1d_matches_make_dataset_is_cached_and_leaves_the_global_rng_alone(tmp_path, monkeypatch):
    from mnist1d.data import get_dataset_args, make_dataset

    np.random.seed(5)
    random.seed(5)
    numpy_before, python_before = np.random.get_state()[1].copy(), random.getstate()
    dm = MNIST1DDataModule(num_samples=200, train_split=0.75, data_dir=str(tmp_path))
    assert dm.num_classes == 10 and dm.input_shape == (40,)
    dm.prepare_data()
    dm.setup()
    assert np.array_equal(np.random.get_state()[1], numpy_before) and random.getstate() == python_before
    assert dm.cache_path.is_file() and dm.cache_path.parent == tmp_path / "mnist1d"

    args = get_dataset_args()
    args.num_samples, args.train_split = 200, 0.75
    reference = make_dataset(args)  # seed 42, mnist1d's default
    assert dm.train_x.shape == (150, 40) and dm.test_x.shape == (50, 40) and dm.train_x.dtype == torch.float32
    assert torch.allclose(dm.train_x, torch.as_tensor(reference["x"], dtype=torch.float32))
    assert torch.equal(dm.train_y, torch.as_tensor(reference["y"]))
    assert torch.equal(dm.test_y, torch.as_tensor(reference["y_test"]))

    def no_generation(*args, **kwargs):
        raise AssertionError("the cached file should have been used")

    monkeypatch.setattr(mnist1d_module, "generate_mnist1d", no_generation)
    cached = MNIST1DDataModule(num_samples=200, train_split=0.75, data_dir=str(tmp_path), label_noise=0.1,
                               noise_mode="random")  # fmt: skip
    cached.setup()
    assert torch.equal(cached.train_x, dm.train_x) and torch.equal(cached.train_y_clean, dm.train_y)
    assert int(cached.noisy_mask.sum()) == 15


def test_mnist1d_cache_file_is_keyed_by_the_generation_arguments(tmp_path):
    paths = {
        MNIST1DDataModule(data_dir=str(tmp_path)).cache_path,
        MNIST1DDataModule(num_samples=16000, train_split=0.25, data_dir=str(tmp_path)).cache_path,
        MNIST1DDataModule(seed=0, data_dir=str(tmp_path)).cache_path,
    }
    assert len(paths) == 3


@pytest.mark.parametrize(
    "kwargs, message", [({"num_samples": 5}, "num_samples"), ({"train_split": 1.0}, "train_split")]
)
def test_mnist1d_bad_generation_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MNIST1DDataModule(**kwargs)


# ---------------------------------------------------------------- digits


def test_digits_split_is_fixed_by_data_seed_and_covers_every_image_once():
    from sklearn.datasets import load_digits

    digits = load_digits()
    dm = DigitsDataModule(data_seed=1)
    dm.setup()
    assert dm.train_x.shape == (1297, 64) and dm.test_x.shape == (500, 64)
    assert 0.0 <= dm.train_x.min() and dm.train_x.max() == 1.0
    every = torch.cat([dm.train_x, dm.test_x]) * 16
    rows = {tuple(r) for r in every.round().long().tolist()}
    assert len(every) == 1797 and rows == {tuple(r) for r in digits.data.astype(int).tolist()}
    again = DigitsDataModule(data_seed=1)
    again.setup()
    assert torch.equal(again.test_x, dm.test_x)
    other = DigitsDataModule(data_seed=2)
    other.setup()
    assert not torch.equal(other.test_x, dm.test_x)


def test_digits_as_images_are_the_flat_vectors_reshaped():
    flat, images = DigitsDataModule(), DigitsDataModule(as_images=True)
    assert images.input_shape == (1, 8, 8) and flat.input_shape == (64,)
    flat.setup(), images.setup()
    assert torch.equal(images.train_x.flatten(1), flat.train_x)
    assert torch.equal(images.train_x[0, 0], flat.train_x[0].reshape(8, 8))


# ---------------------------------------------------------------- torchvision-layout folders


def write_idx(path, array: np.ndarray, compress: bool) -> None:
    """Write an idx file of unsigned bytes: magic 0x00000800 + ndim, big-endian sizes, then the data."""
    content = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    content += array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        with gzip.open(f"{path}.gz", "wb") as handle:
            handle.write(content)
    else:
        path.write_bytes(content)


def write_mnist_like(folder, rng, compress=False, num_train=12, num_test=5):
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (num_train, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, num_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (num_test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, num_test),
    }
    for name, array in arrays.items():
        write_idx(folder / name, array, compress)
    return arrays


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_reads_torchvision_raw_folder_as_floats_in_unit_interval(tmp_path, compress):
    arrays = write_mnist_like(tmp_path / "MNIST" / "raw", np.random.default_rng(0), compress)
    dm = MNISTDataModule(data_dir=str(tmp_path))
    assert dm.input_shape == (1, 28, 28) and dm.num_classes == 10
    dm.setup()
    assert dm.train_x.shape == (12, 1, 28, 28) and dm.test_x.shape == (5, 1, 28, 28)
    assert torch.allclose(dm.train_x[:, 0], torch.as_tensor(arrays["train-images-idx3-ubyte"] / 255.0).float())
    assert torch.allclose(dm.test_x[:, 0], torch.as_tensor(arrays["t10k-images-idx3-ubyte"] / 255.0).float())
    assert dm.train_y.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert dm.test_y.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()


def test_fashion_mnist_reads_flat_gzipped_files_like_debians_package(tmp_path):
    arrays = write_mnist_like(tmp_path, np.random.default_rng(1), compress=True)
    dm = FashionMNISTDataModule(data_dir=str(tmp_path), normalize=True)
    dm.setup()
    raw = torch.as_tensor(arrays["train-images-idx3-ubyte"] / 255.0)
    expected = (raw - raw.mean()) / raw.std()
    assert torch.allclose(dm.train_x[:, 0].double(), expected, atol=1e-5)
    assert abs(dm.train_x.mean().item()) < 1e-5 and dm.train_x.std().item() == pytest.approx(1.0, abs=1e-5)


def test_fashion_mnist_found_where_debians_package_installs_it(tmp_path, monkeypatch):
    """Not under data_dir: read from the system folder (Debian's /usr/share/datasets/fashion-mnist)."""
    system = tmp_path / "usr_share_datasets_fashion_mnist"
    arrays = write_mnist_like(system, np.random.default_rng(5), compress=True)
    monkeypatch.setattr(FashionMNISTDataModule, "system_folders", (str(system),))
    dm = FashionMNISTDataModule(data_dir=str(tmp_path / "data"))
    dm.setup()
    assert dm.train_y.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    # files under data_dir (torchvision layout) take precedence over the system folder
    local = write_mnist_like(tmp_path / "data" / "FashionMNIST" / "raw", np.random.default_rng(6), compress=False)
    dm = FashionMNISTDataModule(data_dir=str(tmp_path / "data"))
    dm.setup()
    assert dm.train_y.tolist() == local["train-labels-idx1-ubyte"].tolist()
    assert dm.train_y.tolist() != arrays["train-labels-idx1-ubyte"].tolist()


DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(), reason="dataset-fashion-mnist not installed"
)
def test_installed_debian_fashion_mnist_reads_as_60000_plus_10000_images(tmp_path):
    dm = FashionMNISTDataModule(data_dir=str(tmp_path), train_subset=1000, label_noise=0.2, noise_mode="random")
    dm.setup()
    assert dm.train_x.shape == (1000, 1, 28, 28) and dm.test_x.shape == (10000, 1, 28, 28)
    assert 0.0 <= dm.train_x.min() and dm.train_x.max() <= 1.0
    assert torch.bincount(dm.test_y).tolist() == [1000] * 10  # the official test split: 1,000 per class


def write_cifar_batch(path, rng, n, label_keys):
    batch = {"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8)}
    for key, k in label_keys.items():
        batch[key] = rng.integers(0, k, n).tolist()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump(batch, handle)
    return batch


def test_cifar10_reads_the_five_pickled_batches_as_channel_first_images(tmp_path):
    rng = np.random.default_rng(2)
    folder = tmp_path / "cifar-10-batches-py"
    train = [write_cifar_batch(folder / f"data_batch_{i}", rng, 3, {"labels": 10}) for i in range(1, 6)]
    test = write_cifar_batch(folder / "test_batch", rng, 4, {"labels": 10})
    dm = CIFAR10DataModule(data_dir=str(tmp_path), train_subset=10, data_seed=3)
    assert dm.input_shape == (3, 32, 32) and dm.num_classes == 10
    dm.setup()
    keep = nested_subset_indices(15, 10, seed=3)
    pixels = np.concatenate([b["data"] for b in train]).reshape(15, 3, 32, 32) / 255.0
    labels = np.concatenate([b["labels"] for b in train])
    assert dm.train_x.shape == (10, 3, 32, 32) and dm.test_x.shape == (4, 3, 32, 32)
    assert torch.allclose(dm.train_x, torch.as_tensor(pixels[keep]).float())
    assert dm.train_y_clean.tolist() == labels[keep].tolist()
    # channel-first: pixel (row 4, column 5) of the green channel is byte 1024 + 4 * 32 + 5 of the row
    assert dm.test_x[2, 1, 4, 5].item() == pytest.approx(test["data"][2, 1024 + 4 * 32 + 5] / 255.0)
    assert dm.test_y.tolist() == test["labels"]


def write_cifar100(tmp_path, with_coarse: bool):
    rng = np.random.default_rng(4)
    folder = tmp_path / "cifar-100-python"
    keys = {"fine_labels": 100, "coarse_labels": 20} if with_coarse else {"fine_labels": 100}
    return write_cifar_batch(folder / "train", rng, 30, keys), write_cifar_batch(folder / "test", rng, 7, keys)


def test_cifar100_fine_and_coarse_labels_from_the_files(tmp_path):
    train, test = write_cifar100(tmp_path, with_coarse=True)  # random coarse labels: proves they are read
    fine = CIFAR100DataModule(data_dir=str(tmp_path))
    coarse = CIFAR100DataModule(data_dir=str(tmp_path), coarse=True)
    assert fine.num_classes == 100 and coarse.num_classes == 20
    fine.setup(), coarse.setup()
    assert fine.train_y.tolist() == train["fine_labels"] and fine.test_y.tolist() == test["fine_labels"]
    assert coarse.train_y.tolist() == train["coarse_labels"] and coarse.test_y.tolist() == test["coarse_labels"]
    assert torch.equal(fine.train_x, coarse.train_x)


def test_cifar100_coarse_falls_back_to_the_standard_table(tmp_path):
    train, _ = write_cifar100(tmp_path, with_coarse=False)
    dm = CIFAR100DataModule(data_dir=str(tmp_path), coarse=True)
    dm.setup()
    assert dm.train_y.tolist() == [CIFAR100_COARSE_OF_FINE[f] for f in train["fine_labels"]]
    # the standard table: 20 superclasses of exactly 5 fine classes; e.g. apple (0) -> fruit and vegetables (4)
    assert len(CIFAR100_COARSE_OF_FINE) == 100 and np.bincount(CIFAR100_COARSE_OF_FINE).tolist() == [5] * 20
    assert CIFAR100_COARSE_OF_FINE[0] == 4 and CIFAR100_COARSE_OF_FINE[99] == 13  # worm -> non-insect invertebrates


@pytest.mark.parametrize(
    "module, where",
    [(MNISTDataModule, "MNIST/raw"), (FashionMNISTDataModule, "FashionMNIST/raw"),
     (CIFAR10DataModule, "cifar-10-batches-py"), (CIFAR100DataModule, "cifar-100-python")],
)  # fmt: skip
def test_missing_folder_is_one_clear_file_not_found_error(tmp_path, module, where, monkeypatch):
    monkeypatch.setattr(module, "system_folders", (str(tmp_path / "not_installed"),), raising=False)
    dm = module(data_dir=str(tmp_path / "empty"))
    dm.prepare_data()  # download=False: does nothing
    with pytest.raises(FileNotFoundError) as error:
        dm.setup()
    message = str(error.value)
    assert f"{tmp_path / 'empty' / where}" in message and "--data.download true" in message
    assert "\n" not in message
    if module is FashionMNISTDataModule:
        assert "/usr/share/datasets/fashion-mnist" in message


@pytest.mark.parametrize(
    "module, where",
    [(MNISTDataModule, "MNIST/raw"), (FashionMNISTDataModule, "FashionMNIST/raw"),
     (CIFAR10DataModule, "cifar-10-batches-py"), (CIFAR100DataModule, "cifar-100-python")],
)  # fmt: skip
def test_failed_download_is_one_clear_download_error(tmp_path, monkeypatch, module, where):
    def no_network(*args, **kwargs):
        raise URLError(socket.gaierror(-2, "Name or service not known"))

    monkeypatch.setattr(urllib.request, "urlopen", no_network)  # what torchvision's download calls
    monkeypatch.setattr(module, "system_folders", (str(tmp_path / "not_installed"),), raising=False)
    dm = module(data_dir=str(tmp_path / "data"), download=True)
    with pytest.raises(DownloadError) as error:
        dm.prepare_data()
    message = str(error.value)
    assert "\n" not in message
    assert "download" in message and "failed ([Errno -2] Name or service not known)" in message
    assert f"{tmp_path / 'data' / where}" in message  # where to put the files instead


# ---------------------------------------------------------------- generated data


def test_synthetic_data_is_fixed_by_seed_and_labelled_by_a_linear_teacher():
    a, b, c = (SyntheticDataModule(input_shape=(2, 5), num_classes=3, num_train=60, num_test=30, seed=s)
               for s in (1, 1, 2))  # fmt: skip
    for dm in (a, b, c):
        dm.setup()
    assert torch.equal(a.train_x, b.train_x) and not torch.equal(a.train_x, c.train_x)
    assert a.train_x.shape == (60, 2, 5) and a.test_x.shape == (30, 2, 5)
    # labels of a linear teacher are linearly separable: a nearly unregularised logistic regression fits them
    from sklearn.linear_model import LogisticRegression

    x = torch.cat([a.train_x, a.test_x]).flatten(1).numpy()
    y = torch.cat([a.train_y, a.test_y]).numpy()
    assert set(y.tolist()) == {0, 1, 2}
    assert LogisticRegression(C=1e6, max_iter=5000).fit(x, y).score(x, y) == 1.0


def test_toy2d_has_three_balanced_gaussian_classes_around_the_means():
    dm = Toy2DDataModule(num_train=3000, num_test=30, std=0.2, seed=1)
    assert dm.num_classes == 3 and dm.input_shape == (2,)
    dm.setup()
    means = dm.class_means()
    assert torch.allclose(means.norm(dim=1), torch.ones(3))
    assert dm.train_y.bincount().tolist() == [1000, 1000, 1000]
    for k in range(3):
        points = dm.train_x[dm.train_y == k]
        assert torch.allclose(points.mean(0), means[k], atol=0.03)
        assert torch.allclose(points.std(0), torch.full((2,), 0.2), atol=0.02)
    with pytest.raises(ValueError, match="std"):
        Toy2DDataModule(std=0.0)
