"""MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 read from local folders in torchvision's layout.

Expected files (torchvision layout under `data_dir`):
    MNIST          data_dir/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]
    Fashion-MNIST  data_dir/FashionMNIST/raw/ (same four file names)
    CIFAR-10       data_dir/cifar-10-batches-py/{data_batch_1..5,test_batch}
    CIFAR-100      data_dir/cifar-100-python/{train,test}
The four idx files may also sit directly in `data_dir`, plain or gzipped. Fashion-MNIST is also found where
Debian's package puts it (`apt-get install dataset-fashion-mnist` installs
/usr/share/datasets/fashion-mnist/*-ubyte.gz), when it is not under `data_dir`.
The files are parsed here (idx and pickled batches) rather than through torchvision's dataset classes, which
need uncompressed idx files and check MD5 sums; torchvision is used only for `download=True`.
Each set becomes one float32 tensor in [0, 1] of shape (N, C, H, W), optionally normalised per channel
with the mean and standard deviation of the full training set.
"""

import gzip
import pickle
import re
from pathlib import Path

import numpy as np
import torch

from lipschitz_dd.data.base import ArrayDataModule, Arrays

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

# Fine -> coarse class of CIFAR-100 (the 20 superclasses), the table behind the `coarse_labels` of the
# python version's train/test files; used only when a file lacks `coarse_labels`.
CIFAR100_COARSE_OF_FINE = (
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
)  # fmt: skip


class DownloadError(RuntimeError):
    """`download=True` could not fetch the files (no network, a server error, a corrupt file); one line."""


def download_failure_reason(exc: BaseException) -> str:
    """Why a torchvision download failed, in one line: the URLError's reason (e.g. "[Errno -2] Name or service
    not known"), else the last line of the message (torchvision's MNIST lists every mirror's error, one per line)."""
    from urllib.error import HTTPError, URLError

    if isinstance(exc, URLError) and not isinstance(exc, HTTPError):
        return str(exc.reason)
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    wrapped = re.fullmatch(r"<urlopen error (.*)>", lines[-1])  # str() of a URLError
    return wrapped.group(1) if wrapped else lines[-1]


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file of unsigned bytes (the MNIST format), plain or gzipped, as a uint8 array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an idx file of unsigned bytes")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(bytearray(raw), dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _idx_file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only (what the CIFAR batches hold): a data_dir may come from a
    run folder made elsewhere, and a pickle naming any other global (a function to call) is refused."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing {module}.{name} (a data batch holds arrays and lists only)")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as handle:
        try:
            return _ArrayUnpickler(handle, encoding="latin1").load()
        except pickle.UnpicklingError as error:
            raise ValueError(f"{path}: not a data batch ({error})") from None


class VisionDataModule(ArrayDataModule):
    """Shared part of the image sets: find the folder, optionally download, scale to [0, 1], normalise."""

    title = ""  # name in messages
    folder_name = ""  # folder under data_dir
    torchvision_name = ""  # class in torchvision.datasets used for download
    num_channels, image_size, default_num_classes = 1, 28, 10

    def __init__(
        self,
        normalize: bool = False,
        download: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.normalize, self.download = normalize, download
        self.num_classes = self.default_num_classes
        self.input_shape = (self.num_channels, self.image_size, self.image_size)

    def find_files(self) -> object | None:
        """Locate the files; None when they are missing."""
        raise NotImplementedError

    def read_uint8(self, found) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Read (train images uint8 (N, C, H, W), train labels, test images, test labels) from `found`."""
        raise NotImplementedError

    def fetch(self) -> None:
        """Download with torchvision into data_dir (needs internet)."""
        raise NotImplementedError

    def placement(self) -> str:
        """Where to put the files by hand ("put ... in ..."), for the messages."""
        raise NotImplementedError

    def missing_message(self) -> str:
        """One line saying where the files must go."""
        raise NotImplementedError

    def prepare_data(self) -> None:
        """Download with torchvision when `download` is set and the files are missing; otherwise nothing.

        A failed download (no network, ...) raises `DownloadError` with one line: why, and where to put the files.
        """
        if self.download and self.find_files() is None:
            try:
                self.fetch()
            except (OSError, RuntimeError) as exc:  # URLError is an OSError; torchvision's MNIST raises RuntimeError
                raise DownloadError(
                    f"{self.title} download into {self.data_dir} failed ({download_failure_reason(exc)}); "
                    f"instead, {self.placement()}"
                ) from exc

    def load_arrays(self) -> Arrays:
        found = self.find_files()
        if found is None:
            raise FileNotFoundError(self.missing_message())
        train_x, train_y, test_x, test_y = self.read_uint8(found)
        train_x = torch.from_numpy(np.ascontiguousarray(train_x)).float().div_(255.0)
        test_x = torch.from_numpy(np.ascontiguousarray(test_x)).float().div_(255.0)
        if self.normalize:
            mean = train_x.mean(dim=(0, 2, 3), keepdim=True)
            std = train_x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-8)
            train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
        return train_x, torch.as_tensor(train_y), test_x, torch.as_tensor(test_y)


class MNISTDataModule(VisionDataModule):
    """MNIST: 28x28 grey digits, 60,000 train / 10,000 test, inputs (1, 28, 28)."""

    title, folder_name, torchvision_name = "MNIST", "MNIST", "MNIST"
    system_folders: tuple[str, ...] = ()  # where a system package installs the idx files, searched last

    def find_files(self) -> list[Path] | None:
        """The four idx files in data_dir/<folder_name>/raw, else directly in data_dir, else in a system folder."""
        folders = (Path(self.data_dir) / self.folder_name / "raw", Path(self.data_dir), *map(Path, self.system_folders))
        for folder in folders:
            files = [_idx_file(folder, name) for name in IDX_FILES]
            if all(files):
                return files
        return None

    def read_uint8(self, found):
        """Read the four idx files; images get a channel axis, (N, 1, 28, 28)."""
        train_x, train_y, test_x, test_y = (read_idx(path) for path in found)
        return train_x[:, None], train_y, test_x[:, None], test_y

    def fetch(self) -> None:
        import torchvision.datasets

        dataset_class = getattr(torchvision.datasets, self.torchvision_name)
        dataset_class(self.data_dir, train=True, download=True)
        dataset_class(self.data_dir, train=False, download=True)

    def placement(self) -> str:
        return (
            f"put {', '.join(IDX_FILES)} (plain or .gz) in {Path(self.data_dir) / self.folder_name / 'raw'} "
            f"(torchvision layout) or directly in {self.data_dir}"
        )

    def missing_message(self) -> str:
        return (
            f"{self.title} not found in {Path(self.data_dir) / self.folder_name / 'raw'}; {self.placement()}, "
            "or pass --data.download true on a machine with internet"
        )


class FashionMNISTDataModule(MNISTDataModule):
    """Fashion-MNIST: 28x28 grey clothing images, 60,000 train / 10,000 test, inputs (1, 28, 28).

    Debian's `dataset-fashion-mnist` package (`apt-get install dataset-fashion-mnist`) installs the gzipped idx
    files in /usr/share/datasets/fashion-mnist; they are read from there when data_dir does not hold them.
    """

    title, folder_name, torchvision_name = "Fashion-MNIST", "FashionMNIST", "FashionMNIST"
    system_folders = ("/usr/share/datasets/fashion-mnist",)

    def placement(self) -> str:
        return (
            super().placement()
            + " (or on Debian/Ubuntu: apt-get install dataset-fashion-mnist, read from /usr/share/datasets/fashion-mnist)"
        )


class CIFAR10DataModule(VisionDataModule):
    """CIFAR-10: 32x32 colour images of 10 classes, 50,000 train / 10,000 test, inputs (3, 32, 32)."""

    title, folder_name, torchvision_name = "CIFAR-10", "cifar-10-batches-py", "CIFAR10"
    num_channels, image_size = 3, 32
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files = ("test_batch",)

    def find_files(self) -> Path | None:
        folder = Path(self.data_dir) / self.folder_name
        names = self.train_files + self.test_files
        return folder if all((folder / name).is_file() for name in names) else None

    def labels(self, batch: dict) -> np.ndarray:
        """The class labels of one unpickled batch."""
        return np.asarray(batch["labels"])

    def read_uint8(self, folder: Path):
        """Concatenate the pickled batches; rows of 3072 bytes (R, G, B planes) become (N, 3, 32, 32)."""

        def read(names):
            batches = [_unpickle(folder / name) for name in names]
            images = np.concatenate([np.asarray(b["data"], dtype=np.uint8) for b in batches])
            labels = np.concatenate([self.labels(b) for b in batches]).astype(np.int64)
            return images.reshape(-1, 3, 32, 32), labels

        return (*read(self.train_files), *read(self.test_files))

    def fetch(self) -> None:
        import torchvision.datasets

        getattr(torchvision.datasets, self.torchvision_name)(self.data_dir, download=True)

    def placement(self) -> str:
        folder = Path(self.data_dir) / self.folder_name
        return f"put the python version of {self.title} in {folder} (torchvision layout)"

    def missing_message(self) -> str:
        return (
            f"{self.title} not found in {Path(self.data_dir) / self.folder_name}; {self.placement()} "
            "or pass --data.download true on a machine with internet"
        )


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100: 32x32 colour images, 100 fine classes or, with `coarse=True`, the 20 superclasses."""

    title, folder_name, torchvision_name = "CIFAR-100", "cifar-100-python", "CIFAR100"
    train_files, test_files = ("train",), ("test",)

    def __init__(
        self,
        coarse: bool = False,
        normalize: bool = False,
        download: bool = False,
        **kwargs,
    ):
        super().__init__(normalize=normalize, download=download, **kwargs)
        self.coarse = coarse
        self.num_classes = 20 if coarse else 100

    def labels(self, batch: dict) -> np.ndarray:
        """Fine labels, or coarse ones (the file's `coarse_labels`, else the standard table) if `coarse`."""
        fine = np.asarray(batch["fine_labels"])
        if not self.coarse:
            return fine
        if "coarse_labels" in batch:
            return np.asarray(batch["coarse_labels"])
        return np.asarray(CIFAR100_COARSE_OF_FINE)[fine]
