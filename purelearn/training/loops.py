"""The loops a user calls: ``train_run`` (a whole run, one program) and ``fit`` (a host loop).

Both run the same compiled epoch (:mod:`.epoch`), on the same key streams,
so they give the same numbers; ``fit`` adds a progress bar, an
early-stopping break, per-epoch callbacks and resuming from a state.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax

from purelearn import _checks, distributed
from purelearn.early_stopping import METRICS, EarlyStopping
from purelearn.models import Model
from purelearn.training import epoch as programs
from purelearn.training.data import Batch, check_data, check_distributed
from purelearn.training.packing import LAYOUTS
from purelearn.training.state import TrainState, check_model, check_optimizer, check_state
from purelearn.training.step import check_weight_decay, unaliased

__all__ = ["train_run", "fit", "validate_run"]


def validate_run(
    model: Any,
    optimizer: Any,
    train_data: Any,
    *,
    epochs: Any,
    batch_size: Any,
    eval_data: Any,
    weight_decay: Any,
    early_stopping: Any,
    steps_per_epoch: Any,
    sampling: Any,
    layout: Any = "pytree",
) -> tuple[programs.Plan, Batch, Batch | None, Any]:
    """Everything a run takes, checked before anything is traced."""
    model = check_model(model)
    check_optimizer(optimizer)
    _checks.positive_int("epochs", epochs)
    batch_size = _checks.positive_int("batch_size", batch_size)
    _checks.choice("sampling", sampling, ("epoch", "random"))
    _checks.choice("layout", layout, LAYOUTS)
    weight_decay = check_weight_decay(weight_decay)
    if early_stopping is not None and not isinstance(early_stopping, EarlyStopping):
        raise ValueError(
            f"early_stopping must be a pl.EarlyStopping(...) or None, got {early_stopping!r}"
        )
    data, eval_data = check_data(
        model, train_data, eval_data, batch_size=batch_size, sampling=sampling
    )
    plan = programs.plan(
        data[0].shape[0],
        batch_size=batch_size,
        steps_per_epoch=steps_per_epoch,
        sampling=sampling,
        weight_decay=weight_decay,
        has_eval=eval_data is not None,
        early_stopping=early_stopping,
        data_sharding=check_distributed(data, eval_data, batch_size),
        layout=layout,
    )
    return plan, data, eval_data, weight_decay


def train_run(
    model: Model,
    optimizer: optax.GradientTransformation,
    train_data: Batch,
    *,
    epochs: int,
    batch_size: int,
    key: jax.Array | int,
    eval_data: Batch | None = None,
    weight_decay: float | jax.Array = 0.0,
    early_stopping: EarlyStopping | None = None,
    steps_per_epoch: int | None = None,
    sampling: str = "epoch",
    layout: str = "pytree",
) -> tuple[TrainState, dict[str, jax.Array]]:
    """A whole training run as one compiled function: ``vmap`` it over keys or hyperparameters.

    The same epochs as :func:`fit` (the same compiled epoch, the same key
    streams, so the same numbers), as a ``lax.scan`` over epochs with no
    Python in the loop. Inside ``jax.jit`` and ``jax.vmap`` it trains many
    runs as one program (the key, the weight decay, and hyperparameters
    injected with ``optax.inject_hyperparams`` may be traced). Called
    directly, its program is cached: a second call with the same model,
    optimizer, shapes and settings compiles nothing.

    Early stopping is a mask, not a break: the scan always runs ``epochs``
    epochs, but once ``early_stopping`` fires (on its monitored metric,
    checked after each epoch as :func:`fit` does) the state stops changing,
    so a vmapped run stops on its own while its neighbours go on. The state
    returned is the one :func:`fit` would return (the best epoch's with
    ``restore_best``).

    Args:
      model, optimizer, weight_decay: as in :func:`make_train_step`.
      train_data: ``(x, y)`` with integer or one-hot labels.
      epochs: number of epochs.
      batch_size: examples per step.
      key: the run's key, or an int seed.
      eval_data: optional ``(x, y)`` evaluated after every epoch.
      early_stopping: an :class:`~purelearn.early_stopping.EarlyStopping`.
      steps_per_epoch, sampling: how batches are drawn (see
        :mod:`purelearn.training.epoch`); ``sampling="random"`` with
        ``steps_per_epoch`` is the textbook's iteration-based loop.
      layout: how the program stores the state while it runs. ``"pytree"``
        (default): as the model and optimizer make it, the numbers of
        :func:`make_train_step`. ``"auto"`` or ``"contiguous"``: packed into a
        few buffers inside the program where the optimizer's rule allows it
        (see :func:`~purelearn.training.packing.storage_for`), faster with
        many small leaves; XLA compiles that program differently, so losses
        and some optimizers' updates can differ in the last bit. The state
        returned is the ordinary pytree either way.

    Returns:
      ``(state, curves)``; ``curves`` holds per-epoch arrays "loss",
      "train_accuracy", "eval_accuracy" (with ``eval_data``), "step_loss"
      (``(epochs, steps)``: every step's loss) and, with ``early_stopping``,
      "trained" (bool: whether that epoch trained). After a stop the curves
      repeat their last trained values.

    Example:
      >>> import jax, jax.numpy as jnp, optax, purelearn as pl
      >>> x = jax.random.normal(jax.random.key(1), (64, 2))
      >>> y = (x[:, 0] > 0).astype(jnp.int32)
      >>> def run(lr):
      ...     opt = optax.inject_hyperparams(pl.sgd)(learning_rate=lr)
      ...     return pl.train_run(pl.mlp([2, 8, 2]), opt, (x, y), epochs=10, batch_size=16,
      ...                         key=0)[1]["train_accuracy"]
      >>> jax.jit(jax.vmap(run))(jnp.array([0.0, 0.5])).shape
      (2, 10)
    """
    plan, data, eval_data, weight_decay = validate_run(
        model,
        optimizer,
        train_data,
        epochs=epochs,
        batch_size=batch_size,
        eval_data=eval_data,
        weight_decay=weight_decay,
        early_stopping=early_stopping,
        steps_per_epoch=steps_per_epoch,
        sampling=sampling,
        layout=layout,
    )
    key = _checks.key_or_seed("key", key)
    return programs.jitted_run(model, optimizer, plan, epochs, key, data, eval_data, weight_decay)


def _copy(tree: Any) -> Any:
    """A fresh copy, so that donating it leaves the caller's arrays usable."""
    return jax.tree.map(lambda a: a.copy(), tree)


def epochs_done(state: TrainState, steps_per_epoch: int) -> int:
    """The epochs a state has begun: its step count over the epoch's steps, rounded up."""
    return math.ceil(int(jax.device_get(state.step)) / steps_per_epoch)


def fit(
    model: Model,
    optimizer: optax.GradientTransformation,
    train_data: Batch,
    *,
    epochs: int,
    batch_size: int,
    key: jax.Array | int | None = None,
    eval_data: Batch | None = None,
    weight_decay: float = 0.0,
    early_stopping: EarlyStopping | None = None,
    progress: bool = True,
    state: TrainState | None = None,
    callback: Callable[[int, TrainState, dict[str, list[float]]], Any] | None = None,
    steps_per_epoch: int | None = None,
    sampling: str = "epoch",
    layout: str = "pytree",
) -> tuple[TrainState, dict[str, list[float]]]:
    """Train for ``epochs`` epochs, as the textbook's ``Trainer`` does.

    A host loop around :func:`train_run`'s compiled epoch (a ``lax.scan`` of
    the step over the epoch's batches, then the model evaluated in inference
    mode on the training data and on ``eval_data``, on the device): the same
    numbers as :func:`train_run`, plus a progress bar, an early-stopping
    break and a per-epoch callback. A second identical call compiles nothing.

    Resuming: ``fit(state=s)`` continues where ``s`` stopped. Its epochs are
    numbered on from ``s``'s (``ceil(s.step / steps_per_epoch)`` epochs are
    done), in ``history["epoch"]`` and the callback's ``epoch``; batches and
    dropout keys follow ``s.step``, so fitting 4 epochs and then 6 more from
    the result gives the 10-epoch run bit for bit.

    Args:
      model, optimizer, weight_decay: as in :func:`make_train_step`.
      train_data: ``(x, y)`` with integer or one-hot labels.
      epochs: number of epochs to train in this call (at most; early stopping
        may end sooner).
      batch_size: examples per step.
      key: the run's key or an int seed; not needed when ``state`` is given.
      eval_data: optional ``(x, y)`` evaluated after every epoch.
      early_stopping: an :class:`~purelearn.early_stopping.EarlyStopping`
        (its monitor defaults to eval accuracy, else train accuracy).
      progress: show a tqdm progress bar.
      state: continue from this :class:`TrainState` (e.g. a loaded
        checkpoint); it must be this model's and optimizer's (``ValueError``
        naming both otherwise), and it stays usable.
      callback: ``callback(epoch, state, history)`` after each epoch, with
        ``epoch`` counted from the run's start (0-based); a truthy return
        value stops training. ``state`` is the state after that epoch and
        stays valid (save it, keep it).
      steps_per_epoch, sampling, layout: as in :func:`train_run`.

    Returns:
      ``(state, history)``; ``history`` has per-epoch lists "epoch" (0-based,
      counted from the run's start), "loss" (mean training loss),
      "train_accuracy", "eval_accuracy" (with ``eval_data``), and
      "step_loss" (every step's loss, all epochs in one list).

    Example:
      >>> import jax, jax.numpy as jnp, purelearn as pl
      >>> x = jax.random.normal(jax.random.key(1), (64, 2))
      >>> y = (x[:, 0] > 0).astype(jnp.int32)
      >>> state, history = pl.fit(pl.mlp([2, 8, 2]), pl.adam(0.05), (x, y), epochs=20,
      ...                         batch_size=16, key=0, progress=False)
      >>> history["train_accuracy"][-1] > 0.9, history["epoch"][:3]
      (True, [0, 1, 2])
    """
    from tqdm.auto import tqdm

    plan, data, eval_data, weight_decay = validate_run(
        model,
        optimizer,
        train_data,
        epochs=epochs,
        batch_size=batch_size,
        eval_data=eval_data,
        weight_decay=weight_decay,
        early_stopping=early_stopping,
        steps_per_epoch=steps_per_epoch,
        sampling=sampling,
        layout=layout,
    )
    if callback is not None and not callable(callback):
        raise ValueError(f"callback must be callable or None, got {callback!r}")
    if state is None:
        if key is None:
            raise ValueError("fit needs a key (or an int seed), or a state to resume from")
        state = TrainState.create(model, optimizer, _checks.key_or_seed("key", key))
    else:
        check_state(state, model, optimizer)
        state = _copy(state)
    first = epochs_done(state, plan.steps)
    state = distributed.replicate_for(unaliased(state), data[0])
    carry = programs.start(plan, state)
    history: dict[str, list[float]] = {"epoch": [], "loss": [], "train_accuracy": []}
    if eval_data is not None:
        history["eval_accuracy"] = []
    history["step_loss"] = []

    bar = tqdm(range(first, first + epochs), disable=not progress, desc="fit", unit="epoch")
    for epoch in bar:
        carry, curves = programs.jitted_epoch(
            model, optimizer, plan, unaliased(carry), data, eval_data, weight_decay
        )
        curves = jax.device_get(curves)
        history["epoch"].append(epoch)
        history["step_loss"].extend(np.asarray(curves["step_loss"]).tolist())
        for name in METRICS:
            if name in history:
                history[name].append(float(curves[name]))
        bar.set_postfix({k: history[k][-1] for k in METRICS if k in history})
        if callback is not None:
            # the next epoch takes a copy: the state the callback saw stays valid
            seen = carry.state
            carry = carry._replace(state=_copy(seen))
            if callback(epoch, seen, history):
                break
        if carry.stopper is not None and bool(carry.stopper.should_stop):
            break
    bar.close()
    return programs.finish(plan, carry), history
