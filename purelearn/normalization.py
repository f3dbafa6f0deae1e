"""Batch, layer, instance and group normalization as pure functions.

All four standardize ``x`` over some axes and then apply an optional learned
per-feature affine map (the textbook's formulas)::

    mu    = mean(x)                         over the normalized axes
    var   = mean((x - mu)**2)               biased, two passes
    x_hat = (x - mu) / sqrt(var + eps)
    y     = scale * x_hat + bias

They differ only in which axes are normalized (axis 0 is the batch axis)::

    batch_norm     every axis but the feature axis       (N, H, W | C)
    layer_norm     the given axes (default the last)     (N | H, W, C) with axis=(1, 2, 3)
    instance_norm  every axis but batch and channel      (N, C | H, W)
    group_norm     every axis but batch, per channel group

Numerics: the variance is a mean of squared deviations (the corrected
two-pass algorithm), never ``E[x**2] - E[x]**2``, which cancels
catastrophically when ``|mean| >> std`` (flax's default fast variance turns
``1e4 + N(0, 1)`` in float32 into a variance off by a factor of 40; here it is
exact to float32 rounding). Statistics are computed in at least float32
(bfloat16 and float16 inputs are promoted) and outputs come back in the
input's dtype.

Gradients: custom JVP rules give the textbook's compact backward pass,
``dx = (g - mean(g) - x_hat * mean(g * x_hat)) / sqrt(var + eps)`` for
``g`` the cotangent of ``x_hat``. Its two means are independent reductions
(plain autodiff of the two-pass formula chains three), and when the scale is
one per channel (batch and instance norm) they are the very sums that give the
scale and bias gradients, so the backward pass makes fewer passes over memory:
``benchmarks/bench_normalization.py`` measures both time and XLA's byte
count against plain autodiff and flax. Being JVPs, the rules also serve
forward mode, ``jax.hessian`` and higher orders.

Inputs: ``x`` is a floating-point array, or an integer one (uint8 images),
which is standardized in float32 (float64 under x64) and comes back in that
dtype. Bad arguments raise ``ValueError`` naming the argument and the value,
at the call, before anything is traced: a number out of range (negative or
NaN ``eps``, ``momentum`` outside [0, 1], plain or as a 0-d NumPy array), an
axis that is not an int, out of range or named twice, a scale, bias or
running statistic whose shape fits neither the features nor the input,
integer running statistics (their averages would be rounded), and an empty
batch in training (whose NaN mean would enter the running statistics).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero

from purelearn._checks import axes, boolean, is_traced, nonnegative_int, positive_int, scalar

__all__ = [
    "BatchNormStats",
    "batch_norm",
    "layer_norm",
    "instance_norm",
    "group_norm",
]

Axes = int | Sequence[int]


class BatchNormStats(NamedTuple):
    """Running statistics of :func:`batch_norm` (flax's ``batch_stats``).

    Attributes:
      mean: running mean, shaped like the feature axes.
      var: running (biased) variance, same shape.
    """

    mean: jax.Array
    var: jax.Array

    @classmethod
    def init(cls, num_features: int | Sequence[int], dtype: Any = jnp.float32) -> BatchNormStats:
        """Fresh statistics: mean 0, variance 1 (so eval mode starts as identity).

        Args:
          num_features: the size of the feature axis (or the shape of the
            feature axes, for a tuple ``axis``).
          dtype: dtype of the statistics; keep float32 for low-precision models.

        Example:
          >>> import purelearn as pl
          >>> stats = pl.BatchNormStats.init(3)
          >>> stats.mean, stats.var
          (Array([0., 0., 0.], dtype=float32), Array([1., 1., 1.], dtype=float32))
        """
        if isinstance(num_features, int) or np.ndim(num_features) == 0:
            shape: tuple[int, ...] = (nonnegative_int("num_features", num_features),)
        else:
            shape = tuple(nonnegative_int("num_features", n) for n in num_features)
        try:
            floating = jnp.issubdtype(dtype, jnp.floating)
        except TypeError:
            floating = False
        if not floating:
            # Running averages in an integer dtype would be rounded at every update.
            raise ValueError(f"dtype must be a floating-point dtype, got {dtype!r}")
        return cls(jnp.zeros(shape, dtype), jnp.ones(shape, dtype))


# -- argument checks (before tracing) -----------------------------------------


def _train_flag(value: Any) -> bool:
    # A traced flag would need lax.cond over two different statistics and a
    # state update; jit with static_argnames=("train",) instead.
    if is_traced(value):
        raise TypeError(
            "train must be a Python bool (static under jit: use "
            f"jax.jit(f, static_argnames='train')), got {value!r}"
        )
    return boolean("train", value)


def _as_input(x: Any) -> jax.Array:
    """``x`` as a real array: floats as they are, integers (uint8 images) as float32.

    Integers are promoted as ``jnp.mean`` promotes them (float64 under x64):
    standardized values are fractions, so no integer output could hold them.
    """
    if not isinstance(x, jax.Array | jax.core.Tracer):
        try:
            x = jnp.asarray(x)
        except (TypeError, ValueError) as err:
            raise ValueError(f"x must be an array of real numbers, got {x!r:.80}") from err
    if jnp.issubdtype(x.dtype, jnp.floating):
        floating: jax.Array = x
        return floating
    if jnp.issubdtype(x.dtype, jnp.integer):
        converted: jax.Array = x.astype(jnp.result_type(float))
        return converted
    raise ValueError(f"x must be a floating-point or integer array, got dtype {x.dtype}")


def _as_param(p: Any, name: str, x_shape: tuple[int, ...], axes: tuple[int, ...]) -> Any:
    """``p`` as a real array that :func:`_param` can lay along ``axes`` of ``x``, or ``None``.

    Checked here, at the call, so a wrong shape is a ``ValueError`` naming
    both shapes before anything is traced.
    """
    if p is None:
        return None
    if not isinstance(p, jax.Array | jax.core.Tracer):
        try:
            p = jnp.asarray(p)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{name} must be an array of real numbers, got {p!r:.80}") from err
    if not (jnp.issubdtype(p.dtype, jnp.floating) or jnp.issubdtype(p.dtype, jnp.integer)):
        raise ValueError(f"{name} must be a real (float or integer) array, got dtype {p.dtype}")
    _layout(p.shape, name, x_shape, axes)
    return p


def _layout(
    shape: tuple[int, ...], name: str, x_shape: tuple[int, ...], axes: tuple[int, ...]
) -> tuple[int, ...] | None:
    """The shape that lays a parameter along ``axes`` of ``x``; ``None`` when it
    broadcasts against ``x`` as it is; a ``ValueError`` naming both shapes otherwise."""
    along = tuple(x_shape[a] for a in axes)
    if tuple(shape) == along:
        return tuple(x_shape[a] if a in axes else 1 for a in range(len(x_shape)))
    try:
        fits = jnp.broadcast_shapes(tuple(shape), x_shape) == tuple(x_shape)
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(
            f"{name} of shape {tuple(shape)} fits neither the normalized features {along} "
            f"nor, by broadcasting, the input {tuple(x_shape)}"
        )
    return None


def _as_stats(stats: Any) -> BatchNormStats:
    """A :class:`BatchNormStats` of floating-point arrays from any of its accepted forms."""
    if isinstance(stats, Mapping):  # flax's batch_stats: {"mean": ..., "var": ...}
        if set(stats) != {"mean", "var"}:
            raise ValueError(f"stats as a dict must have keys 'mean' and 'var', got {list(stats)}")
        stats = BatchNormStats(stats["mean"], stats["var"])
    elif not isinstance(stats, BatchNormStats):
        if not isinstance(stats, tuple | list) or len(stats) != 2:
            raise ValueError(
                f"stats must be BatchNormStats (mean, var), a pair or flax's "
                f"{{'mean', 'var'}} dict, got {stats!r:.80}"
            )
        stats = BatchNormStats(*stats)
    for field, value in zip(stats._fields, stats, strict=True):
        dtype = getattr(value, "dtype", None)
        if dtype is None:
            try:
                dtype = np.asarray(value).dtype
            except (TypeError, ValueError) as err:
                raise ValueError(f"stats.{field} must be an array, got {value!r:.80}") from err
        if not jnp.issubdtype(dtype, jnp.floating):
            # An integer running average would be rounded at every update.
            raise ValueError(
                f"stats.{field} must be a floating-point array, got {value!r:.80} of dtype {dtype}"
            )
    checked: BatchNormStats = stats
    return checked


def _compute_dtype(dtype: Any) -> Any:
    # At least float32: half-precision sums of many squares lose everything.
    return jnp.promote_types(dtype, jnp.float32)


# -- the standardization and its derivative -----------------------------------


class _Reduction(NamedTuple):
    """Which elements share statistics (hashable: a static argument).

    ``axes`` are reduced, in ``x``'s layout or, with ``groups=(channel_axis,
    num_groups)``, in the view where the channel axis is split into
    ``(group, channel in group)``. Statistics always come back broadcastable
    against ``x`` itself (per channel for groups), so every elementwise pass
    runs in ``x``'s own layout; only the reductions read the grouped view.
    ``axis_name`` averages the statistics over a named (device) axis too.
    """

    axes: tuple[int, ...]
    axis_name: Any = None
    groups: tuple[int, int] | None = None

    def _view(self, a: jax.Array) -> jax.Array:
        if self.groups is None:
            return a
        ch, num_groups = self.groups
        return a.reshape((*a.shape[:ch], num_groups, a.shape[ch] // num_groups, *a.shape[ch + 1 :]))

    def _unview(self, stat: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        if self.groups is None:
            return stat
        ch, _ = self.groups
        # (..., G, 1, ...) -> (..., G, C/G, ...) -> (..., C, ...): a copy per channel.
        wide = (*stat.shape[: ch + 1], shape[ch] // stat.shape[ch], *stat.shape[ch + 2 :])
        return jnp.broadcast_to(stat, wide).reshape(
            (*stat.shape[:ch], shape[ch], *stat.shape[ch + 2 :])
        )

    def mean(self, a: jax.Array) -> jax.Array:
        m = jnp.mean(self._view(a), axis=self.axes, keepdims=True)
        if self.axis_name is not None:
            # Each device holds an equal share: the mean of means is global.
            m = lax.pmean(m, self.axis_name)
        return self._unview(m, a.shape)


def _moments(x: jax.Array, red: _Reduction) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(mean, x - mean, var)``, statistics broadcastable against ``x``.

    The corrected two-pass algorithm (Chan, Golub and LeVeque): a first mean
    ``m0``, deviations ``d = x - m0``, then the mean ``e`` of ``d`` corrects
    both the mean and the deviations, and ``var = mean(d**2) - e**2``.
    ``x - m0`` is exact when ``m0`` is near ``x``, ``|e|`` is rounding-sized,
    so nothing cancels, and the centered values ``d - e`` never pass through
    the rounded large mean: ``1e4 + N(0, 1)`` in float32 standardizes to
    float32 precision rather than to ``ulp(1e4) / std``. The variance is still
    a mean of squared deviations, never ``E[x**2] - E[x]**2``. ``m0`` cancels
    exactly in real arithmetic, so it carries no gradient.
    """
    rough = lax.stop_gradient(red.mean(x))
    deviation = x - rough
    correction = red.mean(deviation)
    # Both means read the same deviations, so they can share one pass.
    var = red.mean(lax.square(deviation)) - lax.square(correction)
    return rough + correction, deviation - correction, jnp.maximum(var, 0)


def _standardize_plain(
    x: jax.Array, eps: Any, red: _Reduction
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(x_hat, mean, var)``, statistics broadcastable against ``x``.

    The reference definition, differentiated by plain autodiff:
    :func:`_standardize` computes the same values and differs only in how JAX
    differentiates it.
    """
    mean, centered, var = _moments(x, red)
    return centered * lax.rsqrt(var + eps), mean, var


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _standardize(x: jax.Array, eps: Any, red: _Reduction) -> tuple[jax.Array, jax.Array, jax.Array]:
    return _standardize_plain(x, eps, red)


def _standardize_jvp(
    red: _Reduction, primals: tuple[jax.Array, Any], tangents: tuple[Any, Any]
) -> tuple[tuple[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array, jax.Array]]:
    x, eps = primals
    dx, deps = tangents
    mean, centered, var = _moments(x, red)
    rstd = lax.rsqrt(var + eps)
    x_hat = centered * rstd
    if isinstance(dx, SymbolicZero):
        dx = jnp.zeros(x.shape, x.dtype)
    # d mean = mean(dx); d var = 2 mean((x - mu) dx); and
    #   d x_hat = rstd * (dx - mean(dx) - x_hat * mean(x_hat * dx)).
    # The two means are independent, so the transpose (the backward pass) is
    # one fused reduction over (g, x_hat) plus one elementwise pass. The
    # dropped mean(x_hat) * mean(dx) terms are exactly zero in real arithmetic.
    d_mean = red.mean(dx)
    proj = red.mean(x_hat * dx)
    d_x_hat = rstd * (dx - d_mean - x_hat * proj)
    d_var = 2.0 * proj / rstd
    if not isinstance(deps, SymbolicZero):
        d_x_hat = d_x_hat - 0.5 * x_hat * lax.square(rstd) * deps
    return (x_hat, mean, var), (d_x_hat, d_mean, d_var)


_standardize.defjvp(_standardize_jvp, symbolic_zeros=True)


@functools.partial(jax.custom_jvp, nondiff_argnums=(4,))
def _standardize_affine(
    x: jax.Array, scale: Any, bias: Any, eps: Any, red: _Reduction
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(scale * x_hat + bias, mean, var)`` for a scale and bias constant
    along the reduced axes (batch and instance norm: one per channel).

    Its JVP keeps the per-channel factors on the small reduced arrays, so the
    backward pass needs only ``sum(g)`` and ``sum(g * x_hat)``, the very
    reductions that give the bias and scale gradients:
    ``dx = scale * rstd * (g - mean(g) - x_hat * mean(g * x_hat))``.
    """
    x_hat, mean, var = _standardize_plain(x, eps, red)
    return _scale_shift(x_hat, scale, bias), mean, var


def _scale_shift(x_hat: jax.Array, scale: Any, bias: Any) -> jax.Array:
    y = x_hat if scale is None else x_hat * scale
    return y if bias is None else y + bias


def _standardize_affine_jvp(
    red: _Reduction, primals: tuple[jax.Array, Any, Any, Any], tangents: tuple[Any, Any, Any, Any]
) -> tuple[tuple[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array, jax.Array]]:
    x, scale, bias, eps = primals
    dx, dscale, dbias, deps = tangents
    mean, centered, var = _moments(x, red)
    rstd = lax.rsqrt(var + eps)
    x_hat = centered * rstd
    y = _scale_shift(x_hat, scale, bias)
    gain = rstd if scale is None else scale * rstd  # small: constant on reduced axes
    if isinstance(dx, SymbolicZero):
        dx = jnp.zeros(x.shape, x.dtype)
    d_mean = red.mean(dx)
    proj = red.mean(x_hat * dx)
    # Products of small arrays first, broadcast last: transposed, each
    # broadcast becomes a sum over the reduced axes of g or of g * x_hat.
    dy = gain * dx - gain * d_mean - x_hat * (gain * proj)
    if scale is not None and not isinstance(dscale, SymbolicZero):
        dy = dy + x_hat * dscale
    if bias is not None and not isinstance(dbias, SymbolicZero):
        dy = dy + dbias
    if not isinstance(deps, SymbolicZero):
        dy = dy - x_hat * (0.5 * gain * rstd * deps)
    return (y, mean, var), (dy, d_mean, 2.0 * proj / rstd)


_standardize_affine.defjvp(_standardize_affine_jvp, symbolic_zeros=True)


# -- the affine part ------------------------------------------------------------


def _param(
    p: Any, name: str, x_shape: tuple[int, ...], axes: tuple[int, ...], dtype: Any
) -> jax.Array | None:
    """Lay a scale or bias along ``axes`` of ``x`` (see :func:`_layout`), in ``dtype``.

    A parameter shaped ``[x.shape[a] for a in axes]`` is placed on those axes;
    any other shape must broadcast against ``x`` by NumPy's rules.
    """
    if p is None:
        return None
    p = jnp.asarray(p)
    shape = _layout(p.shape, name, x_shape, axes)
    laid: jax.Array = (p if shape is None else p.reshape(shape)).astype(dtype)
    return laid


# -- jitted kernels ---------------------------------------------------------------
# One compiled program per shape: eager calls dispatch once instead of op by
# op, and under an outer jit these inline away.


@functools.partial(jax.jit, static_argnames=("red", "features"))
def _normalize(
    x: jax.Array,
    scale: Any,
    bias: Any,
    eps: Any,
    *,
    red: _Reduction,
    features: tuple[int, ...],
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(y, mean, var)``: ``x`` standardized as ``red`` says, then scaled and
    shifted along ``features``; statistics in the compute dtype."""
    dtype = _compute_dtype(x.dtype)
    xc = x.astype(dtype)
    scale = _param(scale, "scale", x.shape, features, dtype)
    bias = _param(bias, "bias", x.shape, features, dtype)
    if _constant_on(red, x.ndim, scale, bias):
        y, mean, var = _standardize_affine(xc, scale, bias, eps, red)
    else:
        x_hat, mean, var = _standardize(xc, eps, red)
        y = _scale_shift(x_hat, scale, bias)
    return y.astype(x.dtype), mean, var


def _constant_on(red: _Reduction, ndim: int, *params: jax.Array | None) -> bool:
    """Whether every parameter has size 1 along every reduced axis."""
    if red.groups is not None:
        return False  # a group reduces over its channels, each with its own scale
    for p in params:
        if p is not None:
            shape = (1,) * (ndim - p.ndim) + p.shape
            if any(shape[a] != 1 for a in red.axes):
                return False
    return True


@functools.partial(jax.jit, static_argnames=("features", "axis_name"))
def _batch_norm_train(
    x: jax.Array,
    scale: Any,
    bias: Any,
    stats: BatchNormStats,
    momentum: jax.Array,
    rest: jax.Array,
    eps: Any,
    *,
    features: tuple[int, ...],
    axis_name: Any,
) -> tuple[jax.Array, BatchNormStats]:
    reduced = tuple(i for i in range(x.ndim) if i not in features)
    red = _Reduction(reduced, axis_name)
    y, mean, var = _normalize(x, scale, bias, eps, red=red, features=features)

    def ema(old: jax.Array, new: jax.Array) -> jax.Array:
        return (momentum * old + rest * new.reshape(old.shape)).astype(old.dtype)

    return y, BatchNormStats(ema(stats.mean, mean), ema(stats.var, var))


@functools.partial(jax.jit, static_argnames=("features",))
def _batch_norm_eval(
    x: jax.Array,
    scale: Any,
    bias: Any,
    stats: BatchNormStats,
    eps: Any,
    *,
    features: tuple[int, ...],
) -> jax.Array:
    dtype = _compute_dtype(x.dtype)
    mean = _param(stats.mean, "stats.mean", x.shape, features, dtype)
    var = _param(stats.var, "stats.var", x.shape, features, dtype)
    assert mean is not None and var is not None  # (statistics are arrays, never None)
    x_hat = (x.astype(dtype) - mean) * lax.rsqrt(var + eps)
    scale = _param(scale, "scale", x.shape, features, dtype)
    bias = _param(bias, "bias", x.shape, features, dtype)
    return _scale_shift(x_hat, scale, bias).astype(x.dtype)


# -- public functions ---------------------------------------------------------------


def batch_norm(
    x: jax.Array,
    scale: jax.Array | None,
    bias: jax.Array | None,
    stats: BatchNormStats,
    *,
    train: bool,
    momentum: float = 0.9,
    eps: float = 1e-5,
    axis: Axes = -1,
    axis_name: Any = None,
) -> tuple[jax.Array, BatchNormStats]:
    r"""Batch normalization (Ioffe and Szegedy), the textbook's ``BatchNormalization``.

    .. math::

        \hat x = \frac{x - \mu_B}{\sqrt{\sigma_B^2 + \epsilon}}, \qquad
        y = \gamma\, \hat x + \beta

    In training, each feature is standardized with the mean and biased
    variance over every other axis (the batch, and the spatial axes of
    images), and the running statistics move towards them::

        mean' = momentum * mean + (1 - momentum) * batch_mean
        var'  = momentum * var  + (1 - momentum) * batch_var      (biased, as flax)

    In evaluation the running statistics standardize instead, and ``stats``
    comes back unchanged. Same results as ``flax.linen.BatchNorm`` with the
    same ``momentum`` and ``epsilon`` (flax's default momentum is 0.99, ours
    the textbook's 0.9) and ``use_fast_variance=False``.

    Args:
      x: input, e.g. ``(N, D)`` or ``(N, H, W, C)``; in training it must hold
        at least one element per feature (an empty batch is a ``ValueError``).
      scale: ``gamma``, shaped like the feature axes, or ``None`` for none.
      bias: ``beta``, same shape, or ``None`` for none.
      stats: the running :class:`BatchNormStats` (a ``(mean, var)`` pair or
        flax's ``{"mean": ..., "var": ...}`` also works; the new statistics
        come back as :class:`BatchNormStats`).
      train: a Python bool; under ``jit`` make it static.
      momentum: running-average decay in [0, 1] (a number, or a 0-d array,
        e.g. traced under ``vmap``).
      eps: added to the variance, >= 0.
      axis: the feature axis or axes; every other axis is reduced.
      axis_name: a ``shard_map``/``pmap``/``vmap`` axis name to average the
        statistics over (``lax.pmean``). Under plain ``jax.jit`` with a batch
        sharded across devices this is not needed: the means are already global.

    Returns:
      ``(y, new_stats)``: ``y`` in ``x``'s dtype (float32 for integer ``x``);
      statistics in ``stats``'s dtype.

    Example:
      >>> import jax.numpy as jnp, purelearn as pl
      >>> x = jnp.array([[1.0, 10.0], [3.0, 30.0]])
      >>> y, stats = pl.batch_norm(x, None, None, pl.BatchNormStats.init(2), train=True)
      >>> y.round(3)
      Array([[-1., -1.],
             [ 1.,  1.]], dtype=float32)
      >>> stats.mean, stats.var  # 0.9 * (0, 1) + 0.1 * batch statistics
      (Array([0.2, 2. ], dtype=float32), Array([ 1. , 10.9], dtype=float32))
    """
    train = _train_flag(train)
    stats = _as_stats(stats)
    momentum = scalar("momentum", momentum, low=0.0, high=1.0)
    eps = scalar("eps", eps, low=0.0)
    x = _as_input(x)
    features = axes("axis", axis, x.ndim)
    reduced = tuple(i for i in range(x.ndim) if i not in features)
    if not reduced:
        raise ValueError(
            f"batch_norm has nothing to average over: axis={axis!r} covers every axis "
            f"of an input of shape {x.shape}"
        )
    if train and any(x.shape[i] == 0 for i in reduced):
        # The mean of nothing is NaN, and it would be written into the running statistics.
        raise ValueError(
            f"batch_norm in training needs a non-empty batch: an input of shape {x.shape} "
            f"has no elements to average over axes {reduced}"
        )
    feature_shape = tuple(x.shape[a] for a in features)
    for field in ("mean", "var"):
        shape = jnp.shape(getattr(stats, field))
        if shape != feature_shape:
            raise ValueError(
                f"stats.{field} has shape {shape}, but the features of an input of shape "
                f"{x.shape} along axis={axis!r} have shape {feature_shape}"
            )
    scale = _as_param(scale, "scale", x.shape, features)
    bias = _as_param(bias, "bias", x.shape, features)
    if train:
        # 1 - momentum in Python for a Python momentum, rounded once as in flax.
        rest = 1 - momentum
        trained: tuple[jax.Array, BatchNormStats] = _batch_norm_train(
            x, scale, bias, stats, momentum, rest, eps, features=features, axis_name=axis_name
        )
        return trained
    y: jax.Array = _batch_norm_eval(x, scale, bias, stats, eps, features=features)
    return y, stats


def layer_norm(
    x: jax.Array,
    scale: jax.Array | None = None,
    bias: jax.Array | None = None,
    *,
    axis: Axes = -1,
    eps: float = 1e-5,
) -> jax.Array:
    r"""Layer normalization (Ba et al.): standardize each example over ``axis``.

    .. math::

        y = \gamma\, \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} + \beta

    Independent of the batch, so training and inference agree and there are
    no running statistics. Same results as ``flax.linen.LayerNorm`` with
    ``reduction_axes=axis``, the same ``epsilon`` (flax's default is 1e-6) and
    ``use_fast_variance=False``.

    Args:
      x: input.
      scale: ``gamma`` shaped like ``x`` along ``axis`` (or anything that
        broadcasts against ``x``, e.g. ``(C,)`` with ``axis=(1, 2, 3)`` on
        NHWC), or ``None``.
      bias: ``beta``, likewise, or ``None``.
      axis: the axis or axes to normalize over.
      eps: added to the variance, >= 0.

    Returns:
      ``y``, shaped and typed like ``x`` (float32 for integer ``x``).

    Example:
      >>> import jax.numpy as jnp, purelearn as pl
      >>> x = jnp.array([[1.0, 3.0], [10.0, 30.0]])
      >>> pl.layer_norm(x, eps=0.0)  # each row on its own
      Array([[-1.,  1.],
             [-1.,  1.]], dtype=float32)
    """
    eps = scalar("eps", eps, low=0.0)
    x = _as_input(x)
    normalized = axes("axis", axis, x.ndim)
    if not normalized:
        raise ValueError("layer_norm needs at least one axis to normalize over, got axis=()")
    scale = _as_param(scale, "scale", x.shape, normalized)
    bias = _as_param(bias, "bias", x.shape, normalized)
    out = _normalize(x, scale, bias, eps, red=_Reduction(normalized), features=normalized)
    y: jax.Array = out[0]
    return y


def _channel_axis(x: jax.Array, channel_axis: int, fn: str, min_rank: int) -> int:
    if x.ndim < min_rank:
        raise ValueError(
            f"{fn} needs an input of rank >= {min_rank} (batch, ..., channels), got shape {x.shape}"
        )
    if np.ndim(channel_axis) != 0 or not np.issubdtype(np.asarray(channel_axis).dtype, np.integer):
        raise ValueError(f"channel_axis must be one int, got {channel_axis!r}")
    (ch,) = axes("channel_axis", channel_axis, x.ndim)
    if ch == 0:
        raise ValueError(f"{fn}: channel_axis={channel_axis} is the batch axis (axis 0)")
    return ch


def instance_norm(
    x: jax.Array,
    scale: jax.Array | None = None,
    bias: jax.Array | None = None,
    *,
    channel_axis: int = -1,
    eps: float = 1e-5,
) -> jax.Array:
    """Instance normalization (Ulyanov et al.): each example's each channel
    standardized over its spatial axes.

    Axis 0 is the batch; ``channel_axis=-1`` reads NHWC (or NLC, NDHWC),
    ``channel_axis=1`` reads NCHW. Same results as
    ``flax.linen.InstanceNorm`` (channels last) with the same ``epsilon``
    (flax's default is 1e-6) and ``use_fast_variance=False``.

    Args:
      x: input of rank >= 3.
      scale: per-channel ``gamma`` shaped ``(C,)``, or ``None``.
      bias: per-channel ``beta`` shaped ``(C,)``, or ``None``.
      channel_axis: the channel axis (not 0).
      eps: added to the variance, >= 0.

    Example:
      >>> import jax.numpy as jnp, purelearn as pl
      >>> x = jnp.array([[[1.0, 3.0], [10.0, 30.0]]])  # one example, shape (1, 2, 2)
      >>> pl.instance_norm(x, channel_axis=1, eps=0.0)  # NCL: channels are rows
      Array([[[-1.,  1.],
              [-1.,  1.]]], dtype=float32)
      >>> pl.instance_norm(x, channel_axis=-1, eps=0.0)  # NLC: channels are columns
      Array([[[-1., -1.],
              [ 1.,  1.]]], dtype=float32)
    """
    eps = scalar("eps", eps, low=0.0)
    x = _as_input(x)
    ch = _channel_axis(x, channel_axis, "instance_norm", 3)
    reduced = tuple(i for i in range(1, x.ndim) if i != ch)
    scale = _as_param(scale, "scale", x.shape, (ch,))
    bias = _as_param(bias, "bias", x.shape, (ch,))
    y: jax.Array = _normalize(x, scale, bias, eps, red=_Reduction(reduced), features=(ch,))[0]
    return y


def group_norm(
    x: jax.Array,
    num_groups: int,
    scale: jax.Array | None = None,
    bias: jax.Array | None = None,
    *,
    channel_axis: int = -1,
    eps: float = 1e-5,
) -> jax.Array:
    """Group normalization (Wu and He): channels split into ``num_groups``
    consecutive groups, each standardized per example over its channels and
    the spatial axes.

    ``num_groups=1`` is layer normalization over every non-batch axis;
    ``num_groups=C`` is instance normalization. Axis 0 is the batch. Same
    results as ``flax.linen.GroupNorm`` (channels last) with the same
    ``num_groups`` and ``epsilon`` (flax's default is 1e-6) and
    ``use_fast_variance=False``.

    Args:
      x: input of rank >= 2, e.g. ``(N, H, W, C)`` or ``(N, C, H, W)``.
      num_groups: a positive integer dividing the number of channels.
      scale: per-channel ``gamma`` shaped ``(C,)``, or ``None``.
      bias: per-channel ``beta`` shaped ``(C,)``, or ``None``.
      channel_axis: the channel axis (not 0).
      eps: added to the variance, >= 0.

    Raises:
      ValueError: if the channels do not divide into ``num_groups``.

    Example:
      >>> import jax.numpy as jnp, purelearn as pl
      >>> x = jnp.array([[1.0, 3.0, 10.0, 30.0]])  # groups (1, 3) and (10, 30)
      >>> pl.group_norm(x, 2, eps=0.0)
      Array([[-1.,  1., -1.,  1.]], dtype=float32)
    """
    num_groups = positive_int("num_groups", num_groups)
    eps = scalar("eps", eps, low=0.0)
    x = _as_input(x)
    ch = _channel_axis(x, channel_axis, "group_norm", 2)
    channels = x.shape[ch]
    if channels % num_groups:
        raise ValueError(
            f"group_norm: {channels} channels do not divide into num_groups={num_groups} groups"
        )
    # The channel axis splits in place into (group, channel in group): no
    # transpose, and every axis but the batch and the group is reduced.
    reduced = tuple(i for i in range(1, x.ndim + 1) if i != ch)
    red = _Reduction(reduced, groups=(ch, num_groups))
    scale = _as_param(scale, "scale", x.shape, (ch,))
    bias = _as_param(bias, "bias", x.shape, (ch,))
    y: jax.Array = _normalize(x, scale, bias, eps, red=red, features=(ch,))[0]
    return y
