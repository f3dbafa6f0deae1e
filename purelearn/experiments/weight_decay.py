"""Figures 6-20 and 6-21: overfitting and weight decay.

300 training images and a 7-layer net (784-100x6-10, He init), SGD lr 0.01,
batches of 100, 200 epochs, without weight decay and with lambda = 0.1. The
plain net reaches 100% training accuracy far above its test accuracy; weight
decay narrows that gap. Every seed draws its own 300 images; a seed's two
lambdas train as one vmapped program.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, TypedDict

from purelearn._types import Figure
from purelearn.experiments._common import (
    Experiment,
    SeedCheck,
    Table,
    Verdict,
    column,
    mnist,
    pm,
    seed_list,
    seed_table,
    verdict_over,
)
from purelearn.experiments._overfit import (
    SIZES,
    Run,
    SeedRun,
    first_and_per_seed,
    gaps,
    narrows,
    overfit_data,
    overfit_panels,
    overfit_runs,
)
from purelearn.models import mlp

LAMBDAS = (0.0, 0.1)


class WeightDecayResult(TypedDict):
    """``runs`` holds the first seed's curves per lambda ("0", "0.1"),
    ``per_seed["runs"]`` every seed's."""

    runs: dict[str, Run]
    per_seed: dict[str, dict[str, SeedRun]]
    epochs: int
    seeds: list[int]
    data: str
    quick: bool
    seconds: float


def run(
    *, seed: int = 0, seeds: int = 1, data: str = "auto", quick: bool = False
) -> WeightDecayResult:
    start = time.perf_counter()
    seed_values = seed_list(seed, seeds)
    (x, y), test, described = mnist(data)
    epochs = 60 if quick else 200
    per_lambda = overfit_runs(
        mlp(SIZES),
        overfit_data(x, y, seed_values),
        test,
        seeds=seed_values,
        epochs=epochs,
        weight_decays=LAMBDAS,
    )
    runs, per_seed = {}, {}
    for lam, curves in zip(LAMBDAS, per_lambda, strict=True):
        runs[f"{lam:g}"], per_seed[f"{lam:g}"] = first_and_per_seed(curves)
    return WeightDecayResult(
        runs=runs,
        per_seed={"runs": per_seed},
        epochs=epochs,
        seeds=seed_values,
        data=f"300 training images of the {described} (drawn per seed)",
        quick=quick,
        seconds=round(time.perf_counter() - start, 2),
    )


def check(result: Mapping[str, Any], i: int) -> SeedCheck:
    """Seed ``i`` agrees when the run without weight decay overfits (train - test gap
    at least 0.05, means of the last 10 epochs) and every lambda > 0 has a smaller gap."""
    g = gaps(result["per_seed"]["runs"], i)
    numbers: dict[str, float] = {}
    for key, (tr, te, gap) in g.items():
        numbers |= {f"train {key}": tr, f"test {key}": te, f"gap {key}": gap}
    return SeedCheck(narrows(g), numbers)


def verdict(result: Mapping[str, Any]) -> Verdict:
    checks = [check(result, i) for i in range(len(result["seeds"]))]
    keys = [k for k in result["per_seed"]["runs"] if k != "0"]
    if checks[0].agrees is None:
        return verdict_over(
            checks, "", "the run needs one run without weight decay and one with it"
        )
    parts = "; ".join(
        f"with λ = {k}: train {pm(column(checks, f'train {k}'))}, test "
        f"{pm(column(checks, f'test {k}'))}, gap {pm(column(checks, f'gap {k}'))}"
        for k in keys
    )
    return verdict_over(
        checks,
        "weight decay narrows the train-test gap of an overfitting net",
        f"without it train {pm(column(checks, 'train 0'))}, test "
        f"{pm(column(checks, 'test 0'))}, gap {pm(column(checks, 'gap 0'))}; {parts} "
        "(means of the last 10 epochs)",
    )


def table(result: Mapping[str, Any]) -> Table:
    checks = [check(result, i) for i in range(len(result["seeds"]))]
    cols = []
    for k in result["per_seed"]["runs"]:
        cols += [
            (f"train {k}", f"train, λ={k}"),
            (f"test {k}", f"test, λ={k}"),
            (f"gap {k}", f"gap, λ={k}"),
        ]
    return seed_table(result["seeds"], checks, cols)


def _describe(key: str) -> str:
    return "no weight decay (λ = 0)" if float(key) == 0 else f"weight decay λ = {key}"


def figure(result: Mapping[str, Any]) -> Figure:
    return overfit_panels(
        [("", result["per_seed"]["runs"])],
        _describe,
        "300 training images, 7-layer net: weight decay",
        len(result["seeds"]),
    )


EXPERIMENT = Experiment(
    name="weight-decay",
    title="Overfitting and weight decay (Figures 6-20 and 6-21)",
    conclusion=(
        "Trained on only 300 images, the 7-layer net overfits: its training accuracy reaches "
        "about 100% while its test accuracy stays far below. Adding the L2 penalty ½λ‖W‖² "
        "with λ = 0.1 keeps the weights small; the training accuracy no longer reaches 100% "
        "and the gap between training and test accuracy narrows."
    ),
    order=20,
    run=run,
    figure=figure,
    verdict=verdict,
    table=table,
    schema=WeightDecayResult,
)

__all__ = ["EXPERIMENT"]
