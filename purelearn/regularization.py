"""Dropout and the L2 weight-decay penalty as pure functions.

``dropout`` is *inverted* dropout: in training each unit survives with
probability ``1 - rate`` and survivors are scaled by ``1 / (1 - rate)``, so
``E[dropout(x)] = x`` and inference is the identity (the textbook instead
scales by ``1 - rate`` at test time; the two agree in expectation). There is no
hidden key stream: every call takes its key.

``l2_penalty`` is the textbook's weight decay, ``0.5 * lambda * sum(W**2)``
added to the loss, whose gradient adds ``lambda * W`` to each weight's.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from purelearn._tree import leaf_mask

__all__ = ["dropout", "l2_penalty"]

Mask = Any | Callable[[Any], Any] | None


def _is_array(value: Any) -> bool:
    return isinstance(value, (jax.Array, jax.core.Tracer, np.ndarray))


def _check_unit_interval(name: str, value: Any) -> None:
    if _is_array(value):
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    if not 0.0 <= float(value) <= 1.0:  # NaN fails both comparisons
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")


def dropout(
    key: jax.Array | None,
    x: jax.Array,
    rate: float,
    *,
    deterministic: bool = False,
    broadcast_dims: Sequence[int] = (),
) -> jax.Array:
    """Inverted dropout: zero each element with probability ``rate``, scale the
    rest by ``1 / (1 - rate)``.

    Args:
      key: a PRNG key; the same key gives the same mask. May be ``None`` when
        nothing is dropped (``deterministic=True`` or ``rate == 0``).
      x: a floating-point array.
      rate: drop probability in [0, 1] (a number, or an array under ``vmap``).
        ``rate == 1`` returns zeros, and zero (finite) gradients.
      deterministic: a Python bool; ``True`` returns ``x`` unchanged (inference).
      broadcast_dims: axes along which one mask value is shared, e.g.
        ``(1, 2)`` on NHWC drops whole channels (spatial dropout).

    Returns:
      An array like ``x`` (same shape and dtype).

    Raises:
      ValueError: ``rate`` outside [0, 1] or NaN, or a needed key missing.

    Example:
      >>> import jax, jax.numpy as jnp, purelearn as pl
      >>> y = pl.dropout(jax.random.key(0), jnp.ones(8), 0.5)
      >>> sorted(set(y.tolist()))  # dropped, or kept and scaled by 1 / (1 - 0.5)
      [0.0, 2.0]
      >>> pl.dropout(None, jnp.ones(3), 0.5, deterministic=True)
      Array([1., 1., 1.], dtype=float32)
    """
    _check_unit_interval("rate", rate)
    if not isinstance(deterministic, (bool, np.bool_)):
        raise TypeError(f"deterministic must be a Python bool, got {deterministic!r}")
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        raise TypeError(f"dropout needs a floating-point input, got dtype {x.dtype}")
    if deterministic or (not _is_array(rate) and rate == 0):
        return x
    if not _is_array(rate) and rate == 1:
        # Every unit dropped: no key needed, and x * 0 keeps gradients finite.
        return jnp.zeros_like(x)
    if key is None:
        raise ValueError("dropout with rate > 0 and deterministic=False needs a PRNG key")
    mask_shape = list(x.shape)
    for d in broadcast_dims:
        mask_shape[d] = 1
    # For a Python rate this is Python arithmetic, rounded once (as flax does).
    return _dropout(key, x, 1.0 - rate, mask_shape=tuple(mask_shape))


@functools.partial(jax.jit, static_argnames=("mask_shape",))
def _dropout(key, x, keep_prob, *, mask_shape):
    keep = jax.random.bernoulli(key, keep_prob, mask_shape)
    # A traced rate may reach 1 (nothing kept): divide by a safe value so the
    # unselected branch is never x / 0, whose gradient would be NaN.
    divisor = jnp.where(keep_prob > 0, keep_prob, 1.0).astype(x.dtype)
    return jnp.where(jnp.broadcast_to(keep, x.shape), x / divisor, jnp.zeros((), x.dtype))


def _selection(params: Any, mask: Mask) -> list[bool]:
    """One Python bool per leaf of ``params``, in ``jax.tree.leaves`` order."""
    flags = jax.tree.leaves(leaf_mask(mask, params, default=lambda p: jnp.ndim(p) >= 2))
    if len(flags) != len(jax.tree.leaves(params)):
        raise ValueError("mask must have one bool per leaf (or subtree) of params")
    return flags


def l2_penalty(params: Any, weight_decay: float | jax.Array, *, mask: Mask = None) -> jax.Array:
    """The weight-decay term ``0.5 * weight_decay * sum(w**2)`` over the weights.

    By default only leaves with ``ndim >= 2`` count (dense matrices, conv
    kernels), as in the textbook, which decays ``W`` but not biases or
    batch-norm scales. Its gradient adds ``weight_decay * w`` to each selected
    weight's gradient.

    Args:
      params: any pytree of arrays.
      weight_decay: ``lambda >= 0`` (a number, or an array, e.g. traced under
        ``vmap`` in a hyperparameter search).
      mask: which leaves count: ``None`` (leaves with ndim >= 2), a pytree of
        bools shaped like ``params`` (or a prefix of it), or a function of
        ``params`` returning one.

    Returns:
      A scalar, in float32 (float64 if a selected leaf is float64).

    Example:
      >>> import jax.numpy as jnp, purelearn as pl
      >>> params = {"w": jnp.array([[1.0, 2.0], [0.0, 1.0]]), "b": jnp.array([5.0])}
      >>> pl.l2_penalty(params, 0.1)  # 0.5 * 0.1 * (1 + 4 + 0 + 1); b is not decayed
      Array(0.3, dtype=float32)
      >>> pl.l2_penalty(params, 0.1, mask={"w": False, "b": True})
      Array(1.25, dtype=float32)
    """
    if not _is_array(weight_decay):
        if isinstance(weight_decay, bool) or not isinstance(weight_decay, numbers.Real):
            raise ValueError(f"weight_decay must be a number >= 0, got {weight_decay!r}")
        if not (math.isfinite(weight_decay) and weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    leaves = [
        jnp.asarray(p)
        for p, keep in zip(jax.tree.leaves(params), _selection(params, mask), strict=True)
        if keep
    ]
    dtype = jnp.result_type(jnp.float32, *(p.dtype for p in leaves))
    if not leaves or (not _is_array(weight_decay) and weight_decay == 0):
        return jnp.zeros((), dtype)
    return _penalty(leaves, weight_decay, dtype=dtype)


@functools.partial(jax.jit, static_argnames=("dtype",))
def _penalty(leaves, weight_decay, *, dtype):
    # Sum in at least float32: bfloat16 weights would lose most of the total.
    total = sum(jnp.sum(jnp.square(p.astype(dtype))) for p in leaves)
    return (0.5 * weight_decay * total).astype(dtype)
