"""Large scale: ResNet-50 (and SimpleViT) on ImageNet (configs/resnet50_imagenet.yaml, simplevit_imagenet.yaml,
sweeps/imagenet_seeds.yaml): how far the product bound lies above C_lower, at initialisation and after training.

ImageNet cannot be downloaded here: the cpu and full scales read it from data/imagenet (ImageFolder layout:
train/<class>/*.JPEG, val/<class>/*.JPEG, relative to the working directory) and refuse in one line when it is
absent. The quick scale runs the same path (ImageFolderDataModule, ResNet-50 at a small width, the callback with
its product bound) on a tiny generated image folder of 3 classes: a smoke test of the pipeline, not a result.
The sub-sampling error and hard convex combinations of the same section are measured on MNIST-1D networks by
`lipschitz-dd reproduce lower_bound_diagnostics`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from lipschitz_dd.reproduce.analysis import completed_table, initial_value, markdown_table, save_figure
from lipschitz_dd.reproduce.registry import Analysis, Finding, register
from lipschitz_dd.reproduce.verdict import Check, Threshold

DATA = Path("data/imagenet")
CLASSES = ("cat", "dog", "fox")


def write_tiny_image_folder(root: Path, train_per_class: int = 8, val_per_class: int = 3) -> Path:
    """root/train/<class>/<i>.png and root/val/<class>/<i>.png: random 40 x 36 RGB images of 3 classes (seed 0);
    left as it is if root/train exists already."""
    import numpy as np
    from PIL import Image

    if (root / "train").is_dir():
        return root
    rng = np.random.default_rng(0)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for label in CLASSES:
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def prepare(scale: str, folder: Path) -> dict[str, Any]:
    """quick: a tiny generated image folder (its absolute path as data.data_dir); cpu/full: ImageNet must be in
    data/imagenet (FileNotFoundError in one line otherwise)."""
    if scale == "quick":
        return {"data.data_dir": str(write_tiny_image_folder(folder / "tiny_image_folder").resolve())}
    if not ((DATA / "train").is_dir() and (DATA / "val").is_dir()):
        raise FileNotFoundError(
            f"imagenet at {scale} scale needs ImageNet in {DATA}/train/<class>/*.JPEG and {DATA}/val/<class>/*.JPEG "
            "(relative to this directory; no download here)"
        )
    return {}


def analyse(records, out: Path) -> Analysis:
    """Per completed run: C_lower and the product bound at epoch 0 and at the end, and log10(upper / lower): how
    many orders of magnitude separate them (the study: ~40 at initialisation for ResNet-50)."""
    result, rows = Analysis(), []
    table = completed_table(records, ["config", "seed_everything"])
    names = set(table["run"]) if not table.empty else set()
    for record in [r for r in records if r.name in names]:
        row: dict[str, Any] = {
            "run": record.name,
            "model": str(record.config.get("model.class_path", "")).split(".")[-1],
        }
        for when, value in (("init", initial_value), ("final", lambda r, m: r.final_value(m))):
            lower, upper = value(record, "lipschitz/lower"), value(record, "lipschitz/upper")
            row[f"C_lower ({when})"], row[f"C_upper ({when})"] = lower, upper
            row[f"orders ({when})"] = math.log10(upper / lower) if lower > 0 and upper > 0 else math.nan
        rows.append(row)
    if not rows:
        return result
    frame = pd.DataFrame(rows)
    result.lines += markdown_table(frame)
    result.figures.append(_figure([r for r in records if r.name in names], out / "imagenet_bounds.png"))
    result.checks += checks(frame)
    return result


#: "Far above": the product bound at least this many orders of magnitude above C_lower at initialisation (the
#: study: ~40 for ResNet-50), smallest over runs.
ORDERS = Threshold(">=", 20.0)


def checks(frame: pd.DataFrame) -> list[Check]:
    orders = frame["orders (init)"] if "orders (init)" in frame else pd.Series(dtype=float)
    return [
        Check(
            "product bound far above C_lower at init",
            "smallest over runs of log10(C_upper / C_lower) at epoch 0",
            float(orders.min()) if len(orders) and orders.notna().all() else math.nan,
            ORDERS,
        )
    ]


def _figure(records, path: Path) -> Path:
    """C_lower and the product bound against the epoch, per run (log scale)."""
    figure = Figure(figsize=(6.5, 4), layout="constrained")
    ax = figure.subplots()
    for i, record in enumerate(records):
        frame = record.metrics
        for metric, style in (("lipschitz/lower", "o-"), ("lipschitz/upper", "s--")):
            if metric in frame.columns:
                values = frame[metric].dropna()
                name = "$C_{lower}$" if metric == "lipschitz/lower" else "product bound"
                model = str(record.config.get("model.class_path", "")).split(".")[-1]
                seed = record.config.get("seed_everything", 0)
                ax.plot(values.index, values.to_numpy(), style, color=f"C{i}", label=f"{name}, {model} seed {seed}")
    ax.set(yscale="log", xlabel="epoch", ylabel="bound", title="lower bound and product bound")
    ax.legend(fontsize="small")
    return save_figure(figure, path)


register(
    Finding(
        name="imagenet",
        number="8",
        section="Large scale: ResNet-50 / SimpleViT on ImageNet",
        claim="The product bound is ~1e27 at init, ~40 orders above C_lower (sub-sampling and hard convex "
        "combinations: see lower_bound_diagnostics).",
        paper={"C_upper at init": "~1e27", "C_upper / C_lower": "~40 orders of magnitude"},
        sweep="imagenet_seeds",
        data=f"at cpu and full scale: ImageNet in {DATA}/train and {DATA}/val (class folders; no download)",
        scales={
            "quick": {
                "config": "resnet50_imagenet",
                "seed_everything": 0,
                "model.width": 8,
                "model.lr": 0.001,  # lr 0.1 on batches of 8 random images diverges in one epoch
                "model.num_classes": 3,
                "data.num_classes": 3,
                "data.crop_size": 16,
                "data.resize_size": 20,
                "data.batch_size": 8,
                "data.eval_batch_size": 8,
                "data.num_workers": 0,
                "data.measure_subset": 12,
                "lipschitz.points.batch_size": 8,
                "lipschitz.points.max_samples": 12,
                "trainer.max_epochs": 1,
            },
            "cpu": {"config": "resnet50_imagenet", "seed_everything": 0, "trainer.max_epochs": 1},
            "full": {},
        },
        cost={
            "quick": "~40 s (1 tiny run on a generated folder)",
            "cpu": "needs ImageNet in data/imagenet; one ResNet-50 epoch (GPU hours, days on CPU)",
            "full": "10 runs x 90 epochs: GPU weeks",
        },
        analyse=analyse,
        prepare=prepare,
        setting="ResNet-50 / SimpleViT on ImageNet (not on this machine)",
    )
)
