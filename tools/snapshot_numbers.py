"""A JSON snapshot of the numbers the callbacks and bounds produce, to check that a restructuring moves none.

    python tools/snapshot_numbers.py /tmp/snapshot_before.json          # write a snapshot
    python tools/snapshot_numbers.py /tmp/after.json --compare /tmp/snapshot_before.json

Everything runs in this process with fixed seeds and one torch thread (CPU results depend on the thread count):
small Trainer fits with `LipschitzCallback` (an FCN with the test/interp/noise/pgd point sets and the optimised
bound, a CNN with BatchNorm, a 20-output model measured with the warm method, a plain user LightningModule),
`lower_bound` / `upper_bound` (values, layer constants and reasons) on fixed nets, and the outputs of
`EvolutionBound`, `GradNormStopping` and `FunctionSnapshot`. `--compare` demands exact float equality (NaN
equals NaN) and lists every difference; timings (`lipschitz/seconds`, `seconds`) are left out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import warnings
from typing import Any

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")

import lightning.pytorch as pl  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

TIMINGS = {"lipschitz/seconds", "seconds"}


def _quiet_trainer(tmp: str, epochs: int, callbacks: list, **kwargs: Any) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=epochs,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp,
        accelerator="cpu",
        devices=1,
        **kwargs,
    )


def _lipschitz(**options: Any):
    """A LipschitzCallback from the snapshot's (old-style) keyword options, through the new grouped API
    when it exists (so the same measurement is asked of both versions)."""
    from lipschitz_dd.callbacks import LipschitzCallback

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return LipschitzCallback(progress_bar=False, **options)


def _history(callback) -> list[dict[str, float]]:
    return [{k: v for k, v in row.items() if k not in TIMINGS} for row in callback.history]


def _synthetic(num_classes: int, shape=(12,), num_train=48, num_test=24, batch_size=16):
    from lipschitz_dd.data import SyntheticDataModule

    return SyntheticDataModule(
        input_shape=shape, num_classes=num_classes, num_train=num_train, num_test=num_test, batch_size=batch_size
    )


def fcn_fit(tmp: str) -> dict[str, Any]:
    from lipschitz_dd.models import FCN

    pl.seed_everything(0, verbose=False)
    model = FCN(input_dim=12, width=16, depth=2, bias=True, output_activation="none", lr=0.05, momentum=0.9)
    callback = _lipschitz(
        every_n_epochs=2,
        dense_epochs=1,
        max_samples=40,
        batch_size=16,
        test=True,
        interp=True,
        interp_points=30,
        noise=True,
        noise_sigma=0.2,
        pgd=True,
        pgd_eps=0.3,
        pgd_steps=3,
        optimised_every=1,
        optimised_top_m=3,
        optimised_steps=5,
        output_transform="softmax",
    )
    _quiet_trainer(tmp, 3, [callback]).fit(model, datamodule=_synthetic(5))
    return {"history": _history(callback)}


class SmallCNN(pl.LightningModule):
    """Conv -> BatchNorm -> ReLU -> MaxPool -> Linear on 1 x 8 x 8 images (BatchNorm statistics must not move)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(48, 4)
        )

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def cnn_fit(tmp: str) -> dict[str, Any]:
    pl.seed_everything(1, verbose=False)
    model = SmallCNN()
    callback = _lipschitz(every_n_epochs=1, dense_epochs=2, batch_size=8, test=True, upper_certified=True)
    _quiet_trainer(tmp, 2, [callback]).fit(model, datamodule=_synthetic(4, shape=(1, 8, 8), num_train=32))
    return {"history": _history(callback), "bn_running_mean": model.net[1].running_mean.tolist()}


def warm_fit(tmp: str) -> dict[str, Any]:
    from lipschitz_dd.models import FCN

    pl.seed_everything(2, verbose=False)
    model = FCN(input_dim=12, width=24, depth=1, bias=True, output_activation="none", lr=0.05, num_classes=20)
    result: dict[str, Any] = {}
    for method in ("auto", "warm"):
        callback = _lipschitz(every_n_epochs=1, dense_epochs=3, batch_size=16, method=method)
        _quiet_trainer(tmp, 3, [callback]).fit(model, datamodule=_synthetic(20, num_train=64))
        choice = callback.last_method
        result[method] = {"history": _history(callback), "method": choice.method, "reason": choice.reason}
    return result


class UserNet(pl.LightningModule):
    """A plain user module: a Sequential, its own loss, no lipschitz_dd base class."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 3))

    def forward(self, x):
        return self.layers(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("my_loss", loss, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def user_fit(tmp: str) -> dict[str, Any]:
    pl.seed_everything(3, verbose=False)
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(40, 6, generator=g), torch.randint(3, (40,), generator=g)
    loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)
    callback = _lipschitz(every_n_epochs=1, dense_epochs=1, batch_size=16, noise=True)
    model = UserNet()
    _quiet_trainer(tmp, 2, [callback]).fit(model, train_dataloaders=loader)
    return {"history": _history(callback), "weights": [p.flatten().tolist() for p in model.parameters()]}


def _nets() -> dict[str, nn.Module]:
    torch.manual_seed(4)
    return {
        "mlp": nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 5)),
        "cnn": nn.Sequential(
            nn.Conv2d(1, 3, 3, padding=1),
            nn.BatchNorm2d(3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(3 * 4 * 4, 4),
        ).eval(),
        "tanh": nn.Sequential(nn.Linear(8, 12), nn.Tanh(), nn.Linear(12, 30)),
    }


def bounds() -> dict[str, Any]:
    from lipschitz_dd.bounds import lower_bound, upper_bound

    out: dict[str, Any] = {}
    inputs = {"mlp": (20, 8), "cnn": (10, 1, 8, 8), "tanh": (20, 8)}
    for name, net in _nets().items():
        g = torch.Generator().manual_seed(5)
        x = torch.randn(*inputs[name], generator=g)
        entry: dict[str, Any] = {}
        for method in ("exact", "iterative"):
            stats = lower_bound(net, x, batch_size=7, method=method)
            entry[f"lower_{method}"] = [stats.max, stats.sum, stats.sum_sq, stats.count, stats.argmax_index]
        for certified in (False, True):
            result = upper_bound(net, x[:1], certified=certified)
            entry[f"upper_certified={certified}"] = {
                "value": result.value,
                "available": result.available,
                "reason": result.reason,
                "mode": result.mode,
                "layers": [[c.name, c.op, c.constant, c.certified, c.cumulative] for c in result.layers],
            }
        out[name] = entry
    unbounded = nn.MultiheadAttention(4, 1, batch_first=True)

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = unbounded

        def forward(self, x):
            return self.attention(x, x, x)[0].flatten(1)

    result = upper_bound(Attention(), torch.randn(1, 3, 4, generator=torch.Generator().manual_seed(6)))
    out["attention"] = {"value": result.value, "available": result.available, "reason": result.reason}
    return out


def warm_estimator() -> dict[str, Any]:
    from lipschitz_dd.bounds.warm_lower import WarmLowerBound

    net = _nets()["tanh"]
    x = torch.randn(50, 8, generator=torch.Generator().manual_seed(7))
    estimator = WarmLowerBound(method="warm", chunk_size=16, seed=1)
    rows = []
    for _ in range(2):
        result = estimator.measure(net, [(x[i : i + 16], torch.arange(i, min(i + 16, 50))) for i in range(0, 50, 16)])
        rows.append([result.count, result.sum, result.sum_sq, result.max, result.argmax_index, result.avg_tol])
    return {"rows": rows}


class LossNet(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, x):
        return self.net(x)

    def batch_loss(self, batch):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def training_step(self, batch, batch_idx):
        return self.batch_loss(batch)

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.batch_loss(batch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class ArrayData(pl.LightningDataModule):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(8)
        self.train_x, self.train_y = torch.randn(32, 6, generator=g), torch.randint(3, (32,), generator=g)
        self.test_x, self.test_y = torch.randn(16, 6, generator=g), torch.randint(3, (16,), generator=g)

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.train_x, self.train_y), batch_size=8, shuffle=True)

    def val_dataloader(self):
        return DataLoader(TensorDataset(self.test_x, self.test_y), batch_size=8)


def other_callbacks(tmp: str) -> dict[str, Any]:
    from lipschitz_dd.callbacks import EvolutionBound, FunctionSnapshot, GradNormStopping

    pl.seed_everything(9, verbose=False)
    evolution = EvolutionBound(every_n_epochs=1, clip_norm=5.0, max_samples=20, batch_size=8)
    stopping = GradNormStopping(target=None)
    snapshot = FunctionSnapshot(run_dir=tmp, test_points=10, train_points=6, batch_size=4)
    logged: list[dict[str, float]] = []

    class Recorder(pl.Callback):
        def on_validation_epoch_end(self, trainer, pl_module):
            pass

        def on_train_epoch_end(self, trainer, pl_module):
            logged.append({k: float(v) for k, v in sorted(trainer.callback_metrics.items())})

    model = LossNet()
    _quiet_trainer(tmp, 3, [evolution, stopping, snapshot, Recorder()]).fit(model, datamodule=ArrayData())
    arrays = dict(np.load(snapshot.path))
    arrays.pop("seconds")
    return {
        "evolution": {
            "path_length": evolution.path_length,
            "steps": evolution.steps,
            "c_theta": evolution.c_theta,
            "c_x0": evolution.c_x0,
            "radius": evolution.radius,
            "max_lr": evolution.max_lr,
        },
        "grad_norm": stopping.last_grad_norm,
        "callback_metrics": logged,
        "snapshot": {k: np.asarray(v).astype(np.float64).ravel().tolist() for k, v in sorted(arrays.items())},
    }


SECTIONS = {
    "fcn_fit": fcn_fit,
    "cnn_fit": cnn_fit,
    "warm_fit": warm_fit,
    "user_fit": user_fit,
    "bounds": lambda tmp: bounds(),
    "warm_estimator": lambda tmp: warm_estimator(),
    "other_callbacks": other_callbacks,
}


def snapshot(sections: list[str]) -> dict[str, Any]:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    out = {}
    for name in sections:
        with tempfile.TemporaryDirectory() as tmp:
            out[name] = SECTIONS[name](tmp)
        print(f"  {name}: done", file=sys.stderr)
    return out


def _floats(value: Any) -> Any:
    """JSON-safe: floats as repr strings for non-finite values (json cannot hold NaN exactly otherwise)."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {str(k): _floats(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_floats(v) for v in value]
    return value


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Every place where a and b differ (exact equality; dict keys and list lengths too)."""
    if isinstance(a, dict) and isinstance(b, dict):
        found = [f"{path}/{k}: only in one" for k in sorted(set(a) ^ set(b))]
        for k in sorted(set(a) & set(b)):
            found += differences(a[k], b[k], f"{path}/{k}")
        return found
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b and type(a) is type(b) else [f"{path}: {a!r} != {b!r}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", help="where to write the snapshot (JSON)")
    parser.add_argument("--compare", help="a snapshot to compare with: exit 1 if any number differs")
    parser.add_argument("--sections", nargs="*", default=list(SECTIONS), choices=list(SECTIONS))
    args = parser.parse_args(argv)
    data = _floats(snapshot(args.sections))
    with open(args.output, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    if args.compare is None:
        return 0
    with open(args.compare) as f:
        reference = json.load(f)
    reference = {k: v for k, v in reference.items() if k in args.sections}
    diffs = differences(reference, data)
    for line in diffs[:200]:
        print(line)
    print(f"{len(diffs)} difference(s)" if diffs else "bit-identical")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
