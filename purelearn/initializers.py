"""Weight initializers as pure functions of a PRNG key.

Each factory returns ``init(key, shape, dtype=jnp.float32) -> Array``, the
signature ``jax.nn.initializers`` and flax's ``kernel_init`` use, so they drop
into ``flax.linen.Dense(kernel_init=pl.he_normal())`` unchanged.

For a kernel shaped ``(..., fan_in_axis, fan_out_axis)`` (a dense ``(in, out)``
matrix or a conv ``(kh, kw, in, out)`` kernel) the leading axes form the
receptive field ``r = prod(shape[:-2])``, and::

    fan_in  = r * shape[-2]          (3, 3, 16, 32) -> 144
    fan_out = r * shape[-1]          (3, 3, 16, 32) -> 288

The chapter's standard deviations::

    normal(s)                 s
    xavier_normal()           sqrt(1 / fan_in)                 (the textbook's "Xavier")
    xavier_normal(fan="avg")  sqrt(2 / (fan_in + fan_out))     (Glorot and Bengio)
    he_normal()               sqrt(2 / fan_in)                 (He et al., for ReLU)

The ``*_uniform`` variants draw from ``U(-a, a)`` with ``a = sqrt(3) * std``,
which has the same variance. Normals are plain (not truncated) Gaussians, as in
the textbook's ``np.random.randn(n, m) * std``.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

__all__ = [
    "Initializer",
    "compute_fans",
    "normal",
    "xavier_normal",
    "xavier_uniform",
    "he_normal",
    "he_uniform",
]

Initializer = Callable[..., jax.Array]

_FANS = ("in", "avg")


def compute_fans(shape: Sequence[int]) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a kernel shaped ``(..., in, out)``.

    The axes before the last two are the receptive field (conv kernel spatial
    axes) and multiply both fans.

    Args:
      shape: the kernel shape, rank >= 2.

    Raises:
      ValueError: if the rank is below 2 (there is no input axis to count).

    Example:
      >>> from purelearn.initializers import compute_fans
      >>> compute_fans((784, 100)), compute_fans((3, 3, 16, 32))
      ((784, 100), (144, 288))
    """
    shape = _shape(shape)
    if len(shape) < 2:
        raise ValueError(
            f"fans need a kernel of rank >= 2 shaped (..., fan_in, fan_out), got shape {shape}"
        )
    receptive = math.prod(shape[:-2])
    return receptive * shape[-2], receptive * shape[-1]


def _shape(shape: Any) -> tuple[int, ...]:
    if isinstance(shape, numbers.Integral):
        return (int(shape),)
    return tuple(int(d) for d in shape)


def _check_fan(fan: Any) -> str:
    if fan not in _FANS:
        raise ValueError(f"fan must be one of {_FANS}, got {fan!r}")
    return fan


def _std_for(name: str, shape: tuple[int, ...], gain: float, fan: str) -> float:
    """``sqrt(gain / n)`` with ``n = fan_in`` or the mean of the two fans."""
    try:
        fan_in, fan_out = compute_fans(shape)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None
    n = fan_in if fan == "in" else (fan_in + fan_out) / 2
    # A zero fan only happens for an empty kernel; any finite std gives it.
    return math.sqrt(gain / n) if n > 0 else 0.0


def _scaled_normal(key: jax.Array, std: float, shape: tuple[int, ...], dtype: Any) -> jax.Array:
    dtype = jnp.float32 if dtype is None else dtype
    return _scaled_normal_jit(key, std, shape, dtype)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _scaled_normal_jit(key, std, shape, dtype):
    # One compiled program per shape and dtype, shared by every initializer.
    return jax.random.normal(key, shape, dtype) * jnp.asarray(std, dtype)


def _gaussian(name: str, gain: float, fan: str) -> Initializer:
    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        shape = _shape(shape)
        return _scaled_normal(key, _std_for(name, shape, gain, fan), shape, dtype)

    init.__name__ = init.__qualname__ = name
    return init


def _uniform(name: str, gain: float, fan: str) -> Initializer:
    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        shape = _shape(shape)
        # U(-a, a) has variance a**2 / 3.
        limit = math.sqrt(3.0) * _std_for(name, shape, gain, fan)
        dtype = jnp.float32 if dtype is None else dtype
        return jax.random.uniform(key, shape, dtype, -limit, limit)

    init.__name__ = init.__qualname__ = name
    return init


def normal(stddev: float = 0.01) -> Initializer:
    """Gaussian weights with a fixed standard deviation: ``N(0, stddev**2)``.

    The textbook's ``weight_init_std``: 1 saturates sigmoid layers, 0.01
    collapses every activation to the same value.

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
    if isinstance(stddev, bool) or not isinstance(stddev, numbers.Real):
        raise ValueError(f"stddev must be a number, got {stddev!r}")
    if not (math.isfinite(stddev) and stddev >= 0):
        raise ValueError(f"stddev must be a finite number >= 0, got {stddev!r}")
    stddev = float(stddev)

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        return _scaled_normal(key, stddev, _shape(shape), dtype)

    init.__name__ = init.__qualname__ = "normal"
    return init


def xavier_normal(fan: str = "in") -> Initializer:
    """Xavier (Glorot) Gaussian weights.

    ``fan="in"`` (default) is the textbook's ``std = sqrt(1 / fan_in)``, which
    keeps the variance of a layer's pre-activations equal to that of its
    inputs; ``fan="avg"`` is Glorot and Bengio's ``sqrt(2 / (fan_in +
    fan_out))``, a compromise with the backward pass (and equals
    ``jax.nn.initializers.glorot_normal`` up to truncation).

    Args:
      fan: ``"in"`` or ``"avg"``.

    Returns:
      ``init(key, shape, dtype=jnp.float32)`` for a kernel of rank >= 2.

    Raises:
      ValueError: for another ``fan`` (here), or a shape of rank < 2 (when
        ``init`` is called).

    Example:
      >>> import jax, purelearn as pl
      >>> w = pl.xavier_normal()(jax.random.key(0), (400, 300))
      >>> round(float(w.var()) * 400, 1)  # variance 1 / fan_in
      1.0
    """
    fan = _check_fan(fan)
    return _gaussian("xavier_normal", 1.0, fan)


def xavier_uniform(fan: str = "in") -> Initializer:
    """Xavier weights from ``U(-a, a)``, ``a = sqrt(3 / fan_in)`` (or
    ``sqrt(6 / (fan_in + fan_out))`` with ``fan="avg"``): the variance of
    :func:`xavier_normal`.

    Args:
      fan: ``"in"`` or ``"avg"``.

    Example:
      >>> import jax, purelearn as pl
      >>> w = pl.xavier_uniform(fan="avg")(jax.random.key(0), (400, 300))
      >>> bool(abs(w).max() <= (6 / 700) ** 0.5), round(float(w.var()) * 350, 1)
      (True, 1.0)
    """
    fan = _check_fan(fan)
    return _uniform("xavier_uniform", 1.0, fan)


def he_normal() -> Initializer:
    """He (Kaiming) Gaussian weights, ``std = sqrt(2 / fan_in)``.

    ReLU zeroes half of its inputs, halving the second moment; the factor 2
    restores it, so activations keep their scale through deep ReLU nets.

    Example:
      >>> import jax, purelearn as pl
      >>> w = pl.he_normal()(jax.random.key(0), (400, 300))
      >>> round(float(w.var()) * 400, 1)  # variance 2 / fan_in
      2.0

    For a conv kernel ``(3, 3, 16, 32)`` the fan-in is ``3 * 3 * 16 = 144``.
    """
    return _gaussian("he_normal", 2.0, "in")


def he_uniform() -> Initializer:
    """He weights from ``U(-a, a)``, ``a = sqrt(6 / fan_in)``: the variance of
    :func:`he_normal`.

    Example:
      >>> import jax, purelearn as pl
      >>> w = pl.he_uniform()(jax.random.key(0), (400, 300))
      >>> bool(abs(w).max() <= (6 / 400) ** 0.5), round(float(w.var()) * 400, 1)
      (True, 2.0)
    """
    return _uniform("he_uniform", 2.0, "in")
