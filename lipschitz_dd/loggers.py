"""Loggers for one run folder: a CSV with one row per epoch, and W&B (online if configured, else offline)."""

from __future__ import annotations

import configparser
import csv
import io
import netrc
import os
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from lightning.pytorch.core.saving import save_hparams_to_yaml
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities import rank_zero_only

from lipschitz_dd._lightning_internals import wandb_init_kwargs
from lipschitz_dd.metric_names import AVG, LOWER, TEST_ACC, TEST_LOSS, TRAIN_ACC, TRAIN_LOSS, UPPER
from lipschitz_dd.run_folder import write_atomic


class _RowMergingWriter(ExperimentWriter):
    """Merges consecutive `log_metrics` calls with the same step into one CSV row, and never loses metrics.csv.

    Lightning flushes metrics logged in different hooks separately (e.g. the module's and a callback's epoch-0
    values); the report wants one row per epoch. The row of the current step stays in memory until a row with
    another step arrives or `flush()` is called, so at most one row is ever pending.

    metrics.csv is never removed (Lightning's writer deletes it when it opens, which lost a resumed run's whole
    history when the process died before its first save). The first save and every save that adds a column
    rewrite the whole file through a temporary file and `os.replace`; other saves append their rows in one
    write. hparams.yaml is written through a temporary file too.
    """

    def __init__(self, log_dir: str, resume: bool = False) -> None:
        path = os.path.join(log_dir, self.NAME_METRICS_FILE)
        # The rows the first save writes before the new ones: a resumed run's earlier rows (as written, every
        # cell a string), none for a new run (its first save replaces any file already there).
        self._earlier: list[dict[str, Any]] | None = _read_raw_rows(path) if resume else []
        super().__init__(log_dir)
        self.metrics_keys = sorted({key for row in self._earlier for key in row})
        self._pending: dict[str, Any] | None = None
        self._drop_through: int | None = None
        self._truncate: tuple[int, int, tuple[str, ...]] | None = None
        #: step of the last row in the file (or in the earlier rows still to write); a row logged later for the
        #: same step is merged into it (e.g. values logged at the end of fit into the last epoch's row)
        self._tail_step: int | None = _row_step(self._earlier[-1]) if self._earlier else None
        self._fit_ending = False
        #: keys logged once training is over (`begin_fit_end`): values of the final weights, not of an epoch
        self.fit_end_keys: set[str] = set()

    def _check_log_dir_exists(self) -> None:
        """Lightning's check removes metrics.csv; here the file stays until a complete new one replaces it."""

    def keep_rows_through(
        self, step: int, drop_keys: tuple[str, ...] | list[str] = (), drop_at: int | None = None
    ) -> None:
        """Resume at `step`: the earlier run's rows after it are dropped (the checkpoint does not hold them), so
        are `drop_keys` from the row of `drop_at` (default `step`: where the earlier fit ended, its end-of-fit
        values, see `fit_end_keys`), and rows logged now for steps up to `step` before training starts (e.g. an
        epoch-0 row measured on the loaded weights) are ignored."""
        drop = (step if drop_at is None else drop_at, tuple(drop_keys))
        if self._earlier is not None:
            self._earlier = _kept_rows(self._earlier, step, *drop)
            self._tail_step = _row_step(self._earlier[-1]) if self._earlier else None
        else:  # already written: the next save rewrites the file without them
            self._truncate = (step, *drop)
        self._drop_through = step

    def start_training(self) -> None:
        """Training runs (an epoch starts, or fit ends): every row logged from now on is kept."""
        self._drop_through = None

    def begin_fit_end(self) -> None:
        """Training is over: what is logged from now on goes into the last row and is listed in `fit_end_keys`."""
        self.start_training()
        self._fit_ending = True

    def log_metrics(self, metrics_dict: dict[str, float], step: int | None = None) -> None:
        values = {k: (v.item() if hasattr(v, "item") else v) for k, v in metrics_dict.items()}
        if step is None:
            step = len(self.metrics)
        if self._drop_through is not None and step <= self._drop_through:
            return
        if self._fit_ending:
            self.fit_end_keys.update(values)
        if self._pending is not None and self._pending["step"] == step:
            self._pending.update(values)
            return
        if self._pending is not None:
            self.metrics.append(self._pending)
        self._pending = {**values, "step": step}

    def log_hparams(self, params: dict[str, Any]) -> None:
        self.hparams.update(params)
        path = os.path.join(self.log_dir, self.NAME_HPARAMS_FILE)
        write_atomic(path, lambda tmp: save_hparams_to_yaml(tmp, self.hparams), suffix=".yaml")

    def save(self) -> None:
        """Write the rows logged since the last save (nothing before the first new row: a resumed run's file
        stays as it is until then)."""
        if not self.metrics:
            return
        new_keys = self._record_new_keys()
        exists = os.path.isfile(self.metrics_file_path)
        merge = self._tail_step is not None and _row_step(self.metrics[0]) == self._tail_step
        if self._earlier is not None or new_keys or self._truncate is not None or merge or not exists:
            if self._earlier is not None:
                rows = list(self._earlier)
            else:
                rows = _read_raw_rows(self.metrics_file_path)
                if self._truncate is not None:
                    rows = _kept_rows(rows, *self._truncate)
            new = list(self.metrics)
            if rows and new and _row_step(rows[-1]) == _row_step(new[0]):
                rows[-1] = {**rows[-1], **new.pop(0)}
            self._rewrite([*rows, *new])
            self._earlier, self._truncate = None, None
        else:
            try:
                with open(self.metrics_file_path, "a", newline="") as f:
                    f.write(self._csv_text(self.metrics, header=False))  # one write: a whole row block or none
            except OSError as error:  # disk full: name the file
                if error.errno is None or error.filename is not None:
                    raise
                raise OSError(error.errno, error.strerror, self.metrics_file_path) from error
        self._tail_step = _row_step(self.metrics[-1])
        self.metrics = []

    def _csv_text(self, rows: list[dict[str, Any]], header: bool) -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.metrics_keys)
        if header:
            writer.writeheader()
        writer.writerows(rows)
        return buffer.getvalue()

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        text = self._csv_text(rows, header=True)

        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                f.write(text)

        write_atomic(self.metrics_file_path, write, suffix=".csv")

    def flush(self) -> None:
        """Write every row, the pending one included."""
        if self._pending is not None:
            self.metrics.append(self._pending)
            self._pending = None
        self.save()


def _row_step(row: Mapping[str, Any]) -> int:
    return int(float(row.get("step", 0)))


def _kept_rows(rows: list[dict[str, Any]], step: int, drop_at: int, drop: tuple[str, ...]) -> list[dict[str, Any]]:
    """The rows up to `step`, without the keys `drop` in the row of `drop_at`."""
    kept = [row for row in rows if _row_step(row) <= step]
    return [{k: v for k, v in row.items() if k not in drop} if _row_step(row) == drop_at else row for row in kept]


def _read_raw_rows(path: str) -> list[dict[str, str]]:
    """The rows of a metrics.csv as {column: cell text} without empty cells; [] when there is no file."""
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k and v not in ("", None)} for row in csv.DictReader(f)]


class EpochCSVLogger(CSVLogger):
    """`CSVLogger` writing `<save_dir>/<name>/<version>/metrics.csv` with one row per logged step.

    resume=True keeps the rows already in the folder's metrics.csv (for `fit --ckpt_path`), see keep_rows_through.
    With an `epoch_clock` (set by `lipschitz_dd.epoch_axis.use_epoch_axis`) the step of every row is the
    epoch running when it is logged, whatever step the caller passed (see lipschitz_dd/epoch_axis.py).
    """

    epoch_clock: Callable[[], int] | None = None

    def __init__(self, *args: Any, resume: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._resume = resume

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        super().log_metrics(metrics, self.epoch_clock() if self.epoch_clock is not None else step)

    @property
    def experiment(self) -> _RowMergingWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _RowMergingWriter(log_dir=self.log_dir, resume=self._resume)
        return self._experiment

    def keep_rows_through(
        self, step: int, drop_keys: tuple[str, ...] | list[str] = (), drop_at: int | None = None
    ) -> None:
        self.experiment.keep_rows_through(step, drop_keys, drop_at)

    def start_training(self) -> None:
        self.experiment.start_training()

    def begin_fit_end(self) -> None:
        self.experiment.begin_fit_end()

    @property
    def fit_end_keys(self) -> set[str]:
        return self._experiment.fit_end_keys if self._experiment is not None else set()

    def flush(self) -> None:
        self.experiment.flush()

    def finalize(self, status: str) -> None:
        if self._experiment is not None:
            self.flush()
        super().finalize(status)


class EpochWandbLogger(WandbLogger):
    """`WandbLogger` on the epoch axis: every logged key is plotted against `epoch` (`define_metric("*",
    step_metric="epoch")`), each row carries `epoch` = its step, and consecutive `log_metrics` calls with the same
    step make one W&B row (the module's and the callback's epoch-0 values, the rows of one epoch), sent when a row
    with another step arrives or at `finalize`. With an `epoch_clock` (see `EpochCSVLogger`) the step is the
    running epoch, whatever step the caller passed."""

    epoch_clock: Callable[[], int] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        init_kwargs = wandb_init_kwargs(self)
        if init_kwargs.get("anonymous", "unset") is None:  # not asked for: no deprecation warning from wandb
            del init_kwargs["anonymous"]
        self._pending_row: tuple[int, dict[str, Any]] | None = None
        self._epoch_axis_defined = False

    @property
    def experiment(self) -> Any:
        run = super().experiment
        if not self._epoch_axis_defined and callable(getattr(run, "define_metric", None)):
            run.define_metric("epoch")
            run.define_metric("*", step_metric="epoch", step_sync=True)
            self._epoch_axis_defined = True
        return run

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        step = self.epoch_clock() if self.epoch_clock is not None else step
        if step is None:
            super().log_metrics(metrics)
            return
        if self._pending_row is not None and self._pending_row[0] != step:
            self._send_row()
        if self._pending_row is None:
            self._pending_row = (step, {})
        self._pending_row[1].update(metrics)

    def _send_row(self) -> None:
        if self._pending_row is not None:
            step, metrics = self._pending_row
            self._pending_row = None
            super().log_metrics({**metrics, "epoch": step}, step=step)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self._send_row()
        super().finalize(status)


def _wandb_host() -> str:
    """The W&B host runs would log to: WANDB_BASE_URL, else `base_url` in wandb's settings files (the project's
    ./wandb/settings, then WANDB_CONFIG_DIR/settings or ~/.config/wandb/settings), else api.wandb.ai."""
    url = os.environ.get("WANDB_BASE_URL")
    if not url:
        config_dir = os.environ.get("WANDB_CONFIG_DIR") or os.path.join(os.path.expanduser("~"), ".config", "wandb")
        for path in (os.path.join("wandb", "settings"), os.path.join(config_dir, "settings")):
            parser = configparser.ConfigParser()
            try:
                parser.read(path)
            except configparser.Error:
                continue
            if parser.has_option("default", "base_url"):
                url = parser.get("default", "base_url")
                break
    return urllib.parse.urlparse(url or "https://api.wandb.ai").hostname or "api.wandb.ai"


def wandb_is_configured() -> bool:
    """True when W&B would log online: WANDB_MODE does not say offline/disabled, and credentials exist for the
    host W&B logs to (WANDB_API_KEY, or a ~/.netrc / $NETRC entry for WANDB_BASE_URL's host or the host in wandb's
    settings files, so self-hosted servers count). WANDB_MODE=online always counts as configured (wandb then asks
    or fails itself). Reads files only: no network call and no wandb service (`wandb.login` starts one, which
    could stall a run's start-up)."""
    mode = os.environ.get("WANDB_MODE")
    if mode in ("offline", "disabled", "dryrun"):
        return False
    if mode == "online" or os.environ.get("WANDB_API_KEY"):
        return True
    path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        entry = netrc.netrc(path).authenticators(_wandb_host())
    except (OSError, netrc.NetrcParseError):  # no netrc, or a broken one: log offline rather than fail the run
        return False
    return bool(entry and entry[2])


# How a swept parameter appears in a run's display name, e.g. {model.width: 64, data.label_noise: 0.15,
# seed_everything: 0} -> "w64-noise0.15-s0". Parameters not listed here use their last dotted part.
NAME_ABBREVIATIONS = {
    "model.width": "w",
    "model.depth": "d",
    "model.loss": "",
    "model.optimizer": "",
    "model.lr": "lr",
    "data.label_noise": "noise",
    "data.train_subset": "n",
    "data.num_train": "n",
    "seed_everything": "s",
}
# Swept keys that say how long or where a run goes rather than what it is: left out of the display name.
_NOT_IN_NAME = (
    "trainer.",
    "lipschitz.",
    "stopping.",
    "config",
    "save_dir",
    "experiment",
    "run_name",
    "ckpt_path",
    "wandb",
    "snapshot",
    "threads",
    "print_config",
)


def readable_run_name(params: dict[str, Any]) -> str:
    """A display name for a sweep's run from its parameters, in their order: "w64-noise0.15-s0"; "" if none."""
    parts = []
    for key, value in params.items():
        key = key.replace(".init_args.", ".")
        if key.startswith(_NOT_IN_NAME):
            continue
        label = NAME_ABBREVIATIONS.get(key, key.rsplit(".", 1)[-1] + "=")
        parts.append(f"{label}{value}")
    return "-".join(parts)


def sweep_params(argv: list[str]) -> dict[str, Any]:
    """The run's parameters as a sweep gives them: `wandb agent`'s parameter file (WANDB_SWEEP_PARAM_PATH, values
    only), else the `--key=value` arguments on the command line (what `${args}` expands to)."""
    import yaml

    path = os.environ.get("WANDB_SWEEP_PARAM_PATH")
    if path and os.path.isfile(path):
        with open(path) as f:
            raw = yaml.safe_load(f) or {}
        return {k: v.get("value") if isinstance(v, dict) else v for k, v in raw.items() if not k.startswith("_")}
    params: dict[str, Any] = {}
    for arg in argv:
        if arg.startswith("--") and "=" in arg:
            key, value = arg[2:].split("=", 1)
            params[key] = value
    return params


def sweep_id() -> str | None:
    """The id of the sweep this run belongs to: the local runner's (LIPSCHITZ_DD_SWEEP_ID) or wandb agent's."""
    return os.environ.get("LIPSCHITZ_DD_SWEEP_ID") or os.environ.get("WANDB_SWEEP_ID") or None


# The summary a dashboard table wants, from a run's results.json: {"max/<key>": ...} for these keys.
SUMMARY_MAX_KEYS = (LOWER, AVG, UPPER, TEST_LOSS)
SUMMARY_FINAL_KEYS = (
    TRAIN_LOSS,
    TRAIN_ACC,
    TEST_LOSS,
    TEST_ACC,
    LOWER,
    AVG,
    UPPER,
)


def run_summary(record: dict[str, Any]) -> dict[str, Any]:
    """W&B summary entries of a finished run: `max/<metric>` of the bounds and the test loss over the run's rows,
    `final/<metric>` (the last row's values), `epochs` and `status`."""
    summary: dict[str, Any] = {"epochs": record.get("epochs"), "status": record.get("status")}
    maxima, final = record.get("max") or {}, record.get("final") or {}
    summary.update({f"max/{k}": maxima[k] for k in SUMMARY_MAX_KEYS if k in maxima})
    summary.update({f"final/{k}": final[k] for k in SUMMARY_FINAL_KEYS if k in final})
    return {k: v for k, v in summary.items() if v is not None}


def stored_wandb_id(run_dir: str) -> str | None:
    """The W&B run id recorded in a run folder (`<run_dir>/wandb/[offline-]run-<time>-<id>`), the latest one."""
    folder = os.path.join(run_dir, "wandb")
    if not os.path.isdir(folder):
        return None
    runs = sorted(
        name for name in os.listdir(folder) if name.startswith(("run-", "offline-run-")) and name.count("-") >= 2
    )
    return runs[-1].rsplit("-", 1)[-1] if runs else None


def build_wandb_logger(
    run_dir: str,
    experiment: str,
    run_name: str,
    config: dict[str, Any],
    *,
    display_name: str | None = None,
    resume_id: str | None = None,
):
    """A `WandbLogger` writing into `<run_dir>/wandb`, offline (no prompt, no network) unless W&B is configured.

    Inside a sweep (local runner or `wandb agent`) the group is the sweep (WANDB_RUN_GROUP, else "sweep-<id>"),
    the tags come from WANDB_TAGS, and `display_name` (see readable_run_name) names the run in the dashboard.
    resume_id continues that W&B run (resume="allow"), for `fit --ckpt_path`.
    """
    offline = not wandb_is_configured()
    if offline:
        os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    tags = [t for t in os.environ.get("WANDB_TAGS", "").split(",") if t]
    sweep = sweep_id()
    group = os.environ.get("WANDB_RUN_GROUP") or (f"sweep-{sweep}" if sweep else experiment)
    extra: dict[str, Any] = {"resume": "allow"} if resume_id else {}
    return ConfigOnlyWandbLogger(
        save_dir=run_dir,
        project=os.environ.get("WANDB_PROJECT", "lipschitz_dd"),
        name=display_name or run_name,
        id=resume_id or os.environ.get("WANDB_RUN_ID") or None,
        group=group,
        tags=tags or None,
        offline=offline,
        config={**config, **({"sweep_id": sweep} if sweep else {})},
        **extra,
    )


class ConfigOnlyWandbLogger(EpochWandbLogger):
    """The epoch-axis WandbLogger whose run config is only the dotted CLI config given at construction
    ("model.width", "data.label_noise", ...): Lightning's automatic `log_hyperparams` (the model's and
    datamodule's unprefixed hyperparameters: "width", "label_noise", ...) would duplicate every entry.
    A resumed run ignores rows for steps the checkpoint already covers (keep_rows_through)."""

    _drop_through: int | None = None

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        return None

    def keep_rows_through(self, step: int) -> None:
        self._drop_through = step

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        effective = self.epoch_clock() if self.epoch_clock is not None else step
        if self._drop_through is not None and effective is not None and effective <= self._drop_through:
            return
        super().log_metrics(metrics, step)

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Put entries into the W&B run's summary (the dashboard's run table)."""
        if self._experiment is not None and summary:
            self.experiment.summary.update(summary)
