"""Hypothesis strategies for the fuzz registry: arrays, pytrees, hyperparameters, keys, paths.

Every strategy draws small values (a few elements per array, a few leaves per
tree): the suite fuzzes *kinds* of input (dtypes, special values, shapes, key
forms, path states), not sizes, so each example compiles little.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, NamedTuple

import chex
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

#: Float dtypes as NumPy names; bfloat16 comes from ml_dtypes through JAX.
FLOAT_DTYPES = (np.float16, jnp.bfloat16, np.float32, np.float64)
INT_DTYPES = (np.int8, np.int32, np.uint8, np.int64)
OTHER_DTYPES = (np.bool_, np.complex64)

#: The values that break naive numerics: NaN, ±inf, the float32 range's ends,
#: subnormals, signed zeros.
SPECIAL = (
    0.0,
    -0.0,
    1.0,
    -1.0,
    math.nan,
    math.inf,
    -math.inf,
    1e38,
    -1e38,
    1e-38,
    1e-45,
    3e38,
)


def shapes(*, min_dims: int = 0, max_dims: int = 3, min_side: int = 0, max_side: int = 4):
    """Array shapes, 0-size (a zero side) and scalar (``()``) ones included."""
    return hnp.array_shapes(
        min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side
    ) | (st.just(()) if min_dims == 0 else st.nothing())


def finite_floats(dtype: Any = np.float32, *, bound: float = 1e3):
    """Finite values representable in ``dtype``, well inside its range."""
    width = 16 if np.dtype(dtype).itemsize == 2 else 32
    return st.floats(-bound, bound, allow_nan=False, allow_infinity=False, width=width)


def float_arrays(
    shape: Any = None,
    *,
    dtypes: tuple = (np.float32,),
    special: bool = False,
    bound: float = 1e3,
):
    """Float arrays (NumPy, converted by the callee), finite unless ``special``.

    bfloat16 arrays are drawn as float32 and cast (NumPy cannot draw them).
    """

    @st.composite
    def draw(draw_):
        dtype = draw_(st.sampled_from(dtypes))
        shp = (
            draw_(shapes())
            if shape is None
            else draw_(shape)
            if isinstance(shape, st.SearchStrategy)
            else shape
        )
        elements = finite_floats(np.float32 if dtype is jnp.bfloat16 else dtype, bound=bound)
        if special:
            elements = elements | st.sampled_from(SPECIAL)
        base = np.float32 if dtype is jnp.bfloat16 else dtype
        with np.errstate(over="ignore"):
            arr = draw_(hnp.arrays(base, shp, elements=elements.map(lambda v: base(v).item())))
        return arr.astype(jnp.bfloat16) if dtype is jnp.bfloat16 else arr

    return draw()


def int_arrays(shape: Any = None, *, dtypes: tuple = INT_DTYPES):
    """Integer arrays of any width and signedness."""
    dtype = st.sampled_from(dtypes)
    return dtype.flatmap(
        lambda d: hnp.arrays(
            d,
            shapes() if shape is None else shape,
            elements=hnp.from_dtype(np.dtype(d), min_value=0, max_value=5),
        )
    )


def any_arrays(shape: Any = None):
    """Arrays of every dtype the library may meet: floats (special values
    included), ints, bools, complex; NumPy or JAX."""
    shp = shapes() if shape is None else shape
    arrays = st.one_of(
        float_arrays(shp, dtypes=FLOAT_DTYPES, special=True),
        int_arrays(shp),
        hnp.arrays(np.bool_, shp),
        hnp.arrays(np.complex64, shp, elements=st.complex_numbers(max_magnitude=10, width=64)),
    )
    return arrays | arrays.map(jnp.asarray)


class Pair(NamedTuple):
    """A NamedTuple node."""

    a: Any
    b: Any


@flax.struct.dataclass
class StructNode:
    """A flax.struct dataclass node."""

    w: Any
    tag: str = flax.struct.field(pytree_node=False, default="t")


@chex.dataclass
class ChexNode:
    """A chex dataclass node."""

    w: Any


def nnx_state(leaf: Any) -> Any:
    """A flax NNX ``State`` holding ``leaf`` as a parameter."""
    from flax import nnx

    return nnx.State({"layer": {"kernel": nnx.Param(jnp.asarray(leaf))}})


def pytrees(leaves: Any = None, *, max_leaves: int = 6):
    """Nested dicts, lists, tuples, None, NamedTuples, flax.struct and chex
    dataclasses and NNX state over ``leaves`` (float arrays by default)."""
    leaves = float_arrays(shapes(max_dims=2, min_side=1)) if leaves is None else leaves

    def extend(children):
        return st.one_of(
            st.lists(children, max_size=3),
            st.tuples(children, children),
            st.dictionaries(st.sampled_from("abcd"), children, max_size=3),
            st.builds(Pair, children, children),
            st.builds(StructNode, children),
            st.builds(lambda w: ChexNode(w=w), children),
        )

    trees = st.recursive(leaves | st.none(), extend, max_leaves=max_leaves)
    return trees | leaves.map(nnx_state)


def bad_numbers(*, allow_negative: bool = False, allow_zero: bool = True):
    """Hyperparameters a range-checked number must refuse: NaN, ±inf, bools,
    strings, None, containers, rank-1 arrays (and negatives, zero if asked)."""
    values = [
        math.nan,
        math.inf,
        -math.inf,
        True,
        False,
        "0.1",
        None,
        [0.1],
        np.array([0.1, 0.2]),
        1e400,
        np.float32("nan"),
    ]
    if not allow_negative:
        values += [-1e-3, -1.0, np.float64(-0.5), np.array(-1.0)]
    if not allow_zero:
        values += [0.0, 0, np.float32(0.0)]
    return st.sampled_from(values)


def hyperparameters(low: float = 0.0, high: float = 1e3, *, include_low: bool = True):
    """Valid hyperparameter values in every accepted form: Python floats and
    ints, NumPy scalars and 0-d arrays, JAX 0-d arrays, optax schedules."""
    base = st.floats(low, high, allow_nan=False, exclude_min=not include_low)
    return st.one_of(
        base,
        base.map(np.float32),
        base.map(np.float64),
        base.map(np.asarray),
        base.map(lambda v: jnp.asarray(v, jnp.float32)),
        base.map(lambda v: optax.constant_schedule(v)),
        base.map(lambda v: optax.linear_schedule(v, v / 2 if v else 0.0, 10)),
    )


def keys():
    """Every accepted key form: typed keys, raw ``uint32[2]`` keys (JAX and
    NumPy), int seeds (Python, NumPy, 0-d JAX)."""
    seed = st.integers(0, 2**32 - 1)
    return st.one_of(
        seed.map(jax.random.key),
        seed.map(jax.random.PRNGKey),
        seed.map(lambda s: np.asarray(jax.random.PRNGKey(s))),
        seed,
        seed.map(np.uint32),
        st.integers(0, 2**31 - 1).map(lambda s: jnp.asarray(s, jnp.int32)),
    )


def bad_keys():
    """Key-like values every key argument must refuse with a clear error."""
    return st.sampled_from(
        [
            None,
            True,
            -1,
            2**32,
            1.5,
            "0",
            jax.random.split(jax.random.key(0), 2),
            jnp.zeros((3,), jnp.uint32),
            jnp.zeros((2,), jnp.float32),
            np.zeros((2, 2), np.uint32),
            [0, 1],
        ]
    )


class PathCase(NamedTuple):
    """A path the callee meets, described by how it was made."""

    kind: str
    path: Path


def make_path(root: Path, kind: str) -> Path:
    """Build one path case under ``root``: a missing file, a missing parent,
    a directory, a file where a directory is expected, corrupt bytes, an empty file."""
    root.mkdir(parents=True, exist_ok=True)
    if kind == "missing":
        return root / "missing.bin"
    if kind == "missing_parent":
        return root / "no" / "such" / "dir" / "f.bin"
    if kind == "directory":
        d = root / "a_dir"
        d.mkdir(exist_ok=True)
        return d
    if kind == "file_as_dir":
        f = root / "plain_file"
        f.write_bytes(b"x")
        return f / "child"
    if kind == "corrupt":
        f = root / "corrupt.bin"
        f.write_bytes(os.urandom(64))
        return f
    if kind == "empty":
        f = root / "empty.bin"
        f.write_bytes(b"")
        return f
    raise AssertionError(kind)


PATH_KINDS = ("missing", "missing_parent", "directory", "file_as_dir", "corrupt", "empty")


def bad_path_values():
    """Values that are not paths at all."""
    return st.sampled_from([None, 0, 3, "", b"\x00", 1.5, ["a"]])
