"""What several experiments share: data loading and iteration-based training."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from purelearn.datasets import load_mnist
from purelearn.models import Model
from purelearn.optimizers import sgd
from purelearn.training import TrainState, evaluate, make_train_step, train_run


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


def train_iterations(
    model: Model,
    optimizer: optax.GradientTransformation,
    x: jax.Array,
    y: jax.Array,
    *,
    iterations: int,
    batch_size: int,
    key: jax.Array,
):
    """The textbook's loop: ``iterations`` steps on random mini-batches, as one scan.

    Returns the final state and every step's loss (a NumPy array).
    """
    step = make_train_step(model, optimizer)

    @jax.jit
    def run(key):
        init_key, batch_key = jax.random.split(key)
        state = TrainState.create(model, optimizer, init_key)
        batches = jax.random.randint(batch_key, (iterations, batch_size), 0, x.shape[0])
        return jax.lax.scan(lambda s, idx: step(s, x[idx], y[idx]), state, batches)

    state, metrics = run(key)
    return state, np.asarray(metrics["loss"])


def accuracy(model: Model, state: TrainState, xt, yt) -> float:
    return round(evaluate(model, state, xt, yt), 4)


def compare_loss_curves(runs, data, *, iterations: int, key: jax.Array, desc: str):
    """Train each ``name -> (model, optimizer)`` with :func:`train_iterations`.

    Every run gets the same key (same initial draws, same mini-batches), so
    the curves differ only by what the runs vary. Returns per-step losses
    and test accuracies keyed by name.
    """
    from tqdm.auto import tqdm

    (x, y), (xt, yt) = data
    losses, accuracies = {}, {}
    for name, (model, optimizer) in tqdm(runs.items(), desc=desc, leave=False):
        state, loss = train_iterations(
            model, optimizer, x, y, iterations=iterations, batch_size=128, key=key
        )
        losses[name] = [round(float(v), 5) for v in loss]
        accuracies[name] = accuracy(model, state, xt, yt)
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


def train_test_curves(curves: dict[str, jax.Array]) -> dict[str, list[float]]:
    """A run's per-epoch accuracies from :func:`~purelearn.training.train_run`'s curves."""
    return {
        "train_acc": np.round(np.asarray(curves["train_accuracy"]), 4).tolist(),
        "test_acc": np.round(np.asarray(curves["eval_accuracy"]), 4).tolist(),
    }
