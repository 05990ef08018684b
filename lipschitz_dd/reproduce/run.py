"""Run one finding: write its scaled sweep file, run it with the ordinary sweep runner, analyse the run folders.

Folder of `lipschitz-dd reproduce NAME --out OUT` at scale S:
    OUT/NAME/S/<sweep>.yaml          the shipped sweep with the scale's parameters (the file the runner runs)
    OUT/NAME/S/<sweep>/              the sweep runner's folder (sweep.db, runs/, logs/): re-running resumes
    OUT/NAME/S/summary.md            the numbers that test the claim, beside the study's
    OUT/NAME/S/*.png                 the finding's figures
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from lipschitz_dd.reproduce.registry import SCALES, Analysis, Finding
from lipschitz_dd.shipped import resolve


class NotAvailable(ValueError):
    """The finding needs a feature that does not exist yet (one line)."""


def scaled_sweep(finding: Finding, scale: str) -> dict[str, Any]:
    """The finding's shipped sweep file as a dict, its parameters replaced by the scale's. Configs stay named by
    their shipped names (`--config NAME`, a swept `config`): `lipschitz-dd fit` resolves them from any directory,
    so the same file runs under `wandb agent` on another machine."""
    if finding.needs:
        raise NotAvailable(f"{finding.name} needs: {finding.needs}")
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r} (known: {', '.join(SCALES)})")
    if finding.config is not None and "sweep" not in finding.scales.get(scale, {}):
        config = generated_sweep(finding.config)
        overrides = {**finding.parameters, **finding.scales.get(scale, {})}
    else:
        config = yaml.safe_load(resolve(sweep_name(finding, scale), "sweeps").read_text())
        overrides = finding.scales.get(scale, {})
    parameters = dict(config.get("parameters") or {})
    for key, value in overrides.items():
        if key == "sweep":
            continue
        parameters[key] = {"values": list(value)} if isinstance(value, (list, tuple)) else {"value": value}
    config["parameters"] = parameters
    config["name"] = f"{finding.name}_{scale}"
    return config


def generated_sweep(config_name: str) -> dict[str, Any]:
    """A grid sweep in W&B's format that runs `lipschitz-dd fit --config <config_name>` (parameters added by the
    caller), for findings of a few runs that ship a config but no sweep file."""
    return {
        "name": config_name,
        "method": "grid",
        "metric": {"name": "test/loss", "goal": "minimize"},
        "parameters": {},
        "command": ["${env}", "lipschitz-dd", "fit", "--config", config_name, "${args}"],
    }


def sweep_name(finding: Finding, scale: str) -> str:
    """The sweep the finding runs at `scale`: the scale's "sweep" entry, else `finding.sweep`, else the name of
    its config (the generated sweep)."""
    return str(finding.scales.get(scale, {}).get("sweep", finding.sweep or finding.config))


def finding_folder(finding: Finding, scale: str, out: str | Path) -> Path:
    """`out/<name>/<scale>`."""
    return Path(out) / finding.name / scale


def run_finding(
    finding: Finding, scale: str = "cpu", out: str | Path = "reproduce_out", workers: int = 1, progress: bool = True
) -> Path:
    """Run (or resume) the finding's sweep at `scale` and write its figures and summary.md; returns summary.md.

    The runs go through lipschitz_dd.sweep.run_sweep, so an interrupted call resumes where it stopped."""
    from lipschitz_dd.report.records import load_runs
    from lipschitz_dd.sweep.runner import run_sweep

    config = scaled_sweep(finding, scale)
    folder = finding_folder(finding, scale, out)
    folder.mkdir(parents=True, exist_ok=True)
    if finding.prepare is not None:
        for key, value in finding.prepare(scale, folder).items():
            config["parameters"][key] = (
                {"values": list(value)} if isinstance(value, (list, tuple)) else {"value": value}
            )
    sweep_file = folder / f"{sweep_name(finding, scale)}.yaml"
    sweep_file.write_text(yaml.safe_dump(config, sort_keys=False))
    result = run_sweep(sweep_file, out=folder, workers=workers, progress=progress)
    if result.interrupted:
        raise KeyboardInterrupt
    analysis = safe_analyse(finding, load_runs(result.folder / "runs"), folder)
    return write_summary(finding, scale, folder, analysis, failed=len(result.failed_this_time()))


def safe_analyse(finding: Finding, records: list, folder: Path) -> Analysis:
    """finding.analyse, except that an error in it becomes one line of the summary (the runs stay where they are,
    and the analysis can be re-run with --runs once fixed)."""
    try:
        return finding.analyse(records, folder)
    except Exception as error:  # noqa: BLE001 - any analysis bug must not hide the runs' results
        return Analysis(lines=[f"analysis failed: {type(error).__name__}: {error}"], verdict="not analysed (error)")


def analyse_folder(finding: Finding, scale: str, runs: str | Path, out: str | Path = "reproduce_out") -> Path:
    """Analyse the run folders below `runs` (run elsewhere, e.g. by a W&B agent) into out/<name>/<scale>/."""
    from lipschitz_dd.report.records import load_runs

    if finding.needs:
        raise NotAvailable(f"{finding.name} needs: {finding.needs}")
    folder = finding_folder(finding, scale, out)
    folder.mkdir(parents=True, exist_ok=True)
    return write_summary(finding, scale, folder, safe_analyse(finding, load_runs(runs), folder))


def write_summary(finding: Finding, scale: str, folder: Path, analysis: Analysis, failed: int = 0) -> Path:
    """summary.md: the claim, the study's numbers, ours, the figures and the verdict."""
    lines = [
        f"# {finding.name} ({scale} scale)",
        "",
        f"Study section: {finding.section}",
        "",
        f"Claim: {finding.claim}",
    ]
    if finding.paper:
        lines += ["", "The study's numbers: " + "; ".join(f"{k}: {v}" for k, v in finding.paper.items())]
    lines += ["", "## Numbers here", "", *analysis.lines]
    if failed:
        lines += ["", f"{failed} run(s) failed this time (see the sweep's logs/ folder)."]
    if analysis.figures:
        lines += ["", "## Figures", ""] + [f"![{p.stem}]({p.name})" for p in analysis.figures]
    lines += ["", "## Verdict", "", analysis.verdict or "(no verdict: too few completed runs)", ""]
    path = folder / "summary.md"
    path.write_text("\n".join(lines))
    return path
