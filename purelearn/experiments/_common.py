"""What several experiments share: data loading and iteration-based training."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from purelearn.datasets import load_mnist
from purelearn.early_stopping import METRICS
from purelearn.models import Model
from purelearn.optimizers import sgd
from purelearn.training import train_run


def mnist(data: str):
    """``(x, y), (xt, yt)`` as device arrays, and a one-line description."""
    (x, y), (xt, yt) = load_mnist(data)
    kind = "embedded MNIST sample" if len(x) == 4000 else "MNIST"
    return (
        (jnp.asarray(x), jnp.asarray(y)),
        (jnp.asarray(xt), jnp.asarray(yt)),
        (f"{kind} ({len(x)} train / {len(xt)} test)"),
    )


def subset(x, y, n: int, seed: int):
    """``n`` examples drawn without replacement (the textbook's ``x_train[:n]``
    after a shuffle, so every digit appears)."""
    idx = np.random.default_rng(seed).permutation(len(x))[:n]
    return x[idx], y[idx]


def compare_loss_curves(runs, data, *, iterations: int, key: jax.Array, desc: str):
    """Train each ``name -> (model, optimizer)`` with the textbook's iteration loop.

    The loop is :func:`~purelearn.training.train_run` with ``sampling="random"``:
    ``iterations`` steps on mini-batches of 128 drawn with replacement, then the
    test set evaluated. Every run gets the same key (same initial draws, same
    mini-batches), so the curves differ only by what the runs vary. Returns
    per-step losses and test accuracies keyed by name.
    """
    from tqdm.auto import tqdm

    train, test = data
    losses, accuracies = {}, {}
    for name, (model, optimizer) in tqdm(runs.items(), desc=desc, leave=False):
        _, curves = train_run(
            model,
            optimizer,
            train,
            epochs=1,
            batch_size=128,
            steps_per_epoch=iterations,
            sampling="random",
            key=key,
            eval_data=test,
        )
        losses[name] = [round(float(v), 5) for v in np.asarray(curves["step_loss"][0])]
        accuracies[name] = round(float(curves["eval_accuracy"][-1]), 4)
    return {"loss": losses, "test_accuracy": accuracies, "iterations": iterations}


def overfit_run(model: Model, train, test, *, epochs: int, seed: int, weight_decay=0.0):
    """The overfitting experiments' run: SGD lr 0.01, batches of 100, the test set
    evaluated after every epoch; :func:`~purelearn.training.train_run`'s curves."""
    _, curves = train_run(
        model,
        sgd(0.01),
        train,
        epochs=epochs,
        batch_size=100,
        key=jax.random.key(seed),
        eval_data=test,
        weight_decay=weight_decay,
    )
    return curves


def train_test_curves(curves: dict[str, jax.Array]) -> dict[str, Any]:
    """A run's JSON from :func:`~purelearn.training.train_run`'s curves: its per-epoch
    ``"history"`` in the engine's vocabulary, and the textbook's ``"train_acc"`` /
    ``"test_acc"`` names beside it (the experiments' JSON has always had them)."""
    history = {name: np.round(np.asarray(curves[name], np.float64), 4).tolist() for name in METRICS}
    return {
        "train_acc": history["train_accuracy"],
        "test_acc": history["eval_accuracy"],
        "history": history,
    }
