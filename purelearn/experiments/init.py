"""Figure 6-15: weight initialization and learning speed.

The 5-layer ReLU net with weights of std 0.01, Xavier (std sqrt(1/n)) and He
(std sqrt(2/n)), SGD lr 0.01, mini-batches of 128, 2,000 iterations. With
std 0.01 the signal vanishes and nothing is learned; He learns fastest.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from purelearn import optimizers
from purelearn._types import Figure
from purelearn.experiments._common import (
    Experiment,
    SeedCheck,
    Table,
    Verdict,
    column,
    keys_of,
    mnist,
    pm,
    seed_list,
    seed_table,
    verdict_over,
)
from purelearn.experiments._losses import LossResult, compare_loss_curves, loss_figure, summary
from purelearn.models import mlp

INITS: dict[str, str | float] = {"std=0.01": 0.01, "xavier": "xavier", "he": "he"}
LABELS = {"std=0.01": "std=0.01", "xavier": "Xavier", "he": "He"}
MARKERS = {"std=0.01": "o", "xavier": "s", "he": "D"}


def run(*, seed: int = 0, seeds: int = 1, data: str = "auto", quick: bool = False) -> LossResult:
    """Per-step losses and test accuracies of the three initializations, for every seed."""
    start = time.perf_counter()
    seed_values = seed_list(seed, seeds)
    (x, y), (xt, yt), described = mnist(data)
    iterations = 600 if quick else 2000
    runs = {
        name: (
            mlp([784, 100, 100, 100, 100, 10], activation="relu", init=init),
            optimizers.sgd(0.01),
        )
        for name, init in INITS.items()
    }
    result = compare_loss_curves(
        runs, ((x, y), (xt, yt)), iterations=iterations, keys=keys_of(seed_values), desc="init"
    )
    return LossResult(
        **result,
        seeds=seed_values,
        data=described,
        quick=quick,
        seconds=round(time.perf_counter() - start, 2),
    )


def check(result: Mapping[str, Any], i: int) -> SeedCheck:
    """Seed ``i`` agrees when std=0.01 keeps over 90% of its initial loss, Xavier and He
    end below 85% of theirs, and He's mean loss over the run is below Xavier's."""
    names = result["per_seed"]["loss"]
    if any(k not in names for k in INITS):
        return SeedCheck(None, {})
    (f0, l0, _), (fx, lx, mx), (fh, lh, mh) = (summary(result, k, i) for k in INITS)
    numbers = {
        "std=0.01 final": l0,
        "xavier final": lx,
        "he final": lh,
        "xavier mean": mx,
        "he mean": mh,
        "std=0.01 kept": l0 / f0,
    }
    agrees = l0 > 0.9 * f0 and lx < 0.85 * fx and lh < 0.85 * fh and mh < mx
    return SeedCheck(agrees, numbers)


def verdict(result: Mapping[str, Any]) -> Verdict:
    checks = [check(result, i) for i in range(len(result["seeds"]))]
    if checks[0].agrees is None:
        return verdict_over(checks, "", "the run lacks one of the std=0.01, Xavier, He curves")
    return verdict_over(
        checks,
        "std=0.01 does not learn while Xavier and He do, He the fastest",
        f"std=0.01 keeps {pm(column(checks, 'std=0.01 kept'))} of its initial loss "
        f"(final {pm(column(checks, 'std=0.01 final'))}); final loss Xavier "
        f"{pm(column(checks, 'xavier final'))}, He {pm(column(checks, 'he final'))}; mean loss "
        f"over the run He {pm(column(checks, 'he mean'))} against Xavier's "
        f"{pm(column(checks, 'xavier mean'))}",
    )


def table(result: Mapping[str, Any]) -> Table:
    checks = [check(result, i) for i in range(len(result["seeds"]))]
    cols = [
        ("std=0.01 final", "std=0.01 final loss"),
        ("xavier final", "Xavier final loss"),
        ("he final", "He final loss"),
        ("xavier mean", "Xavier mean loss"),
        ("he mean", "He mean loss"),
    ]
    return seed_table(result["seeds"], checks, cols)


def figure(result: Mapping[str, Any]) -> Figure:
    return loss_figure(
        result,
        ylim=(0.0, 2.5),
        markers=MARKERS,
        labels=LABELS,
        title="MNIST, 5-layer ReLU net: training loss by weight initialization",
    )


EXPERIMENT = Experiment(
    name="init",
    title="Weight initialization compared on MNIST (Figure 6-15)",
    conclusion=(
        "With weights of std 0.01 the signal vanishes in the forward pass and the gradients "
        "in the backward pass, so the 5-layer ReLU net does not learn at all. Xavier and He "
        "initialization both learn, He the fastest."
    ),
    order=15,
    run=run,
    figure=figure,
    verdict=verdict,
    table=table,
    schema=LossResult,
)

__all__ = ["EXPERIMENT"]
