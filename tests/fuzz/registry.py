"""One fuzz entry per public callable (canonical names from ``tests/surface.py``).

An :class:`Entry` says how to draw valid calls (``valid``), how to draw invalid
ones (``invalid``: each names the argument the error must name) and what a
valid call must give (``oracle``: optax, jax.nn.initializers, NumPy in float64,
or the documented result). ``weight`` scales the profile's example count:
heavy callables (training loops, searches, experiments, the command) draw few,
tiny examples. ``test_registry.py`` keeps this in step with the public surface.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import typing
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from hypothesis import strategies as st

Oracle = Callable[["Call", Any], None]


@dataclasses.dataclass(frozen=True)
class Call:
    """One call: keyword arguments (``args`` only where a callable takes no names),
    and for an invalid call the argument names one of which the error must state."""

    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    args: tuple = ()
    bad: tuple[str, ...] = ()
    note: str = ""
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # oracle inputs

    def replace(self, name: str, value: Any, says: tuple[str, ...] | None = None) -> Call:
        kwargs = dict(self.kwargs)
        if value is MISSING:
            kwargs.pop(name, None)
        else:
            kwargs[name] = value
        return Call(kwargs, self.args, says or (name,), f"{name}={value!r}", self.extra)

    def __repr__(self) -> str:  # hypothesis prints falsifying examples with this
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        bad = f"  # must name {self.bad}" if self.bad else ""
        return f"Call({', '.join(parts)}){bad}"


MISSING = object()


@dataclasses.dataclass(frozen=True)
class Entry:
    """How to fuzz one callable."""

    valid: st.SearchStrategy[Call] | None = None
    invalid: st.SearchStrategy[Call] | None = None
    oracle: Oracle | None = None
    weight: float = 1.0  # the share of the profile's max_examples this entry runs
    finite: bool = True  # finite floats in, finite floats out (when no oracle says more)
    traced: tuple[str, ...] = ()  # arguments an invalid call must also refuse as tracers
    alias: bool = False  # a typing alias (annotation only): nothing to call
    regressions: tuple[Call, ...] = ()  # pinned @example calls: defects the fuzz found
    xfail: str | None = None
    call: str | None = None  # a classmethod to call instead (``TrainState.create``)
    errors: tuple[type[BaseException], ...] = (ValueError, TypeError)
    why_no_valid: str = ""  # why only argument checks are fuzzed
    group: str = ""  # the registry module that registered it (one test file per group)


def c(*args: Any, **kwargs: Any) -> Call:
    return Call(kwargs, args)


def bad(base: Call | st.SearchStrategy[Call], **values: Any) -> st.SearchStrategy[Call]:
    """Invalid calls: ``base`` with one argument replaced by one of its bad values.

    A value is a strategy, or a list of literal bad values; a ``(values, says)``
    pair states the words the error must contain instead of the argument's name.
    """
    base_s = base if isinstance(base, st.SearchStrategy) else st.just(base)
    options = []
    for name, spec in values.items():
        says = None
        if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[1], tuple):
            spec, says = spec
        vals = spec if isinstance(spec, st.SearchStrategy) else st.sampled_from(list(spec))
        options.append(
            st.tuples(base_s, vals).map(lambda t, n=name, s=says: t[0].replace(n, t[1], s))
        )
    return st.one_of(options)


# -- shared fixtures: tiny models, data, states (built once per process) ---------------


@functools.cache
def toy(n: int = 16, d: int = 3, classes: int = 2):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32) % classes
    return jnp.asarray(x), jnp.asarray(y)


@functools.cache
def model(sizes: tuple[int, ...] = (3, 2), **kw: Any):
    import purelearn as pl

    return pl.mlp(list(sizes), **kw)


@functools.cache
def sgd():
    import purelearn as pl

    return pl.sgd(0.1)


def state(m: Any = None, opt: Any = None, key: int = 0):
    import purelearn as pl

    return pl.TrainState.create(m or model(), opt or sgd(), key)


def floats_tree(tree: Any) -> list[np.ndarray]:
    return [
        np.asarray(leaf, np.float64)
        for leaf in jax.tree.leaves(tree)
        if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating)
    ]


def all_finite(tree: Any) -> bool:
    return all(np.isfinite(a).all() for a in floats_tree(tree))


def f64(a: Any) -> np.ndarray:
    return np.asarray(
        jnp.asarray(a, jnp.float32) if np.asarray(a).dtype == object else a, np.float64
    )


NOT_A_MODEL = [None, "mlp", 3, {"init": 1}, (lambda k: k, lambda *a: a)]
NOT_AN_OPTIMIZER = [None, "adam", 0.1, optax.adam, object()]
NOT_DATA = [None, "data", (np.ones((4, 3)),), (np.ones((4, 3)), np.zeros(3, np.int32)), 5]
BAD_COUNTS = [0, -1, 1.5, "2", None, True, math.nan]


ENTRIES: dict[str, Entry] = {}


def entry(name: str, **kw: Any) -> None:
    assert name not in ENTRIES, name
    group = sys._getframe(1).f_globals["__name__"].rpartition(".reg_")[2]
    ENTRIES[name] = Entry(group=group, **kw)


# The groups register themselves.
from fuzz import (  # noqa: E402
    reg_numeric,  # noqa: F401
    reg_tools,  # noqa: F401
    reg_training,  # noqa: F401
)
from fuzz.pins import PINS  # noqa: E402

for _name, _calls in PINS.items():
    ENTRIES[_name] = dataclasses.replace(
        ENTRIES[_name], regressions=ENTRIES[_name].regressions + _calls
    )

__all__ = ["ENTRIES", "MISSING", "Call", "Entry", "typing"]
