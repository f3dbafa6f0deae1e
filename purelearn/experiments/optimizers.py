"""Figure 6-9: the six optimizers training the 5-layer ReLU net on MNIST.

784-100-100-100-100-10, He initialization, mini-batches of 128 drawn at
random, 2,000 iterations, each optimizer with the textbook's default
hyperparameters. The textbook finds SGD the slowest learner.
"""

from __future__ import annotations

import time

import jax
from tqdm.auto import tqdm

from purelearn import optimizers as opt
from purelearn.experiments._common import accuracy, mnist, train_iterations
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
    losses, accuracies = {}, {}
    # One key for all: every optimizer starts from the same weights and sees
    # the same mini-batches, so the curves differ only by the update rule.
    key = jax.random.key(seed)
    for name, make in tqdm(OPTIMIZERS.items(), desc="optimizers", leave=False):
        state, loss = train_iterations(
            model, make(), x, y, iterations=iterations, batch_size=128, key=key
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
