"""The training step: loss, gradient, optimizer update, on a pytree or packed state.

The loss is the textbook's: softmax cross-entropy plus the L2 penalty
``0.5 * wd * sum(W**2)`` over the weight matrices. Randomness is explicit:
step ``t`` uses ``fold_in(dropout_root, t)`` where ``dropout_root,
shuffle_root = split(state.key)``, so no key is ever used twice and a
resumed run repeats an uninterrupted one bit for bit.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from purelearn import _checks, distributed
from purelearn._tree import unaliased
from purelearn.layout import Packed, views
from purelearn.models import Model
from purelearn.regularization import l2_penalty
from purelearn.training.packing import PackedState, check_packed_for
from purelearn.training.state import TrainState, check_model, check_optimizer, check_state

__all__ = ["make_train_step", "step_fn", "streams", "correct", "check_weight_decay", "decays"]

Metrics = dict[str, jax.Array]
State = TrainState | PackedState
Step = Callable[[Any, jax.Array, jax.Array], tuple[Any, Metrics]]


def check_weight_decay(weight_decay: Any) -> Any:
    return _checks.hyperparameter("weight_decay", weight_decay, low=0.0)


def decays(weight_decay: Any) -> bool:
    """Whether the penalty can be non-zero (a traced value might be)."""
    return not (_checks.is_real(weight_decay) and float(weight_decay) == 0.0)


def streams(state: State) -> tuple[jax.Array, jax.Array]:
    """The dropout and shuffle key streams: independent children of state.key."""
    dropout_root, shuffle_root = jax.random.split(state.key)
    return dropout_root, shuffle_root


def loss_and_accuracy(logits: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean softmax cross-entropy and accuracy, for integer or one-hot labels."""
    if y.ndim == logits.ndim:
        loss = optax.softmax_cross_entropy(logits, y)
    else:
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return loss.mean(), correct(logits, y).mean()


def correct(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Per example: predicted the label. Non-finite logits never count as correct
    (``argmax`` of NaNs is 0, which would score a diverged model as the class-0 share)."""
    labels = jnp.argmax(y, axis=-1) if y.ndim == logits.ndim else y
    finite = jnp.isfinite(logits).all(axis=-1)
    return (jnp.argmax(logits, axis=-1) == labels) & finite


def _all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.isfinite(a).all() for a in jax.tree.leaves(tree)]
    return jnp.stack(leaves).all() if leaves else jnp.array(True)


def step_fn(
    model: Model, optimizer: optax.GradientTransformation, decay: bool
) -> Callable[[State, jax.Array, jax.Array, Any], tuple[State, Metrics]]:
    """The un-jitted step ``step(state, x, y, weight_decay) -> (state, metrics)``.

    ``state`` is a :class:`~purelearn.TrainState` or a :class:`~purelearn.PackedState` (the same
    kind comes back). ``decay`` is static: False skips the penalty (weight
    decay known to be 0).
    """

    def loss_fn(
        params: Any,
        model_state: Any,
        x: jax.Array,
        y: jax.Array,
        key: jax.Array,
        weight_decay: Any,
        view: Callable[[Any], Any] | None,
    ) -> tuple[jax.Array, tuple[Any, jax.Array]]:
        params = params if view is None else view(params)
        logits, new_model_state = model.apply(params, model_state, x, train=True, key=key)
        data_loss, accuracy = loss_and_accuracy(logits, y)
        loss = data_loss + l2_penalty(params, weight_decay) if decay else data_loss
        return loss, (new_model_state, accuracy)

    def step(state: State, x: jax.Array, y: jax.Array, weight_decay: Any) -> tuple[State, Metrics]:
        dropout_root, _ = streams(state)
        key = jax.random.fold_in(dropout_root, state.step)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        packed = isinstance(state, PackedState)
        if isinstance(state, PackedState):
            # The model and the penalty read the leaves as slices of the buffers, the
            # gradient comes back as buffers, and the optimizer (proven leafwise for these
            # buffers) updates the buffers themselves.
            check_packed_for(state, optimizer)
            params, opt_state = state.params.raw, state.opt_state.raw
            view = functools.partial(views, state.params.storage)
        else:
            params, opt_state, view = state.params, state.opt_state, None
        (loss, (model_state, accuracy)), grads = grad_fn(
            params, state.model_state, x, y, key, weight_decay, view
        )
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        if packed:
            params = Packed(jax.tree.leaves(params), state.params.storage)
            opt_state = Packed(jax.tree.leaves(opt_state), state.opt_state.storage)
        # A batch whose loss or statistics are not finite (which optax.apply_if_finite
        # skips for the parameters) must not poison the running statistics for good.
        keep = jnp.isfinite(loss) & _all_finite(model_state)
        model_state = jax.tree.map(
            lambda new, old: jnp.where(keep, new, old), model_state, state.model_state
        )
        new_state = state._replace(
            step=state.step + 1, params=params, model_state=model_state, opt_state=opt_state
        )
        return new_state, {"loss": loss, "accuracy": accuracy}

    return step


def _step(
    model: Model,
    optimizer: optax.GradientTransformation,
    decay: bool,
    state: State,
    x: jax.Array,
    y: jax.Array,
    weight_decay: Any,
) -> tuple[State, Metrics]:
    return step_fn(model, optimizer, decay)(state, x, y, weight_decay)


_donating_step = jax.jit(_step, static_argnums=(0, 1, 2), donate_argnums=3)
_keeping_step = jax.jit(_step, static_argnums=(0, 1, 2))


def make_train_step(
    model: Model,
    optimizer: optax.GradientTransformation,
    *,
    weight_decay: float = 0.0,
    donate: bool = True,
) -> Step:
    """One jitted training step: ``step(state, x, y) -> (state, metrics)``.

    ``loss = mean softmax cross-entropy + 0.5 * weight_decay * sum(W**2)``
    (weight matrices only); ``grads = d loss / d params``; the optimizer's
    updates are applied and the model state (batch-norm statistics) replaced,
    unless the batch's loss or statistics are not finite, which leaves the
    statistics as they were. ``state`` is a :class:`TrainState` (the
    ordinary pytree) or a :class:`PackedState` (contiguous buffers kept
    across calls); the same kind comes back. With ``donate=True`` (default)
    the input state's buffers are donated: do not reuse it after the call
    (an array that appears twice in the state, as in optimizers that keep
    the parameters, is copied first); ``donate=False`` leaves it usable. The
    same function runs on one device or with ``x, y`` sharded over a
    ``jax.sharding.Mesh`` (data parallel; batch-norm statistics are global).
    The compiled program is cached on the model, optimizer and shapes: a
    second ``make_train_step`` with the same ones compiles nothing.

    Args:
      model: a :class:`~purelearn.models.Model`.
      optimizer: any ``optax.GradientTransformation``.
      weight_decay: the L2 penalty's ``lambda`` (the textbook's weight decay).
      donate: whether the step may reuse the input state's buffers.

    Returns:
      ``step``; its metrics are ``{"loss", "accuracy"}`` on the batch.

    Example:
      >>> import jax, jax.numpy as jnp, purelearn as pl
      >>> model, opt = pl.mlp([4, 3]), pl.sgd(0.1)
      >>> step = pl.make_train_step(model, opt)
      >>> state = pl.TrainState.create(model, opt, jax.random.key(0))
      >>> state, metrics = step(state, jnp.ones((8, 4)), jnp.zeros(8, jnp.int32))
      >>> int(state.step), sorted(metrics)
      (1, ['accuracy', 'loss'])
    """
    model = check_model(model)
    optimizer = check_optimizer(optimizer)
    weight_decay = check_weight_decay(weight_decay)
    if not isinstance(donate, bool):
        raise ValueError(f"donate must be a bool, got {donate!r}")
    decay = decays(weight_decay)
    jitted = _donating_step if donate else _keeping_step

    def step(state: State, x: jax.Array, y: jax.Array) -> tuple[State, Metrics]:
        if getattr(x, "shape", (None,))[:1] != getattr(y, "shape", (None,))[:1]:
            raise ValueError(
                f"x and y must hold the same number of examples, got x of shape "
                f"{getattr(x, 'shape', x)} and y of shape {getattr(y, 'shape', y)}"
            )
        if not isinstance(state, TrainState | PackedState):
            # reachable from callers without a type checker
            check_state(state, model, optimizer)  # type: ignore[unreachable]  # raises, naming it
        state = distributed.replicate_for(state, x)
        try:
            out: tuple[State, Metrics] = jitted(model, optimizer, decay, state, x, y, weight_decay)
            return out
        except jax.errors.JaxRuntimeError as err:
            # An array held twice (a state built by hand around an optimizer that keeps the
            # parameters; TrainState.create copies them) is refused before anything is
            # donated: copy the second and step again. Checking every call instead would
            # cost a pass over every leaf per step.
            if not (donate and "donate the same buffer twice" in str(err)):
                raise
            retried: tuple[State, Metrics] = jitted(
                model, optimizer, decay, unaliased(state), x, y, weight_decay
            )
            return retried
        except (TypeError, ValueError):
            if isinstance(state, TrainState):
                check_state(state, model, optimizer)  # the usual cause: say it plainly
            raise

    return step
