"""Figure 6-15: weight initialization and learning speed.

The 5-layer ReLU net with weights of std 0.01, Xavier (std sqrt(1/n)) and He
(std sqrt(2/n)), SGD lr 0.01, mini-batches of 128, 2,000 iterations. With
std 0.01 the signal vanishes and nothing is learned; He learns fastest.
"""

from __future__ import annotations

import time

import jax
from tqdm.auto import tqdm

from purelearn import optimizers
from purelearn.experiments._common import accuracy, mnist, train_iterations
from purelearn.models import mlp

INITS = {"std=0.01": 0.01, "xavier": "xavier", "he": "he"}


def run(*, seed: int = 0, data: str = "auto", quick: bool = False) -> dict:
    start = time.perf_counter()
    (x, y), (xt, yt), described = mnist(data)
    iterations = 300 if quick else 2000
    losses, accuracies = {}, {}
    for name, init in tqdm(INITS.items(), desc="init", leave=False):
        model = mlp([784, 100, 100, 100, 100, 10], activation="relu", init=init)
        state, loss = train_iterations(
            model,
            optimizers.sgd(0.01),
            x,
            y,
            iterations=iterations,
            batch_size=128,
            key=jax.random.key(seed),
        )
        losses[name] = [round(float(v), 5) for v in loss]
        accuracies[name] = accuracy(model, state, xt, yt)
    return {
        "loss": losses,
        "test_accuracy": accuracies,
        "iterations": iterations,
        "data": described,
        "quick": quick,
        "seconds": round(time.perf_counter() - start, 2),
    }
