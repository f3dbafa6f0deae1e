"""Weight initializers as pure functions of a PRNG key.

Each factory returns ``init(key, shape, dtype=jnp.float32) -> Array``, the
signature ``jax.nn.initializers`` and flax's ``kernel_init`` use, so they drop
into ``flax.linen.Dense(kernel_init=pl.he_normal())`` and
``flax.nnx.Linear(..., kernel_init=pl.he_normal())`` unchanged.

For a kernel shaped ``(..., fan_in_axis, fan_out_axis)`` (a dense ``(in, out)``
matrix or a conv ``(kh, kw, in, out)`` kernel) the leading axes form the
receptive field ``r = prod(shape[:-2])``, and::

    fan_in  = r * shape[-2]          (3, 3, 16, 32) -> 144
    fan_out = r * shape[-1]          (3, 3, 16, 32) -> 288

Kernels laid out otherwise name their axes: ``in_axis``, ``out_axis`` (an axis
or a sequence of axes) and ``batch_axis`` (axes counted in neither fan), as in
``jax.nn.initializers``; every other axis is receptive field.

The chapter's standard deviations, and the ``jax.nn.initializers`` call that
draws the very same numbers from the same key (``vs`` is ``variance_scaling``)::

    normal(s)                 s                              normal(s)
    xavier_normal()           sqrt(1 / fan_in)               vs(1, "fan_in", "normal")
    xavier_normal(fan="avg")  sqrt(2 / (fan_in + fan_out))   vs(1, "fan_avg", "normal")
    he_normal()               sqrt(2 / fan_in)               vs(2, "fan_in", "normal")

The ``*_uniform`` variants draw from ``U(-a, a)`` with ``a = sqrt(3) * std``,
which has the same variance (``distribution="uniform"`` in jax). Normals are
plain, untruncated Gaussians, as in the textbook's ``np.random.randn(n, m) *
std``.

**Not jax's namesakes.** ``jax.nn.initializers.xavier_normal`` (=
``glorot_normal``) averages the fans *and* truncates at two standard
deviations (``variance_scaling(1, "fan_avg", "truncated_normal")``): on a
784x100 kernel its std is ``sqrt(2/884) = 0.0476`` where the textbook's
``pl.xavier_normal()`` has ``sqrt(1/784) = 0.0357`` (samples from
``jax.random.key(0)``: 0.0477 and 0.0358). ``jax.nn.initializers.he_normal``
is truncated too; ``jax``'s ``xavier_uniform`` averages the fans
(``pl.xavier_uniform(fan="avg")``); ``jax``'s ``he_uniform`` is
``pl.he_uniform()``. :func:`variance_scaling` covers every combination.
"""

from __future__ import annotations

import functools
import math
import numbers
import operator
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from purelearn._cache import memoize
from purelearn._checks import choice, real

__all__ = [
    "Initializer",
    "compute_fans",
    "variance_scaling",
    "normal",
    "xavier_normal",
    "xavier_uniform",
    "he_normal",
    "he_uniform",
]

Initializer = Callable[..., jax.Array]
Axes = int | Sequence[int]

_MODES = ("fan_in", "fan_out", "fan_avg", "fan_geo_avg")
_DISTRIBUTIONS = ("normal", "uniform", "truncated_normal")
# The standard deviation of a standard normal truncated to (-2, 2).
_TRUNCATED_STD = 0.87962566103423978


# -- arguments -------------------------------------------------------------------


def _shape(shape: Any, name: str = "shape") -> tuple[int, ...]:
    """``shape`` as a tuple of Python ints >= 0 (an int is a rank-1 shape)."""
    dims = (shape,) if isinstance(shape, numbers.Integral) else shape
    try:
        dims = tuple(dims)
    except TypeError:
        dims = None
    if dims is None or not all(
        not isinstance(d, bool | np.bool_)
        and isinstance(d, numbers.Integral)
        and operator.index(d) >= 0
        for d in dims
    ):
        raise ValueError(f"{name} must be a sequence of integers >= 0, got {shape!r}")
    return tuple(operator.index(d) for d in dims)


def _axes(name: str, value: Any) -> tuple[int, ...]:
    """An axis or a sequence of axes as a tuple of ints (checked against a rank later)."""
    axes = (value,) if isinstance(value, numbers.Integral) else value
    try:
        axes = tuple(axes)
    except TypeError:
        axes = None
    if axes is None or not all(
        isinstance(a, numbers.Integral) and not isinstance(a, bool | np.bool_) for a in axes
    ):
        raise ValueError(f"{name} must be an axis or a sequence of axes (ints), got {value!r}")
    return tuple(operator.index(a) for a in axes)


def _dtype(dtype: Any, name: str) -> np.dtype:
    """A real floating-point dtype; ``None`` is jax's default float dtype."""
    if dtype is None:
        return np.dtype(jax.dtypes.canonicalize_dtype(jnp.float64))
    try:
        out: np.dtype[Any] | None = jnp.dtype(dtype)
    except TypeError:
        out = None
    if out is None or not jnp.issubdtype(out, jnp.floating):
        raise ValueError(
            f"{name}: dtype must be a real floating-point dtype (float32, bfloat16, ...), "
            f"got {dtype!r}"
        )
    return out


def _resolve(
    axes: tuple[int, ...], rank: int, name: str, shape: tuple[int, ...]
) -> tuple[int, ...]:
    out = []
    for a in axes:
        if not -rank <= a < rank:
            raise ValueError(f"{name}={a} is out of range for shape {shape} (rank {rank})")
        out.append(a % rank)
    return tuple(out)


# -- fans ----------------------------------------------------------------------------


def compute_fans(
    shape: Sequence[int], in_axis: Axes = -2, out_axis: Axes = -1, batch_axis: Axes = ()
) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a kernel.

    ``fan_in = prod(shape[in_axis]) * r`` and ``fan_out = prod(shape[out_axis])
    * r``, where the receptive field ``r`` is the product of the axes named
    in none of ``in_axis``, ``out_axis`` and ``batch_axis`` (the spatial axes
    of a conv kernel). The defaults read a kernel shaped ``(..., in, out)``.
    Equals ``jax.nn.initializers``' fans (as ints, and without dividing by a
    zero-sized axis).

    Args:
      shape: the kernel shape.
      in_axis, out_axis: an axis or a sequence of axes.
      batch_axis: axes counted in neither fan (e.g. a stack of kernels).

    Raises:
      ValueError: for a shape that is not a sequence of integers >= 0, an axis
        out of range (a shape of rank < 2 with the default axes), or an axis
        named twice.

    Example:
      >>> from purelearn.initializers import compute_fans
      >>> compute_fans((784, 100)), compute_fans((3, 3, 16, 32))
      ((784, 100), (144, 288))
      >>> compute_fans((32, 16, 3, 3), in_axis=1, out_axis=0)  # PyTorch's (out, in, kh, kw)
      (144, 288)
    """
    shape = _shape(shape)
    ins, outs = _axes("in_axis", in_axis), _axes("out_axis", out_axis)
    batch = _axes("batch_axis", batch_axis)
    rank = len(shape)
    if rank < 2 and ins == (-2,) and outs == (-1,) and not batch:
        raise ValueError(
            f"fans need a kernel of rank >= 2 shaped (..., fan_in, fan_out), got shape {shape}"
        )
    ins = _resolve(ins, rank, "in_axis", shape)
    outs = _resolve(outs, rank, "out_axis", shape)
    batch = _resolve(batch, rank, "batch_axis", shape)
    named = ins + outs + batch
    if len(set(named)) != len(named):
        raise ValueError(
            f"in_axis, out_axis and batch_axis must name distinct axes, got in_axis={in_axis!r}, "
            f"out_axis={out_axis!r}, batch_axis={batch_axis!r} for shape {shape}"
        )
    receptive = math.prod(d for i, d in enumerate(shape) if i not in named)
    fan_in = math.prod(shape[i] for i in ins) * receptive
    fan_out = math.prod(shape[i] for i in outs) * receptive
    return fan_in, fan_out


def _std(scale: float, mode: str, fans: tuple[int, int]) -> float:
    """``sqrt(scale / n)`` with ``n`` the fan ``mode`` names."""
    fan_in, fan_out = fans
    n = {
        "fan_in": fan_in,
        "fan_out": fan_out,
        "fan_avg": (fan_in + fan_out) / 2,
        "fan_geo_avg": math.sqrt(fan_in * fan_out),
    }[mode]
    # A zero fan only happens for an empty kernel (a zero-sized axis): any std fits.
    return math.sqrt(scale / n) if n > 0 else 0.0


# -- drawing ----------------------------------------------------------------------


def _multiplier(std: float, distribution: str) -> float:
    """What a unit draw of ``distribution`` is multiplied by to get standard deviation ``std``."""
    if distribution == "truncated_normal":
        return std / _TRUNCATED_STD
    if distribution == "uniform":  # U(-1, 1) has variance 1/3
        return std * math.sqrt(3.0)
    return std


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _draw(
    key: jax.Array,
    multiplier: float,
    shape: tuple[int, ...],
    dtype: np.dtype[Any],
    distribution: str,
) -> jax.Array:
    # One compiled program per shape, dtype and distribution, shared by every
    # initializer; the multiplier (computed in float64 on the host, rounded
    # once) is an argument, so other fans do not recompile. The unit draws
    # are jax's variance_scaling's.
    if distribution == "normal":
        unit = jax.random.normal(key, shape, dtype)
    elif distribution == "truncated_normal":
        unit = jax.random.truncated_normal(key, -2, 2, shape, dtype)
    else:
        unit = jax.random.uniform(key, shape, dtype, -1)
    return unit * jnp.asarray(multiplier, dtype)


def _scaled(
    name: str,
    scale: float,
    mode: str,
    distribution: str,
    in_axis: Axes,
    out_axis: Axes,
    batch_axis: Axes,
) -> Initializer:
    axes = {"in_axis": in_axis, "out_axis": out_axis, "batch_axis": batch_axis}
    for arg, value in axes.items():
        _axes(arg, value)  # a bad axis fails at construction

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        shape, dtype = _shape(shape, f"{name}: shape"), _dtype(dtype, name)
        try:
            fans = compute_fans(shape, **axes)
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from None
        std = _std(scale, mode, fans)
        out: jax.Array = _draw(key, _multiplier(std, distribution), shape, dtype, distribution)
        return out

    init.__name__ = init.__qualname__ = name
    return init


# -- the initializers ----------------------------------------------------------------


@memoize
def variance_scaling(
    scale: float,
    mode: str = "fan_in",
    distribution: str = "normal",
    in_axis: Axes = -2,
    out_axis: Axes = -1,
    batch_axis: Axes = (),
) -> Initializer:
    """Weights with standard deviation ``sqrt(scale / n)``, ``n`` a fan of the kernel.

    ``n`` is ``fan_in``, ``fan_out``, ``(fan_in + fan_out) / 2`` or
    ``sqrt(fan_in * fan_out)`` for ``mode`` ``"fan_in"``, ``"fan_out"``,
    ``"fan_avg"``, ``"fan_geo_avg"`` (fans as in :func:`compute_fans`).
    ``distribution`` is ``"normal"`` (plain Gaussian), ``"uniform"``
    (``U(-a, a)``, ``a = sqrt(3 * scale / n)``) or ``"truncated_normal"``
    (a Gaussian cut at two standard deviations, rescaled so that its std
    is still ``sqrt(scale / n)``). The semantics of
    ``jax.nn.initializers.variance_scaling`` for real dtypes, and, for the
    normal and uniform distributions, its draws for the same key.

    The named initializers are special cases: :func:`xavier_normal` is
    ``variance_scaling(1.0)``, :func:`he_normal` is ``variance_scaling(2.0)``.

    Args:
      scale: variance scale, a finite number > 0.
      mode: which fan divides the scale.
      distribution: ``"normal"``, ``"uniform"`` or ``"truncated_normal"``.
      in_axis, out_axis: the kernel's input and output axes (an axis or a
        sequence of axes).
      batch_axis: axes counted in neither fan.

    Returns:
      ``init(key, shape, dtype=jnp.float32)`` for real floating dtypes.

    Raises:
      ValueError: for a bad argument (here), a bad shape or dtype, or axes
        that do not fit the shape (when ``init`` is called).

    Example:
      >>> import jax, purelearn as pl
      >>> init = pl.variance_scaling(2.0, "fan_out", "truncated_normal")
      >>> w = init(jax.random.key(0), (300, 400))
      >>> round(float(w.var()) * 400, 1), bool(abs(w).max() <= 2 * (2 / 400) ** 0.5 / 0.8796)
      (2.0, True)
    """
    scale = real("scale", scale, low=0.0, low_open=True)
    choice("mode", mode, _MODES)
    choice("distribution", distribution, _DISTRIBUTIONS)
    return _scaled("variance_scaling", scale, mode, distribution, in_axis, out_axis, batch_axis)


@memoize
def normal(stddev: float = 0.01) -> Initializer:
    """Gaussian weights with a fixed standard deviation: ``N(0, stddev**2)``.

    The textbook's ``weight_init_std``: 1 saturates sigmoid layers, 0.01
    collapses every activation to the same value. The same draws as
    ``jax.nn.initializers.normal(stddev)`` for the same key.

    Args:
      stddev: standard deviation, a finite number >= 0.

    Returns:
      ``init(key, shape, dtype=jnp.float32)``; any shape, scalars included.

    Example:
      >>> import jax, purelearn as pl
      >>> w = pl.normal(0.01)(jax.random.key(0), (400, 300))
      >>> w.shape, round(float(w.std()), 3)
      ((400, 300), 0.01)
    """
    stddev = real("stddev", stddev, low=0.0)

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        shape, dtype = _shape(shape, "normal: shape"), _dtype(dtype, "normal")
        out: jax.Array = _draw(key, stddev, shape, dtype, "normal")
        return out

    init.__name__ = init.__qualname__ = "normal"
    return init


def _fan_mode(fan: Any) -> str:
    return "fan_" + choice("fan", fan, ("in", "avg"))


@memoize
def xavier_normal(
    fan: str = "in", *, in_axis: Axes = -2, out_axis: Axes = -1, batch_axis: Axes = ()
) -> Initializer:
    r"""Xavier (Glorot) Gaussian weights, untruncated.

    .. math::

        W \sim \mathcal{N}\!\left(0, \frac{1}{n_\text{in}}\right) \text{ (the textbook's)},
        \qquad
        W \sim \mathcal{N}\!\left(0, \frac{2}{n_\text{in} + n_\text{out}}\right)
        \text{ (Glorot's)}

    ``fan="in"`` (default) is the textbook's ``std = sqrt(1 / fan_in)``, which
    keeps the variance of a layer's pre-activations equal to that of its
    inputs; ``fan="avg"`` is Glorot and Bengio's ``sqrt(2 / (fan_in +
    fan_out))``, a compromise with the backward pass.

    Not ``jax.nn.initializers.xavier_normal``, which averages the fans and
    truncates at two standard deviations (on 784x100: std 0.0476 there,
    0.0357 here). Ours is ``jax.nn.initializers.variance_scaling(1.0,
    "fan_in", "normal")`` (``"fan_avg"`` with ``fan="avg"``): the same
    draws for the same key.

    Args:
      fan: ``"in"`` or ``"avg"``.
      in_axis, out_axis, batch_axis: the kernel's axes, as in
        :func:`compute_fans` (default: a kernel shaped ``(..., in, out)``).

    Returns:
      ``init(key, shape, dtype=jnp.float32)`` for a kernel of rank >= 2.

    Raises:
      ValueError: for another ``fan`` or a bad axis (here), or a shape of
        rank < 2, a bad shape or a non-float dtype (when ``init`` is called).

    Example:
      >>> import jax, purelearn as pl
      >>> w = pl.xavier_normal()(jax.random.key(0), (784, 100))
      >>> round(float(w.std()), 4)  # sqrt(1/784) = 0.0357; jax's xavier_normal: 0.0477
      0.0358
    """
    mode = _fan_mode(fan)
    return _scaled("xavier_normal", 1.0, mode, "normal", in_axis, out_axis, batch_axis)


@memoize
def xavier_uniform(
    fan: str = "in", *, in_axis: Axes = -2, out_axis: Axes = -1, batch_axis: Axes = ()
) -> Initializer:
    """Xavier weights from ``U(-a, a)``, ``a = sqrt(3 / fan_in)`` (or
    ``sqrt(6 / (fan_in + fan_out))`` with ``fan="avg"``): the variance of
    :func:`xavier_normal`.

    ``jax.nn.initializers.xavier_uniform`` averages the fans: it is
    ``pl.xavier_uniform(fan="avg")``. Ours is
    ``jax.nn.initializers.variance_scaling(1.0, "fan_in", "uniform")``
    (``jax.nn.initializers.lecun_uniform``), the same draws for the same key.

    Args:
      fan: ``"in"`` or ``"avg"``.
      in_axis, out_axis, batch_axis: the kernel's axes, as in :func:`compute_fans`.

    Example:
      >>> import jax, purelearn as pl
      >>> w = pl.xavier_uniform(fan="avg")(jax.random.key(0), (400, 300))
      >>> bool(abs(w).max() <= (6 / 700) ** 0.5), round(float(w.var()) * 350, 1)
      (True, 1.0)
    """
    mode = _fan_mode(fan)
    return _scaled("xavier_uniform", 1.0, mode, "uniform", in_axis, out_axis, batch_axis)


@memoize
def he_normal(*, in_axis: Axes = -2, out_axis: Axes = -1, batch_axis: Axes = ()) -> Initializer:
    r"""He (Kaiming) Gaussian weights, ``std = sqrt(2 / fan_in)``, untruncated.

    .. math::

        W \sim \mathcal{N}\!\left(0, \frac{2}{n_\text{in}}\right)

    ReLU zeroes half of its inputs, halving the second moment; the factor 2
    restores it, so activations keep their scale through deep ReLU nets.

    ``jax.nn.initializers.he_normal`` has the same std but truncates at two
    standard deviations; ours is ``jax.nn.initializers.variance_scaling(2.0,
    "fan_in", "normal")``, the same draws for the same key.

    Args:
      in_axis, out_axis, batch_axis: the kernel's axes, as in :func:`compute_fans`.

    Example:
      >>> import jax, purelearn as pl
      >>> w = pl.he_normal()(jax.random.key(0), (400, 300))
      >>> round(float(w.var()) * 400, 1)  # variance 2 / fan_in
      2.0

    For a conv kernel ``(3, 3, 16, 32)`` the fan-in is ``3 * 3 * 16 = 144``.
    """
    return _scaled("he_normal", 2.0, "fan_in", "normal", in_axis, out_axis, batch_axis)


@memoize
def he_uniform(*, in_axis: Axes = -2, out_axis: Axes = -1, batch_axis: Axes = ()) -> Initializer:
    """He weights from ``U(-a, a)``, ``a = sqrt(6 / fan_in)``: the variance of
    :func:`he_normal`.

    The same draws as ``jax.nn.initializers.he_uniform()`` (=
    ``variance_scaling(2.0, "fan_in", "uniform")``) for the same key.

    Args:
      in_axis, out_axis, batch_axis: the kernel's axes, as in :func:`compute_fans`.

    Example:
      >>> import jax, purelearn as pl
      >>> w = pl.he_uniform()(jax.random.key(0), (400, 300))
      >>> bool(abs(w).max() <= (6 / 400) ** 0.5), round(float(w.var()) * 400, 1)
      (True, 2.0)
    """
    return _scaled("he_uniform", 2.0, "fan_in", "uniform", in_axis, out_axis, batch_axis)
