"""The console script filters the known upstream notices (issue 21) and throttles its progress bars."""

from __future__ import annotations

import io
import logging
import math
import subprocess
import sys
import warnings
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger

from lipschitz_dd import _lightning_internals as internals
from lipschitz_dd import cli
from lipschitz_dd.loggers import ConfigOnlyWandbLogger
from lipschitz_dd.progress import TERMINAL_INTERVAL, ThrottledProgressBar

ROOT = Path(__file__).resolve().parents[1]
TIP = "💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]"
LEAF = "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec) and treespec.is_leaf()`"


def test_quiet_upstream_notices_drops_only_the_known_messages():
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        before = {name: list(logging.getLogger(name).filters) for name in cli._RANK_ZERO_LOGGERS}
        try:
            cli.quiet_upstream_notices()
            warnings.warn(LEAF, FutureWarning, stacklevel=1)
            warnings.warn("some other FutureWarning", FutureWarning, stacklevel=1)
            tip = logging.LogRecord(logger.name, logging.INFO, __file__, 1, TIP, None, None)
            other = logging.LogRecord(logger.name, logging.INFO, __file__, 1, "`Trainer.fit` stopped", None, None)
            assert not logger.filter(tip)
            assert logger.filter(other)
        finally:
            for name, filters in before.items():
                logging.getLogger(name).filters[:] = filters
    assert [str(w.message) for w in caught] == ["some other FutureWarning"]


def test_importing_the_package_installs_no_filter():
    """The filters are the console script's: importing lipschitz_dd (a user's own script) changes nothing. In a
    fresh process: other tests of this session run the CLI in-process, which installs them."""
    script = (
        "import logging, warnings\n"
        "before = list(warnings.filters)\n"
        "import lipschitz_dd, lipschitz_dd.callbacks, lipschitz_dd.cli as cli\n"
        "assert not any(cli._not_a_tip is f for n in cli._RANK_ZERO_LOGGERS for f in logging.getLogger(n).filters)\n"
        "assert not any('LeafSpec' in str(f[1]) for f in warnings.filters if f not in before)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_fit_prints_no_tip_and_no_pytree_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    tiny = str(ROOT / "configs" / "test_tiny.yaml")
    caplog.set_level(logging.INFO)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cli.main(["fit", "-c", tiny, "--trainer.max_epochs=1", "--save_dir", str(tmp_path)]) == 0
    for name in cli._RANK_ZERO_LOGGERS:  # leave the test process as it was
        logging.getLogger(name).removeFilter(cli._not_a_tip)
    assert any("Trainer.fit` stopped" in r.getMessage() for r in caplog.records)  # other messages still come
    assert not any("Tip:" in r.getMessage() for r in caplog.records)
    assert not any("LeafSpec" in str(w.message) for w in caught)


def test_wandb_logger_does_not_pass_anonymous(tmp_path):
    """Lightning's WandbLogger passes anonymous=None to wandb.init (wandb warns on it); ours drops it unless asked."""
    assert "anonymous" in internals.wandb_init_kwargs(WandbLogger(save_dir=str(tmp_path), offline=True))
    ours = ConfigOnlyWandbLogger(save_dir=str(tmp_path), offline=True)
    assert "anonymous" not in internals.wandb_init_kwargs(ours)
    asked = ConfigOnlyWandbLogger(save_dir=str(tmp_path), offline=True, anonymous=True)
    assert internals.wandb_init_kwargs(asked)["anonymous"] == "allow"


class _Bar:
    def __init__(self, total: int) -> None:
        self.total = total


def test_bar_for_a_file_draws_each_epoch_end_only():
    bar = ThrottledProgressBar.for_stream(io.StringIO())
    assert bar.interval == math.inf and not bar.validation
    assert [bar._due(n, 40) for n in (1, 2, 39, 40)] == [True, False, False, True]  # the first draw, the end


def test_bar_on_a_terminal_is_throttled(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    bar = ThrottledProgressBar.for_stream(Terminal())
    assert bar.interval == TERMINAL_INTERVAL and bar.validation
    now = [100.0]
    monkeypatch.setattr("lipschitz_dd.progress.time.monotonic", lambda: now[0])
    assert bar._due(1, 40)
    now[0] += TERMINAL_INTERVAL / 2
    assert not bar._due(2, 40)
    assert bar._due(40, 40)  # an epoch's last batch always
    now[0] += TERMINAL_INTERVAL
    assert bar._due(3, 40)


def test_bars_written_to_a_file_stay_small(tmp_path, monkeypatch, capfd):
    """A fit whose stderr is a file (a sweep's log) writes about one bar line per epoch, no validation bars."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    tiny = str(ROOT / "configs" / "test_tiny.yaml")
    args = ["fit", "-c", tiny, "--trainer.max_epochs=4", "--trainer.enable_progress_bar=true"]
    assert cli.main([*args, "--save_dir", str(tmp_path)]) == 0
    err = capfd.readouterr().err
    frames = err.replace("\r", "\n").splitlines()
    assert not any("Validation" in frame for frame in frames)
    assert sum("Epoch 3:" in frame for frame in frames) <= 4  # Lightning's bar: 2 per batch, 4 batches
