"""The training command line: LightningCLI (fit/validate/test) with the run folder, loggers and callbacks.

Every `fit` writes one run folder `<save_dir>/<experiment>/<run_name>/` (metrics.csv, config.yaml,
results.json, wandb/). See docs/architecture.md.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from lipschitz_dd.callbacks import FunctionSnapshot, GradNormStopping, LipschitzCallback, ResultsWriter
from lipschitz_dd.epoch_axis import use_epoch_axis
from lipschitz_dd.loggers import (
    ConfigOnlyWandbLogger,
    EpochCSVLogger,
    build_wandb_logger,
    readable_run_name,
    run_summary,
    stored_wandb_id,
    sweep_id,
    sweep_params,
)
from lipschitz_dd.metric_names import AVG, LOWER, TEST_ACC, TEST_LOSS, TRAIN_LOSS, UPPER
from lipschitz_dd.run_folder import (
    CONFIG_FILE,
    METRICS_FILE,
    RESULTS_FILE,
    RUN_RECORD_FILES,
    read_results,
    write_atomic,
)

log = logging.getLogger(__name__)

ENV_SAVE_DIR = "LIPSCHITZ_DD_SAVE_DIR"
ENV_EXPERIMENT = "LIPSCHITZ_DD_EXPERIMENT"
ENV_RUN_NAME = "LIPSCHITZ_DD_RUN_NAME"
#: Exit status of a fit stopped by a signal: 128 + the signal's number, as shells report it (Ctrl-C: 130).
SIGNAL_EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


def flatten_config(config: Any, prefix: str = "") -> dict[str, Any]:
    """{"model.width": 64, "model.class_path": ..., "trainer.max_epochs": 500, ...}; `init_args` levels dropped."""
    if hasattr(config, "as_dict"):
        config = config.as_dict()
    flat: dict[str, Any] = {}
    if isinstance(config, dict):
        for key, value in config.items():
            if key in ("config", "__path__", "print_config"):
                continue
            sub = prefix if key in ("init_args", "dict_kwargs") else (f"{prefix}.{key}" if prefix else key)
            flat.update(flatten_config(value, sub))
    elif isinstance(config, (list, tuple)):
        flat[prefix] = str(config) if any(isinstance(v, (dict, list)) for v in config) else list(config)
    else:
        flat[prefix] = config if isinstance(config, (int, float, str, bool, type(None))) else str(config)
    return flat


def apply_threads(threads: int | None) -> int:
    """torch.set_num_threads(threads) (None: 1), at most os.cpu_count() (more is clamped, with a logged warning);
    returns the count applied. ValueError (one line) below 1. CPU results depend on the thread count (the order of
    floating-point sums), so it is a setting of the run, never derived from what else shares the machine."""
    import torch

    threads = 1 if threads is None else int(threads)
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    cores = os.cpu_count() or 1
    if threads > cores:
        log.warning(f"threads={threads} is more than this machine's {cores} cores: using {cores}")
        threads = cores
    torch.set_num_threads(threads)
    return threads


def resumed_run_dir(ckpt_path: str | None) -> str | None:
    """The run folder a checkpoint belongs to (`<run dir>/checkpoints/<name>.ckpt`, the folder holding a
    config.yaml or metrics.csv), else None."""
    if not ckpt_path or ckpt_path in ("last", "best", "hpc", "registry"):
        return None
    path = Path(ckpt_path).resolve()
    run_dir = path.parent.parent
    if path.parent.name == "checkpoints" and any((run_dir / f).is_file() for f in ("config.yaml", "metrics.csv")):
        return str(run_dir)
    return None


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read as a Lightning checkpoint (one line naming it)."""


def read_checkpoint(path: str) -> dict[str, Any]:
    """torch.load(path, weights_only=True) on the CPU, checked to be a Lightning checkpoint (a dict with
    "pytorch-lightning_version"). Raises CheckpointError, naming the file, for a truncated or corrupt file
    (UnpicklingError, RuntimeError, EOFError, ...), anything else, or one the operating system refuses."""
    import torch

    try:
        checkpoint = torch.load(path, weights_only=True, map_location="cpu")
    except (PermissionError, IsADirectoryError, FileNotFoundError) as error:
        raise CheckpointError(f"checkpoint {path}: cannot be read: {error.strerror or error}") from None
    except Exception as error:  # UnpicklingError, RuntimeError (zip reader), EOFError, IndexError, ... on bad bytes
        reason = str(error).strip().split("\n")[0].split(". ")[0][:120] or "empty file"
        raise CheckpointError(
            f"checkpoint {path} cannot be read: truncated, corrupt or not a PyTorch checkpoint "
            f"({type(error).__name__}: {reason})"
        ) from None
    if not isinstance(checkpoint, dict) or "pytorch-lightning_version" not in checkpoint:
        raise CheckpointError(
            f"checkpoint {path} is not a Lightning checkpoint (no 'pytorch-lightning_version'); "
            "resume from a file of <run dir>/checkpoints/"
        )
    return checkpoint


class _SaveEpochRows(Callback):
    """Writes the finished epoch's row to metrics.csv before the epoch's checkpoint and again when the next epoch
    starts. The run folder's CSV logger
    keeps a row in memory until a row of another epoch arrives, which is the next epoch's end: a process killed
    during that epoch lost the row, while the checkpoint of the epoch was already on disk, so a resume from it
    could never write that row again."""

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for logger in trainer.loggers if trainer.is_global_zero else []:
            if isinstance(logger, EpochCSVLogger):
                logger.start_training()
                logger.flush()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Write the epoch's row before its checkpoint: Lightning runs ModelCheckpoint after every other callback,
        and the epoch's validation metrics and measurements are logged by now. Without this, a kill between the
        checkpoint and the next epoch's start (or the end of training) lost the row while the checkpoint said the
        epoch was done. Values logged later in the epoch join the written row at the next write."""
        for logger in trainer.loggers if trainer.is_global_zero else []:
            if isinstance(logger, EpochCSVLogger):
                logger.flush()

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.trained = True

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """The last epoch's row is complete (callbacks' on_train_end run before the module's): write it; what is
        logged from now on (the model's f(0), ...) joins it and is listed as the fit's end values."""
        for logger in trainer.loggers if trainer.is_global_zero else []:
            if isinstance(logger, EpochCSVLogger):
                logger.flush()
                logger.begin_fit_end()

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """A resume from the last epoch's checkpoint trains nothing, and Lightning then skips the training hooks:
        the fit's end values (f(0)), which a process killed after that checkpoint never wrote, are logged here."""
        if getattr(self, "trained", False) or not hasattr(pl_module, "log_fit_end_values"):
            return
        self.on_train_end(trainer, pl_module)
        pl_module.log_fit_end_values()


class _ResumedRows(Callback):
    """On `fit --ckpt_path`: tells the loggers the epoch the run resumes at, before the module logs its epoch-0
    row (callbacks' on_train_start runs first), so the checkpoint's already-recorded rows are neither
    duplicated nor overwritten by a row measured on the loaded weights."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch
        try:
            earlier = read_results(self.run_dir)
        except ValueError:  # an unreadable results.json: nothing to learn from it
            earlier = None
        # Where the earlier fit ended, its end-of-fit values (f(0), ...) are not values of that epoch.
        ended = earlier is not None and earlier.epochs is not None and earlier.epochs <= epoch
        drop = (earlier.extra.get("fit_end_metrics") or []) if ended else []
        for logger in trainer.loggers:
            if isinstance(logger, EpochCSVLogger):
                logger.keep_rows_through(epoch, drop, earlier.epochs if ended else None)
            elif hasattr(logger, "keep_rows_through"):
                logger.keep_rows_through(epoch)


class _RunConfigSaver(SaveConfigCallback):
    """Writes config.yaml through a temporary file and os.replace (Lightning's writes the file in place).

    While `deferred` (a resumed fit), `setup` writes nothing: the CLI calls `write` right before the run's new
    results.json is written, so a resume that fails or trains nothing leaves the earlier config.yaml with the
    earlier record it describes."""

    deferred = False

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.already_saved or self.deferred:
            return
        log_dir = trainer.log_dir  # a collective under DDP: every rank asks
        if trainer.is_global_zero and log_dir is not None:
            self.write(log_dir)
            self.save_config(trainer, pl_module, stage)
        self.already_saved = trainer.strategy.broadcast(True)

    def write(self, log_dir: str) -> None:
        text = self.parser.dump(self.config, skip_none=False)

        def dump(tmp: str) -> None:
            with open(tmp, "w") as f:
                f.write(text)

        write_atomic(os.path.join(log_dir, self.config_filename), dump, suffix=".yaml")


class LipschitzCLI(LightningCLI):
    """LightningCLI with the run folder, the loggers, the Lipschitz callback, the function snapshot and the run
    record wired in.

    A fit stopped by Ctrl-C (SIGINT) or SIGTERM records `status: interrupted` in results.json and ends with
    SystemExit(130) or SystemExit(143) after one line saying where the record is (Lightning itself would exit 1
    after Ctrl-C and 0 after SIGTERM).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.results_writer: ResultsWriter | None = None
        given = kwargs.get("args")  # the command line, for a sweep run's display name (loggers.sweep_params)
        self.argv = [str(a) for a in given] if isinstance(given, list) else sys.argv[1:]
        try:
            super().__init__(*args, **kwargs)
        except Exception:
            self._say_earlier_record_kept("this attempt failed before getting further")
            raise
        except (KeyboardInterrupt, SystemExit) as stop:
            writer = self.results_writer
            if writer is None or writer.signal is None:
                raise
            code = SIGNAL_EXIT_CODES[writer.signal]
            sys.stderr.write(
                f"\nfit interrupted by {writer.signal}: the run's record (status {writer.status}) is in "
                f"{os.path.join(self.run_dir, RESULTS_FILE)}\n"
            )
            raise SystemExit(code) from stop

    def _say_earlier_record_kept(self, why: str) -> None:
        """One line when ResultsWriter left the run's earlier record in place (see ResultsWriter)."""
        writer = self.results_writer
        if writer is not None and writer.kept_earlier and rank_zero_only.rank == 0:
            sys.stderr.write(
                f"lipschitz-dd: {why}: the earlier {writer.kept_earlier} record is kept "
                f"({os.path.join(self.run_dir, RESULTS_FILE)}, with its {CONFIG_FILE})\n"
            )

    def _parse_ckpt_path(self) -> None:
        """Lightning 2.6's: the model hyperparameters a checkpoint holds go into the config (so `--ckpt_path`
        alone rebuilds the model), but a file that is not a readable Lightning checkpoint (truncated, garbage,
        a plain `torch.save`) is refused in one line naming it (CheckpointError) instead of a long traceback."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or not Path(ckpt_path).is_file():
            return  # a missing file: Lightning's own "Checkpoint file not found: <path>" later
        checkpoint = read_checkpoint(ckpt_path)
        hparams = dict(checkpoint.get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        try:
            self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
        except SystemExit:
            sys.stderr.write("Parsing of ckpt_path hyperparameters failed!\n")
            raise

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """fit, validate and test; not predict: lipschitz_dd's datamodules have no predict set and the run folder
        records no predictions, so `lipschitz-dd predict` is not offered rather than failing after setup."""
        return {name: skip for name, skip in LightningCLI.subcommands().items() if name != "predict"}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--save_dir",
            type=str,
            default=os.environ.get(ENV_SAVE_DIR, "runs"),
            help="root of the run folders (env LIPSCHITZ_DD_SAVE_DIR)",
        )
        parser.add_argument(
            "--experiment",
            type=str | None,
            default=os.environ.get(ENV_EXPERIMENT),
            help="experiment folder name (env LIPSCHITZ_DD_EXPERIMENT; default: the config's stem)",
        )
        parser.add_argument(
            "--run_name",
            type=str | None,
            default=os.environ.get(ENV_RUN_NAME),
            help="run folder name (env LIPSCHITZ_DD_RUN_NAME, else WANDB_RUN_ID, else a time stamp)",
        )
        parser.add_argument(
            "--wandb",
            type=bool,
            default=True,
            help="also log to W&B (offline unless W&B is configured on this machine)",
        )
        parser.add_argument(
            "--snapshot",
            type=bool,
            default=True,
            help="at the end of fit, save logits and input Jacobians at fixed points to "
            "<run dir>/snapshot.npz (the report's seed-ensemble bias-variance bound)",
        )
        parser.add_argument(
            "--threads",
            type=int,
            default=1,
            help="torch's CPU thread count for this run (set before the model is built; at most the machine's "
            "cores). CPU results depend on it: same config, same thread count, same machine type, same numbers",
        )
        # GradNormStopping first: when it stops the run, the Lipschitz callback then measures the final epoch.
        parser.add_lightning_class_args(GradNormStopping, "stopping")
        parser.add_lightning_class_args(LipschitzCallback, "lipschitz")
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        """Set torch's thread count (`--threads`) before the model and data are built."""
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        threads = apply_threads(cfg.get("threads"))
        cfg["threads"] = threads  # as applied (clamped): config.yaml and results.json say what ran

    # --- the run folder -------------------------------------------------------------------------------------
    def _run_location(self) -> tuple[str, str, str]:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        resumed = resumed_run_dir(cfg.get("ckpt_path")) if self.subcommand == "fit" else None
        if resumed and not cfg.get("run_name"):  # `fit --ckpt_path <run dir>/checkpoints/x.ckpt` continues there
            run_dir = Path(resumed)
            return str(run_dir.parent.parent), run_dir.parent.name, run_dir.name
        experiment = cfg.get("experiment")
        if not experiment:
            config_files = cfg.get("config") or []
            experiment = Path(str(config_files[-1])).stem if config_files else "default"
        run_name = cfg.get("run_name") or os.environ.get("WANDB_RUN_ID")
        if not run_name:
            run_name = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        return cfg.get("save_dir") or "runs", experiment, run_name

    @staticmethod
    def _refuse_earlier_run(run_dir: str) -> None:
        """One run = one folder: never write into a folder that holds an earlier run's record (its metrics.csv,
        config.yaml and results.json would be replaced). The sweep runner moves earlier attempts aside itself."""
        earlier = [name for name in RUN_RECORD_FILES if os.path.isfile(os.path.join(run_dir, name))]
        if earlier:
            raise FileExistsError(
                f"run folder {run_dir} already holds a run ({', '.join(earlier)}); pass another --run_name "
                "(or --experiment/--save_dir) to keep it, or delete the folder to replace it"
            )

    def _check_validation_convention(self) -> None:
        """A model given with --model must read our datamodules' validation loaders: lipschitz_dd's datamodules
        give two (0: the test set, 1: the training set in eval mode), so its validation_step needs a
        `dataloader_idx` argument; Lightning would fail on it only after the first training epoch."""
        import inspect

        from lipschitz_dd.data.base import ArrayDataModule

        model, data = getattr(self, "model", None), getattr(self, "datamodule", None)
        if not isinstance(data, ArrayDataModule) or model is None:
            return
        step = getattr(type(model), "validation_step", None)
        if step is None or step is LightningModule.validation_step:
            return
        parameters = inspect.signature(step).parameters
        if "dataloader_idx" in parameters or any(p.kind is p.VAR_POSITIONAL for p in parameters.values()):
            return
        name = f"{type(model).__module__}.{type(model).__qualname__}"
        raise ValueError(
            f"model {name}: its validation_step(self, batch, batch_idx) takes no dataloader_idx, but "
            f"{type(data).__name__} gives two validation loaders (0: test set, 1: training set); add "
            "`dataloader_idx: int = 0` and log test/loss for loader 0, or subclass lipschitz_dd.models.LipschitzModule"
        )

    def _bounded(self, trainer_cfg: Any) -> bool:
        """Whether something other than max_epochs ends a fit: trainer.max_steps or max_time, an enabled
        GradNormStopping with a target (the `stopping` option or one in trainer.callbacks), or an EarlyStopping."""
        from lightning.pytorch.callbacks import EarlyStopping

        if trainer_cfg.get("max_steps") not in (None, -1) or trainer_cfg.get("max_time") is not None:
            return True
        callbacks = trainer_cfg.get("callbacks") or []
        callbacks = [
            *(callbacks if isinstance(callbacks, list) else [callbacks]),
            self._get(self.config_init, "stopping"),
        ]
        for callback in callbacks:
            if isinstance(callback, EarlyStopping):
                return True
            if isinstance(callback, GradNormStopping) and callback.enabled and callback.target is not None:
                return True
        return False

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        self._check_validation_convention()
        save_dir, experiment, run_name = self._run_location()
        self.run_dir = os.path.join(save_dir, experiment, run_name)
        rank_zero = rank_zero_only.rank == 0  # DDP's other ranks start after rank 0, into its folder
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        resuming = self.subcommand == "fit" and resumed_run_dir(cfg.get("ckpt_path")) is not None
        resuming = resuming and os.path.abspath(resumed_run_dir(cfg.get("ckpt_path"))) == os.path.abspath(self.run_dir)
        if rank_zero and not resuming:
            self._refuse_earlier_run(self.run_dir)
        self.flat_config = flatten_config(cfg)
        self.flat_config.update({"experiment": experiment, "run_name": run_name})
        trainer_cfg = self._get(self.config_init, "trainer", default={})
        accumulate = trainer_cfg.get("accumulate_grad_batches", 1)
        if accumulate is not None and accumulate < 1:  # Lightning itself fails on it deep in its loop
            raise ValueError(f"trainer.accumulate_grad_batches must be >= 1, got {accumulate}")
        if self.subcommand == "fit" and trainer_cfg.get("max_epochs") == 0:  # Lightning skips fit: no row at all
            raise ValueError(
                "trainer.max_epochs=0 trains nothing and records no epoch; to measure the untrained "
                "network, run `lipschitz-dd validate` with the same arguments"
            )
        if self.subcommand == "fit" and trainer_cfg.get("max_epochs") == -1 and not self._bounded(trainer_cfg):
            raise ValueError(
                "trainer.max_epochs=-1 trains until the process is killed: give trainer.max_epochs N, "
                "trainer.max_steps or trainer.max_time, or a stopping rule (--stopping.target T, stopping.enabled)"
            )
        if trainer_cfg.get("logger") in (None, True) and "logger" not in kwargs:
            csv_logger = EpochCSVLogger(save_dir=save_dir, name=experiment, version=run_name, resume=resuming)
            # Open the CSV writer now, while the run folder is still empty: W&B creates <run dir>/wandb when built,
            # and a writer opened later warns "exists and is not empty. Previous log files ... will be deleted".
            if rank_zero:
                _ = csv_logger.experiment
            loggers: list[Any] = [csv_logger]
            if cfg.get("wandb") and os.environ.get("WANDB_MODE") != "disabled":
                display_name = readable_run_name(sweep_params(self.argv)) if sweep_id() else None
                wandb_id = stored_wandb_id(self.run_dir) if resuming else None
                loggers.append(
                    build_wandb_logger(
                        self.run_dir,
                        experiment,
                        run_name,
                        self.flat_config,
                        display_name=display_name,
                        resume_id=wandb_id,
                    )
                )
            kwargs["logger"] = loggers
        self.results_writer = ResultsWriter(run_dir=self.run_dir, config=self.flat_config, resumed=resuming)
        self._throttle_progress_bar(trainer_cfg, kwargs)
        trainer = super().instantiate_trainer(**kwargs)
        savers = [c for c in trainer.callbacks if isinstance(c, _RunConfigSaver)]
        if resuming and savers:  # config.yaml changes with results.json, or not at all (_RunConfigSaver)
            saver, run_dir = savers[0], self.run_dir
            saver.deferred = True
            self.results_writer.before_write = lambda: saver.write(run_dir)
        use_epoch_axis(trainer)  # every row of the run folder on the epoch axis (lipschitz_dd/epoch_axis.py)
        if cfg.get("snapshot", True):  # before ResultsWriter: results.json is the last file a run writes
            trainer.callbacks.append(FunctionSnapshot(run_dir=self.run_dir))
        trainer.callbacks.append(self.results_writer)
        trainer.callbacks.insert(0, _SaveEpochRows())
        if resuming:
            trainer.callbacks.insert(0, _ResumedRows(self.run_dir))
        return trainer

    @staticmethod
    def _throttle_progress_bar(trainer_cfg: Any, kwargs: dict[str, Any]) -> None:
        """Unless bars are off or a progress bar is configured, the bar is lipschitz_dd.progress's: redrawn at most
        every 0.2 s on a terminal, one line per epoch in a file (Lightning's redraws twice per batch)."""
        from lightning.pytorch.callbacks import ProgressBar

        from lipschitz_dd.progress import ThrottledProgressBar

        if trainer_cfg.get("enable_progress_bar") is False or "callbacks" in kwargs:
            return
        callbacks = trainer_cfg.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
        if not any(isinstance(callback, ProgressBar) for callback in callbacks):
            kwargs["callbacks"] = [*callbacks, ThrottledProgressBar.for_stream()]

    def after_fit(self) -> None:
        epoch = self.trainer.current_epoch
        self._say_earlier_record_kept(f"this attempt trained no further than epoch {epoch}")
        results = os.path.join(self.run_dir, RESULTS_FILE)
        self._write_wandb_summary(results)
        final = self._final_metrics(self.run_dir)
        rank_zero_info(
            f"\nRun finished. Results: {results}\n  (metrics per epoch: "
            f"{os.path.join(self.run_dir, METRICS_FILE)}; config: "
            f"{os.path.join(self.run_dir, CONFIG_FILE)})" + final
        )

    def _write_wandb_summary(self, results_path: str) -> None:
        """The run's maxima, final values, epochs and status into the W&B summary (see loggers.run_summary)."""
        import json

        loggers = [lg for lg in self.trainer.loggers if isinstance(lg, ConfigOnlyWandbLogger)]
        if not loggers or not os.path.exists(results_path):
            return
        with open(results_path) as f:
            summary = run_summary(json.load(f))
        for logger in loggers:
            logger.write_summary(summary)

    @staticmethod
    def _final_metrics(run_dir: str) -> str:
        record = read_results(run_dir)
        if record is None:
            return ""
        keys = [TRAIN_LOSS, TEST_LOSS, TEST_ACC, LOWER, AVG, UPPER]
        shown = [f"{k}={record.final[k]:.4g}" for k in keys if k in record.final]
        return f"\n  status: {record.status}; final: " + ", ".join(shown) if shown else ""


def run_training_cli(args: list[str] | None = None) -> LipschitzCLI:
    """Build and run the LightningCLI (used by `main` and by tests)."""
    return LipschitzCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=_RunConfigSaver,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={
            "max_epochs": 100,
            "num_sanity_val_steps": 0,
            "log_every_n_steps": 1,
            "deterministic": "warn",
        },
        auto_configure_optimizers=False,
        parser_kwargs={"exit_on_error": False},  # main() turns a bad argument into one line, not 100 of usage
        args=args,
    )
