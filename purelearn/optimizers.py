"""The chapter's optimizers as pure optax ``GradientTransformation``\\ s.

Each factory returns an ``optax.GradientTransformationExtraArgs``: an
``(init, update)`` pair over any pytree. ``update(grads, state, params=None,
**extra_args)`` returns *updates* to be added to the parameters with
``optax.apply_updates`` (the learning rate and the sign are already applied)
and ignores extra keyword arguments (``value=loss`` meant for another
transformation of a chain), so every optimizer here drops into
``optax.chain``, ``optax.inject_hyperparams``, ``optax.MultiSteps``,
``optax.masked``, ``optax.apply_if_finite`` and ``flax.nnx.Optimizer`` like
optax's own.

The update rules are the textbook's (``v`` velocity, ``h`` squared-gradient
accumulator, ``m``/``v`` Adam moments, ``t`` the step count starting at 1)::

    sgd       w -= lr*g
    momentum  v = a*v - lr*g;                w += v
    nesterov  w += a*a*v - (1+a)*lr*g;       v = a*v - lr*g
    adagrad   h += |g|**2;                   w -= lr*g / (sqrt(h) + eps)
    rmsprop   h = d*h + (1-d)*|g|**2;        w -= lr*g / (sqrt(h) + eps)
    adam      m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*|g|**2
              w -= lr * m/(1-b1**t) / (sqrt(v/(1-b2**t)) + eps)
    adamw     adam's step plus lr*wd*w (decoupled weight decay)

``|g|**2`` is ``g*g`` for real and ``g*conj(g)`` for complex parameters, as in
optax. Every scalar hyperparameter may be a Python number, a JAX array or an
optax schedule (a function of the update count, called with 0 on the first
update); plain numbers are checked at construction (a ``ValueError`` naming
the argument), arrays and schedules are not read. Constructors are memoized:
the same plain arguments give the same object, so a second identical
``fit`` finds its programs compiled.

Dtypes are optax's: the state buffers take the parameters' dtype (Adam's
first moment ``mu_dtype`` if given) and keep it; an update has the promoted
dtype of its gradient and the buffers (float32 parameters with bfloat16
gradients: float32 updates). Where float16 is involved the arithmetic runs in
float32, so eps cannot round to zero and squares cannot overflow; the state
is still stored in float16, whose smallest normal number (6e-5) then bounds
how small a second moment can be kept. Integer and bool leaves are refused:
an optimizer would round their updates to zero.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from purelearn._cache import memoize
from purelearn._checks import hyperparameter
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


# -- dtypes ------------------------------------------------------------------


def _leaf_dtype(leaf: Any) -> np.dtype | None:
    """The dtype of an array or Python scalar leaf, or ``None`` for anything else."""
    dtype = getattr(leaf, "dtype", None)
    if dtype is not None:
        return np.dtype(dtype)
    try:
        return np.dtype(jnp.result_type(leaf))
    except TypeError:
        return None


def _check_inexact(tree: Any, what: str) -> None:
    """Refuse integer, bool and non-array leaves before anything is traced.

    An optimizer on an int32 leaf would round every update to zero (or
    refuse to cast a float update into it), silently. ``optax.masked``'s
    ``MaskedNode`` placeholders and ``None`` have no leaves, so masked-out
    integer leaves (step counters, embeddings' indices) pass.
    """
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        dtype = _leaf_dtype(leaf)
        if dtype is None or not jnp.issubdtype(dtype, jnp.inexact):
            kind = f"not an array ({type(leaf).__name__})" if dtype is None else str(dtype)
            where = jax.tree_util.keystr(path) or "(the root)"
            raise ValueError(
                "optimizers update floating-point (or complex) parameters; "
                f"leaf {where} of the {what} is {kind}. "
                "Keep it out of the optimized tree, or mask it out with optax.masked."
            )


def _narrow(dtype: np.dtype) -> bool:
    """A float with less exponent range than float32: float16 and the float8s.

    In these, Adam's default eps (1e-8) rounds to 0 and a square overflows
    past 256, so the arithmetic runs in float32. bfloat16 has float32's
    range: it is left to optax's per-operation promotion, which keeps the
    trajectories equal to optax's.
    """
    return jnp.issubdtype(dtype, jnp.floating) and (
        jnp.finfo(dtype).maxexp < jnp.finfo(jnp.float32).maxexp
    )


def _sq(g: jax.Array) -> jax.Array:
    """``|g|**2``: ``g**2`` for real ``g``, ``(conj(g) * g).real`` for complex (as optax)."""
    return (g.conj() * g).real if jnp.iscomplexobj(g) else g**2


# -- one builder for every optimizer -------------------------------------------


def _transformation(
    state_type: type,
    rule: Callable[..., tuple],
    hyperparams: dict[str, ScalarOrSchedule],
    *,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
    buffer_dtypes: tuple[Any, ...] | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Build an optimizer from a per-leaf ``rule``.

    ``rule(g, *buffers, count=t, **hyperparams) -> (update, *new_buffers)``
    runs on one leaf, with every hyperparameter already read off its schedule.
    With a non-zero ``weight_decay`` the rule also gets ``decayed=wd*w`` on the
    leaves ``mask`` selects. The state is ``state_type(count, *buffers)``, one
    zero buffer per field after ``count``, shaped like the parameters and
    typed like them (or ``buffer_dtypes[i]`` where given); the buffers keep
    their dtypes across updates.

    Dtypes follow optax's rules: the update has the promoted dtype of the
    gradient and the buffers (so float32 state with bfloat16 gradients gives
    float32 updates), and, as in optax, hyperparameters do not promote it.
    Where a float16 (or float8) gradient or buffer is involved the rule runs
    in float32 and its results are rounded back.
    """
    num_buffers = len(state_type._fields) - 1
    buffer_dtypes = buffer_dtypes or (None,) * num_buffers
    decays = not (isinstance(weight_decay, numbers.Real) and weight_decay == 0)

    def init_fn(params: optax.Params) -> NamedTuple:
        _check_inexact(params, "parameters")
        buffers = [
            jax.tree.map(lambda p, d=dtype: jnp.zeros_like(p, dtype=d), params)
            for dtype in buffer_dtypes
        ]
        return state_type(jnp.zeros([], jnp.int32), *buffers)

    def update_fn(updates: optax.Updates, state: NamedTuple, params=None, **extra_args):
        # Extra arguments (value=loss for reduce_on_plateau, ...) are for
        # other transformations of a chain: ignored, as optax's own do.
        del extra_args
        _check_inexact(updates, "updates (gradients)")
        hp = {k: v(state.count) if callable(v) else v for k, v in hyperparams.items()}
        count = optax.safe_increment(state.count)

        def leaf(g, *buffers, p=None, wd=None):
            # (jnp.asarray: a Python-number leaf has no dtype of its own)
            g, p = jnp.asarray(g), None if p is None else jnp.asarray(p)
            dtypes = [g.dtype, *(b.dtype for b in buffers)]
            out_dtype = functools.reduce(jnp.promote_types, dtypes)
            if any(_narrow(d) for d in dtypes):
                wide = jnp.promote_types(out_dtype, jnp.float32)
                g, ins = g.astype(wide), [b.astype(wide) for b in buffers]
                p = None if p is None else p.astype(wide)
            else:
                ins = buffers
            extra = {} if p is None else {"decayed": wd * p}
            update, *new = rule(g, *ins, count=count, **hp, **extra)
            new = [b.astype(old.dtype) for b, old in zip(new, buffers, strict=True)]
            return (update.astype(out_dtype), *new)

        if decays:
            if params is None:
                raise ValueError(
                    "weight decay needs the parameters: call update(grads, state, params)"
                )
            _check_inexact(params, "parameters")
            wd = weight_decay(state.count) if callable(weight_decay) else weight_decay

            def decayed_leaf(g, flag, p, *buffers):
                return leaf(g, *buffers, p=p, wd=wd) if flag else leaf(g, *buffers)

            flags = leaf_mask(mask, params, default=lambda _: True)
            out = jax.tree.map(decayed_leaf, updates, flags, params, *state[1:])
        else:
            out = jax.tree.map(leaf, updates, *state[1:])
        parts = [jax.tree.map(lambda _, o, i=i: o[i], updates, out) for i in range(num_buffers + 1)]
        return parts[0], state_type(count, *parts[1:])

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


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
    h = h + _sq(g)
    return -learning_rate * g / (jnp.sqrt(h) + eps), h


def _rmsprop_rule(g, h, *, count, learning_rate, decay, eps):
    # optax.rmsprop(eps_in_sqrt=False)'s operations in its order.
    del count
    h = (1 - decay) * _sq(g) + decay * h
    return -learning_rate * (g * (1 / (jnp.sqrt(h) + eps))), h


def _adam_rule(g, mu, nu, *, count, learning_rate, b1, b2, eps, decayed=None):
    # The operations and their order are optax's (scale_by_adam, then
    # add_decayed_weights, then the learning rate), so trajectories agree.
    mu = (1 - b1) * g + b1 * mu
    nu = (1 - b2) * _sq(g) + b2 * nu
    # optax's jitted bias correction: computed eagerly, 1 - b**t rounds
    # differently, and un-jitted updates would drift from optax's by ~1e-5.
    mu_hat = optax.tree_utils.tree_bias_correction(mu, b1, count)
    nu_hat = optax.tree_utils.tree_bias_correction(nu, b2, count)
    direction = mu_hat / (jnp.sqrt(nu_hat) + eps)
    if decayed is not None:
        direction = direction + decayed
    return -learning_rate * direction, mu, nu


# -- the public factories ------------------------------------------------------


def _rate(name: str, value: Any) -> Any:
    """A step size, eps or weight decay: a finite number >= 0 (or an array or schedule)."""
    return hyperparameter(name, value, low=0.0)


def _decay(name: str, value: Any) -> Any:
    """A decay rate in [0, 1) (or an array or schedule)."""
    return hyperparameter(name, value, low=0.0, high=1.0, high_open=True)


def _mu_dtype(value: Any) -> np.dtype | None:
    """``None`` or a floating-point (or complex) dtype, else a ``ValueError`` naming it."""
    if value is None:
        return None
    try:
        dtype = np.dtype(value)
    except TypeError:
        dtype = None
    if dtype is None or not jnp.issubdtype(dtype, jnp.inexact):
        raise ValueError(f"mu_dtype must be None or a floating-point dtype, got {value!r}")
    return dtype


@memoize
def sgd(learning_rate: ScalarOrSchedule = 0.01) -> optax.GradientTransformationExtraArgs:
    """Stochastic gradient descent: ``w -= lr * g``.

    Args:
      learning_rate: step size ``lr`` (number, array or optax schedule).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state :class:`SgdState`.

    Example:
      >>> import jax.numpy as jnp, optax, purelearn as pl
      >>> opt = pl.sgd(0.1)
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> updates, state = opt.update({"w": jnp.array([1.0, 1.0])}, opt.init(params))
      >>> optax.apply_updates(params, updates)["w"]
      Array([ 0.9, -2.1], dtype=float32)
    """
    hp = {"learning_rate": _rate("learning_rate", learning_rate)}
    return _transformation(SgdState, _sgd_rule, hp)


@memoize
def momentum(
    learning_rate: ScalarOrSchedule = 0.01, momentum: ScalarOrSchedule = 0.9
) -> optax.GradientTransformationExtraArgs:
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
    hp = {
        "learning_rate": _rate("learning_rate", learning_rate),
        "momentum": _decay("momentum", momentum),
    }
    return _transformation(MomentumState, _momentum_rule, hp)


@memoize
def nesterov(
    learning_rate: ScalarOrSchedule = 0.01, momentum: ScalarOrSchedule = 0.9
) -> optax.GradientTransformationExtraArgs:
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
    hp = {
        "learning_rate": _rate("learning_rate", learning_rate),
        "momentum": _decay("momentum", momentum),
    }
    return _transformation(MomentumState, _nesterov_rule, hp)


@memoize
def adagrad(
    learning_rate: ScalarOrSchedule = 0.01, eps: ScalarOrSchedule = 1e-7
) -> optax.GradientTransformationExtraArgs:
    """AdaGrad: ``h += |g|**2; w -= lr*g / (sqrt(h) + eps)`` with ``h`` starting at 0.

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
    hp = {"learning_rate": _rate("learning_rate", learning_rate), "eps": _rate("eps", eps)}
    return _transformation(AdaGradState, _adagrad_rule, hp)


@memoize
def rmsprop(
    learning_rate: ScalarOrSchedule = 0.01,
    decay: ScalarOrSchedule = 0.99,
    eps: ScalarOrSchedule = 1e-7,
) -> optax.GradientTransformationExtraArgs:
    """RMSProp: ``h = d*h + (1-d)*|g|**2; w -= lr*g / (sqrt(h) + eps)``, ``h`` from 0.

    Equals ``optax.rmsprop(lr, decay=d, eps=eps, eps_in_sqrt=False)`` (same
    operations, same order).

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
    hp = {
        "learning_rate": _rate("learning_rate", learning_rate),
        "decay": _decay("decay", decay),
        "eps": _rate("eps", eps),
    }
    return _transformation(RMSPropState, _rmsprop_rule, hp)


def _adam_hyperparams(learning_rate, b1, b2, eps) -> dict[str, ScalarOrSchedule]:
    return {
        "learning_rate": _rate("learning_rate", learning_rate),
        "b1": _decay("b1", b1),
        "b2": _decay("b2", b2),
        "eps": _rate("eps", eps),
    }


@memoize
def adam(
    learning_rate: ScalarOrSchedule = 0.001,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-8,
    mu_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Adam as in the paper (Kingma and Ba), bias-corrected, eps outside the root.

    ``m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*|g|**2;``
    ``w -= lr * m_hat / (sqrt(v_hat) + eps)`` with ``m_hat = m/(1-b1**t)``,
    ``v_hat = v/(1-b2**t)`` at step ``t = 1, 2, ...``. Same trajectory as
    ``optax.adam`` with the same hyperparameters, mixed precision included.

    Args:
      learning_rate: step size ``lr``.
      b1: first-moment decay in [0, 1).
      b2: second-moment decay in [0, 1).
      eps: added outside the square root.
      mu_dtype: dtype of the first moment ``m`` (e.g. ``jnp.bfloat16`` to
        halve its memory); ``None`` keeps the parameters' dtype. As in
        ``optax.adam``; under ``optax.inject_hyperparams`` pass
        ``static_args=("mu_dtype",)``.

    Example:
      >>> import jax.numpy as jnp, purelearn as pl
      >>> opt = pl.adam(0.1)
      >>> u, state = opt.update(jnp.array([5.0, -0.5]), opt.init(jnp.zeros(2)))
      >>> u.round(3)  # the first step is lr * sign(g), up to eps
      Array([-0.1,  0.1], dtype=float32)
    """
    hp = _adam_hyperparams(learning_rate, b1, b2, eps)
    dtypes = (_mu_dtype(mu_dtype), None)
    return _transformation(AdamState, _adam_rule, hp, buffer_dtypes=dtypes)


@memoize
def adamw(
    learning_rate: ScalarOrSchedule = 0.001,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-8,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: MaskOrFn = None,
    mu_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Adam with decoupled weight decay (Loshchilov and Hutter).

    ``w -= lr * (m_hat / (sqrt(v_hat) + eps) + wd * w)``: the decay bypasses
    the moments. Same trajectory as ``optax.adamw``; ``update`` needs
    ``params``.

    Args:
      learning_rate, b1, b2, eps, mu_dtype: as in :func:`adam`.
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
    weight_decay = _rate("weight_decay", weight_decay)
    dtypes = (_mu_dtype(mu_dtype), None)
    return _transformation(
        AdamState, _adam_rule, hp, weight_decay=weight_decay, mask=mask, buffer_dtypes=dtypes
    )
