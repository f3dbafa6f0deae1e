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
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import jax

__all__ = ["memoize", "enable_compilation_cache", "default_cache_dir"]

F = TypeVar("F", bound=Callable[..., Any])

#: how many distinct settings each constructor remembers
_MEMO_SIZE = 256


def memoize(fn: F) -> F:
    """Return the same result for the same hashable arguments (compared with their types).

    ``typed`` keeps ``1``, ``1.0`` and ``True`` apart, so validation that
    refuses a bool is never skipped by a cache hit of an equal number.
    """
    cached = functools.lru_cache(maxsize=_MEMO_SIZE, typed=True)(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            hash((args, tuple(sorted(kwargs.items()))))
        except TypeError:  # an array or a list among the arguments: no memo
            return fn(*args, **kwargs)
        return cached(*args, **kwargs)

    wrapper.cache_clear = cached.cache_clear  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


def default_cache_dir() -> Path:
    """``$PURELEARN_COMPILE_CACHE``, else ``$XDG_CACHE_HOME/purelearn/jax`` (``~/.cache/...``)."""
    if os.environ.get("PURELEARN_COMPILE_CACHE"):
        return Path(os.environ["PURELEARN_COMPILE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "purelearn" / "jax"


def enable_compilation_cache(directory: str | os.PathLike | None = None) -> Path:
    """Turn on JAX's persistent compilation cache in ``directory`` (see :func:`default_cache_dir`).

    Programs compiled once are then read back from disk by later processes
    (the ``purelearn`` command and the test suite turn it on). Every program
    is cached, however quick its compile, since the chapter's many small
    programs add up. Returns the directory used.
    """
    path = Path(directory).expanduser() if directory is not None else default_cache_dir()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
