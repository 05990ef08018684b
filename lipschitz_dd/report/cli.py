"""``lipschitz-dd report <runs or sweep folder> [--out DIR] [--x KEY] [--hue KEY] ...``"""

from __future__ import annotations

import sys

from jsonargparse import ArgumentParser

from lipschitz_dd.report.build import build_report
from lipschitz_dd.report.figures import DPI, FORMATS
from lipschitz_dd.report.records import ReportInputError
from lipschitz_dd.report.tables import DEFAULT_SEED_KEY


def make_parser() -> ArgumentParser:
    """The report's command-line parser (jsonargparse)."""
    parser = ArgumentParser(
        prog="lipschitz-dd report",
        description="Read the run folders (results.json, metrics.csv) below a runs or sweep folder and write "
        "double-descent, bounds-vs-epoch, heat-map and bias-variance figures (PNG; --format for PDF/SVG) "
        "with CSV and Markdown tables, and report.html showing all of them on one page.",
    )
    parser.add_argument(
        "folder", type=str | None, nargs="?", default=None, help="runs or sweep folder (searched recursively for runs)"
    )
    parser.add_argument(
        "--wandb",
        type=str | None,
        default=None,
        help="read the runs of ENTITY/PROJECT or ENTITY/PROJECT/SWEEP_ID through the W&B API (network and login "
        "needed) instead of a folder; --out defaults to ./wandb_report",
    )
    parser.add_argument("--out", type=str | None, default=None, help="output folder (default: <folder>/report)")
    parser.add_argument("--x", type=str, default="model.width", help="config key on the x axis")
    parser.add_argument(
        "--hue", type=str | None, default="data.label_noise", help="config key for colours / heat-map rows (null: none)"
    )
    parser.add_argument(
        "--seed_key", type=str, default=DEFAULT_SEED_KEY, help="config key of the training seed (averaged over)"
    )
    parser.add_argument(
        "--power_law_from_epoch", type=int, default=10, help="first epoch of the power-law fit of the bounds"
    )
    parser.add_argument(
        "--format",
        type=str,
        default="png",
        help="figure file formats, comma-separated, among png, pdf, svg (e.g. png,pdf)",
    )
    parser.add_argument("--dpi", type=int, default=DPI, help="resolution of PNG figures (dots per inch)")
    parser.add_argument(
        "--interpolation_train_acc",
        type=float,
        default=0.99,
        help="train accuracy that marks interpolation when no parameter count is recorded",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    """Parse ``argv`` (default: sys.argv[1:]), build the report, print where it went and the notes.
    A missing or empty folder exits with a one-line error (SystemExit, status 1)."""
    args = make_parser().parse_args(argv)
    if (args.folder is None) == (args.wandb is None):
        raise SystemExit("lipschitz-dd report: error: give a runs or sweep folder, or --wandb ENTITY/PROJECT[/SWEEP]")
    formats = tuple(f.strip().lower().lstrip(".") for f in args.format.split(",") if f.strip())
    if not formats or any(f not in FORMATS for f in formats) or args.dpi <= 0:
        raise SystemExit(
            f"lipschitz-dd report: error: --format takes {', '.join(FORMATS)} (comma-separated), got "
            f"{args.format!r}; --dpi must be positive, got {args.dpi}"
        )
    try:
        records = None
        if args.wandb is not None:
            from lipschitz_dd.report.wandb_runs import load_wandb_api_runs

            records = load_wandb_api_runs(args.wandb)
        summary = build_report(
            args.folder or f"wandb:{args.wandb}",
            records=records,
            out=args.out or (None if args.folder else "wandb_report"),
            x=args.x,
            hue=args.hue,
            seed_key=args.seed_key,
            power_law_from_epoch=args.power_law_from_epoch,
            interpolation_train_acc=args.interpolation_train_acc,
            formats=formats,
            dpi=args.dpi,
        )
    except ReportInputError as error:
        raise SystemExit(f"lipschitz-dd report: error: {error}") from None
    statuses = ", ".join(f"{n} {status}" for status, n in sorted(summary.statuses.items()))
    print(f"report of {summary.runs} runs ({statuses}) written to {summary.out}")
    for path in summary.files:
        print(f"  {path.name}")
    for note in summary.notes:
        print(f"note: {note}")


if __name__ == "__main__":
    main(sys.argv[1:])
