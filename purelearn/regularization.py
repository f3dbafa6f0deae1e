"""Dropout and the L2 weight-decay penalty as pure functions.

``dropout`` comes in two forms that agree in expectation. The default,
*inverted* dropout, keeps each unit with probability ``1 - rate`` and scales
survivors by ``1 / (1 - rate)`` in training, so ``E[dropout(x)] = x`` and
inference is the identity (flax's and PyTorch's form). The *textbook* form
(``scale="textbook"``, the book's ``Dropout`` class) keeps survivors as they
are in training and multiplies by ``1 - rate`` at inference. They train
differently: see :func:`dropout`. There is no hidden key stream: every call
takes its key.

``l2_penalty`` is the textbook's weight decay, ``0.5 * lambda * sum(W**2)``
added to the loss, whose gradient adds ``lambda * W`` to each weight's.

Bad arguments are a ``ValueError`` naming the argument and the value, at the
call: a ``rate`` outside [0, 1] or a negative or NaN ``weight_decay`` (plain
numbers and 0-d NumPy arrays alike), ``broadcast_dims`` out of range, and
mask leaves that are not real bools (the string ``"no"`` is not ``False``).
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from purelearn._checks import (
    ArgumentTypeError,
    axes,
    boolean,
    choice,
    is_traced,
    key_or_seed,
    scalar,
)
from purelearn._tree import leaf_mask

__all__ = ["dropout", "l2_penalty"]

Mask = Any | Callable[[Any], Any] | None

_SCALES: tuple[Literal["inverted", "textbook"], ...] = ("inverted", "textbook")


def _static_flag(name: str, value: Any) -> bool:
    # A traced flag would choose between programs of different form: make it
    # static under jit (static_argnames) instead.
    if is_traced(value):
        raise TypeError(
            f"{name} must be a Python bool (static under jit: use "
            f"jax.jit(f, static_argnames={name!r})), got {value!r}"
        )
    return boolean(name, value)


def _float_input(x: Any) -> jax.Array:
    if not isinstance(x, jax.Array | jax.core.Tracer):
        try:
            x = jnp.asarray(x)
        except (TypeError, ValueError) as err:
            raise ValueError(f"x must be an array of numbers, got {x!r:.80}") from err
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        # Both forms rescale x (by 1 / (1 - rate) or by 1 - rate): no integer holds that.
        raise ValueError(f"dropout needs a floating-point x, got dtype {x.dtype}")
    checked: jax.Array = x
    return checked


def dropout(
    key: jax.Array | int | None,
    x: jax.Array,
    rate: float | jax.Array,
    *,
    deterministic: bool = False,
    broadcast_dims: Sequence[int] = (),
    scale: Literal["inverted", "textbook"] = "inverted",
) -> jax.Array:
    """Zero each element of ``x`` with probability ``rate``, in one of two scalings.

    With ``mask`` a Bernoulli draw that keeps each unit with probability
    ``q = 1 - rate``::

        scale="inverted"  (default)   training: x * mask / q    inference: x
        scale="textbook"              training: x * mask        inference: x * q

    The textbook form is the book's ``Dropout`` class (``mask = rand > rate``;
    ``x * mask`` in training, ``x * (1 - rate)`` at test time). Both have the
    inference output equal to the training output's expectation, and for the
    same key both draw the same mask. They give the same function but train
    differently: a textbook net with weights ``V`` after a dropout layer equals
    an inverted-dropout net with weights ``q * V``, and an SGD step of size
    ``lr`` on ``V`` moves ``q * V`` by ``lr * q**2`` times its gradient. So
    SGD on the textbook form trains like SGD on the inverted form at
    ``(1 - rate)**2`` the learning rate for the weights that read a dropout
    layer (other parameters, such as their biases, step as before).

    Args:
      key: a PRNG key (or an int seed); the same key gives the same mask. May
        be ``None`` when nothing is drawn (``deterministic=True`` or ``rate == 0``).
      x: a floating-point array.
      rate: drop probability in [0, 1] (a number, or a 0-d array, e.g. traced
        under ``vmap``). ``rate == 1`` returns zeros, and zero (finite) gradients.
      deterministic: a Python bool; ``True`` is inference.
      broadcast_dims: axes along which one mask value is shared, e.g.
        ``(1, 2)`` on NHWC drops whole channels (spatial dropout). A sequence,
        as in ``flax.linen.Dropout``: one int is a ``TypeError``.
      scale: ``"inverted"`` or ``"textbook"``, as above.

    Returns:
      An array like ``x`` (same shape and dtype).

    Raises:
      ValueError: ``rate`` outside [0, 1] or NaN, ``broadcast_dims`` not axes
        of ``x``, an unknown ``scale``, or a needed key missing.

    Example:
      >>> import jax, jax.numpy as jnp, purelearn as pl
      >>> y = pl.dropout(jax.random.key(0), jnp.ones(8), 0.5)
      >>> sorted(set(y.tolist()))  # dropped, or kept and scaled by 1 / (1 - 0.5)
      [0.0, 2.0]
      >>> pl.dropout(None, jnp.ones(3), 0.5, deterministic=True)
      Array([1., 1., 1.], dtype=float32)
      >>> y = pl.dropout(jax.random.key(0), jnp.ones(8), 0.5, scale="textbook")
      >>> sorted(set(y.tolist()))  # dropped, or kept as is
      [0.0, 1.0]
      >>> pl.dropout(None, jnp.ones(3), 0.25, deterministic=True, scale="textbook")
      Array([0.75, 0.75, 0.75], dtype=float32)
    """
    rate = scalar("rate", rate, low=0.0, high=1.0)
    deterministic = _static_flag("deterministic", deterministic)
    scale = choice("scale", scale, _SCALES)
    x = _float_input(x)
    if isinstance(broadcast_dims, numbers.Integral) or (
        np.ndim(broadcast_dims) == 0 and np.issubdtype(np.asarray(broadcast_dims).dtype, np.integer)
    ):
        # flax.linen.Dropout takes a sequence only; one int is most likely a slip
        dim = int(np.asarray(broadcast_dims))
        raise ArgumentTypeError(
            f"broadcast_dims must be a tuple or list of axes (as in flax.linen.Dropout), "
            f"got the int {dim}: write ({dim},)"
        )
    shared = axes("broadcast_dims", broadcast_dims, x.ndim)
    if key is not None:  # checked even where unused (rate 0, deterministic): a slip shows
        key = key_or_seed("key", key)
    textbook = scale == "textbook"
    plain = not is_traced(rate)
    if (deterministic and not textbook) or (plain and rate == 0):
        return x
    if plain and rate == 1:
        # Every unit dropped (or scaled by 0): no key needed, and zeros (not
        # x * 0, NaN at an infinite x) keep gradients finite.
        return jnp.zeros_like(x)
    if deterministic:
        # For a Python rate, 1 - rate is Python arithmetic, rounded once.
        return (x * (1 - rate)).astype(x.dtype)
    if key is None:
        raise ValueError("dropout with rate > 0 and deterministic=False needs a PRNG key, got None")
    key = key_or_seed("key", key)
    mask_shape = tuple(1 if d in shared else n for d, n in enumerate(x.shape))
    out: jax.Array = _dropout(key, x, 1.0 - rate, mask_shape=mask_shape, textbook=textbook)
    return out


@functools.partial(jax.jit, static_argnames=("mask_shape", "textbook"))
def _dropout(
    key: jax.Array,
    x: jax.Array,
    keep_prob: jax.Array,
    *,
    mask_shape: tuple[int, ...],
    textbook: bool,
) -> jax.Array:
    keep = jnp.broadcast_to(jax.random.bernoulli(key, keep_prob, mask_shape), x.shape)
    if textbook:
        return jnp.where(keep, x, jnp.zeros((), x.dtype))
    # A traced rate may reach 1 (nothing kept): divide by a safe value so the
    # unselected branch is never x / 0, whose gradient would be NaN.
    divisor = jnp.where(keep_prob > 0, keep_prob, 1.0).astype(x.dtype)
    return jnp.where(keep, x / divisor, jnp.zeros((), x.dtype))


def _path(path: Any) -> str:
    return jax.tree_util.keystr(path) or "(the root)"


def _selection(params: Any, mask: Mask) -> list[bool]:
    """One Python bool per leaf of ``params``, in ``jax.tree.leaves`` order."""
    if mask is not None:
        tree = mask(params) if callable(mask) else mask
        # bool("no") is True: check every leaf is a real bool before it is read as one.
        for path, flag in jax.tree_util.tree_leaves_with_path(tree):
            if isinstance(flag, jax.Array) and not isinstance(flag, jax.core.Tracer):
                flag = np.asarray(flag)  # a concrete 0-d jax bool is fine
            boolean(f"mask leaf {_path(path)}", flag)
        mask = tree
    flags = jax.tree.leaves(leaf_mask(mask, params, default=lambda p: jnp.ndim(p) >= 2))
    if len(flags) != len(jax.tree.leaves(params)):
        raise ValueError("mask must have one bool per leaf (or subtree) of params")
    return flags


def _weights(params: Any, mask: Mask) -> list[jax.Array]:
    """The selected leaves, as real arrays."""
    selected = []
    leaves = jax.tree_util.tree_leaves_with_path(params)
    for (path, p), keep in zip(leaves, _selection(params, mask), strict=True):
        if not keep:
            continue
        if not isinstance(p, jax.Array | jax.core.Tracer):
            try:
                p = jnp.asarray(p)
            except (TypeError, ValueError) as err:
                raise ValueError(f"params leaf {_path(path)} is not an array: {p!r:.80}") from err
        if not (jnp.issubdtype(p.dtype, jnp.floating) or jnp.issubdtype(p.dtype, jnp.integer)):
            # Complex weights would lose their imaginary part in the float sum.
            raise ValueError(f"params leaf {_path(path)} must be real, got dtype {p.dtype}")
        selected.append(p)
    return selected


def l2_penalty(params: Any, weight_decay: float | jax.Array, *, mask: Mask = None) -> jax.Array:
    r"""The weight-decay term ``0.5 * weight_decay * sum(w**2)`` over the weights.

    .. math::

        \frac{\lambda}{2} \sum_i \lVert W_i \rVert^2

    By default only leaves with ``ndim >= 2`` count (dense matrices, conv
    kernels), as in the textbook, which decays ``W`` but not biases or
    batch-norm scales. Its gradient adds ``weight_decay * w`` to each selected
    weight's gradient.

    Args:
      params: any pytree of arrays.
      weight_decay: ``lambda >= 0`` (a number, or a 0-d array, e.g. traced
        under ``vmap`` in a hyperparameter search).
      mask: which leaves count: ``None`` (leaves with ndim >= 2), a pytree of
        bools shaped like ``params`` (or a prefix of it), or a function of
        ``params`` returning one. Its leaves must be real bools (``True``,
        ``False``, NumPy bools): anything else is a ``ValueError`` naming it.

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
    weight_decay = scalar("weight_decay", weight_decay, low=0.0)
    leaves = _weights(params, mask)
    dtype = jnp.result_type(jnp.float32, *(p.dtype for p in leaves))
    if not leaves or (not is_traced(weight_decay) and weight_decay == 0):
        return jnp.zeros((), dtype)
    penalty: jax.Array = _penalty(leaves, weight_decay, dtype=dtype)
    return penalty


@functools.partial(jax.jit, static_argnames=("dtype",))
def _penalty(
    leaves: list[jax.Array], weight_decay: jax.Array, *, dtype: np.dtype[Any]
) -> jax.Array:
    # Sum in at least float32: bfloat16 weights would lose most of the total.
    total = sum(jnp.sum(jnp.square(p.astype(dtype))) for p in leaves)
    return (0.5 * weight_decay * total).astype(dtype)
