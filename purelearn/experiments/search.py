"""Figure 6-24: random search over learning rate and weight decay.

The textbook's setting: 500 training images split 400 / 100 into training
and validation, a 784-100x6-10 net, SGD, batches of 100, 50 epochs, 100
trials with learning rate log-uniform in [1e-6, 1e-2] and weight decay
log-uniform in [1e-8, 1e-4]. All trials train as one vmapped program.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from purelearn import optimizers
from purelearn.experiments._common import mnist, subset
from purelearn.experiments.weight_decay import SIZES
from purelearn.models import mlp
from purelearn.training import train_run

SPACE = {"learning_rate": (1e-6, 1e-2), "weight_decay": (1e-8, 1e-4)}


def run(*, seed: int = 0, data: str = "auto", quick: bool = False) -> dict:
    start = time.perf_counter()
    (x, y), _, described = mnist(data)
    x, y = subset(x, y, 500, seed)
    train, val = (x[:400], y[:400]), (x[400:], y[400:])
    num_trials = 8 if quick else 100
    epochs = 10 if quick else 50
    rng = np.random.default_rng(seed)
    samples = {
        name: 10 ** rng.uniform(np.log10(lo), np.log10(hi), num_trials)
        for name, (lo, hi) in SPACE.items()
    }
    model = mlp(SIZES)

    def trial(lr, wd, key):
        opt = optax.inject_hyperparams(optimizers.sgd)(learning_rate=lr)
        _, curves = train_run(
            model,
            opt,
            train,
            epochs=epochs,
            batch_size=100,
            key=key,
            eval_data=val,
            weight_decay=wd,
        )
        return curves

    keys = jax.random.split(jax.random.key(seed), num_trials)
    curves = jax.jit(jax.vmap(trial))(
        jnp.asarray(samples["learning_rate"], jnp.float32),
        jnp.asarray(samples["weight_decay"], jnp.float32),
        keys,
    )
    val_curves = np.asarray(curves["eval_accuracy"])
    train_curves = np.asarray(curves["train_accuracy"])
    trials = [
        {
            "learning_rate": float(samples["learning_rate"][i]),
            "weight_decay": float(samples["weight_decay"][i]),
            "val_acc": float(val_curves[i, -1]),
            "train_acc": float(train_curves[i, -1]),
            "val_acc_curve": np.round(val_curves[i], 4).tolist(),
            "train_acc_curve": np.round(train_curves[i], 4).tolist(),
        }
        for i in range(num_trials)
    ]
    trials.sort(key=lambda t: -t["val_acc"])
    return {
        "trials": trials,
        "space": {k: list(v) for k, v in SPACE.items()},
        "num_trials": num_trials,
        "epochs": epochs,
        "data": f"400 training / 100 validation images of the {described}",
        "quick": quick,
        "seconds": round(time.perf_counter() - start, 2),
    }
