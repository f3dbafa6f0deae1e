"""The chapter's optimizers as pure optax ``GradientTransformation``\\ s.

Each factory returns an ``(init, update)`` pair over any pytree. ``update``
returns *updates* to be added to the parameters with ``optax.apply_updates``
(the learning rate and the sign are already applied), so every optimizer here
drops into ``optax.chain``, ``optax.inject_hyperparams``, ``optax.MultiSteps``,
``optax.masked`` and ``optax.apply_if_finite`` like optax's own.

The update rules are the textbook's (``v`` velocity, ``h`` squared-gradient
accumulator, ``m``/``v`` Adam moments, ``t`` the step count starting at 1)::

    sgd       w -= lr*g
    momentum  v = a*v - lr*g;                w += v
    nesterov  w += a*a*v - (1+a)*lr*g;       v = a*v - lr*g
    adagrad   h += g*g;                      w -= lr*g / (sqrt(h) + eps)
    rmsprop   h = d*h + (1-d)*g*g;           w -= lr*g / (sqrt(h) + eps)
    adam      m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g*g
              w -= lr * m/(1-b1**t) / (sqrt(v/(1-b2**t)) + eps)
    adamw     adam's step plus lr*wd*w (decoupled weight decay)

Every scalar hyperparameter may be a Python number, a JAX array or an optax
schedule (a function of the update count, called with 0 on the first update).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from purelearn._tree import leaf_mask

__all__ = [
    "SgdState",
    "MomentumState",
    "AdaGradState",
    "RMSPropState",
    "AdamState",
    "sgd",
    "momentum",
    "nesterov",
    "adagrad",
    "rmsprop",
    "adam",
    "adamw",
]

ScalarOrSchedule = float | jax.Array | optax.Schedule
MaskOrFn = Any | Callable[[optax.Params], Any] | None


class SgdState(NamedTuple):
    """State of :func:`sgd`: only the update count (it drives schedules)."""

    count: jax.Array


class MomentumState(NamedTuple):
    """State of :func:`momentum` and :func:`nesterov`: the velocity ``v``."""

    count: jax.Array
    velocity: optax.Updates


class AdaGradState(NamedTuple):
    """State of :func:`adagrad`: the running sum of squared gradients ``h``."""

    count: jax.Array
    sum_of_squares: optax.Updates


class RMSPropState(NamedTuple):
    """State of :func:`rmsprop`: the moving average of squared gradients ``h``."""

    count: jax.Array
    mean_square: optax.Updates


class AdamState(NamedTuple):
    """State of :func:`adam` and :func:`adamw`: first and second moments."""

    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates


# -- construction-time checks ------------------------------------------------


def _check(name: str, value: Any, *, below_one: bool = False) -> None:
    """Reject a bad hyperparameter given as a plain number, before tracing.

    Arrays and schedules pass unchecked: they may be traced (``vmap`` over a
    learning rate) and reading them would force a device sync.
    """
    if callable(value) or isinstance(value, (jax.Array, jax.core.Tracer)):
        return
    if isinstance(value, (np.ndarray, np.generic)) and value.ndim == 0:
        value = value.item()  # a NumPy scalar is on the host: check it like a number
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, an array or a schedule, got {value!r}")
    v = float(value)
    if math.isnan(v) or math.isinf(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if v < 0:
        raise ValueError(f"{name} must be non-negative, got {value!r}")
    if below_one and v >= 1:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")


# -- one builder for every optimizer -------------------------------------------


def _transformation(
    state_type: type,
    rule: Callable[..., tuple],
    hyperparams: dict[str, ScalarOrSchedule],
    *,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
) -> optax.GradientTransformation:
    """Build an optimizer from a per-leaf ``rule``.

    ``rule(g, *buffers, count=t, **hyperparams) -> (update, *new_buffers)``
    runs on one leaf, with every hyperparameter already read off its schedule.
    With a non-zero ``weight_decay`` the rule also gets ``decayed=wd*w`` on the
    leaves ``mask`` selects. The state is ``state_type(count, *buffers)``, one
    zero buffer per field after ``count``, each shaped and typed like the
    parameters; updates and buffers keep the parameters' dtype.
    """
    num_buffers = len(state_type._fields) - 1
    decays = not (isinstance(weight_decay, numbers.Real) and weight_decay == 0)

    def init_fn(params: optax.Params) -> NamedTuple:
        buffers = [jax.tree.map(jnp.zeros_like, params) for _ in range(num_buffers)]
        return state_type(jnp.zeros([], jnp.int32), *buffers)

    def update_fn(updates: optax.Updates, state: NamedTuple, params=None):
        hp = {k: v(state.count) if callable(v) else v for k, v in hyperparams.items()}
        count = optax.safe_increment(state.count)

        def leaf(g, *buffers, **extra):
            update, *new = rule(g, *buffers, count=count, **hp, **extra)
            new = [b.astype(old.dtype) for b, old in zip(new, buffers, strict=True)]
            return (update.astype(g.dtype), *new)

        if decays:
            if params is None:
                raise ValueError(
                    "weight decay needs the parameters: call update(grads, state, params)"
                )
            wd = weight_decay(state.count) if callable(weight_decay) else weight_decay

            def decayed_leaf(g, flag, p, *buffers):
                return leaf(g, *buffers, decayed=wd * p) if flag else leaf(g, *buffers)

            flags = leaf_mask(mask, params, default=lambda _: True)
            out = jax.tree.map(decayed_leaf, updates, flags, params, *state[1:])
        else:
            out = jax.tree.map(leaf, updates, *state[1:])
        parts = [jax.tree.map(lambda _, o, i=i: o[i], updates, out) for i in range(num_buffers + 1)]
        return parts[0], state_type(count, *parts[1:])

    return optax.GradientTransformation(init_fn, update_fn)


# -- the update rules, one leaf at a time ------------------------------------


def _sgd_rule(g, *, count, learning_rate):
    del count
    return (-learning_rate * g,)


def _momentum_rule(g, v, *, count, learning_rate, momentum):
    # The textbook's velocity carries the learning rate, so a schedule scales
    # each gradient as it enters v rather than the whole of v.
    del count
    v = momentum * v - learning_rate * g
    return v, v


def _nesterov_rule(g, v, *, count, learning_rate, momentum):
    # a*a*v - (1+a)*lr*g written as a*v_new - lr*g: the same math, and the step
    # no longer reads the old v, so XLA updates v in place instead of copying it
    # (1.8x faster on one 4M array, benchmarks/bench_optimizers.py).
    del count
    v = momentum * v - learning_rate * g
    return momentum * v - learning_rate * g, v


def _adagrad_rule(g, h, *, count, learning_rate, eps):
    del count
    h = h + g * g
    return -learning_rate * g / (jnp.sqrt(h) + eps), h


def _rmsprop_rule(g, h, *, count, learning_rate, decay, eps):
    del count
    h = decay * h + (1 - decay) * g * g
    return -learning_rate * g / (jnp.sqrt(h) + eps), h


def _adam_rule(g, mu, nu, *, count, learning_rate, b1, b2, eps, decayed=None):
    # The operations and their order are optax's (scale_by_adam, then
    # add_decayed_weights, then the learning rate), so trajectories agree.
    mu = (1 - b1) * g + b1 * mu
    nu = (1 - b2) * (g**2) + b2 * nu
    # optax's jitted bias correction: computed eagerly, 1 - b**t rounds
    # differently, and un-jitted updates would drift from optax's by ~1e-5.
    mu_hat = optax.tree_utils.tree_bias_correction(mu, b1, count)
    nu_hat = optax.tree_utils.tree_bias_correction(nu, b2, count)
    direction = mu_hat / (jnp.sqrt(nu_hat) + eps)
    if decayed is not None:
        direction = direction + decayed
    return -learning_rate * direction, mu, nu


# -- the public factories ------------------------------------------------------


def sgd(learning_rate: ScalarOrSchedule = 0.01) -> optax.GradientTransformation:
    """Stochastic gradient descent: ``w -= lr * g``.

    Args:
      learning_rate: step size ``lr`` (number, array or optax schedule).

    Returns:
      An ``optax.GradientTransformation`` with state :class:`SgdState`.

    Example:
      >>> import jax.numpy as jnp, optax, purelearn as pl
      >>> opt = pl.sgd(0.1)
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> updates, state = opt.update({"w": jnp.array([1.0, 1.0])}, opt.init(params))
      >>> optax.apply_updates(params, updates)["w"]
      Array([ 0.9, -2.1], dtype=float32)
    """
    _check("learning_rate", learning_rate)
    return _transformation(SgdState, _sgd_rule, {"learning_rate": learning_rate})


def momentum(
    learning_rate: ScalarOrSchedule = 0.01, momentum: ScalarOrSchedule = 0.9
) -> optax.GradientTransformation:
    """Momentum SGD: ``v = a*v - lr*g; w += v`` with ``v`` starting at 0.

    Equals ``optax.sgd(lr, momentum=a)`` for a constant learning rate (optax
    keeps ``v/-lr`` instead; with a schedule the two differ, and this one
    is the textbook's).

    Args:
      learning_rate: step size ``lr``.
      momentum: velocity decay ``a`` in [0, 1).

    Example:
      >>> import jax.numpy as jnp, purelearn as pl
      >>> opt = pl.momentum(0.1, momentum=0.9)
      >>> state = opt.init(jnp.zeros(2))
      >>> u, state = opt.update(jnp.ones(2), state)
      >>> u, state = opt.update(jnp.ones(2), state)
      >>> u  # 0.9 * -0.1 - 0.1
      Array([-0.19, -0.19], dtype=float32)
    """
    _check("learning_rate", learning_rate)
    _check("momentum", momentum, below_one=True)
    hp = {"learning_rate": learning_rate, "momentum": momentum}
    return _transformation(MomentumState, _momentum_rule, hp)


def nesterov(
    learning_rate: ScalarOrSchedule = 0.01, momentum: ScalarOrSchedule = 0.9
) -> optax.GradientTransformation:
    """Nesterov's accelerated gradient in the textbook's form.

    ``w += a*a*v - (1+a)*lr*g; v = a*v - lr*g`` with ``v`` starting at 0:
    the gradient step taken from the look-ahead point ``w + a*v``. Equals
    ``optax.sgd(lr, momentum=a, nesterov=True)`` for a constant learning rate.

    Args:
      learning_rate: step size ``lr``.
      momentum: velocity decay ``a`` in [0, 1).

    Example:
      >>> import jax.numpy as jnp, purelearn as pl
      >>> opt = pl.nesterov(0.1, momentum=0.9)
      >>> u, state = opt.update(jnp.ones(1), opt.init(jnp.zeros(1)))
      >>> u  # -(1 + 0.9) * 0.1
      Array([-0.19], dtype=float32)
    """
    _check("learning_rate", learning_rate)
    _check("momentum", momentum, below_one=True)
    hp = {"learning_rate": learning_rate, "momentum": momentum}
    return _transformation(MomentumState, _nesterov_rule, hp)


def adagrad(
    learning_rate: ScalarOrSchedule = 0.01, eps: ScalarOrSchedule = 1e-7
) -> optax.GradientTransformation:
    """AdaGrad: ``h += g*g; w -= lr*g / (sqrt(h) + eps)`` with ``h`` starting at 0.

    Unlike ``optax.adagrad`` (accumulator starting at 0.1, eps under the
    root), this is the textbook's rule.

    Args:
      learning_rate: step size ``lr``.
      eps: added outside the square root.

    Example:
      >>> import jax.numpy as jnp, purelearn as pl
      >>> opt = pl.adagrad(1.0, eps=0.0)
      >>> u, state = opt.update(jnp.array([2.0, -3.0]), opt.init(jnp.zeros(2)))
      >>> u  # every first step has size lr
      Array([-1.,  1.], dtype=float32)
    """
    _check("learning_rate", learning_rate)
    _check("eps", eps)
    hp = {"learning_rate": learning_rate, "eps": eps}
    return _transformation(AdaGradState, _adagrad_rule, hp)


def rmsprop(
    learning_rate: ScalarOrSchedule = 0.01,
    decay: ScalarOrSchedule = 0.99,
    eps: ScalarOrSchedule = 1e-7,
) -> optax.GradientTransformation:
    """RMSProp: ``h = d*h + (1-d)*g*g; w -= lr*g / (sqrt(h) + eps)``, ``h`` from 0.

    Args:
      learning_rate: step size ``lr``.
      decay: forgetting factor ``d`` in [0, 1).
      eps: added outside the square root.

    Example:
      >>> import jax.numpy as jnp, purelearn as pl
      >>> opt = pl.rmsprop(0.01, decay=0.75, eps=0.0)
      >>> u, state = opt.update(jnp.array([4.0]), opt.init(jnp.zeros(1)))
      >>> u  # h = 0.25 * 16 = 4, so the step is 0.01 * 4 / 2
      Array([-0.02], dtype=float32)
    """
    _check("learning_rate", learning_rate)
    _check("decay", decay, below_one=True)
    _check("eps", eps)
    hp = {"learning_rate": learning_rate, "decay": decay, "eps": eps}
    return _transformation(RMSPropState, _rmsprop_rule, hp)


def _adam_hyperparams(learning_rate, b1, b2, eps) -> dict[str, ScalarOrSchedule]:
    _check("learning_rate", learning_rate)
    _check("b1", b1, below_one=True)
    _check("b2", b2, below_one=True)
    _check("eps", eps)
    return {"learning_rate": learning_rate, "b1": b1, "b2": b2, "eps": eps}


def adam(
    learning_rate: ScalarOrSchedule = 0.001,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-8,
) -> optax.GradientTransformation:
    """Adam as in the paper (Kingma and Ba), bias-corrected, eps outside the root.

    ``m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g*g;``
    ``w -= lr * m_hat / (sqrt(v_hat) + eps)`` with ``m_hat = m/(1-b1**t)``,
    ``v_hat = v/(1-b2**t)`` at step ``t = 1, 2, ...``. Same trajectory as
    ``optax.adam`` with the same hyperparameters.

    Args:
      learning_rate: step size ``lr``.
      b1: first-moment decay in [0, 1).
      b2: second-moment decay in [0, 1).
      eps: added outside the square root.

    Example:
      >>> import jax.numpy as jnp, purelearn as pl
      >>> opt = pl.adam(0.1)
      >>> u, state = opt.update(jnp.array([5.0, -0.5]), opt.init(jnp.zeros(2)))
      >>> u.round(3)  # the first step is lr * sign(g), up to eps
      Array([-0.1,  0.1], dtype=float32)
    """
    hp = _adam_hyperparams(learning_rate, b1, b2, eps)
    return _transformation(AdamState, _adam_rule, hp)


def adamw(
    learning_rate: ScalarOrSchedule = 0.001,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-8,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: MaskOrFn = None,
) -> optax.GradientTransformation:
    """Adam with decoupled weight decay (Loshchilov and Hutter).

    ``w -= lr * (m_hat / (sqrt(v_hat) + eps) + wd * w)``: the decay bypasses
    the moments. Same trajectory as ``optax.adamw``; ``update`` needs
    ``params``.

    Args:
      learning_rate, b1, b2, eps: as in :func:`adam`.
      weight_decay: decay rate ``wd`` (number, array or schedule).
      mask: which leaves decay: a pytree of bools (or a prefix of the
        parameters' tree), or a function of the params returning one.
        ``None`` decays every leaf, as optax does.

    Example:
      >>> import jax.numpy as jnp, purelearn as pl
      >>> params = {"b": jnp.ones(2), "w": jnp.ones((2, 2))}
      >>> opt = pl.adamw(0.1, weight_decay=0.5, mask=lambda p: {"b": False, "w": True})
      >>> zero = {"b": jnp.zeros(2), "w": jnp.zeros((2, 2))}
      >>> u, state = opt.update(zero, opt.init(params), params)
      >>> bool((u["b"] == 0).all()), u["w"][0]  # only the weights decay: -0.1 * 0.5 * 1
      (True, Array([-0.05, -0.05], dtype=float32))
    """
    hp = _adam_hyperparams(learning_rate, b1, b2, eps)
    _check("weight_decay", weight_decay)
    return _transformation(AdamState, _adam_rule, hp, weight_decay=weight_decay, mask=mask)
