"""The loops a user calls: ``train_run`` (a whole run, one program) and ``fit`` (a host loop).

Both run the same compiled epoch (:mod:`.epoch`), on the same key streams,
so they give the same numbers; ``fit`` adds a progress bar, an
early-stopping break, per-epoch callbacks and resuming from a state.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from purelearn import _checks, distributed
from purelearn._tree import unaliased
from purelearn.checkpoints import Checkpoints
from purelearn.early_stopping import METRICS, EarlyStopping
from purelearn.models import Model
from purelearn.training import epoch as programs
from purelearn.training.data import ArrayPair, Batch, check_data, check_distributed
from purelearn.training.packing import LAYOUTS
from purelearn.training.state import (
    TrainState,
    check_model,
    check_optimizer,
    check_state,
)
from purelearn.training.step import check_weight_decay

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
    train_data: ArrayPair,
    *,
    epochs: int,
    batch_size: int,
    key: jax.Array | int,
    eval_data: ArrayPair | None = None,
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
    out: tuple[TrainState, dict[str, jax.Array]] = programs.jitted_run(
        model, optimizer, plan, epochs, key, data, eval_data, weight_decay
    )
    return out


def _copy(tree: Any) -> Any:
    """A fresh copy, so that donating it leaves the caller's arrays usable."""
    return jax.tree.map(lambda a: a.copy(), tree)


def epochs_done(state: TrainState, steps_per_epoch: int) -> int:
    """The epochs a state has begun: its step count over the epoch's steps, rounded up."""
    return math.ceil(int(jax.device_get(state.step)) / steps_per_epoch)


def fit(
    model: Model,
    optimizer: optax.GradientTransformation,
    train_data: ArrayPair,
    *,
    epochs: int,
    batch_size: int,
    key: jax.Array | int | None = None,
    eval_data: ArrayPair | None = None,
    weight_decay: float = 0.0,
    early_stopping: EarlyStopping | None = None,
    progress: bool = True,
    state: TrainState | None = None,
    callback: Callable[[int, TrainState, dict[str, list[float]]], Any] | None = None,
    steps_per_epoch: int | None = None,
    sampling: str = "epoch",
    layout: str = "pytree",
    checkpoints: Checkpoints | None = None,
) -> tuple[TrainState, dict[str, list[float]]]:
    """Train for ``epochs`` epochs, as the textbook's ``Trainer`` does.

    A host loop around :func:`train_run`'s compiled epoch (a ``lax.scan`` of
    the step over the epoch's batches, then the model evaluated in inference
    mode on the training data and on ``eval_data``, on the device): the same
    numbers as :func:`train_run`, plus a progress bar, an early-stopping
    break and a per-epoch callback. A second identical call compiles nothing.

    Surviving interruptions: with ``checkpoints=pl.Checkpoints(directory)``
    the run saves, after every epoch, everything that decides its future
    (the state, early stopping's counters and best state, the history, the
    epoch count) as one atomic step. Called again with the same arguments
    (a restarted script), ``fit`` continues from the newest complete record
    there, and finishes with the parameters, history and early stop of the
    uninterrupted run, bit for bit; a finished run returns at once. An
    empty directory starts afresh (from ``state`` or ``key``).

    Resuming by hand: ``fit(state=s)`` continues where ``s`` stopped. Its
    epochs are numbered on from ``s``'s (``ceil(s.step / steps_per_epoch)``
    epochs are done), in ``history["epoch"]`` and the callback's ``epoch``;
    batches and dropout keys follow ``s.step``, so fitting 4 epochs and then
    6 more from the result gives the 10-epoch run's parameters bit for bit
    (early stopping starts afresh, which ``checkpoints=`` avoids).

    Args:
      model, optimizer, weight_decay: as in :func:`make_train_step`.
      train_data: ``(x, y)`` with integer or one-hot labels.
      epochs: number of epochs the run trains (at most; early stopping may
        end sooner), counted from its start: a run resumed from
        ``checkpoints`` trains only the epochs it has left.
      batch_size: examples per step.
      key: the run's key or an int seed; not needed when ``state`` is given.
      eval_data: optional ``(x, y)`` evaluated after every epoch.
      early_stopping: an :class:`~purelearn.early_stopping.EarlyStopping`
        (its monitor defaults to eval accuracy, else train accuracy).
      progress: show a tqdm progress bar.
      state: start from this :class:`TrainState` (e.g. a loaded checkpoint);
        it must be this model's and optimizer's (``ValueError`` naming both
        otherwise), and it stays usable.
      callback: ``callback(epoch, state, history)`` after each epoch, with
        ``epoch`` counted from the run's start (0-based); a truthy return
        value stops training. ``state`` is the state after that epoch and
        stays valid (save it, keep it).
      steps_per_epoch, sampling, layout: as in :func:`train_run`.
      checkpoints: a :class:`~purelearn.checkpoints.Checkpoints` directory
        to save the run's record in after every epoch and to resume from.

    Returns:
      ``(state, history)``; ``history`` has per-epoch lists "epoch" (0-based,
      counted from the run's start), "loss" (mean training loss),
      "train_accuracy", "eval_accuracy" (with ``eval_data``), "best_epoch"
      (with ``EarlyStopping(restore_best=True)``: the epoch whose state would
      be returned after this one; None while no epoch has improved on the
      start) and "step_loss" (every step's loss, all epochs in one list).

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
    if checkpoints is not None and not isinstance(checkpoints, Checkpoints):
        raise ValueError(
            f"checkpoints must be a pl.Checkpoints(directory) or None, got {checkpoints!r}"
        )
    if state is not None:
        check_state(state, model, optimizer)
    record = _latest_record(checkpoints, plan, model, optimizer)
    start = state
    if start is None and key is not None:
        start = TrainState.create(model, optimizer, _checks.key_or_seed("key", key))
    fingerprint = None
    if checkpoints is not None:
        fingerprint = _fingerprint(plan, optimizer, start, data, eval_data, weight_decay)
    if record is not None:
        carry, run = record
        assert checkpoints is not None  # a record is read from a checkpoint directory
        _check_same_run(checkpoints, run.get("fingerprint", {}), fingerprint)
        # a rerun without key or state cannot probe everything: keep what the record knows
        fingerprint = {**run.get("fingerprint", {}), **(fingerprint or {})}
        first, history = run["first"], run["history"]
        state = carry.state
    else:
        if start is None:
            raise ValueError("fit needs a key (or an int seed), or a state to resume from")
        state = _copy(state) if state is not None else start  # the caller's stays usable
        first = epochs_done(state, plan.steps)
        history = _fresh_history(plan)
        carry = programs.start(plan, state)
    carry = distributed.replicate_for(unaliased(carry), data[0])
    done = len(history["epoch"])

    bar = tqdm(
        range(first + done, first + epochs),
        disable=not progress,
        desc="fit",
        unit="epoch",
        initial=done,
        total=epochs,
    )
    for epoch in bar:
        if _stopped(carry):  # a resumed run that had stopped already
            break
        carry, curves = programs.jitted_epoch(
            model, optimizer, plan, unaliased(carry), data, eval_data, weight_decay
        )
        _record_epoch(history, epoch, jax.device_get(curves), carry, plan)
        bar.set_postfix({k: history[k][-1] for k in METRICS if k in history})
        if checkpoints is not None:
            tree = {"state": carry.state, "stopper": carry.stopper, "best": carry.best}
            run = {"first": first, "history": history, "fingerprint": fingerprint}
            checkpoints.save_record(tree, step=carry.state.step, history=history, run=run)
        if callback is not None:
            # the next epoch takes a copy: the state the callback saw stays valid
            seen = carry.state
            carry = carry._replace(state=_copy(seen))
            if callback(epoch, seen, history):
                break
        if _stopped(carry):
            break
    bar.close()
    return programs.finish(plan, carry), history


def _digest(*trees: Any) -> str:
    """A short hash of arrays' shapes, dtypes and bytes (shapes only for arrays that span
    processes, which no process can read whole)."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(trees):
        if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        h.update(f"{np.shape(leaf)}{getattr(leaf, 'dtype', type(leaf))}".encode())
        if not distributed.spans_processes(leaf):
            h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return h.hexdigest()[:16]


def _fingerprint(
    plan: programs.Plan,
    optimizer: optax.GradientTransformation,
    start: TrainState | None,
    data: Batch,
    eval_data: Batch | None,
    weight_decay: Any,
) -> dict[str, str]:
    """What makes a checkpointed run this run: settings, data, optimizer, starting state.

    The optimizer's hyperparameters live in closures, so it is known by what it does:
    one update of ones from the starting state (every schedule at step 0)."""
    out = {
        "settings": repr(plan._replace(data_sharding=None)),
        "weight_decay": _digest(weight_decay),
        "data": _digest(data, eval_data),
    }
    if start is not None:
        ones = jax.tree.map(jnp.ones_like, start.params)
        probe, _ = _probe(optimizer, ones, start.opt_state, start.params)
        out["optimizer"] = _digest(probe)
        out["start"] = _digest(start)
    return out


@functools.partial(jax.jit, static_argnums=0)
def _probe(
    optimizer: optax.GradientTransformation, grads: Any, opt_state: Any, params: Any
) -> tuple[Any, Any]:
    return optimizer.update(grads, opt_state, params)


def _check_same_run(
    checkpoints: Checkpoints, saved: dict[str, str], now: dict[str, str] | None
) -> None:
    """``ValueError`` when the record in ``checkpoints`` is of a run with other settings,
    data, optimizer hyperparameters or starting state than this call's."""
    differ = sorted(k for k in saved if now is not None and k in now and saved[k] != now[k])
    if differ:
        raise ValueError(
            f"{checkpoints.directory} holds a run with other {', '.join(differ)} than this "
            f"call's (it would continue that run, not this one): rerun with the arguments "
            f"that made it, or give this run another directory"
        )


def _fresh_history(plan: programs.Plan) -> dict[str, list[Any]]:
    history: dict[str, list[Any]] = {"epoch": [], "loss": [], "train_accuracy": []}
    if plan.has_eval:
        history["eval_accuracy"] = []
    if plan.early_stopping is not None and plan.early_stopping.restore_best:
        history["best_epoch"] = []
    history["step_loss"] = []
    return history


def _record_epoch(
    history: dict[str, list[Any]],
    epoch: int,
    curves: dict[str, Any],
    carry: programs.Carry,
    plan: programs.Plan,
) -> None:
    """Append one epoch's numbers (on the host) to ``history``."""
    history["epoch"].append(epoch)
    history["step_loss"].extend(np.asarray(curves["step_loss"]).tolist())
    for name in METRICS:
        if name in history:
            history[name].append(float(curves[name]))
    if "best_epoch" in history:
        # the stopper's wait is 0 exactly when this epoch improved (and so became the best);
        # before any improvement (a NaN metric) the best state is the starting one: None
        assert carry.stopper is not None  # best_epoch is kept with early stopping only
        improved = int(jax.device_get(carry.stopper.wait)) == 0
        before = history["best_epoch"][-1] if history["best_epoch"] else None
        history["best_epoch"].append(epoch if improved else before)


def _stopped(carry: programs.Carry) -> bool:
    return carry.stopper is not None and bool(jax.device_get(carry.stopper.should_stop))


def _latest_record(
    checkpoints: Checkpoints | None,
    plan: programs.Plan,
    model: Model,
    optimizer: optax.GradientTransformation,
) -> tuple[programs.Carry, dict[str, Any]] | None:
    """The carry and run metadata of the newest record in ``checkpoints``, if any."""
    if checkpoints is None:
        return None
    like = jax.eval_shape(lambda: programs.start(plan, TrainState.create(model, optimizer, 0)))
    like_tree = {"state": like.state, "stopper": like.stopper, "best": like.best}
    try:
        found = checkpoints.latest_record(like_tree)
    except ValueError as err:
        raise ValueError(
            # (what differs is in err; the model's and optimizer's reprs are closures)
            f"the run record in {checkpoints.directory} was not made with this model, "
            f"optimizer and early stopping (early_stopping {plan.early_stopping!r}): {err}. "
            f"Resume with the arguments that made it, or use another directory"
        ) from err
    if found is None:
        return None
    tree, run = found
    return programs.Carry(tree["state"], tree["stopper"], tree["best"]), run
