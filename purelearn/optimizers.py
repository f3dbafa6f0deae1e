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

Float16 gradients with float32 parameters are the one place where the numbers
are not optax's: optax squares them in float16, where ``(1-b2) * g**2``
underflows to 0 for ``|g| < 0.25`` or so and Adam then steps by ``g/eps``
(``optax.adam(1e-3)`` on ``g = 1e-3`` moves a parameter by 100); here they are
widened to float32 first, so the update is exactly ``optax.adam``'s on
``g.astype(float32)``. bfloat16 (float32's range) is left to optax's rules,
and with float32 or bfloat16 gradients the updates are optax's bit for bit.

Overflow: a finite gradient whose square (or whose running sum or average of
squares) exceeds the dtype's range leaves the state at the dtype's largest
finite value instead of ``inf``. optax's second moment becomes ``inf`` and
stays ``inf``, and every later update is ``g/inf = 0``: the parameter never
moves again. Here the step such a gradient element causes is its exact
arithmetic's limit (the spike dominating the moments: ``lr`` for AdaGrad,
``lr/sqrt(1-d)`` for RMSProp, Adam's bias-corrected ratio), the state stays
finite (Adam's first moment below the root of the range) and later updates
nonzero and of ``lr``'s order, though not exact arithmetic's (a saturated
moment has lost the spike's true size: Adam's next step at ``lr = 0.1`` is
0.47 where exact arithmetic gives 0.067); where nothing overflows
every number is unchanged (a finite value is never touched). Clip
gradients (``optax.clip_by_global_norm``) where such spikes are expected
all the same. A NaN or
infinite gradient is not hidden: it makes the update and the state NaN or
infinite, as in optax (``optax.apply_if_finite`` skips such steps).
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax

from purelearn._cache import memoize
from purelearn._checks import hyperparameter
from purelearn._tree import leaf_mask
from purelearn._types import PyTree

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
MaskOrFn = PyTree | Callable[[PyTree], PyTree] | None


class SgdState(NamedTuple):
    """State of :func:`sgd`: only the update count (it drives schedules)."""

    count: jax.Array  # type: ignore[assignment]  # (optax's field name; shadows tuple.count)


class MomentumState(NamedTuple):
    """State of :func:`momentum` and :func:`nesterov`: the velocity ``v``."""

    count: jax.Array  # type: ignore[assignment]  # (optax's field name; shadows tuple.count)
    velocity: PyTree


class AdaGradState(NamedTuple):
    """State of :func:`adagrad`: the running sum of squared gradients ``h``."""

    count: jax.Array  # type: ignore[assignment]  # (optax's field name; shadows tuple.count)
    sum_of_squares: PyTree


class RMSPropState(NamedTuple):
    """State of :func:`rmsprop`: the moving average of squared gradients ``h``."""

    count: jax.Array  # type: ignore[assignment]  # (optax's field name; shadows tuple.count)
    mean_square: PyTree


class AdamState(NamedTuple):
    """State of :func:`adam` and :func:`adamw`: first and second moments."""

    count: jax.Array  # type: ignore[assignment]  # (optax's field name; shadows tuple.count)
    mu: PyTree
    nu: PyTree


_State = SgdState | MomentumState | AdaGradState | RMSPropState | AdamState


# -- dtypes ------------------------------------------------------------------


def _leaf_dtype(leaf: Any) -> np.dtype | None:
    """The dtype of an array or Python scalar leaf, or ``None`` for anything else."""
    dtype = getattr(leaf, "dtype", None)
    if dtype is not None:
        found: np.dtype[Any] = np.dtype(dtype)
        return found
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


def _saturate(x: jax.Array, *inputs: jax.Array, dtype: Any = None, bound: Any = None) -> jax.Array:
    """``x`` clipped to ``±bound`` (default ``finfo(dtype).max``, ``x``'s dtype by
    default) where every one of ``inputs`` is finite.

    A finite gradient of 1e30 squares past float32's range: unclipped, the
    second moment becomes ``inf`` and stays ``inf``, and every later update is
    ``g / inf = 0`` (the parameter never moves again, as in optax). Clipped,
    the state stays finite and decays back (RMSProp, Adam) or keeps growing
    from the largest finite value (AdaGrad). A finite ``x`` is returned as it
    is, bit for bit, so nothing changes where nothing overflows; a NaN or
    infinite input is not hidden: ``x`` (NaN or inf) passes through, as in
    optax. Complex ``x`` (complex parameters' moments) is left alone.
    """
    dtype = x.dtype if dtype is None else dtype
    if not (jnp.issubdtype(x.dtype, jnp.floating) and jnp.issubdtype(dtype, jnp.floating)):
        return x
    finite = functools.reduce(jnp.logical_and, [jnp.isfinite(i) for i in inputs])
    big = np.asarray(jnp.finfo(dtype).max if bound is None else bound, x.dtype)
    return jnp.where(finite, jnp.clip(x, -big, big), x)


def _square_root_of_max(dtype: Any) -> np.ndarray:
    """The largest value of ``dtype`` whose square is finite."""
    root = np.asarray(np.sqrt(np.float64(jnp.finfo(dtype).max)), dtype)
    while np.isinf(np.asarray(root * root, dtype)):  # (rounded up past the range)
        root = np.nextafter(root, np.asarray(0, dtype))
    return root


def _overflows(g: jax.Array) -> jax.Array | None:
    """Where a finite gradient element's square overflows ``g``'s dtype (None: not float).

    There the exact step of Adam, RMSProp and AdaGrad is a ratio of ``g`` to the root
    of its own square, about ``lr``; with the square saturated at ``finfo.max`` it
    would be ``1e30 / sqrt(finfo.max)``, a step of ``1e10 * lr``. The rules replace
    the step there by its exact limit (the spike dominating the moments), after the
    plain arithmetic, so every other element's numbers stay optax's bit for bit.
    """
    if not jnp.issubdtype(g.dtype, jnp.floating):
        return None
    return (jnp.abs(g) > _square_root_of_max(g.dtype)) & jnp.isfinite(g)


def _spike_step(g: jax.Array, step: jax.Array, limit: Any) -> jax.Array:
    """``step``, except ``limit * sign(g)`` where ``g``'s square overflows."""
    over = _overflows(g)
    return step if over is None else jnp.where(over, limit * jnp.sign(g), step)


# -- one builder for every optimizer -------------------------------------------


def _transformation(
    state_type: type[_State],
    rule: Callable[..., tuple[Any, ...]],
    hyperparams: dict[str, ScalarOrSchedule],
    *,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
    buffer_dtypes: tuple[Any, ...] | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Build an optimizer from an update ``rule``.

    ``rule(gs, *buffers, count=t, **hyperparams) -> (updates, *new_buffers)``
    runs on lists of leaves (the gradients' leaves in ``jax.tree.leaves``
    order, each buffer's leaves likewise), with every hyperparameter already
    read off its schedule; most rules are one leaf's rule mapped over the
    lists (:func:`_elementwise`), Adam's bias correction takes whole lists as
    optax takes whole trees. With a non-zero ``weight_decay`` the rule also
    gets ``decayed``: ``wd*w`` on the leaves ``mask`` selects, ``None`` on
    the others. The state is ``state_type(count, *buffers)``, one zero buffer
    per field after ``count``, shaped like the parameters and typed like them
    (or ``buffer_dtypes[i]`` where given); the buffers keep their dtypes
    across updates, and a finite value too large for a buffer's dtype is
    stored as that dtype's largest one (:func:`_saturate`), not ``inf``.

    Dtypes follow optax's rules: the update has the promoted dtype of the
    gradient and the buffers (so float32 state with bfloat16 gradients gives
    float32 updates), and, as in optax, hyperparameters do not promote it.
    Where a float16 (or float8) gradient or buffer is involved the rule runs
    in float32 and its results are rounded back.
    """
    num_buffers = len(state_type._fields) - 1
    buffer_dtypes = buffer_dtypes or (None,) * num_buffers
    wd_given: object = weight_decay  # a Real, an array or a schedule: mypy's float is no Real
    decays = not (isinstance(wd_given, numbers.Real) and wd_given == 0)

    def init_fn(params: optax.Params) -> _State:
        _check_inexact(params, "parameters")
        buffers = [
            jax.tree.map(lambda p, d=dtype: jnp.zeros_like(p, dtype=d), params)
            for dtype in buffer_dtypes
        ]
        return state_type(jnp.zeros([], jnp.int32), *buffers)

    def update_fn(
        updates: optax.Updates,
        state: Any,  # (a state_type: NamedTuple's own .count is tuple.count)
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, _State]:
        # Extra arguments (value=loss for reduce_on_plateau, ...) are for
        # other transformations of a chain: ignored, as optax's own do.
        del extra_args
        _check_inexact(updates, "updates (gradients)")
        hp = {k: v(state.count) if callable(v) else v for k, v in hyperparams.items()}
        # optax annotates safe_increment with chex.Numeric; on an array it returns an array
        count = cast(jax.Array, optax.safe_increment(state.count))

        g_leaves, treedef_ = jax.tree.flatten(updates)
        treedef: Any = treedef_  # (jax's stub lacks flatten_up_to)
        # (jnp.asarray: a Python-number leaf has no dtype of its own)
        g_leaves = [jnp.asarray(g) for g in g_leaves]
        olds = [treedef.flatten_up_to(b) for b in state[1:]]
        per_leaf = list(zip(*olds, strict=True)) if olds else [()] * len(g_leaves)
        out_dtypes, gs, ins = [], [], []
        for g, buffers in zip(g_leaves, per_leaf, strict=True):
            dtypes = [g.dtype, *(b.dtype for b in buffers)]
            out_dtype = functools.reduce(jnp.promote_types, dtypes)
            wide = jnp.promote_types(out_dtype, jnp.float32)
            narrow = any(_narrow(d) for d in dtypes)
            out_dtypes.append((out_dtype, wide if narrow else None))
            gs.append(g.astype(wide) if narrow else g)
            ins.append([b.astype(wide) for b in buffers] if narrow else list(buffers))
        extra = {}
        if decays:
            if params is None:
                raise ValueError(
                    "weight decay needs the parameters: call update(grads, state, params)"
                )
            _check_inexact(params, "parameters")
            wd = weight_decay(state.count) if callable(weight_decay) else weight_decay
            flags = treedef.flatten_up_to(leaf_mask(mask, params, default=lambda _: True))
            ps = treedef.flatten_up_to(params)
            extra["decayed"] = [
                wd * (jnp.asarray(p) if wide is None else jnp.asarray(p).astype(wide))
                if flag
                else None
                for flag, p, (_, wide) in zip(flags, ps, out_dtypes, strict=True)
            ]
        buffer_lists = [list(b) for b in zip(*ins, strict=True)] if ins else []
        if not buffer_lists:
            buffer_lists = [[] for _ in range(num_buffers)]
        new_updates, *new_lists = rule(gs, *buffer_lists, count=count, **hp, **extra)
        new_updates = [u.astype(d) for u, (d, _) in zip(new_updates, out_dtypes, strict=True)]
        new_buffers = [
            [
                _saturate(b, g, old, dtype=old.dtype).astype(old.dtype)
                for b, g, old in zip(new, g_leaves, old_leaves, strict=True)
            ]
            for new, old_leaves in zip(new_lists, olds, strict=True)
        ]
        return treedef.unflatten(new_updates), state_type(
            count, *(treedef.unflatten(b) for b in new_buffers)
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# -- the update rules -----------------------------------------------------------


def _elementwise(rule: Callable[..., tuple[Any, ...]]) -> Callable[..., tuple[Any, ...]]:
    """A rule over lists of leaves from a rule over one leaf (``decayed`` leaf by leaf)."""

    def over_lists(
        gs: list[Any], *buffers: list[Any], decayed: list[Any] | None = None, **kw: Any
    ) -> tuple[list[Any], ...]:
        decays = decayed if decayed is not None else [None] * len(gs)
        outs = [
            rule(g, *bs, **kw, **({} if d is None else {"decayed": d}))
            for g, d, *bs in zip(gs, decays, *buffers, strict=True)
        ]
        return tuple([o[i] for o in outs] for i in range(1 + len(buffers)))

    return over_lists


@_elementwise
def _sgd_rule(g: jax.Array, *, count: jax.Array, learning_rate: Any) -> tuple[jax.Array]:
    del count
    return (-learning_rate * g,)


@_elementwise
def _momentum_rule(
    g: jax.Array, v: jax.Array, *, count: jax.Array, learning_rate: Any, momentum: Any
) -> tuple[jax.Array, jax.Array]:
    # The textbook's velocity carries the learning rate, so a schedule scales
    # each gradient as it enters v rather than the whole of v.
    del count
    v = momentum * v - learning_rate * g
    return v, v


@_elementwise
def _nesterov_rule(
    g: jax.Array, v: jax.Array, *, count: jax.Array, learning_rate: Any, momentum: Any
) -> tuple[jax.Array, jax.Array]:
    # a*a*v - (1+a)*lr*g written as a*v_new - lr*g: the same math, and the step
    # no longer reads the old v, so XLA updates v in place instead of copying it
    # (1.8x faster on one 4M array, benchmarks/bench_optimizers.py).
    del count
    v = momentum * v - learning_rate * g
    return momentum * v - learning_rate * g, v


@_elementwise
def _adagrad_rule(
    g: jax.Array, h: jax.Array, *, count: jax.Array, learning_rate: Any, eps: Any
) -> tuple[jax.Array, jax.Array]:
    # A sum of squares past the dtype's range stays at its largest value.
    del count
    h = _saturate(h + _sq(g), g, h)
    step = -learning_rate * g / (jnp.sqrt(h) + eps)
    return _spike_step(g, step, -learning_rate), h  # g / sqrt(g*g) = sign(g)


@_elementwise
def _rmsprop_rule(
    g: jax.Array, h: jax.Array, *, count: jax.Array, learning_rate: Any, decay: Any, eps: Any
) -> tuple[jax.Array, jax.Array]:
    # optax.rmsprop(eps_in_sqrt=False)'s operations in its order.
    del count
    h = _saturate((1 - decay) * _sq(g) + decay * h, g, h)
    step = -learning_rate * (g * (1 / (jnp.sqrt(h) + eps)))
    # g / sqrt((1-d)*g*g) = sign(g) / sqrt(1-d)
    return _spike_step(g, step, -learning_rate / jnp.sqrt(1 - decay)), h


def _adam_rule(
    gs: list[jax.Array],
    mus: list[jax.Array],
    nus: list[jax.Array],
    *,
    count: jax.Array,
    learning_rate: Any,
    b1: Any,
    b2: Any,
    eps: Any,
    decayed: list[jax.Array | None] | None = None,
) -> tuple[list[jax.Array], list[jax.Array], list[jax.Array]]:
    # The operations and their order are optax's (scale_by_adam, then
    # add_decayed_weights, then the learning rate), so trajectories agree bit
    # for bit: the moments leaf by leaf, the bias correction over all leaves at
    # once (optax.tree.bias_correction is jitted, and the program XLA compiles
    # for one leaf rounds 1/(1 - b**t) differently from the one for a whole
    # tree), the direction leaf by leaf.
    # |m| past the root of the range means a gradient whose square overflowed: keep it
    # below that root, so m / sqrt(v) stays near its exact size in later steps
    mus = [
        _saturate((1 - b1) * g + b1 * mu, g, mu, bound=_square_root_of_max(mu.dtype))
        for g, mu in zip(gs, mus, strict=True)
    ]
    nus = [_saturate((1 - b2) * _sq(g) + b2 * nu, g, nu) for g, nu in zip(gs, nus, strict=True)]
    mu_hats = optax.tree_utils.tree_bias_correction(mus, b1, count)
    nu_hats = optax.tree_utils.tree_bias_correction(nus, b2, count)
    # a spike dominating both moments: m_hat / sqrt(v_hat) ->
    # (1-b1) sqrt(1-b2**t) / (sqrt(1-b2) (1-b1**t)) sign(g)
    t = count.astype(jnp.result_type(float))
    limit = (1 - b1) * jnp.sqrt(1 - b2**t) / (jnp.sqrt(1 - b2) * (1 - b1**t))
    updates = []
    for i, (m, v) in enumerate(zip(mu_hats, nu_hats, strict=True)):
        # dividing by 1 - b2**t can carry a saturated moment past the range
        direction = _spike_step(gs[i], m / (jnp.sqrt(_saturate(v, nus[i])) + eps), limit)
        decay = None if decayed is None else decayed[i]
        if decay is not None:
            direction = direction + decay
        updates.append(-learning_rate * direction)
    return updates, mus, nus


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
    checked: np.dtype[Any] = dtype
    return checked


@memoize
def sgd(learning_rate: ScalarOrSchedule = 0.01) -> optax.GradientTransformationExtraArgs:
    r"""Stochastic gradient descent: ``w -= lr * g``.

    .. math::

        w \leftarrow w - \eta\, g

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
    r"""Momentum SGD: ``v = a*v - lr*g; w += v`` with ``v`` starting at 0.

    .. math::

        v \leftarrow \alpha v - \eta\, g, \qquad w \leftarrow w + v

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
    r"""Nesterov's accelerated gradient in the textbook's form.

    .. math::

        w \leftarrow w + \alpha^2 v - (1 + \alpha)\, \eta\, g, \qquad
        v \leftarrow \alpha v - \eta\, g

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
    r"""AdaGrad: ``h += |g|**2; w -= lr*g / (sqrt(h) + eps)`` with ``h`` starting at 0.

    .. math::

        h \leftarrow h + |g|^2, \qquad
        w \leftarrow w - \eta\, \frac{g}{\sqrt{h} + \epsilon}

    Unlike ``optax.adagrad`` (accumulator starting at 0.1, eps under the
    root), this is the textbook's rule. On overflow (a finite gradient whose
    square or whose sum ``h`` passes the dtype's range) ``h`` stays at the
    largest finite value, not ``inf``: later updates are tiny but nonzero, as
    they would be in exact arithmetic, instead of exactly zero.

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
    r"""RMSProp: ``h = d*h + (1-d)*|g|**2; w -= lr*g / (sqrt(h) + eps)``, ``h`` from 0.

    .. math::

        h \leftarrow \rho\, h + (1 - \rho)\, |g|^2, \qquad
        w \leftarrow w - \eta\, \frac{g}{\sqrt{h} + \epsilon}

    Equals ``optax.rmsprop(lr, decay=d, eps=eps, eps_in_sqrt=False)`` (same
    operations, same order, bit for bit) except on overflow: a finite gradient
    whose square passes the dtype's range leaves ``h`` at the largest finite
    value, which then decays, where optax's ``h`` is ``inf`` for good (every
    later update zero).

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


def _adam_hyperparams(
    learning_rate: Any, b1: Any, b2: Any, eps: Any
) -> dict[str, ScalarOrSchedule]:
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
    r"""Adam as in the paper (Kingma and Ba), bias-corrected, eps outside the root.

    .. math::

        m \leftarrow \beta_1 m + (1 - \beta_1)\, g, \qquad
        v \leftarrow \beta_2 v + (1 - \beta_2)\, |g|^2,

        w \leftarrow w - \eta\, \frac{\hat m}{\sqrt{\hat v} + \epsilon}, \qquad
        \hat m = \frac{m}{1 - \beta_1^t}, \quad \hat v = \frac{v}{1 - \beta_2^t}

    ``m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*|g|**2;``
    ``w -= lr * m_hat / (sqrt(v_hat) + eps)`` with ``m_hat = m/(1-b1**t)``,
    ``v_hat = v/(1-b2**t)`` at step ``t = 1, 2, ...``. Same trajectory as
    ``optax.adam`` with the same hyperparameters, bit for bit, float32 and
    bfloat16 gradients included (float16 gradients are widened to float32
    first; see the module's notes). On overflow (a finite gradient whose
    square passes the dtype's range) ``v`` stays at the dtype's largest
    finite value and decays from there, where optax's ``v`` is ``inf`` for
    good and every later update zero; NaN and infinite gradients still give
    NaN, as in optax.

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
    r"""Adam with decoupled weight decay (Loshchilov and Hutter).

    .. math::

        w \leftarrow w - \eta \left( \frac{\hat m}{\sqrt{\hat v} + \epsilon}
        + \lambda\, w \right)

    ``w -= lr * (m_hat / (sqrt(v_hat) + eps) + wd * w)``: the decay bypasses
    the moments. Same trajectory as ``optax.adamw``, bit for bit (float16
    gradients aside, as in :func:`adam`); ``update`` needs ``params``. On
    overflow the moments saturate at the dtype's largest finite value, as in
    :func:`adam`.

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
        AdamState,
        _adam_rule,
        hp,
        weight_decay=weight_decay,
        mask=mask,
        buffer_dtypes=dtypes,
    )
