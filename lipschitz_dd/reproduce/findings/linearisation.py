"""The linearisation check: sup ||d2f/(dx dtheta)|| at init is small; ||theta - theta_0|| drives C_lower's growth."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import torch

from lipschitz_dd.reproduce.analysis import markdown_table, save_figure
from lipschitz_dd.reproduce.checkpoints import load_trained
from lipschitz_dd.reproduce.findings.evolution import PARAMETERS as EVOLUTION_PARAMETERS
from lipschitz_dd.reproduce.findings.evolution import SCALES as EVOLUTION_SCALES
from lipschitz_dd.reproduce.registry import Analysis, Finding, Recorded, register
from lipschitz_dd.reproduce.verdict import Check, Threshold

#: Training points on which the mixed derivative is measured (the study: a few hundred).
POINTS = 256


def initial_model(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """The run's network at initialisation, rebuilt from its hyperparameters under the run's seed (LightningCLI
    seeds before it builds the model). The caller checks it against the run's logged params/dist_init."""
    from lightning.pytorch import seed_everything

    seed_everything(seed, verbose=False)
    return type(model)(**dict(model.hparams)).eval()


#: "Drives the growth": C_lower grows (smallest over seeds of end / init) well beyond noise, as the study's ~65x.
GROWTH = Threshold(">=", 10.0)
#: "A small sup norm" at init: the largest over seeds of sup ||M|| (the study: single digits).
SMALL_MIXED = Threshold("<", 10.0)
#: The rebuilt theta_0 is the run's: |distance - logged params/dist_init| / logged, largest over runs.
SAME_START = 1e-3


def _figure(table: pd.DataFrame, path: Path) -> Path:
    """Per seed: C_lower at init, the first-order prediction and C_lower at the end (log scale)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 3.8), layout="constrained")
    ax = figure.subplots()
    columns = ["C_lower init", "first-order C_lower", "C_lower end"]
    width = 0.8 / len(columns)
    for i, column in enumerate(columns):
        ax.bar([j + i * width for j in range(len(table))], table[column], width=width, label=column)
    ax.set_xticks([j + width for j in range(len(table))], [f"seed {s}" for s in table["seed"]])
    ax.set(yscale="log", ylabel="constant", title="C_lower vs the first-order prediction from theta_0")
    ax.legend(fontsize="small")
    return save_figure(figure, path)


def checks(table: pd.DataFrame) -> list[Check]:
    """Growth (smallest over seeds) and sup ||M|| at init (largest over seeds); neither is measured when a rebuilt
    theta_0 is not the run's (the `consistent` column)."""
    same = bool(table["consistent"].all()) if len(table) else False
    growth = float(table["growth"].min()) if same else math.nan
    mixed = float(table["sup ||M|| init"].max()) if same else math.nan
    seeds = len(table)
    return [
        Check("C_lower grows", "smallest over seeds of C_lower end / init", growth, GROWTH, seeds=seeds),
        Check(
            "sup ||M|| at init is small", "largest over seeds of sup ||d2f/(dx dtheta)|| at init", mixed, SMALL_MIXED
        ),
    ]


def analyse(records, out: Path) -> Analysis:
    """Per run: C_lower at init and at the end, sup ||M|| at init over POINTS training points, ||theta - theta_0||,
    the first-order prediction, and the check that the rebuilt theta_0 is the run's (its distance to the final
    parameters equals the logged params/dist_init)."""
    from lipschitz_dd.bounds.linearisation import linearisation_check

    result = Analysis()
    rows = []
    for record in [r for r in records if r.completed]:
        model, train_x, _ = load_trained(record)
        start = initial_model(model, int(record.config.get("seed_everything", 0)))
        points = train_x[torch.randperm(len(train_x), generator=torch.Generator().manual_seed(0))[:POINTS]]
        check = linearisation_check(start, model, points)
        logged = record.final_value("params/dist_init")
        rows.append(
            {
                "seed": record.config.get("seed_everything", 0),
                "C_lower init": check.c_lower_init,
                "C_lower end": check.c_lower_now,
                "growth": check.c_lower_now / check.c_lower_init,
                "sup ||M|| init": check.mixed_sup_init,
                "||theta - theta_0||": check.distance,
                "logged params/dist_init": logged,
                "first-order C_lower": check.first_order,
                "consistent": abs(check.distance - logged) <= SAME_START * max(logged, 1e-12),
            }
        )
    if not rows:
        return result
    table = pd.DataFrame(rows)
    result.figures.append(_figure(table, out / "linearisation.png"))
    result.lines += [f"Mixed derivative measured on {POINTS} training points.", "", *markdown_table(table)]
    if not table["consistent"].all():
        result.note = "the rebuilt initial parameters differ from a run's (see the dist_init columns): not measured"
    result.checks += checks(table)
    return result


register(
    Finding(
        name="linearisation",
        number="1.2",
        section="Linearisation check",
        claim="The mixed derivative d2f/(dx dtheta) at init has a small sup norm; the displacement ||theta - "
        "theta_0|| drives the growth of C_lower.",
        paper={"sup ||M|| at init": "single digits (FCN 256)", "C_lower end / init": "~65x"},
        config="fcn_mnist1d",
        parameters=EVOLUTION_PARAMETERS,
        scales=EVOLUTION_SCALES,
        cost={
            "quick": "~20 s (1 run)",
            "cpu": "~1 min beyond the evolution runs (trained once: ~10 min for 3 runs, 2 workers)",
            "full": "~4 runs x hours",
        },
        analyse=analyse,
        setting="FCN 256 on MNIST-1D, paper protocol, 5,000 epochs (the evolution runs)",
        compares=True,
        recorded=Recorded(
            "holds",
            seeds=3,
            minutes=1,
            date="2026-12-06",
            shared=True,
            note="analysis of the evolution runs, trained once",
        ),
    )
)
