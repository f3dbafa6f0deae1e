"""The data a training run takes, checked against the model before anything is traced."""

from __future__ import annotations

import functools
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.typing import ArrayLike

from purelearn import _checks, distributed
from purelearn._cache import memoize
from purelearn.models import Model

__all__ = ["Batch", "ArrayPair", "check_data", "check_labels", "check_distributed"]

Batch = tuple[jax.Array, jax.Array]
#: ``(x, y)`` as the training functions take it, NumPy or JAX arrays: checked, then a Batch
ArrayPair = tuple[ArrayLike, ArrayLike]


@memoize
def _output_shape(model: Model, example_shape: tuple[int, ...], dtype: Any) -> tuple[int, ...]:
    """The model's output shape for one example, traced abstractly (no compute), once."""
    params, model_state = jax.eval_shape(model.init, jax.random.key(0))
    x = jax.ShapeDtypeStruct((1, *example_shape), dtype)
    out, _ = jax.eval_shape(functools.partial(model.apply, train=False), params, model_state, x)
    shape: tuple[int, ...] = out.shape
    return shape


def check_labels(name: str, model: Model, x: jax.Array, y: jax.Array) -> None:
    """Labels the loss can use: integers in ``[0, classes)`` or one-hot rows of ``classes``.

    Out-of-range labels make the cross-entropy NaN without an error, so they
    are refused here, on the host, before anything trains.
    """
    try:
        logits = _output_shape(model, tuple(x.shape[1:]), x.dtype)
    except (TypeError, ValueError) as err:  # shape errors (jax's, the models' own): say so
        # instead of a deep trace; any other error is the model's own and stands as it is
        raise ValueError(
            f"{name}: the model cannot be applied to inputs of shape {tuple(x.shape[1:])} "
            f"per example: {err}"
        ) from err
    classes = logits[-1]
    if y.ndim == len(logits):
        if y.shape[1:] != logits[1:]:
            raise ValueError(
                f"{name}: one-hot labels of shape {tuple(y.shape[1:])} per example do not "
                f"match the model's {classes} outputs"
            )
        return
    if not jax.numpy.issubdtype(y.dtype, jax.numpy.integer):
        raise ValueError(f"{name}: labels must be integers (or one-hot rows), got {y.dtype}")
    if y.size and not isinstance(y, jax.core.Tracer):
        if distributed.spans_processes(y):  # no host copy: reduce on the devices
            lo, hi = distributed.min_max(y)
        else:
            labels = np.asarray(y)  # on the host: jnp would trace under a caller's jit
            lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= classes:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"{name}: label {bad} is outside [0, {classes}) for a model with {classes} outputs"
            )


def check_data(
    model: Model,
    train_data: Any,
    eval_data: Any = None,
    *,
    batch_size: int,
    sampling: str = "epoch",
    eval_name: str = "eval_data",
) -> tuple[Batch, Batch | None]:
    """Both data sets as arrays, checked against each other and against the model.

    Raises ``ValueError`` for pairs of unequal lengths, empty sets, a batch
    larger than the training set, inputs the model cannot take, and labels
    that are not integers in ``[0, classes)`` (or one-hot rows of
    ``classes``): out-of-range labels would train to a NaN loss silently.
    """
    if not isinstance(model, Model):
        raise ValueError(f"model must be a pl.Model (pl.mlp, pl.from_flax), got {model!r}")
    batch_size = _checks.positive_int("batch_size", batch_size)
    _checks.choice("sampling", sampling, ("epoch", "random"))
    x, y = _checks.pair("train_data", train_data)
    if sampling == "epoch" and batch_size > len(x):
        raise ValueError(f"batch_size {batch_size} exceeds the {len(x)} training examples")
    check_labels("train_data", model, x, y)
    if eval_data is None:
        return (x, y), None
    ex, ey = _checks.pair(eval_name, eval_data)
    if ex.shape[1:] != x.shape[1:] or ey.shape[1:] != y.shape[1:]:
        raise ValueError(
            f"{eval_name}'s shapes {tuple(ex.shape[1:])} / {tuple(ey.shape[1:])} per example "
            f"differ from train_data's {tuple(x.shape[1:])} / {tuple(y.shape[1:])}"
        )
    check_labels(eval_name, model, ex, ey)
    return (x, y), (ex, ey)


def check_distributed(
    data: Batch, eval_data: Batch | None, batch_size: int
) -> NamedSharding | None:
    """The data-parallel layout of a training set split over devices, checked: labels
    split like the inputs, batches that split evenly, and (across processes) no set
    held by one process only, which would be taken for the whole set."""
    sharding = distributed.data_sharding(data[0])
    if sharding is None:
        if distributed.spans_processes(data[0]) or distributed.spans_processes(data[1]):
            raise ValueError(
                "train_data spans processes but is not split along its examples over a "
                "mesh; build it with pl.distributed.global_batch"
            )
        return None
    if distributed.data_sharding(data[1]) != sharding:
        raise ValueError(
            f"train_data's labels must be split over the devices like its inputs "
            f"({sharding.spec}), got {getattr(data[1], 'sharding', None)}"
        )
    devices = (
        sharding.mesh.shape[sharding.spec[0]]
        if isinstance(sharding.spec[0], str)
        else (int(np.prod([sharding.mesh.shape[a] for a in sharding.spec[0]])))
    )
    if batch_size % devices:
        raise ValueError(
            f"batch_size {batch_size} does not split evenly over the {devices} devices "
            f"the training set is split over"
        )
    if distributed.spans_processes(data[0]) and eval_data is not None:
        if not all(distributed.spans_processes(a) for a in eval_data):
            raise ValueError(
                "train_data spans processes but eval_data does not: build eval_data "
                "from every process's rows with pl.distributed.global_batch too"
            )
    return sharding
