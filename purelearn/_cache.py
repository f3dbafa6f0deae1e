"""Compile once: memoized constructors and JAX's persistent compilation cache.

Compiled programs are cached by jax on the function and its static
arguments. Models and optimizers are the static arguments of every purelearn
engine program, and they are named tuples of functions, equal only to
themselves; so the constructors that users call with plain settings
(``mlp([784, 100, 10])``, ``adam(1e-3)``) are memoized on those settings:
calling one twice returns the same object, and a second identical ``fit``
finds its programs compiled. Arguments that cannot be hashed (arrays) make
a fresh object, as without the memo.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import jax

__all__ = ["memoize", "enable_compilation_cache", "default_cache_dir"]

F = TypeVar("F", bound=Callable[..., Any])

#: how many distinct settings each constructor remembers
_MEMO_SIZE = 256


def memoize(fn: F) -> F:
    """Return the same result for the same hashable arguments (compared with their types).

    Arguments are compared as ``fn`` binds them, defaults filled in: a
    positional, a keyword and a defaulted spelling of one call (``sgd(0.1)``,
    ``sgd(learning_rate=0.1)``; ``adam()``, ``adam(1e-3)``) give one object.
    Types are compared too, as ``functools.lru_cache(typed=True)`` does and
    also inside tuples, so ``1``, ``1.0`` and ``True`` stay apart and
    validation that refuses a bool is never skipped by a cache hit of an
    equal number. Arguments that cannot be hashed give a fresh object, and
    arguments ``fn`` cannot bind raise ``fn``'s own ``TypeError``.
    ``wrapper.cache_clear()`` forgets every result.
    """
    signature = inspect.signature(fn)
    # the call travels with its key (compared by the key only), so a miss calls fn with
    # the arguments as given
    cached = functools.lru_cache(maxsize=_MEMO_SIZE)(lambda call: fn(*call.args, **call.kwargs))

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError:  # fn raises its own error (its name in the message)
            return fn(*args, **kwargs)
        bound.apply_defaults()
        try:
            call = _Call(_bound_key(signature, bound.arguments), args, kwargs)
        except TypeError:  # an array or a list among the arguments: no memo
            return fn(*args, **kwargs)
        return cached(call)

    # a function takes attributes, but mypy cannot declare one on a function
    wrapper.cache_clear = cached.cache_clear  # type: ignore[attr-defined]
    return cast(F, wrapper)  # functools.wraps: wrapper has fn's signature


class _Call:
    """One call's arguments, hashed and compared by its key alone."""

    __slots__ = ("args", "hash", "key", "kwargs")

    def __init__(self, key: tuple[Any, ...], args: tuple[Any, ...], kwargs: dict[str, Any]):
        self.key, self.args, self.kwargs = key, args, kwargs
        self.hash = hash(key)  # a TypeError for an unhashable argument

    def __hash__(self) -> int:
        return self.hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Call) and self.key == other.key


def _bound_key(signature: inspect.Signature, arguments: dict[str, Any]) -> tuple[Any, ...]:
    """The bound arguments in parameter order, each with its types; ``**kwargs`` by name
    (the order they were passed in does not matter)."""
    key = []
    for name, param in signature.parameters.items():
        value = arguments[name]
        if param.kind is inspect.Parameter.VAR_POSITIONAL:
            key.append(tuple(_typed(v) for v in value))
        elif param.kind is inspect.Parameter.VAR_KEYWORD:
            key.append(tuple(sorted((k, _typed(v)) for k, v in value.items())))
        else:
            key.append(_typed(value))
    return tuple(key)


def _typed(value: Any) -> tuple[Any, Any]:
    return value, _types(value)


def _types(value: Any) -> Any:
    """``type(value)``, and inside a tuple each element's: ``(1, 2) != (1.0, True)`` here."""
    if isinstance(value, tuple):
        return type(value), tuple(_types(v) for v in value)
    return type(value)


def default_cache_dir() -> Path:
    """``$PURELEARN_COMPILE_CACHE``, else ``$XDG_CACHE_HOME/purelearn/jax`` (``~/.cache/...``)."""
    if os.environ.get("PURELEARN_COMPILE_CACHE"):
        return Path(os.environ["PURELEARN_COMPILE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "purelearn" / "jax"


def enable_compilation_cache(directory: str | os.PathLike[str] | None = None) -> Path:
    """Turn on JAX's persistent compilation cache in ``directory``.

    ``directory`` defaults to ``purelearn._cache.default_cache_dir()``.

    Programs compiled once are then read back from disk by later processes
    (the ``purelearn`` command and the test suite turn it on). Every program
    is cached, however quick its compile, since the chapter's many small
    programs add up. Returns the directory used.
    """
    if directory is not None and not isinstance(directory, str | os.PathLike):
        raise ValueError(f"directory must be a str or os.PathLike path, got {directory!r}")
    path = Path(directory).expanduser() if directory is not None else default_cache_dir()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
