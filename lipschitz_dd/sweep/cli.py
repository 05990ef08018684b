"""`lipschitz-dd sweep ...`: run a sweep file locally (`run`, the default subcommand) or list progress.

    lipschitz-dd sweep x [--workers N] [--count M] [--retry_failed] [--out sweeps_out]
    lipschitz-dd sweep path/to/x.yaml ...

The sweep is a file path or the name of a shipped sweep (`lipschitz-dd configs` lists them).
    lipschitz-dd sweep status [--out sweeps_out]

Exit status: 0 when every run started this time finished, 1 when some failed (the sweep still went on),
2 for a bad sweep file or options (nothing runs), 130 after Ctrl-C.
"""

from __future__ import annotations

import shlex
import signal
import sys
from pathlib import Path

from jsonargparse import ActionYesNo, ArgumentParser

from lipschitz_dd.shipped import resolve

from .runner import run_sweep
from .table import format_progress, format_runs, sweep_progress

SUBCOMMANDS = ("run", "status")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="lipschitz-dd sweep", description="Run W&B sweep files locally, no server.")
    run = ArgumentParser(description="Run or resume a sweep file (W&B format) with N worker processes.")
    run.add_argument("sweep_file", type=str, help="a sweep YAML file, or a shipped sweep's name (e.g. fcn_mnist1d_dd)")
    run.add_argument(
        "--workers",
        type=int,
        default=1,
        help="runs in parallel, at most cores // threads (each run uses its own "
        "thread count: the sweep's `threads` parameter, default 1)",
    )
    run.add_argument("--count", type=int | None, default=None, help="start at most this many runs now")
    run.add_argument("--retry_failed", action=ActionYesNo, default=False, help="queue failed runs again")
    run.add_argument("--out", type=str, default="sweeps_out", help="parent of the sweep folder")
    run.add_argument("--progress", action=ActionYesNo, default=True, help="progress bar (--no_progress: none)")
    status = ArgumentParser(description="List the sweeps under --out and their progress.")
    status.add_argument("--out", type=str, default="sweeps_out", help="folder holding sweep folders")
    subcommands = parser.add_subcommands()
    subcommands.add_subcommand("run", run)
    subcommands.add_subcommand("status", status)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse argv (without the leading `sweep`), run the subcommand, return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help"):
        argv.insert(0, "run")  # `lipschitz-dd sweep x.yaml` means `run x.yaml`
    args = build_parser().parse_args(argv)
    if args.subcommand == "status":
        return _status(args.status.out)
    return _run(args.run)


def _run(options) -> int:
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)  # `kill` stops as cleanly as Ctrl-C
    try:
        sweep_file = resolve(options.sweep_file, "sweeps")
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        result = run_sweep(
            sweep_file,
            out=options.out,
            workers=options.workers,
            count=options.count,
            retry_failed=options.retry_failed,
            progress=options.progress,
        )
    except ValueError as err:  # bad sweep file, bad option, sweep busy: one line, nothing ran
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # outside the scheduling loop (which stops its runs itself); runs die with us
        print(
            "interrupted: the sweep's runs were stopped (finished runs are kept); rerun the same command to resume",
            file=sys.stderr,
        )
        return 130
    print(format_runs(result.runs))
    print(f"\nsweep {result.sweep.name} (id {result.sweep.id}): state in {result.folder / 'sweep.db'}")
    print(f"upload to W&B later with: {wandb_sync_command(result.folder)}")
    if result.skipped:
        print(
            f"{len(result.skipped)} run(s) not started: an earlier attempt could not be moved aside (see above); "
            "fix that and rerun the same command"
        )
    if result.interrupted:
        return 130
    return 1 if result.failed_this_time() or result.skipped else 0


def wandb_sync_command(folder: str | Path) -> str:
    """The shell command that uploads every offline W&B run of a sweep folder: the folder quoted for a POSIX shell
    (spaces, quotes), the wildcards left unquoted so that the shell expands them (`wandb sync` does not)."""
    return f"wandb sync {shlex.quote(str(Path(folder) / 'runs'))}/*/*/wandb/offline-run-*"


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def _status(out: str) -> int:
    progress = sweep_progress(out)
    if not progress:
        print(f"no sweeps under {out}")
        return 0
    print(format_progress(progress))
    return 0


if __name__ == "__main__":
    sys.exit(main())
