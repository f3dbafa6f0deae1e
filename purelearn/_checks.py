"""The one validation vocabulary: every public function checks its arguments here.

Each check raises ``ValueError`` (``TypeError`` where a value is not even of
the right kind) naming the argument and the value, and returns the value in
the form the caller should use (a Python float, an int, a typed key, arrays).
They run on the host before anything is traced, so a bad argument fails at
the call, never inside a compiled program.

Plain numbers are Python ints and floats, NumPy scalars and 0-d NumPy
arrays; bools are never numbers. JAX arrays, tracers and schedules are
"maybe traced": :func:`hyperparameter` lets them through unread, since
reading them would force a device sync or fail under ``jit``/``vmap``.
"""

from __future__ import annotations

import math
import numbers
import operator
import os
from collections.abc import Iterable
from typing import Any, TypeVar

import jax
import numpy as np

__all__ = [
    "is_real",
    "is_traced",
    "real",
    "hyperparameter",
    "positive_int",
    "nonnegative_int",
    "probability",
    "boolean",
    "choice",
    "key_or_seed",
    "pair",
    "axes",
    "scalar",
    "file_path",
]

T = TypeVar("T")


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong kind: a ``TypeError``, and a ``ValueError`` too, because
    purelearn raised ``ValueError`` for these before and callers may catch that."""


def _plain(value: Any) -> Any:
    """A NumPy scalar or 0-d NumPy array as its Python value; anything else as is."""
    if isinstance(value, np.generic) or (isinstance(value, np.ndarray) and value.ndim == 0):
        return value.item()
    return value


def is_real(value: Any) -> bool:
    """Whether ``value`` is a plain real number (not a bool, not an array of rank > 0)."""
    value = _plain(value)
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_traced(value: Any) -> bool:
    """A JAX array, a tracer or a schedule: a value to pass on without reading it."""
    return callable(value) or isinstance(value, jax.Array | jax.core.Tracer)


def real(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a finite Python float in the stated range, else a ``ValueError``.

    Example:
      >>> real("eps", 1e-5, low=0, low_open=True)
      1e-05
    """
    if not is_real(value):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    try:
        v = float(_plain(value))
    except OverflowError:  # an int beyond float range, e.g. 10**400
        raise ValueError(f"{name} must be a finite number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    too_low = low is not None and (v <= low if low_open else v < low)
    too_high = high is not None and (v >= high if high_open else v > high)
    if too_low or too_high:
        lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
        hi = "" if high is None else f"{high:g}" + (")" if high_open else "]")
        where = (
            f"in {lo}, {hi}"
            if low is not None and high is not None
            else (f"> {low:g}" if low_open else f">= {low:g}")
            if low is not None
            else (f"< {high:g}" if high_open else f"<= {high:g}")
        )
        raise ValueError(f"{name} must be {where}, got {value!r}")
    return v


def hyperparameter(name: str, value: Any, **bounds: Any) -> Any:
    """Check a plain number like :func:`real`; pass arrays, tracers and schedules through.

    Returns the value unchanged (a plain number stays the caller's type), so
    weak typing of Python scalars under ``jit`` is kept.

    Example:
      >>> hyperparameter("learning_rate", 0.1, low=0)
      0.1
    """
    if is_traced(value):
        return value
    if not is_real(value):
        raise ValueError(f"{name} must be a number, an array or a schedule, got {value!r}")
    real(name, value, **bounds)
    return value


def positive_int(name: str, value: Any) -> int:
    """An integer >= 1 (not a bool), as a Python int.

    Example:
      >>> positive_int("epochs", 3)
      3
    """
    return _integer(name, value, minimum=1)


def nonnegative_int(name: str, value: Any) -> int:
    """An integer >= 0 (not a bool), as a Python int."""
    return _integer(name, value, minimum=0)


def _integer(name: str, value: Any, *, minimum: int) -> int:
    value = _plain(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return operator.index(value)


def probability(name: str, value: Any, *, allow_one: bool = False) -> float:
    """A plain number in ``[0, 1)`` (``[0, 1]`` with ``allow_one``)."""
    return real(name, value, low=0.0, high=1.0, high_open=not allow_one)


def boolean(name: str, value: Any) -> bool:
    """A real ``bool`` (a NumPy bool, or a concrete 0-d bool array); anything else, such as
    the string "no" or the number 1, is refused."""
    if isinstance(value, jax.Array) and not isinstance(value, jax.core.Tracer):
        if value.ndim == 0 and value.dtype == bool:
            return bool(value)
    value = _plain(value)
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def choice(name: str, value: Any, options: Iterable[T]) -> T:
    """``value`` if it is one of ``options`` (compared by type and value), else a ``ValueError``."""
    options = tuple(options)
    if not any(type(value) is type(o) and value == o for o in options):
        raise ValueError(f"{name} must be one of {list(options)!r}, got {value!r}")
    checked: T = value
    return checked


def key_or_seed(name: str, value: Any) -> jax.Array:
    """A typed PRNG key from a typed key, a raw ``uint32[2]`` key or an integer seed.

    Seeds are in ``[0, 2**32)``: ``jax.random.key`` maps larger ones onto these.

    Example:
      >>> key_or_seed("key", 0).dtype
      key<fry>
    """
    if isinstance(value, bool) or value is None:
        raise ValueError(
            f"{name} must be a PRNG key (jax.random.key(0)) or an int seed, got {value!r}"
        )
    dtype, shape = getattr(value, "dtype", None), getattr(value, "shape", None)
    if dtype is not None and jax.numpy.issubdtype(dtype, jax.dtypes.prng_key):
        if shape == ():
            key: jax.Array = value
            return key
    elif dtype == np.uint32 and shape == (2,):
        wrapped: jax.Array = jax.random.wrap_key_data(value)
        return wrapped
    elif isinstance(value, numbers.Integral) or (
        dtype is not None and jax.numpy.issubdtype(dtype, np.integer) and shape == ()
    ):
        if isinstance(value, jax.core.Tracer):
            return jax.random.key(value)
        seed = int(value)
        # jax.random.key folds larger seeds onto these (2**32 gives seed 0's key)
        if not 0 <= seed < 2**32:
            raise ValueError(f"{name} as an int seed must be in [0, 2**32), got {seed}")
        return jax.random.key(seed)
    raise ValueError(
        f"{name} must be one PRNG key (jax.random.key(0)) or an int seed, got {value!r}"
    )


def pair(name: str, data: Any, *, allow_empty: bool = False) -> tuple[jax.Array, jax.Array]:
    """``(x, y)`` as arrays with as many labels as inputs.

    Example:
      >>> x, y = pair("train_data", (np.ones((3, 2)), np.zeros(3, np.int32)))
      >>> x.shape, y.shape
      ((3, 2), (3,))
    """
    if not isinstance(data, tuple | list) or len(data) != 2:
        raise ValueError(f"{name} must be a pair (x, y), got {type(data).__name__}")
    try:
        x, y = (a if isinstance(a, jax.Array) else jax.numpy.asarray(a) for a in data)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must hold two arrays (x, y): {err}") from err
    if x.ndim == 0 or y.ndim == 0:
        raise ValueError(f"{name} must hold arrays with a leading example axis, got scalars")
    if len(x) != len(y):
        raise ValueError(f"{name} has {len(x)} inputs but {len(y)} labels")
    if not allow_empty and len(x) == 0:
        raise ValueError(f"{name} is empty")
    return x, y


def axes(name: str, value: Any, ndim: int) -> tuple[int, ...]:
    """An axis or a sequence of axes of a rank-``ndim`` array: sorted, non-negative, distinct.

    Each axis is an integer (not a bool, not a float) in ``[-ndim, ndim)``;
    naming one axis twice (``(1, -1)`` on a matrix) is an error.

    Example:
      >>> axes("axis", (-1, 0), 3)
      (0, 2)
    """
    raw = _plain(value)
    if not isinstance(raw, bool) and isinstance(raw, numbers.Integral):
        items: tuple[Any, ...] = (raw,)
    elif isinstance(raw, str | bytes) or not isinstance(raw, Iterable):
        raise ValueError(f"{name} must be an int or a sequence of ints, got {value!r}")
    else:
        items = tuple(_plain(a) for a in raw)
    out = []
    for a in items:
        if isinstance(a, bool) or not isinstance(a, numbers.Integral):
            raise ValueError(f"{name} must be an int or a sequence of ints, got {value!r}")
        index = operator.index(a)
        if not -ndim <= index < ndim:
            raise ValueError(f"{name}={value!r} is out of range for an input of rank {ndim}")
        out.append(index % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"{name}={value!r} names an axis twice")
    return tuple(sorted(out))


def scalar(name: str, value: Any, **bounds: Any) -> Any:
    """A plain number checked like :func:`real` (returned as a float), or a 0-d JAX array.

    For hyperparameters that may be traced (``vmap`` over a rate) but are
    never schedules: a function is refused, and so is an array of rank > 0
    (its shape is static, so this holds under ``jit`` too). JAX arrays are
    passed through unread, as by :func:`hyperparameter`.

    Example:
      >>> scalar("rate", np.array(0.5), low=0, high=1)
      0.5
    """
    if callable(value):
        raise ValueError(f"{name} must be a number or a 0-d array, got the function {value!r}")
    if isinstance(value, jax.Array | jax.core.Tracer):
        if value.ndim != 0:
            raise ValueError(f"{name} must be a scalar, got an array of shape {value.shape}")
        return value
    return real(name, value, **bounds)


def file_path(name: str, value: Any) -> str:
    """A non-empty ``str`` or ``os.PathLike`` path, as a ``str``.

    Ints (which ``open`` would take as file descriptors), ``None`` and ``""``
    (the working directory to ``pathlib``) are refused.

    Example:
      >>> file_path("path", "run.ckpt")
      'run.ckpt'
    """
    if isinstance(value, str | os.PathLike):
        path = os.fsdecode(os.fspath(value))
        if path:
            return path
    raise ValueError(f"{name} must be a non-empty str or os.PathLike path, got {value!r}")
