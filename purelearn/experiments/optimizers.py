"""Figure 6-9: the six optimizers training the 5-layer ReLU net on MNIST.

784-100-100-100-100-10, He initialization, mini-batches of 128 drawn at
random, 2,000 iterations, each optimizer with the textbook's default
hyperparameters. The textbook finds SGD the slowest learner.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import optax

from purelearn import optimizers as opt
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

OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "SGD": opt.sgd,
    "Momentum": opt.momentum,
    "Nesterov": opt.nesterov,
    "AdaGrad": opt.adagrad,
    "RMSProp": opt.rmsprop,
    "Adam": opt.adam,
}
MARKERS = {
    "SGD": "o",
    "Momentum": "x",
    "Nesterov": "^",
    "AdaGrad": "s",
    "RMSProp": "v",
    "Adam": "D",
}


def run(*, seed: int = 0, seeds: int = 1, data: str = "auto", quick: bool = False) -> LossResult:
    """Per-step losses and test accuracies of the six optimizers, for every seed."""
    start = time.perf_counter()
    seed_values = seed_list(seed, seeds)
    (x, y), (xt, yt), described = mnist(data)
    iterations = 200 if quick else 2000
    model = mlp([784, 100, 100, 100, 100, 10], activation="relu", init="he")
    runs = {name: (model, make()) for name, make in OPTIMIZERS.items()}
    result = compare_loss_curves(
        runs,
        ((x, y), (xt, yt)),
        iterations=iterations,
        keys=keys_of(seed_values),
        desc="optimizers",
    )
    return LossResult(
        **result,
        seeds=seed_values,
        data=described,
        quick=quick,
        seconds=round(time.perf_counter() - start, 2),
    )


def check(result: Mapping[str, Any], i: int) -> SeedCheck:
    """Seed ``i`` agrees when SGD's final loss (mean of the last 10% of the steps) is
    the highest of all optimizers."""
    final = {name: summary(result, name, i)[1] for name in result["per_seed"]["loss"]}
    if "SGD" not in final or len(final) < 2:
        return SeedCheck(None, final)
    others = max(v for k, v in final.items() if k != "SGD")
    return SeedCheck(final["SGD"] > others, final)


def verdict(result: Mapping[str, Any]) -> Verdict:
    checks = [check(result, i) for i in range(len(result["seeds"]))]
    names = list(result["per_seed"]["loss"])
    if "SGD" not in names:
        return verdict_over(checks, "", "the run has no SGD loss curve")
    means = {k: float(np.mean(column(checks, k))) for k in names}
    runner_up = max((k for k in names if k != "SGD"), key=means.__getitem__)
    best = min(names, key=means.__getitem__)
    return verdict_over(
        checks,
        "SGD's final loss (mean of the last 10% of the steps) is the highest",
        f"SGD {pm(column(checks, 'SGD'))} against the next highest, {runner_up}'s "
        f"{pm(column(checks, runner_up))}, and the lowest, {best}'s {pm(column(checks, best))}",
    )


def table(result: Mapping[str, Any]) -> Table:
    checks = [check(result, i) for i in range(len(result["seeds"]))]
    cols = [(name, f"{name} final loss") for name in result["per_seed"]["loss"]]
    return seed_table(result["seeds"], checks, cols)


def figure(result: Mapping[str, Any]) -> Figure:
    return loss_figure(
        result,
        ylim=(0.0, 1.0),
        markers=MARKERS,
        labels={},
        title="MNIST, 5-layer ReLU net: training loss by optimizer",
    )


EXPERIMENT = Experiment(
    name="optimizers",
    title="Optimizers compared on MNIST (Figure 6-9)",
    conclusion=(
        "On MNIST with the 5-layer ReLU net, SGD learns the slowest; Momentum, AdaGrad and "
        "Adam (and Nesterov and RMSProp) bring the training loss down much faster, AdaGrad "
        "often the fastest. Which optimizer is best depends on the problem and on its "
        "hyperparameters."
    ),
    order=9,
    run=run,
    figure=figure,
    verdict=verdict,
    table=table,
    schema=LossResult,
)

__all__ = ["EXPERIMENT"]
