"""`lipschitz-dd reproduce`: list the study's findings, or run one and write its figures and summary.md.

lipschitz-dd reproduce                                # the catalogue: name, claim, cost here, data it needs
lipschitz-dd reproduce --markdown                     # the catalogue table of docs/reproduction.md
lipschitz-dd reproduce double_descent --quick         # tens of seconds: a smoke test / first look
lipschitz-dd reproduce double_descent                 # the CPU-scale result (docs/reproduction.md)
lipschitz-dd reproduce double_descent --scale full    # the study's scale (a GPU machine)
lipschitz-dd reproduce pairwise --runs DIR            # analyse run folders made elsewhere (no runs)

Exit status: 0 when every run finished and the analysis ran; 1 when a run failed, the analysis raised (summary.md
says which), the finding needs something missing (a feature, or a data set on disk: one line, nothing started),
or a run folder names a class that is not the project's own; 130 when interrupted.
"""

from __future__ import annotations

import sys
from argparse import ArgumentParser

from lipschitz_dd.reproduce.registry import SCALES, all_findings, get_finding


def make_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="lipschitz-dd reproduce", description="Reproduce one finding of the study.")
    parser.add_argument("name", nargs="?", help="the finding (omit to list them all)")
    parser.add_argument("--quick", action="store_true", help="the tiny version (same as --scale quick)")
    parser.add_argument("--scale", choices=SCALES, default="cpu", help="quick, cpu (default) or full")
    parser.add_argument("--out", default="reproduce_out", help="output folder (default reproduce_out)")
    parser.add_argument("--workers", type=int, default=1, help="runs in parallel (default 1)")
    parser.add_argument(
        "--runs", default=None, help="analyse the run folders below this folder (e.g. a W&B agent's) without running"
    )
    parser.add_argument(
        "--markdown",
        action="store_true",
        help="print the catalogue table (section, finding, setting, seeds, verdict, cpu time) as docs/reproduction.md has it",
    )
    parser.add_argument("--retry_failed", action="store_true", help="run again the runs that failed in an earlier call")
    parser.add_argument(
        "--allow_class",
        action="append",
        default=[],
        metavar="MODULE.CLASS",
        help="a model or data class of your own that run folders (--runs) may build from their config.yaml; "
        "only lipschitz_dd's own classes are built otherwise (repeatable)",
    )
    return parser


def listing() -> str:
    """Per finding: name and claim, then its estimated time here at quick and cpu scale (or what it needs), and
    the data set it reads from disk, if any."""
    rows = []
    for finding in all_findings():
        cost = (
            f"needs: {finding.needs}"
            if finding.needs
            else f"quick {finding.cost.get('quick', '?')}; cpu {finding.cost.get('cpu', '?')}"
        )
        if finding.data:
            cost += f"; data on disk: {finding.data}"
        rows.append(f"{finding.name:24} {finding.claim}\n{'':24} [{cost}]")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if args.markdown:
        from lipschitz_dd.reproduce.catalogue import markdown

        print(markdown())
        return 0
    if args.name is None:
        print(listing())
        return 0
    from lipschitz_dd.reproduce.checkpoints import allow_class
    from lipschitz_dd.reproduce.run import NotAvailable, analyse_folder, run_finding

    scale = "quick" if args.quick else args.scale
    try:
        for class_path in args.allow_class:
            allow_class(class_path)
        finding = get_finding(args.name)
        if args.runs is not None:
            outcome = analyse_folder(finding, scale, args.runs, args.out)
        else:
            outcome = run_finding(finding, scale, args.out, workers=args.workers, retry_failed=args.retry_failed)
    except (KeyError, NotAvailable, ValueError, FileNotFoundError) as error:
        message = error.args[0] if isinstance(error, KeyError) else str(error)
        sys.stderr.write(f"lipschitz-dd reproduce: {message}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("lipschitz-dd reproduce: interrupted; run the same command again to resume\n")
        return 130
    print(f"summary: {outcome.summary}")
    print(outcome.summary.read_text())
    if not outcome.ok:
        sys.stderr.write(f"lipschitz-dd reproduce: {outcome.problems()} (summary: {outcome.summary})\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
