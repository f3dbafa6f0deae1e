"""Figure 6-9: the six optimizers training the 5-layer ReLU net on MNIST.

784-100-100-100-100-10, He initialization, mini-batches of 128 drawn at
random, 2,000 iterations, each optimizer with the textbook's default
hyperparameters. The textbook finds SGD the slowest learner.
"""

from __future__ import annotations

import time

import jax

from purelearn import optimizers as opt
from purelearn.experiments._common import compare_loss_curves, mnist
from purelearn.models import mlp

OPTIMIZERS = {
    "SGD": opt.sgd,
    "Momentum": opt.momentum,
    "Nesterov": opt.nesterov,
    "AdaGrad": opt.adagrad,
    "RMSProp": opt.rmsprop,
    "Adam": opt.adam,
}


def run(*, seed: int = 0, data: str = "auto", quick: bool = False) -> dict:
    start = time.perf_counter()
    (x, y), (xt, yt), described = mnist(data)
    iterations = 200 if quick else 2000
    model = mlp([784, 100, 100, 100, 100, 10], activation="relu", init="he")
    runs = {name: (model, make()) for name, make in OPTIMIZERS.items()}
    result = compare_loss_curves(
        runs,
        ((x, y), (xt, yt)),
        iterations=iterations,
        key=jax.random.key(seed),
        desc="optimizers",
    )
    return {
        **result,
        "data": described,
        "quick": quick,
        "seconds": round(time.perf_counter() - start, 2),
    }
