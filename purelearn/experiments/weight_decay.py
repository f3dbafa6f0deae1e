"""Figures 6-20 and 6-21: overfitting and weight decay.

300 training images and a 7-layer net (784-100x6-10, He init), SGD lr 0.01,
batches of 100, 200 epochs, without weight decay and with lambda = 0.1. The
plain net reaches 100% training accuracy far above its test accuracy; weight
decay narrows that gap. Both lambdas train as one vmapped program.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from purelearn.experiments._common import mnist, overfit_run, subset, train_test_curves
from purelearn.models import mlp

SIZES = [784, 100, 100, 100, 100, 100, 100, 10]
LAMBDAS = (0.0, 0.1)


def run(*, seed: int = 0, data: str = "auto", quick: bool = False) -> dict:
    start = time.perf_counter()
    (x, y), (xt, yt), described = mnist(data)
    x, y = subset(x, y, 300, seed)
    epochs = 60 if quick else 200
    model = mlp(SIZES)

    def one(wd):
        return overfit_run(model, (x, y), (xt, yt), epochs=epochs, seed=seed, weight_decay=wd)

    curves = jax.jit(jax.vmap(one))(jnp.asarray(LAMBDAS))
    runs = {
        f"{lam:g}": train_test_curves(jax.tree.map(lambda c, i=i: c[i], curves))
        for i, lam in enumerate(LAMBDAS)
    }
    return {
        "runs": runs,
        "epochs": epochs,
        "data": f"300 training images of the {described}",
        "quick": quick,
        "seconds": round(time.perf_counter() - start, 2),
    }
