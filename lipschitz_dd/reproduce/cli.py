"""`lipschitz-dd reproduce`: list the study's findings, or run one and write its figures and summary.md.

lipschitz-dd reproduce                                # the catalogue: name, claim, cost here
lipschitz-dd reproduce double_descent --quick         # tens of seconds: a smoke test / first look
lipschitz-dd reproduce double_descent                 # the CPU-scale result (docs/reproduction.md)
lipschitz-dd reproduce double_descent --scale full    # the study's scale (a GPU machine)
"""

from __future__ import annotations

import sys
from argparse import ArgumentParser

from lipschitz_dd.reproduce.registry import SCALES, findings, get_finding


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
    return parser


def listing() -> str:
    """Per finding: name and claim, then its estimated time here at quick and cpu scale (or what it needs)."""
    rows = []
    for finding in findings():
        cost = (
            f"needs: {finding.needs}"
            if finding.needs
            else f"quick {finding.cost.get('quick', '?')}; cpu {finding.cost.get('cpu', '?')}"
        )
        rows.append(f"{finding.name:24} {finding.claim}\n{'':24} [{cost}]")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if args.name is None:
        print(listing())
        return 0
    from lipschitz_dd.reproduce.run import NotAvailable, analyse_folder, run_finding

    scale = "quick" if args.quick else args.scale
    try:
        finding = get_finding(args.name)
        if args.runs is not None:
            summary = analyse_folder(finding, scale, args.runs, args.out)
        else:
            summary = run_finding(finding, scale, args.out, workers=args.workers)
    except (KeyError, NotAvailable, ValueError, FileNotFoundError) as error:
        message = error.args[0] if isinstance(error, KeyError) else str(error)
        sys.stderr.write(f"lipschitz-dd reproduce: {message}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("lipschitz-dd reproduce: interrupted; run the same command again to resume\n")
        return 130
    print(f"summary: {summary}")
    print(summary.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
