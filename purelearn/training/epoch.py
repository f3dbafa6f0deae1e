"""The compiled programs: an epoch (``fit``'s unit) and a whole run (``train_run``'s body).

An *epoch* is a ``lax.scan`` of the step over the epoch's batches followed
by an on-device evaluation (the metrics of
:data:`~purelearn.early_stopping.METRICS`); early stopping is a mask on it.
A *run* creates the state and scans epochs. Each program packs its state
when it starts and unpacks it when it ends (:mod:`.packing`, decided for the
optimizer in the program), so what goes in and comes out is the ordinary
:class:`~purelearn.training.state.TrainState`. Programs are cached on the
model, the optimizer and the static settings (:class:`Plan`).

Batches come one of two ways (``sampling``): ``"epoch"`` (default) shuffles
the training set every epoch and takes ``len(x) // batch_size`` disjoint
batches (the remainder dropped); ``"random"`` draws every batch with
replacement, as the textbook's iteration-based experiments do
(``np.random.choice(train_size, batch_size)``), ``steps_per_epoch`` of them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding

from purelearn import _checks, distributed
from purelearn.early_stopping import EarlyStopping, EarlyStoppingState
from purelearn.models import Model
from purelearn.training.data import Batch
from purelearn.training.packing import LAYOUTS, PackedState, pack_state, unpack_state
from purelearn.training.state import TrainState
from purelearn.training.step import Metrics, correct, decays, step_fn, streams

__all__ = ["Plan", "plan", "Carry", "epoch", "run", "jitted_epoch", "jitted_run", "start"]

State = TrainState | PackedState


class Plan(NamedTuple):
    """A run's static settings: every one of them is part of the compiled program."""

    batch_size: int
    steps: int  # per epoch
    sampling: str  # "epoch" or "random"
    decay: bool  # whether the L2 penalty can be non-zero
    has_eval: bool
    early_stopping: EarlyStopping | None
    monitor: str | None  # the metric early stopping watches
    # the training set's split over devices (data parallel), or None on one device
    data_sharding: NamedSharding | None = None
    layout: str = "pytree"  # how the program stores the state (packing.storage_for)


def plan(
    n: int,
    *,
    batch_size: int,
    steps_per_epoch: int | None,
    sampling: str,
    weight_decay: Any,
    has_eval: bool,
    early_stopping: EarlyStopping | None,
    data_sharding: NamedSharding | None = None,
    layout: str = "pytree",
) -> Plan:
    n = _checks.positive_int("n", n)
    batch_size = _checks.positive_int("batch_size", batch_size)
    if steps_per_epoch is None:
        steps = n // batch_size
    elif sampling == "epoch":
        raise ValueError(
            "steps_per_epoch goes with sampling='random'; an epoch of sampling='epoch' "
            f"is len(x) // batch_size = {n // batch_size} steps"
        )
    else:
        steps = _checks.positive_int("steps_per_epoch", steps_per_epoch)
    if steps < 1:
        raise ValueError(f"batch_size {batch_size} exceeds the {n} training examples")
    return Plan(
        batch_size=batch_size,
        steps=steps,
        sampling=sampling,
        decay=decays(weight_decay),
        has_eval=has_eval,
        early_stopping=early_stopping,
        monitor=early_stopping.watched(has_eval) if early_stopping is not None else None,
        data_sharding=data_sharding,
        layout=_checks.choice("layout", layout, LAYOUTS),
    )


def batches(state: State, n: int, plan: Plan) -> jax.Array:
    """The epoch's batch indices, ``(steps, batch_size)``, from the shuffle stream."""
    _, shuffle_root = streams(state)
    key = jax.random.fold_in(shuffle_root, state.step)
    if plan.sampling == "random":
        return jax.random.randint(key, (plan.steps, plan.batch_size), 0, n)
    order = jax.random.permutation(key, n)
    return order[: plan.steps * plan.batch_size].reshape(plan.steps, plan.batch_size)


def _accuracy(model: Model, state: State, x: jax.Array, y: jax.Array) -> jax.Array:
    params = state.params.tree if isinstance(state, PackedState) else state.params
    logits, _ = model.apply(params, state.model_state, x, train=False)
    return correct(logits, y).mean()


class Carry(NamedTuple):
    """What one epoch hands the next: the state, early stopping's, and the best state."""

    state: Any  # TrainState, or PackedState inside a program
    stopper: EarlyStoppingState | None
    best: Any  # the best epoch's state with restore_best, else None


def _select(take_old: jax.Array, old: State, new: State) -> State:
    # the key never changes within a run, and key arrays do not go through jnp.where
    # (a None key is an empty subtree: the states are used as pytrees only, here)
    merged = jax.tree.map(
        lambda n, o: jnp.where(take_old, o, n),
        new._replace(key=None),  # type: ignore[arg-type]
        old._replace(key=None),  # type: ignore[arg-type]
    )
    selected: State = merged._replace(key=new.key)
    return selected


def epoch(
    model: Model,
    optimizer: optax.GradientTransformation,
    plan: Plan,
    carry: Carry,
    data: Batch,
    eval_data: Batch | None,
    weight_decay: Any,
) -> tuple[Carry, Metrics]:
    """One epoch on whatever storage the carry holds: train, evaluate (inference mode,
    whole sets), update early stopping.

    Once early stopping has fired the epoch still runs but its result is
    discarded (a mask, so vmapped runs stop on their own); "trained" says so.
    """
    x, y = data
    step = step_fn(model, optimizer, plan.decay)
    order = batches(carry.state, x.shape[0], plan)
    shard, whole = plan.data_sharding, distributed.replicated(plan.data_sharding)
    trained, metrics = jax.lax.scan(
        lambda s, idx: step(
            s,
            distributed.gather_rows(x, idx, shard),
            distributed.gather_rows(y, idx, shard),
            weight_decay,
        ),
        distributed.place(carry.state, whole),
        order,
    )
    es = plan.early_stopping
    # start() gives the carry a stopper state exactly when the plan stops early
    stopper_in = carry.stopper
    assert (stopper_in is None) == (es is None)
    stopped = stopper_in.should_stop if stopper_in is not None else jnp.array(False)
    state = _select(stopped, carry.state, trained) if es is not None else trained
    curves = {"loss": metrics["loss"].mean(), "train_accuracy": _accuracy(model, state, x, y)}
    if eval_data is not None:
        curves["eval_accuracy"] = _accuracy(model, state, *eval_data)
    curves["step_loss"] = metrics["loss"]
    # Replicated results: every process reads the same metrics and holds the whole state.
    state, curves = distributed.place((state, curves), whole)
    if es is None:
        return Carry(state, None, None), curves
    assert stopper_in is not None
    stopper = es.update(stopper_in, curves[plan.monitor])
    best = carry.best
    if es.restore_best:
        improved = (stopper.wait == 0) & ~stopped
        best = _select(~improved, carry.best, state)
    curves["trained"] = ~stopped
    return Carry(state, stopper, best), curves


def start(plan: Plan, state: TrainState) -> Carry:
    """The carry of a run that starts from ``state`` (early stopping fresh)."""
    es = plan.early_stopping
    if es is None:
        return Carry(state, None, None)
    best = jax.tree.map(jnp.copy, state) if es.restore_best else None
    return Carry(state, es.init(), best)


def finish(plan: Plan, carry: Carry) -> TrainState:
    es = plan.early_stopping
    final: TrainState = carry.best if es is not None and es.restore_best else carry.state
    return final


def _packed(carry: Carry, optimizer: optax.GradientTransformation, how: str) -> Carry:
    """The carry with its states packed for ``optimizer`` (inside a program)."""
    best = carry.best if carry.best is None else pack_state(carry.best, optimizer, how)
    return carry._replace(state=pack_state(carry.state, optimizer, how), best=best)


def _unpacked(carry: Carry) -> Carry:
    best = carry.best if carry.best is None else unpack_state(carry.best)
    return carry._replace(state=unpack_state(carry.state), best=best)


def fit_epoch(
    model: Model,
    optimizer: optax.GradientTransformation,
    plan: Plan,
    carry: Carry,
    data: Batch,
    eval_data: Batch | None,
    weight_decay: Any,
) -> tuple[Carry, Metrics]:
    """``fit``'s program: one epoch from a pytree carry to a pytree carry, packed inside."""
    carry, curves = epoch(
        model,
        optimizer,
        plan,
        _packed(carry, optimizer, plan.layout),
        data,
        eval_data,
        weight_decay,
    )
    return _unpacked(carry), curves


def run(
    model: Model,
    optimizer: optax.GradientTransformation,
    plan: Plan,
    epochs: int,
    key: jax.Array,
    data: Batch,
    eval_data: Batch | None,
    weight_decay: Any,
) -> tuple[TrainState, Metrics]:
    """A whole run, pure: create the state, scan ``epochs`` epochs (train_run's body),
    packed from the first epoch to the last."""
    state = TrainState.create(model, optimizer, key)
    state = distributed.place(state, distributed.replicated(plan.data_sharding))
    carry = _packed(start(plan, state), optimizer, plan.layout)
    carry, curves = jax.lax.scan(
        lambda c, _: epoch(model, optimizer, plan, c, data, eval_data, weight_decay),
        carry,
        length=epochs,
    )
    if plan.early_stopping is not None:
        # Stopping is sticky, so the trained epochs are a prefix (never empty: the first
        # epoch always trains); a masked epoch's losses are those of a discarded update.
        last = curves["trained"].sum() - 1
        trained = curves["trained"]
        curves["loss"] = jnp.where(trained, curves["loss"], curves["loss"][last])
        curves["step_loss"] = jnp.where(
            trained[:, None], curves["step_loss"], curves["step_loss"][last]
        )
    return finish(plan, _unpacked(carry)), curves


jitted_run: jax.stages.Wrapped = jax.jit(run, static_argnums=(0, 1, 2, 3))
jitted_epoch: jax.stages.Wrapped = jax.jit(fit_epoch, static_argnums=(0, 1, 2), donate_argnums=3)
