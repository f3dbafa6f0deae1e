"""What several experiments share: data loading and iteration-based training."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from purelearn.datasets import load_mnist
from purelearn.models import Model
from purelearn.training import TrainState, evaluate, make_train_step


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
