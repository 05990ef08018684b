"""`lipschitz-dd`: the console script. Dispatches to the sweep runner, the report, or LightningCLI.

    lipschitz-dd fit                                  # the embedded default: FCN on MNIST-1D, 15 % label noise
    lipschitz-dd fit --config configs/fcn_mnist1d.yaml --model.width 64 --data.label_noise 0.2
    lipschitz-dd fit --config configs/cnn_cifar10.yaml --print_config
    lipschitz-dd sweep sweeps/fcn_mnist1d_dd.yaml --workers 2
    lipschitz-dd report sweeps_out/fcn_mnist1d_dd
    lipschitz-dd reproduce [NAME [--quick]]

Lightning is imported only for fit/validate/test, so `sweep status` and `report` start quickly.
"""

from __future__ import annotations

import os
import sys
import warnings
from argparse import ArgumentError
from pathlib import Path

# `lipschitz-dd fit` with no config and no model/data: the study's cheap double-descent setting at width 256.
DEFAULT_CONFIG = Path(__file__).with_name("default.yaml")


_UNION_NOISE = (
    "Does not validate against any of the Union subtypes",
    "Subtypes:",
    "Errors:",
    "Given value",
    "- Expected a <class 'NoneType'>",
)


def _reason(message: str) -> str:
    """The reason in jsonargparse's report on a model/data argument, on one line: it checks each alternative of
    `LightningModule | None` and dumps them all; the None alternative and the dumped value are dropped."""
    lines = [line.strip() for line in str(message).replace(_UNION_NOISE[0], "\n").splitlines()]
    kept = [line.removeprefix("- ") for line in lines if line and not line.startswith(_UNION_NOISE)]
    reason = " ".join(kept)
    unknown_class = ("has no attribute", "not accessible or invalid", "Expected a dot import path")
    for key, package, shared_base in (
        ('"model"', "lipschitz_dd.models", "LipschitzModule"),
        ('"data"', "lipschitz_dd.data", "ArrayDataModule"),
    ):
        if f"Parser key {key}" in reason and any(words in reason for words in unknown_class):
            import importlib

            from lightning.pytorch import LightningDataModule, LightningModule

            module = importlib.import_module(package)
            kind = LightningModule if key == '"model"' else LightningDataModule
            names = [
                n
                for n in module.__all__
                if n != shared_base and isinstance(getattr(module, n), type) and issubclass(getattr(module, n), kind)
            ]
            reason += f" (lipschitz_dd's: {', '.join(f'{package}.{n}' for n in names)}; or a class_path of your own)"
    return reason


def _one_line_error(exc: BaseException) -> int:
    kind = "" if isinstance(exc, ArgumentError) else f"{type(exc).__name__}: "
    sys.stderr.write(f"lipschitz-dd: error: {kind}{_reason(str(exc))}\n")
    return 1


def _chooses_config_or_classes(args: list[str]) -> bool:
    """True when the subcommand's arguments give a config file, a model or data class, or ask for help: then the
    embedded default config is not put in front. Every spelling jsonargparse accepts counts: `--config X`,
    `--config=X`, `-c X`, `-c=X`, `-cX` and unambiguous abbreviations (`--conf X`)."""
    for arg in args:
        if arg == "--":
            break
        name = arg.split("=", 1)[0]
        if name in ("--model", "--data", "-h", "--help"):
            return True
        if arg.startswith("-c") or (len(name) >= 4 and "--config".startswith(name)):  # --c alone: --ckpt_path
            return True
    return False


def main(argv: list[str] | None = None) -> int:
    """`lipschitz-dd` console script: `sweep ...`, `report ...`, or LightningCLI's fit/validate/test."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "sweep":
        from lipschitz_dd.sweep.cli import main as sweep_main

        return sweep_main(argv[1:]) or 0
    if argv and argv[0] == "report":
        from lipschitz_dd.report.cli import main as report_main

        return report_main(argv[1:]) or 0
    if argv and argv[0] == "reproduce":
        from lipschitz_dd.reproduce.cli import main as reproduce_main

        return reproduce_main(argv[1:]) or 0
    threads = os.environ.get("TORCH_NUM_THREADS")
    if threads:
        import torch

        torch.set_num_threads(max(1, int(threads)))
    if argv and argv[0] in ("fit", "validate", "test") and not _chooses_config_or_classes(argv[1:]):
        argv = [argv[0], "--config", str(DEFAULT_CONFIG), *argv[1:]]
    # We pass the (possibly completed) argv ourselves: LightningCLI's "args and sys.argv both given" is noise.
    warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter is intended.*")
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from lipschitz_dd.data.vision import DownloadError
    from lipschitz_dd.train_cli import run_training_cli

    bad_input = (
        ValueError,
        FileNotFoundError,
        NotADirectoryError,
        FileExistsError,
        DownloadError,
        MisconfigurationException,
        ArgumentError,
    )
    try:
        run_training_cli(argv)
    except bad_input as exc:  # bad input (ours, or a Trainer flag Lightning refuses): one clear line
        return _one_line_error(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
