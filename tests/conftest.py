"""Shared test helpers, and JAX's persistent compilation cache for the whole suite.

Most of the suite's wall time is XLA compiling small programs; the cache
(``$PURELEARN_COMPILE_CACHE`` or ``~/.cache/purelearn/jax``, never the repo)
keeps them across runs, so a second run of the suite compiles little.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, settings

import purelearn as pl
from purelearn._cache import enable_compilation_cache

_cache_dir = enable_compilation_cache()

# Hypothesis profiles. "quick" is loaded by default: derandomized (the same examples every
# run, so CI is reproducible) and without an example database. "deep" draws 10x the examples
# at random: `python -m pytest tests/fuzz --hypothesis-profile=deep`. The fuzz registry
# (tests/fuzz) runs max_examples / 20 examples per entry (times the entry's weight).
settings.register_profile(
    "quick",
    max_examples=100,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "deep", settings.get_profile("quick"), max_examples=1000, derandomize=False
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "quick"))
# Subprocesses the tests start (multi-device, multi-process, the command line) read these.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_cache_dir))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def host_leaves(tree: Any) -> list[np.ndarray]:
    """A pytree's leaves as NumPy arrays, typed PRNG keys as their raw data."""
    return [
        np.asarray(
            jax.random.key_data(x)
            if hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
            else x
        )
        for x in jax.tree.leaves(tree)
    ]


def trees_equal(a: Any, b: Any) -> bool:
    """Same structure and bit-identical leaves."""
    if jax.tree.structure(a) != jax.tree.structure(b):
        return False
    return all(np.array_equal(u, v) for u, v in zip(host_leaves(a), host_leaves(b), strict=True))


def assert_trees_close(a: Any, b: Any, *, rtol: float = 1e-6, atol: float = 0.0) -> None:
    """Same structure, leaves equal within ``rtol``/``atol`` (NaNs equal to NaNs)."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for u, v in zip(host_leaves(a), host_leaves(b), strict=True):
        np.testing.assert_allclose(u, v, rtol=rtol, atol=atol)


#: The seven purelearn optimizers, each made fresh, at step sizes that train the toy nets.
PURELEARN_OPTIMIZERS = {
    "sgd": lambda: pl.sgd(0.1),
    "momentum": lambda: pl.momentum(0.05),
    "nesterov": lambda: pl.nesterov(0.05),
    "adagrad": lambda: pl.adagrad(0.05),
    "rmsprop": lambda: pl.rmsprop(0.01),
    "adam": lambda: pl.adam(0.01),
    "adamw": lambda: pl.adamw(0.01, weight_decay=0.1),
}


def toy_data(n: int = 96, d: int = 5, classes: int = 3, seed: int = 0):
    """A separable ``(x, y)``: the label is the argmax of the first ``classes`` features."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = np.argmax(x[:, :classes], axis=1).astype(np.int32)
    return jnp.asarray(x), jnp.asarray(y)


class CompileCounter:
    """Counts jaxpr traces and backend compiles through jax.monitoring's public events."""

    def __init__(self):
        self.events = []
        jax.monitoring.register_event_duration_secs_listener(self._record)

    def _record(self, name, _duration, **_kwargs):
        if name in ("/jax/core/compile/jaxpr_trace_duration",
                    "/jax/core/compile/backend_compile_duration"):  # fmt: skip
            self.events.append(name)

    def count(self, fn):
        self.events.clear()
        fn()
        return len(self.events)
