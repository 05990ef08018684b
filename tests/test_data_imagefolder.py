"""ImageFolderDataModule (ImageNet path) on a tiny image folder written here, and a smoke fit with the callback."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from PIL import Image

from lipschitz_dd.callbacks import LipschitzCallback
from lipschitz_dd.data import ImageFolderDataModule
from lipschitz_dd.models import ResNet50, SimpleViT

CLASSES = ("cat", "dog", "fox")


def write_image_folder(root, train_per_class=8, val_per_class=3, size=(40, 36)):
    rng = np.random.default_rng(0)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for label in CLASSES:
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("images"))


def make_data(root, **kwargs):
    options = dict(batch_size=6, eval_batch_size=4, num_workers=0, crop_size=16, resize_size=20, measure_subset=10)
    options.update(kwargs)
    return ImageFolderDataModule(data_dir=str(root), **options)


def test_classes_shapes_and_eval_transform_is_a_deterministic_centre_crop(image_root):
    dm = make_data(image_root)
    dm.setup()
    assert dm.num_classes == 3 and dm.input_shape == (3, 16, 16)
    assert len(dm.train_set) == 24 and len(dm.val_set) == 9
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (4, 3, 16, 16) and y.tolist() == [0, 0, 0, 1]
    x2, _ = next(iter(dm.val_dataloader()))
    assert torch.equal(x, x2)
    # eval: resize the shorter side (36 -> 20, so 40 -> 22), centre crop 16, normalise with the ImageNet statistics
    image = Image.open(dm.val_set.samples[0][0]).convert("RGB").resize((22, 20), Image.BILINEAR)
    top, left = (20 - 16) // 2, (22 - 16) // 2
    crop = torch.from_numpy(np.asarray(image)[top : top + 16, left : left + 16]).permute(2, 0, 1).float() / 255
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    torch.testing.assert_close(x[0], (crop - mean) / std, atol=0.05, rtol=0)  # resize antialiasing differs slightly


def test_training_transform_is_random(image_root):
    dm = make_data(image_root)
    dm.setup()
    torch.manual_seed(0)
    a = dm.train_set[0][0]
    b = dm.train_set[0][0]
    assert a.shape == (3, 16, 16) and not torch.equal(a, b)


def test_measurement_subset_is_fixed_eval_transformed_and_streamed_by_workers(image_root):
    dm = make_data(image_root, num_workers=2)
    dm.setup()
    indices = dm.measure_indices()
    twin = make_data(image_root)
    twin.setup()
    assert len(indices) == 10 and torch.equal(indices, twin.measure_indices())  # fixed by the data seed
    loader = dm.measure_dataloader()
    assert isinstance(loader.dataset, torch.utils.data.IterableDataset) and loader.num_workers == 2
    batches = list(loader)
    xs, ys = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    assert xs.shape == (10, 3, 16, 16)
    expected_labels = sorted(dm.train_set.targets[i] for i in indices.tolist())
    assert sorted(ys.tolist()) == expected_labels  # exactly the subset's images, each once
    again = torch.cat([b[0] for b in dm.measure_dataloader()])
    assert torch.equal(xs, again)  # same order and values every time (eval transform, fixed worker split)
    # the same images as the eval transform of those files, read without workers
    plain = torch.stack(
        [dm.val_set.transform(dm.train_set.loader(dm.train_set.samples[i][0])) for i in indices.tolist()]
    )
    assert {tuple(r.flatten()[:8].tolist()) for r in xs} == {tuple(r.flatten()[:8].tolist()) for r in plain}
    other_seed = make_data(image_root, data_seed=1)
    other_seed.setup()
    assert not torch.equal(other_seed.measure_indices(), indices)


def test_missing_folder_is_one_line(tmp_path):
    dm = make_data(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError) as error:
        dm.setup()
    assert "ImageFolder layout" in str(error.value) and "\n" not in str(error.value)


def test_num_classes_mismatch_is_an_error(image_root):
    with pytest.raises(ValueError, match="num_classes=1000"):
        make_data(image_root, num_classes=1000).setup()


def smoke_fit(model, root, tmp_path):
    seed_everything(0)
    data = make_data(root, crop_size=32, resize_size=36)
    callback = LipschitzCallback(max_samples=8, progress_bar=False)
    trainer = Trainer(
        accelerator="cpu", devices=1, fast_dev_run=True, enable_progress_bar=False, enable_model_summary=False,
        logger=False, callbacks=[callback], default_root_dir=str(tmp_path),
    )  # fmt: skip
    trainer.fit(model, datamodule=data)
    return callback


def test_simplevit_fits_a_tiny_image_folder_with_the_lipschitz_callback(image_root, tmp_path):
    model = SimpleViT(
        width=12, patch_size=16, depth=1, heads=6, num_classes=3, lr=0.1, momentum=0.9, lr_schedule="step30"
    )
    callback = smoke_fit(model, image_root, tmp_path)
    assert callback.last_metrics["lipschitz/lower"] > 0
    assert "lipschitz/upper" not in callback.last_metrics or not np.isfinite(callback.last_metrics["lipschitz/upper"])


@pytest.mark.slow
def test_resnet50_fits_a_tiny_image_folder_with_the_lipschitz_callback(image_root, tmp_path):
    model = ResNet50(width=4, num_classes=3, lr=0.1, momentum=0.9, weight_decay=1e-4, lr_schedule="step30")
    callback = smoke_fit(model, image_root, tmp_path)
    metrics = callback.last_metrics
    assert metrics["lipschitz/lower"] > 0 and metrics["lipschitz/upper"] >= metrics["lipschitz/lower"]
