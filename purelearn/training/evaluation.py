"""Accuracy in inference mode, on the device, chunk by chunk."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding

from purelearn import _checks, distributed
from purelearn.models import Model
from purelearn.training.data import check_labels
from purelearn.training.packing import PackedState, unpack_state
from purelearn.training.state import TrainState, check_model
from purelearn.training.step import correct

__all__ = ["evaluate"]


@functools.partial(jax.jit, static_argnums=0)
def _count_correct(
    model: Model, params: Any, model_state: Any, x: jax.Array, y: jax.Array
) -> jax.Array:
    logits, _ = model.apply(params, model_state, x, train=False)
    return correct(logits, y).sum()


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _count_correct_chunked(
    model: Model,
    chunk: int,
    sharding: NamedSharding | None,
    params: Any,
    model_state: Any,
    x: jax.Array,
    y: jax.Array,
) -> jax.Array:
    """The correct predictions on all of ``x`` in chunks of ``chunk`` rows, on the devices.

    The last chunk overlaps the one before; the rows already counted are masked out."""
    n = x.shape[0]
    starts = jnp.minimum(jnp.arange(0, n, chunk), n - chunk)

    def count(i: jax.Array, start: jax.Array) -> jax.Array:
        xs = jax.lax.dynamic_slice_in_dim(x, start, chunk)
        ys = jax.lax.dynamic_slice_in_dim(y, start, chunk)
        logits, _ = model.apply(params, model_state, xs, train=False)
        fresh = start + jnp.arange(chunk) >= i * chunk
        return (correct(logits, ys) & fresh).sum()

    counts = jax.lax.map(lambda a: count(*a), (jnp.arange(starts.shape[0]), starts))
    total: jax.Array = distributed.place(counts.sum(), distributed.replicated(sharding))
    return total


def evaluate(
    model: Model,
    state: TrainState | PackedState,
    x: jax.Array,
    y: jax.Array,
    *,
    batch_size: int = 10_000,
) -> float:
    """Accuracy of the model in inference mode (running batch-norm statistics, no dropout).

    Computed on the device in chunks of ``batch_size`` examples; a prediction
    from non-finite logits counts as wrong. The program is cached on the
    model and the chunk shape.

    Example:
      >>> import jax, jax.numpy as jnp, purelearn as pl
      >>> model = pl.mlp([4, 3])
      >>> state = pl.TrainState.create(model, pl.sgd(), jax.random.key(0))
      >>> 0.0 <= pl.evaluate(model, state, jnp.ones((5, 4)), jnp.zeros(5, jnp.int32)) <= 1.0
      True
    """
    model = check_model(model)
    batch_size = _checks.positive_int("batch_size", batch_size)
    x, y = _checks.pair("(x, y)", (x, y))
    check_labels("(x, y)", model, x, y)
    state = unpack_state(state)
    sharding = distributed.data_sharding(x)
    if sharding is not None or distributed.spans_processes(x) or distributed.spans_processes(y):
        # A set split over devices (or processes) is never sliced on the host: one program
        # scores it chunk by chunk and returns the replicated count.
        if distributed.data_sharding(y) != sharding:
            raise ValueError(
                f"(x, y): the labels must be split over the devices like the inputs "
                f"({getattr(x, 'sharding', None)}), got {getattr(y, 'sharding', None)}"
            )
        state = distributed.replicate_for(state, x)
        chunk = min(batch_size, len(x))
        count = _count_correct_chunked(
            model, chunk, sharding, state.params, state.model_state, x, y
        )
        return float(distributed.to_host(count)) / len(x)
    correct_count = sum(
        _count_correct(
            model,
            state.params,
            state.model_state,
            x[start : start + batch_size],
            y[start : start + batch_size],
        )
        for start in range(0, len(x), batch_size)
    )
    return float(correct_count) / len(x)
