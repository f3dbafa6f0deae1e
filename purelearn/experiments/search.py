"""Figure 6-24: random search over learning rate and weight decay.

The textbook's setting: 500 training images split 400 / 100 into training
and validation, a 784-100x6-10 net, SGD, batches of 100, 50 epochs, 100
trials with learning rate log-uniform in [1e-6, 1e-2] and weight decay
log-uniform in [1e-8, 1e-4]. All trials train as one vmapped program
(:func:`purelearn.tuning.random_search`).
"""

from __future__ import annotations

import time

import jax
import numpy as np

from purelearn import optimizers
from purelearn.experiments._common import mnist, subset
from purelearn.experiments.weight_decay import SIZES
from purelearn.models import mlp
from purelearn.tuning import log_uniform, random_search

SPACE = {"learning_rate": (1e-6, 1e-2), "weight_decay": (1e-8, 1e-4)}


def run(*, seed: int = 0, data: str = "auto", quick: bool = False) -> dict:
    start = time.perf_counter()
    (x, y), _, described = mnist(data)
    x, y = subset(x, y, 500, seed)
    train, val = (x[:400], y[:400]), (x[400:], y[400:])
    num_trials = 8 if quick else 100
    epochs = 10 if quick else 50
    results = random_search(
        mlp(SIZES),
        optimizers.sgd,
        train,
        val,
        space={name: log_uniform(lo, hi) for name, (lo, hi) in SPACE.items()},
        num_trials=num_trials,
        epochs=epochs,
        batch_size=100,
        key=jax.random.key(seed),
    )
    trials = [
        {
            "learning_rate": r["learning_rate"],
            "weight_decay": r["weight_decay"],
            "val_acc": r["val_acc"],
            "train_acc": r["train_acc"],
            "val_acc_curve": np.round(r["val_acc_curve"], 4).tolist(),
            "train_acc_curve": np.round(r["train_acc_curve"], 4).tolist(),
        }
        for r in results
    ]
    return {
        "trials": trials,
        "space": {k: list(v) for k, v in SPACE.items()},
        "num_trials": num_trials,
        "epochs": epochs,
        "data": f"400 training / 100 validation images of the {described}",
        "quick": quick,
        "seconds": round(time.perf_counter() - start, 2),
    }
