"""LipschitzCallback on a user's own LightningModule wrapping torchvision's resnet18, with batches given as
(x, y) tuples and as {"image": x, "label": y} dicts."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
import torchvision
from conftest import DictDataset, dense_jacobian_norms, make_trainer, read_rows
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lipschitz_dd.callbacks.lipschitz import LipschitzCallback

pytestmark = pytest.mark.slow  # torchvision ResNet-18


class ResNetClassifier(pl.LightningModule):
    """What a user would write: torchvision's resnet18 for 10 classes, SGD, CE."""

    def __init__(self):
        super().__init__()
        self.model = torchvision.models.resnet18(num_classes=10)

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = (batch["image"], batch["label"]) if isinstance(batch, dict) else batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.parametrize("batch_format", ["tuple", "dict"])
def test_resnet18_user_module(tmp_path, batch_format):
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(10, (4,))
    dataset = TensorDataset(x, y) if batch_format == "tuple" else DictDataset(x, y)
    model = ResNetClassifier()
    callback = LipschitzCallback(every_n_epochs=1, batch_size=2, upper=batch_format == "tuple", progress_bar=False)
    trainer = make_trainer(tmp_path, [callback], max_epochs=1)
    trainer.fit(model, train_dataloaders=DataLoader(dataset, batch_size=2, shuffle=True))
    rows = [r for r in read_rows(trainer) if "lipschitz/lower" in r]
    assert len(rows) == 2
    norms = dense_jacobian_norms(model, x)
    assert rows[-1]["lipschitz/lower"] == pytest.approx(float(norms.max()), rel=1e-4)
    assert rows[-1]["lipschitz/avg"] == pytest.approx(float(norms.mean()), rel=1e-4)
    if batch_format == "tuple":  # the upper bound traces torchvision's graph (residual adds, BatchNorm, convs)
        assert rows[-1]["lipschitz/upper_available"] == 1.0
        assert math.isfinite(rows[-1]["lipschitz/upper"]) and rows[-1]["lipschitz/upper"] > rows[-1]["lipschitz/lower"]
