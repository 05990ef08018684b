"""Run one finding: write its scaled sweep file, run it with the ordinary sweep runner, analyse the run folders.

Folder of `lipschitz-dd reproduce NAME --out OUT` at scale S:
    OUT/trained/<sweep>-<key>/<sweep>.yaml   the shipped sweep with the scale's parameters (the file the runner
                                     runs); <key> hashes what the runs do (method, parameters, command)
    OUT/trained/<sweep>-<key>/<sweep>/       the sweep runner's folder (sweep.db, runs/, logs/): re-running resumes
    OUT/NAME/S/summary.md            the numbers that test the claim, beside the study's; its checks and
                                     verdict (reproduce/verdict.py; none at quick scale: a smoke test)
    OUT/NAME/S/*.png                 the finding's figures
    OUT/NAME/S/analysis_error.txt    the traceback, when the analysis raised
    OUT/NAME/S/per_run/*.json        rows of a long per-checkpoint analysis (adversarial PGD), kept as computed
                                     so that a stopped analysis resumes (checkpoints.row_of_final_checkpoint)

Before any run starts, the data the runs read from disk is looked for (`missing_data`): a finding whose data set
is absent refuses in one line (MissingData) and leaves nothing behind. A call whose runs failed, or whose analysis
raised, still writes summary.md (saying so) and reports it in its `Outcome`: the CLI then exits non-zero.

Train once: findings whose scaled sweeps are the same (same grid, same training, same measurements: e.g.
`evolution` and `linearisation`, or `double_descent` and the analyses of its runs) share one folder under
OUT/trained/, so the second finding analyses the first one's runs instead of training them again (the sweep
runner resumes a finished grid without starting a run). Two findings that need the same training but measure
different things share it by measuring the union in their sweeps.
"""

from __future__ import annotations

import hashlib
import importlib
import itertools
import json
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lipschitz_dd.reproduce.registry import SCALES, Analysis, Finding
from lipschitz_dd.reproduce.verdict import checks_table
from lipschitz_dd.shipped import resolve


class NotAvailable(ValueError):
    """The finding needs a feature that does not exist yet (one line)."""


class MissingData(FileNotFoundError):
    """The data set the finding's runs read from disk is not there (one line: where, and how to get it)."""


@dataclass(frozen=True)
class Outcome:
    """What reproducing (or re-analysing) a finding gave: its summary.md, how many of its runs failed (this time
    or in an earlier call, not run again) out of how many, and the analysis's one-line error if it raised."""

    summary: Path
    failed: int = 0
    runs: int = 0
    analysis_error: str | None = None

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.analysis_error is None

    def problems(self) -> str:
        """One line saying what went wrong ("" when nothing did)."""
        parts = []
        if self.failed:
            parts.append(f"{self.failed} of {self.runs} run(s) failed (see the sweep's logs/ folder)")
        if self.analysis_error is not None:
            parts.append(f"the analysis failed: {self.analysis_error}")
        return "; ".join(parts)


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
        parameters[key] = _as_parameter(value)
    config["parameters"] = parameters
    # named by its sweep, not the finding: findings running the same sweep share its file (run_finding)
    config["name"] = f"{sweep_name(finding, scale)}_{scale}"
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


def _values(entry: Any) -> list[Any]:
    """The values of one sweep parameter ({"value": v} or {"values": [...]}; none for a distribution)."""
    if not isinstance(entry, dict):
        return []
    if "value" in entry:
        return [entry["value"]]
    return list(entry.get("values") or [])


def run_data_modules(config: dict[str, Any]) -> list[tuple[type, dict[str, Any]]]:
    """(data class, init_args) of every distinct data module the sweep's runs build: each shipped config the
    command names (`--config NAME` and a swept `config`), its data section with the sweep's data.* parameters
    applied (every combination of swept values). Only the project's own data classes are considered (shipped
    configs name nothing else); a config that is not shipped (a path) is skipped."""
    from lipschitz_dd.shipped import resolve

    command = [str(chunk) for chunk in config.get("command") or []]
    parameters = config.get("parameters") or {}
    names = [command[i + 1] for i, chunk in enumerate(command[:-1]) if chunk == "--config"]
    names += [str(v) for v in _values(parameters.get("config"))]
    swept = {key[len("data.") :]: _values(entry) for key, entry in parameters.items() if key.startswith("data.")}
    swept = {key.removeprefix("init_args."): values for key, values in swept.items() if values}
    modules, seen = [], set()
    for name in dict.fromkeys(names):
        try:
            shipped = yaml.safe_load(resolve(name, "configs").read_text()) or {}
        except (FileNotFoundError, yaml.YAMLError):
            continue
        data = shipped.get("data") or {}
        class_path = str(data.get("class_path", ""))
        module_name, _, class_name = class_path.rpartition(".")
        if not module_name.startswith("lipschitz_dd.data"):
            continue
        cls = getattr(importlib.import_module(module_name), class_name, None)
        if cls is None:
            continue
        keys = [k for k in swept if k != "class_path"]
        for combination in itertools.product(*(swept[k] for k in keys)):
            arguments = {**(data.get("init_args") or {}), **dict(zip(keys, combination, strict=True))}
            key = (class_path, repr(sorted(arguments.items(), key=lambda item: item[0])))
            if key not in seen:
                seen.add(key)
                modules.append((cls, arguments))
    return modules


def reads_from_disk(cls: type) -> bool:
    """Whether the data class reads a data set from disk (the image sets, an ImageFolder) rather than generating
    its data (MNIST-1D, digits, synthetic)."""
    from lipschitz_dd.data import ImageFolderDataModule
    from lipschitz_dd.data.vision import VisionDataModule

    return issubclass(cls, (VisionDataModule, ImageFolderDataModule))


def missing_data(finding: Finding, scale: str, config: dict[str, Any]) -> str | None:
    """One line saying which data set the runs of `config` (the scaled sweep) need and do not find on disk, and
    how to get it; None when every data set they read is there (or will be downloaded: data.download true).
    Asks each image data module where its files are (data_dir relative to this directory, as for the runs).
    ImageFolder data is checked by the finding's `prepare`."""
    from lipschitz_dd.data.vision import VisionDataModule

    for cls, arguments in run_data_modules(config):
        if not issubclass(cls, VisionDataModule) or arguments.get("download"):
            continue
        module = cls(data_dir=str(arguments.get("data_dir", "data")))
        if module.find_files() is None:
            return (
                f"{finding.name} ({scale} scale) needs {module.title} on disk, not found: {module.placement()}; "
                "no run was started"
            )
    return None


def finding_folder(finding: Finding, scale: str, out: str | Path) -> Path:
    """`out/<name>/<scale>`."""
    return Path(out) / finding.name / scale


def training_key(config: dict[str, Any]) -> str:
    """Ten hex digits of a hash of what a scaled sweep's runs do: its method, parameters and command (not its name,
    description or metric). Equal keys: the same runs, trained once (`trained_folder`)."""
    what = {key: config.get(key) for key in ("method", "parameters", "command")}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:10]


def trained_folder(config: dict[str, Any], sweep: str, out: str | Path) -> Path:
    """`out/trained/<sweep>-<training_key>`: where the runs of `config` (the scaled sweep) live, shared by every
    finding that runs the same sweep."""
    return Path(out) / "trained" / f"{sweep}-{training_key(config)}"


def _as_parameter(value: Any) -> dict[str, Any]:
    return {"values": list(value)} if isinstance(value, (list, tuple)) else {"value": value}


def run_finding(
    finding: Finding,
    scale: str = "cpu",
    out: str | Path = "reproduce_out",
    workers: int = 1,
    progress: bool = True,
    overrides: dict[str, Any] | None = None,
    retry_failed: bool = False,
) -> Outcome:
    """Run (or resume) the finding's sweep at `scale` and write its figures and summary.md.

    `overrides` ({sweep parameter: value or list}) replace the scale's and `prepare`'s parameters last (e.g.
    {"data.data_dir": folder}: where the runs read their data). Raises MissingData (one line, nothing started,
    nothing written) when a data set the runs read is not on disk. The runs go through
    lipschitz_dd.sweep.run_sweep, so an interrupted call resumes where it stopped; runs that failed in an
    earlier call are run again only with `retry_failed`. Failed runs and an analysis that raised are reported in
    the Outcome (and in summary.md), never raised: the other runs' results are written all the same."""
    from lipschitz_dd.report.records import ReportInputError, load_runs
    from lipschitz_dd.sweep.runner import run_sweep

    config = scaled_sweep(finding, scale)
    folder = finding_folder(finding, scale, out)
    if finding.prepare is not None:
        folder.mkdir(parents=True, exist_ok=True)
        for key, value in finding.prepare(scale, folder).items():
            config["parameters"][key] = _as_parameter(value)
    for key, value in (overrides or {}).items():
        config["parameters"][key] = _as_parameter(value)
    missing = missing_data(finding, scale, config)
    if missing is not None:
        raise MissingData(missing)
    folder.mkdir(parents=True, exist_ok=True)
    name = sweep_name(finding, scale)
    trained = trained_folder(config, name, out)
    trained.mkdir(parents=True, exist_ok=True)
    sweep_file = trained / f"{name}.yaml"
    sweep_file.write_text(yaml.safe_dump(config, sort_keys=False))
    (folder / "trained_in.txt").write_text(f"{trained.resolve()}\n")
    result = run_sweep(sweep_file, out=trained, workers=workers, progress=progress, retry_failed=retry_failed)
    if result.interrupted:
        raise KeyboardInterrupt
    in_grid = [r for r in result.runs if not r.outside_grid]
    failed = sum(r.state in ("failed", "killed") for r in in_grid)
    try:
        records = load_runs(result.folder / "runs")
    except ReportInputError:  # every run failed before it made its folder: nothing to analyse
        records = []
    analysis = analyse_records(finding, scale, records, folder)
    summary = write_summary(finding, scale, folder, analysis, failed=failed, total=len(in_grid))
    return Outcome(summary, failed, len(in_grid), analysis.error)


def _as_values(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def selected_runs(finding: Finding, scale: str, records: list) -> list:
    """The records the finding analyses at `scale`: those whose config has, for every parameter in
    `finding.analyse_only[scale]`, one of its values (all records when the scale selects nothing)."""
    wanted = {key: _as_values(value) for key, value in finding.analyse_only.get(scale, {}).items()}
    return [r for r in records if all(r.config.get(key) in values for key, values in wanted.items())]


def analyse_records(finding: Finding, scale: str, records: list, folder: Path) -> Analysis:
    """safe_analyse over `selected_runs`; the first line says which runs were left out, if any."""
    chosen = selected_runs(finding, scale, records)
    analysis = safe_analyse(finding, chosen, folder) if chosen else Analysis(lines=["(no run records)"])
    if len(chosen) < len(records):
        wanted = ", ".join(f"{k} in {_as_values(v)}" for k, v in finding.analyse_only[scale].items())
        analysis.lines[:0] = [f"Analysed {len(chosen)} of the sweep's {len(records)} runs: those with {wanted}.", ""]
    return analysis


def safe_analyse(finding: Finding, records: list, folder: Path) -> Analysis:
    """finding.analyse, except that an error in it becomes one line of the summary and `Analysis.error` (the runs
    stay where they are, and the analysis can be re-run with --runs once fixed; the full traceback is kept in
    analysis_error.txt in `folder`)."""
    (folder / "analysis_error.txt").unlink(missing_ok=True)  # an earlier call's
    try:
        return finding.analyse(records, folder)
    except Exception as error:  # noqa: BLE001 - any analysis bug must not hide the runs' results
        text = str(error).strip()
        message = f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__
        (folder / "analysis_error.txt").write_text("".join(traceback.format_exception(error)))
        return Analysis(lines=[f"analysis failed: {message}"], error=message)


def analyse_folder(finding: Finding, scale: str, runs: str | Path, out: str | Path = "reproduce_out") -> Outcome:
    """Analyse the run folders below `runs` (run elsewhere, e.g. by a W&B agent) into out/<name>/<scale>/.

    The folders are data: analyses that rebuild a network from a checkpoint build only the project's own model
    and data classes (or those allowed with checkpoints.allow_class), see lipschitz_dd.reproduce.checkpoints."""
    from lipschitz_dd.report.records import load_runs

    if finding.needs:
        raise NotAvailable(f"{finding.name} needs: {finding.needs}")
    if not Path(runs).is_dir():
        raise FileNotFoundError(f"--runs {runs}: no such folder")
    folder = finding_folder(finding, scale, out)
    folder.mkdir(parents=True, exist_ok=True)
    analysis = analyse_records(finding, scale, load_runs(runs), folder)
    return Outcome(write_summary(finding, scale, folder, analysis), analysis_error=analysis.error)


SMOKE_TEST = "smoke test, not evidence: a quick-scale run carries no verdict"


def verdict_line(scale: str, analysis: Analysis) -> str:
    """The summary's verdict: none when the analysis failed or at quick scale (a smoke test); otherwise
    verdict.decide over the analysis's checks, then its note."""
    if analysis.error is not None:
        return "none: the analysis failed (see above)"
    if scale == "quick":
        return SMOKE_TEST
    text = str(analysis.verdict)
    return f"{text}. {analysis.note}" if analysis.note else text


def write_summary(
    finding: Finding, scale: str, folder: Path, analysis: Analysis, failed: int = 0, total: int = 0
) -> Path:
    """summary.md: the claim, the study's numbers, ours, the figures and the verdict; how many of the `total`
    runs failed, and the analysis's error if it raised."""
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
        lines += [
            "",
            f"{failed} of {total} run(s) failed (see the sweep's logs/ folder; `--retry_failed` runs them again): "
            "their points are missing above.",
        ]
    if analysis.figures:
        lines += ["", "## Figures", ""] + [f"![{p.stem}]({p.name})" for p in analysis.figures]
    if analysis.checks:
        lines += ["", "## Checks", "", *checks_table(analysis.checks)]
    lines += ["", "## Verdict", "", verdict_line(scale, analysis), ""]
    path = folder / "summary.md"
    path.write_text("\n".join(lines))
    return path
