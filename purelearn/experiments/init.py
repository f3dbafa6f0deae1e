"""Figure 6-15: weight initialization and learning speed.

The 5-layer ReLU net with weights of std 0.01, Xavier (std sqrt(1/n)) and He
(std sqrt(2/n)), SGD lr 0.01, mini-batches of 128, 2,000 iterations. With
std 0.01 the signal vanishes and nothing is learned; He learns fastest.
"""

from __future__ import annotations

import time

import jax

from purelearn import optimizers
from purelearn.experiments._common import compare_loss_curves, mnist
from purelearn.models import mlp

INITS = {"std=0.01": 0.01, "xavier": "xavier", "he": "he"}


def run(*, seed: int = 0, data: str = "auto", quick: bool = False) -> dict:
    start = time.perf_counter()
    (x, y), (xt, yt), described = mnist(data)
    iterations = 300 if quick else 2000
    runs = {
        name: (
            mlp([784, 100, 100, 100, 100, 10], activation="relu", init=init),
            optimizers.sgd(0.01),
        )
        for name, init in INITS.items()
    }
    result = compare_loss_curves(
        runs, ((x, y), (xt, yt)), iterations=iterations, key=jax.random.key(seed), desc="init"
    )
    return {
        **result,
        "data": described,
        "quick": quick,
        "seconds": round(time.perf_counter() - start, 2),
    }
