"""Contiguous parameter storage: packing, the leafwise proof, and equal trajectories.

The oracles are written here: a NumPy concatenation for the buffers, plain
slicing for the gradient, the optimizer run on the pytree for the buffers'
update, and the pytree layout for every training entry point.
"""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
import textwrap
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import PURELEARN_OPTIMIZERS, assert_trees_close, host_leaves, toy_data, trees_equal
from hypothesis import given, settings
from hypothesis import strategies as st

import purelearn as pl
from purelearn import layout
from purelearn._leafwise import optimizer_storage
from purelearn.training.packing import storage_for

BF16 = np.dtype(jnp.bfloat16)


# -- the oracle: leaves grouped by dtype, concatenated with NumPy -------------------------


def numpy_buffers(tree: Any) -> tuple[list[np.dtype], list[np.ndarray]]:
    """One buffer per dtype in order of first appearance, leaves raveled back to back."""
    leaves = [np.asarray(a) for a in jax.tree.leaves(tree)]
    dtypes: list[np.dtype] = []
    for a in leaves:
        if a.dtype not in dtypes:
            dtypes.append(a.dtype)
    buffers = [
        np.concatenate([np.ravel(a) for a in leaves if a.dtype == d]).astype(d) for d in dtypes
    ]
    return dtypes, buffers


def numpy_slices(tree: Any, buffers: Any) -> list[Any]:
    """The leaves of ``tree`` cut out of ``buffers`` by hand (offsets counted here)."""
    dtypes, used = [], []
    out = []
    for a in jax.tree.leaves(tree):
        d = np.dtype(a.dtype)
        if d not in dtypes:
            dtypes.append(d)
            used.append(0)
        b = dtypes.index(d)
        n = math.prod(a.shape)
        out.append(buffers[b][used[b] : used[b] + n].reshape(a.shape))
        used[b] += n
    return out


def same_dtypes(a: Any, b: Any) -> bool:
    return [x.dtype for x in host_leaves(a)] == [y.dtype for y in host_leaves(b)]


def readable(state: Any) -> tuple:
    """Everything a state holds, read as pytrees (a PackedState unpacked)."""
    if isinstance(state, pl.PackedState):
        state = state.unpack()
    return state.step, state.params, state.model_state, state.opt_state, state.key


# -- random trees ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LeafSpec:
    """A leaf to build: a dtype and a shape (a pytree leaf itself: not registered)."""

    dtype: Any
    shape: tuple[int, ...]


def build(spec_tree: Any, seed: int) -> Any:
    rng = np.random.default_rng(seed)

    def make(spec: LeafSpec) -> jax.Array:
        if spec.dtype == np.bool_:
            value = rng.random(spec.shape) > 0.5
        elif spec.dtype == np.int32:
            value = rng.integers(-1000, 1000, spec.shape)
        else:
            value = rng.normal(size=spec.shape) * 10
        return jnp.asarray(np.asarray(value).astype(spec.dtype))

    return jax.tree.map(make, spec_tree)


leaf_specs = st.builds(
    LeafSpec,
    st.sampled_from([np.float32, np.float16, np.int32, np.bool_, BF16]),
    # () is a scalar leaf; a 0 anywhere makes a zero-size one
    st.lists(st.integers(0, 3), max_size=3).map(tuple),
)
spec_trees = st.recursive(
    leaf_specs,
    lambda children: st.one_of(
        st.lists(st.one_of(children, st.none()), min_size=1, max_size=3),
        st.dictionaries(st.text("abc", min_size=1, max_size=2), children, min_size=1, max_size=3),
    ),
    max_leaves=7,
).filter(lambda t: len(jax.tree.leaves(t)) > 0)


@settings(max_examples=30, deadline=None)
@given(spec_tree=spec_trees, seed=st.integers(0, 2**16))
def test_pack_is_a_numpy_concatenation_by_dtype_and_reads_back(spec_tree, seed):
    tree = build(spec_tree, seed)
    dtypes, expected = numpy_buffers(tree)
    lay = layout.layout_of(tree)
    assert list(lay.dtypes) == dtypes
    assert list(lay.sizes) == [b.size for b in expected]
    assert lay.num_leaves == len(jax.tree.leaves(tree))

    packed = layout.pack(tree)
    assert isinstance(packed, layout.Packed)
    assert [b.shape for b in packed.buffers] == [b.shape for b in expected]
    for got, want in zip(host_leaves(packed.buffers), expected, strict=True):
        assert got.dtype == want.dtype and np.array_equal(got, want)
    # the pytree children are the buffers, nothing else
    assert len(jax.tree.leaves(packed)) == len(dtypes)

    for back in (packed.tree, layout.unpack(packed), layout.to_pytree(packed)):
        assert trees_equal(back, tree) and same_dtypes(back, tree)
    # the hand-cut slices of the oracle's buffers are the tree again
    assert all(
        np.array_equal(a, b)
        for a, b in zip(numpy_slices(tree, expected), host_leaves(tree), strict=True)
    )

    copied = jax.tree.map(jnp.copy, packed)
    assert isinstance(copied, layout.Packed) and copied.storage == packed.storage
    assert trees_equal(copied.tree, tree)
    # inside a trace pack and read back are slices and concatenations, same numbers
    # (zero-size leaves: see test_a_trailing_zero_size_leaf_reads_back_inside_jit)
    if all(a.size for a in jax.tree.leaves(tree)):
        traced = jax.jit(lambda t: layout.pack(t).tree)(tree)
        assert trees_equal(traced, tree) and same_dtypes(traced, tree)


TRAILING_ZERO_SIZE = textwrap.dedent(
    """
    import jax, jax.numpy as jnp
    from purelearn import layout

    tree = [jnp.ones(2), jnp.zeros(0)]  # the dtype's last leaf holds nothing
    back = jax.jit(lambda t: layout.pack(t).tree)(tree)
    assert [a.shape for a in back] == [(2,), (0,)], back
    print("READ_BACK")
    """
)


def test_a_trailing_zero_size_leaf_reads_back_inside_jit():
    # In a subprocess: slicing an empty leaf off a buffer's end aborts the whole process
    # (std::length_error in XLA CPU's simplifier); the library never slices empty leaves.
    out = subprocess.run(
        [sys.executable, "-c", TRAILING_ZERO_SIZE], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0 and "READ_BACK" in out.stdout, out.stderr[-2000:]


def mixed_tree(scale: float = 1.0) -> dict[str, Any]:
    return {
        "a": jnp.arange(6, dtype=jnp.float32).reshape(2, 3) * scale,
        "b": [jnp.arange(4, dtype=jnp.int32) * int(scale), jnp.float32(scale)],
        "c": jnp.zeros((0, 2), jnp.float16),
        "d": jnp.full((3,), scale, jnp.float16),
    }


def test_pack_and_unpack_keep_leading_batch_axes_under_vmap():
    examples = [mixed_tree(s) for s in (1.0, 2.0, 3.0)]
    batched = jax.tree.map(lambda *xs: jnp.stack(xs), *examples)
    storage = layout.storage_of(examples[0])

    buffers = jax.vmap(lambda t: layout.pack(t).buffers)(batched)
    for b, got in enumerate(buffers):
        want = np.stack([numpy_buffers(t)[1][b] for t in examples])
        assert np.array_equal(np.asarray(got), want)

    stacked = layout.Packed(buffers, storage)  # buffers with a leading batch axis
    assert trees_equal(stacked.tree, batched) and same_dtypes(stacked.tree, batched)
    assert trees_equal(jax.vmap(lambda p: p.tree)(stacked), batched)
    vmapped = jax.vmap(layout.pack)(batched)  # a Packed comes out of vmap batched
    assert isinstance(vmapped, layout.Packed) and trees_equal(vmapped.tree, batched)

    # two batch axes
    twice = jax.tree.map(lambda a: jnp.stack([a, a + 1]), batched)
    packed2 = jax.vmap(jax.vmap(layout.pack))(twice)
    assert packed2.buffers[0].shape[:2] == (2, 3)
    assert trees_equal(packed2.tree, twice)


def test_packed_crosses_jit_as_its_buffers():
    packed = layout.pack(mixed_tree())
    out = jax.jit(lambda p: jax.tree.map(lambda b: b * 2, p))(packed)
    assert isinstance(out, layout.Packed) and out.storage == packed.storage
    want = jax.tree.map(lambda a: a * 2, mixed_tree())
    assert trees_equal(out.tree, want)
    # inside jit, .tree is traced slices of the buffers
    inside = jax.jit(lambda p: jax.tree.map(lambda a: a + 1, p.tree))(packed)
    assert trees_equal(inside, jax.tree.map(lambda a: a + 1, mixed_tree()))


@pytest.mark.parametrize(
    "tree, match",
    [
        ({}, "no array leaves"),
        ([None, {}], "no array leaves"),
        ({"k": jax.random.key(0), "w": jnp.ones(2)}, r"\['k'\].*key"),
        ({"w": jnp.ones(2), "name": "conv"}, r"\['name'\].*str"),
        ({"w": jnp.ones(2), "n": 3}, r"\['n'\]"),
    ],
)
def test_pack_refuses_what_a_buffer_cannot_hold(tree, match):
    with pytest.raises(ValueError, match=match):
        layout.pack(tree)
    with pytest.raises(ValueError, match=match):
        layout.layout_of(tree)
    assert not layout.packable(tree)


def test_pack_with_a_storage_refuses_another_tree():
    storage = layout.storage_of(mixed_tree())
    with pytest.raises(ValueError, match="does not match the stored layout"):
        layout.pack({"a": jnp.ones((2, 3))}, storage)
    wrong_shape = {**mixed_tree(), "a": jnp.ones((3, 2))}
    with pytest.raises(ValueError, match=r"shapes .*\(3, 2\).*\(2, 3\)"):
        layout.pack(wrong_shape, storage)
    assert trees_equal(layout.pack(mixed_tree(5.0), storage).tree, mixed_tree(5.0))


def test_pack_with_a_storage_keeps_the_leaves_dtypes_or_refuses_a_mix():
    storage = layout.storage_of({"a": jnp.ones(3), "b": jnp.ones(2)})
    # one buffer cannot hold two dtypes; a silent cast would change the numbers
    with pytest.raises(ValueError, match="dtype"):
        layout.pack({"a": jnp.full(3, 7, jnp.int32), "b": jnp.ones(2)}, storage)
    # a whole buffer of another dtype (a state cast as a whole) keeps that dtype
    half = {"a": jnp.full(3, 0.1, jnp.float16), "b": jnp.full(2, 0.3, jnp.float16)}
    packed = layout.pack(half, storage)
    assert [b.dtype for b in packed.buffers] == [jnp.float16]
    assert trees_equal(packed.tree, half) and same_dtypes(packed.tree, half)


def test_layout_dtypes_are_the_buffers_dtypes_for_numpy_leaves():
    tree = {"a": np.ones(3), "b": np.arange(2)}  # float64 / int64 NumPy, x64 off
    packed = layout.pack(tree)
    assert list(packed.storage.group.dtypes) == [b.dtype for b in packed.buffers]


def test_to_pytree_and_pack_like_are_inverses():
    packed = layout.pack(mixed_tree())
    outer = {"p": packed, "n": jnp.ones(2), "none": None}
    plain = layout.to_pytree(outer)
    assert trees_equal(plain, {"p": mixed_tree(), "n": jnp.ones(2), "none": None})
    again = layout.pack_like(jax.tree.map(lambda a: a + 1, plain), outer)
    assert isinstance(again["p"], layout.Packed) and again["p"].storage == packed.storage
    assert trees_equal(again["p"].tree, jax.tree.map(lambda a: a + 1, mixed_tree()))
    nothing = {"w": jnp.ones(2)}
    assert layout.to_pytree(nothing) is nothing and layout.pack_like(nothing, nothing) is nothing


# -- views: the gradient comes back as buffers ----------------------------------------------

VIEW_TREE = {
    "a": jnp.linspace(-1.0, 1.0, 12, dtype=jnp.float32).reshape(3, 4),
    "b": [jnp.linspace(0.5, 2.0, 5, dtype=jnp.float32), jnp.full((2, 2), 0.25, jnp.float16)],
    "c": jnp.float32(0.7),
}


def view_loss(tree: Any) -> jax.Array:
    """Every leaf used differently, and leaves mixed: a gradient with no pattern to fake."""
    leaves = [a.astype(jnp.float32) for a in jax.tree.leaves(tree)]
    per_leaf = sum((i + 1) * jnp.sum(jnp.sin(a) * a) for i, a in enumerate(leaves))
    return per_leaf + jnp.sum(leaves[0]) * jnp.sum(leaves[-1] ** 2)


def plain_slices(raw: Any) -> Any:
    return jax.tree.unflatten(jax.tree.structure(VIEW_TREE), numpy_slices(VIEW_TREE, raw))


def test_views_gradient_equals_slicing_eagerly_under_jit_and_vmap():
    storage = layout.storage_of(VIEW_TREE)
    raw = layout.pack(VIEW_TREE).raw
    assert trees_equal(layout.views(storage, raw), VIEW_TREE)

    def by_views(r):
        return view_loss(layout.views(storage, r))

    def by_slices(r):
        return view_loss(plain_slices(r))

    want = jax.grad(by_slices)(raw)
    for grad in (jax.grad(by_views), jax.jit(jax.grad(by_views))):
        got = grad(raw)
        assert jax.tree.structure(got) == jax.tree.structure(raw) and same_dtypes(got, raw)
        assert_trees_close(got, want, rtol=1e-6)
    np.testing.assert_allclose(by_views(raw), by_slices(raw), rtol=1e-6)

    batch = jax.tree.map(lambda b: jnp.stack([b, b * 2, -b]), raw)
    got = jax.jit(jax.vmap(jax.grad(by_views)))(batch)
    for i in range(3):
        one = jax.grad(by_slices)(jax.tree.map(lambda b, i=i: b[i], batch))
        assert_trees_close(jax.tree.map(lambda b, i=i: b[i], got), one, rtol=1e-6)


# -- the leafwise proof ---------------------------------------------------------------------

# float32 and bfloat16 leaves (two buffers), a scalar leaf, leaves of several ranks
PARAMS = {
    "w": jnp.linspace(-1.0, 1.0, 12, dtype=jnp.float32).reshape(3, 4),
    "b": jnp.linspace(0.1, 0.4, 4, dtype=jnp.float32),
    "e": [jnp.array([0.5, -0.25], jnp.bfloat16), jnp.linspace(-2.0, 2.0, 5, dtype=jnp.float32)],
    "s": jnp.float32(0.3),
}
SCHEDULE = optax.linear_schedule(0.1, 0.01, 5)
BY_RANK = lambda p: jax.tree.map(lambda x: x.ndim > 1, p)  # noqa: E731


def transformation(update, init=lambda p: optax.EmptyState()) -> optax.GradientTransformation:
    return optax.GradientTransformation(init, lambda u, s, p=None: update(u, s))


def map_updates(f):
    return transformation(lambda u, s: (jax.tree.map(f, u), s))


def map_leaves(f):
    """``f(i, leaf, leaves)`` for the i-th leaf: rules that look at other leaves."""

    def update(u, s):
        leaves, treedef = jax.tree.flatten(u)
        return jax.tree.unflatten(treedef, [f(i, a, leaves) for i, a in enumerate(leaves)]), s

    return transformation(update)


LEAFWISE = {
    "pl.sgd": lambda: pl.sgd(0.1),
    "pl.momentum": lambda: pl.momentum(0.1),
    "pl.nesterov": lambda: pl.nesterov(0.1),
    "pl.adagrad": lambda: pl.adagrad(0.1),
    "pl.rmsprop": lambda: pl.rmsprop(0.1),
    "pl.adam": lambda: pl.adam(0.1),
    "pl.adamw": lambda: pl.adamw(0.1, weight_decay=0.1),
    "pl.adam schedule": lambda: pl.adam(SCHEDULE),
    "pl.momentum injected": lambda: optax.inject_hyperparams(pl.momentum)(learning_rate=0.1),
    "optax.sgd": lambda: optax.sgd(0.1),
    "optax.sgd nesterov": lambda: optax.sgd(SCHEDULE, momentum=0.9, nesterov=True),
    "optax.adam": lambda: optax.adam(0.1),
    "optax.adamw": lambda: optax.adamw(SCHEDULE, weight_decay=0.1),
    "optax.lion": lambda: optax.lion(0.1),
    "optax.adam injected": lambda: optax.inject_hyperparams(optax.adam)(learning_rate=0.1),
    "optax clip chain": lambda: optax.chain(optax.clip(0.5), optax.adam(0.1)),
    # a rule per dtype is a rule per buffer: still leafwise
    "rate by dtype": lambda: map_updates(lambda x: x * (0.5 if x.dtype == jnp.bfloat16 else 0.25)),
}


def grads_like(tree: Any, seed: int) -> Any:
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda a: jnp.asarray(rng.normal(size=a.shape).astype(np.float32)).astype(a.dtype), tree
    )


@pytest.mark.parametrize("name", list(LEAFWISE))
def test_a_leafwise_optimizer_gives_the_same_numbers_on_the_buffers(name):
    optimizer = LEAFWISE[name]()
    group = layout.layout_of(PARAMS)
    storage = optimizer_storage(optimizer, group)
    assert storage is not None
    tree_state = optimizer.init(PARAMS)
    assert storage.treedef == jax.tree.structure(tree_state)

    # the oracle: the optimizer on the pytree; then the same optimizer on the buffers
    params, flat = PARAMS, layout.pack(PARAMS).raw
    flat_state = optimizer.init(flat)  # the state made for the buffers themselves
    for seed in range(3):
        g = grads_like(PARAMS, seed)
        updates, tree_state = optimizer.update(g, tree_state, params)
        params = optax.apply_updates(params, updates)
        flat_updates, flat_state = optimizer.update(layout.pack(g).raw, flat_state, flat)
        flat = optax.apply_updates(flat, flat_updates)
    for got, want in zip(flat, numpy_buffers(params)[1], strict=True):
        assert got.dtype == want.dtype
        np.testing.assert_allclose(np.asarray(got, np.float32), want.astype(np.float32), 1e-6)
    read = layout.Packed(jax.tree.leaves(flat_state), storage).tree
    assert_trees_close(read, tree_state, rtol=1e-6)


NOT_LEAFWISE = {
    "optax.masked": lambda: optax.masked(optax.sgd(0.1), BY_RANK),
    "pl.adamw masked": lambda: pl.adamw(0.1, mask=BY_RANK),
    "optax.adamw masked": lambda: optax.adamw(0.1, mask=BY_RANK),
    "multi_transform": lambda: optax.multi_transform(
        {"a": optax.sgd(0.1), "b": optax.adam(0.1)},
        lambda p: jax.tree.map(lambda x: "a" if x.ndim > 1 else "b", p),
    ),
    "clip_by_global_norm": lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.1)),
    "apply_if_finite": lambda: optax.apply_if_finite(optax.sgd(0.1), 3),
    "adafactor": lambda: optax.adafactor(0.1),
    "lamb": lambda: optax.lamb(0.1),
    "MultiSteps": lambda: optax.MultiSteps(optax.sgd(0.1), 2),
    "rate by ndim": lambda: map_updates(lambda x: x * (0.1 if x.ndim == 2 else 0.2)),
    "rate by size": lambda: map_updates(lambda x: x / max(x.size, 1)),
    "rate by shape": lambda: map_updates(lambda x: x * (x.shape[0] if x.ndim else 1)),
    "rate by leaf index": lambda: map_leaves(lambda i, a, _: a * (i + 1)),
    "uses leaf 0": lambda: map_leaves(
        lambda i, a, leaves: a * leaves[0].astype(a.dtype).ravel()[0]
    ),
    "per-leaf noise": lambda: map_leaves(
        lambda i, a, _: a + jax.random.normal(jax.random.key(i), a.shape, a.dtype)
    ),
    "cumsum": lambda: map_updates(lambda x: jnp.cumsum(x.ravel()).reshape(x.shape)),
    "transpose": lambda: map_updates(lambda x: x.T.reshape(x.shape)),
    "reverse": lambda: map_updates(lambda x: x[::-1] if x.ndim else x),
    "position": lambda: map_updates(
        lambda x: x * jnp.arange(x.size, dtype=x.dtype).reshape(x.shape)
    ),
    "state by mean": lambda: transformation(
        lambda u, s: (u, jax.tree.map(lambda m, g: m + jnp.mean(g), s, u)),
        init=lambda p: jax.tree.map(jnp.zeros_like, p),
    ),
    "state by global norm": lambda: transformation(
        lambda u, s: (u, s + optax.tree.norm(u)), init=lambda p: jnp.zeros([], jnp.float32)
    ),
    "state counts leaves": lambda: transformation(
        lambda u, s: (u, s + len(jax.tree.leaves(u))), init=lambda p: jnp.zeros([], jnp.int32)
    ),
}


@pytest.mark.parametrize("name", list(NOT_LEAFWISE))
def test_a_rule_that_tells_leaves_apart_is_not_leafwise(name):
    assert optimizer_storage(NOT_LEAFWISE[name](), layout.layout_of(PARAMS)) is None


SAME_SHAPES = {"a": jnp.ones(3), "b": jnp.full(3, 2.0), "c": jnp.full(3, 3.0)}


@pytest.mark.parametrize(
    "rule",
    [
        lambda i, a, leaves: leaves[len(leaves) - 1 - i],  # swap leaves: elementwise, mixed
        lambda i, a, leaves: a + leaves[0],  # add the first leaf to every leaf
        lambda i, a, leaves: a * leaves[(i + 1) % len(leaves)],
    ],
    ids=["reversed", "plus first", "times next"],
)
def test_elementwise_rules_that_mix_leaves_are_not_leafwise(rule):
    # only elementwise operations here: the leaf bookkeeping alone must refuse them
    assert optimizer_storage(map_leaves(rule), layout.layout_of(SAME_SHAPES)) is None


# -- trajectories: contiguous equals pytree -----------------------------------------------

OPTIMIZERS = {**PURELEARN_OPTIMIZERS, "optax.lion": lambda: optax.lion(0.003)}
# Adam-like rules divide by a tiny second moment: float32 rounding differences in the
# (differently fused) gradient grow a little more than elsewhere.
CLOSE = {"rtol": 2e-6, "atol": 1e-7}


def start_state(model, optimizer, how, seed=0):
    """A fresh state: the pytree, or packed for ``optimizer`` as ``how`` says."""
    state = pl.TrainState.create(model, optimizer, seed)
    return state if how == "pytree" else pl.PackedState.pack(state, optimizer, layout=how)


def run_steps(model, optimizer, how, n=6, weight_decay=0.05, seed=0):
    x, y = toy_data(n=32)
    state = start_state(model, optimizer, how, seed)
    step = pl.make_train_step(model, optimizer, weight_decay=weight_decay)
    metrics = []
    for i in range(n):
        # different batches each step: the trajectories cannot agree by accident
        state, m = step(state, jnp.roll(x, 3 * i, axis=0), jnp.roll(y, 3 * i, axis=0))
        metrics.append(m)
    return state, metrics


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_packed_steps_equal_pytree_steps(name):
    model, optimizer = pl.mlp([5, 8, 3], dropout_rate=0.2), OPTIMIZERS[name]()
    flat, flat_metrics = run_steps(model, optimizer, "contiguous")
    tree, tree_metrics = run_steps(model, optimizer, "pytree")
    assert isinstance(flat, pl.PackedState) and isinstance(tree, pl.TrainState)
    assert int(flat.step) == 6
    assert_trees_close(readable(flat), readable(tree), **CLOSE)
    assert_trees_close(flat_metrics, tree_metrics, **CLOSE)
    # training moved the parameters: equality is not the untouched initialization
    start = pl.TrainState.create(model, optimizer, 0)
    assert not np.allclose(host_leaves(readable(flat)[1])[0], host_leaves(start.params)[0])


def test_packed_elementwise_steps_without_decay_are_bit_for_bit():
    for optimizer in (pl.sgd(0.1), pl.momentum(0.05)):
        model = pl.mlp([5, 8, 8, 3])
        flat, _ = run_steps(model, optimizer, "contiguous", weight_decay=0.0)
        tree, _ = run_steps(model, optimizer, "pytree", weight_decay=0.0)
        assert trees_equal(readable(flat)[1], tree.params)


def test_packed_second_moment_steps_agree_to_the_last_bits():
    # Adam's and RMSProp's saturating second moment (and Adam's bias correction
    # over all leaves at once, as optax's) compile to other fusions on a packed
    # buffer, so the last bit may differ: why packing is opt-in, not the default.
    for optimizer in (pl.adam(0.01), pl.rmsprop(0.01)):
        model = pl.mlp([5, 8, 8, 3])
        flat, _ = run_steps(model, optimizer, "contiguous", weight_decay=0.0)
        tree, _ = run_steps(model, optimizer, "pytree", weight_decay=0.0)
        assert_trees_close(readable(flat)[1], tree.params, rtol=1e-6, atol=1e-7)


def test_batch_norm_steps_equal_pytree_steps():
    # Momentum, not Adam: with batch norm the pre-norm biases get gradients that are zero
    # up to rounding, and Adam would blow that rounding up to +-lr (see test_training).
    model, optimizer = pl.mlp([5, 8, 8, 3], batch_norm=True, dropout_rate=0.1), pl.momentum(0.05)
    flat, flat_metrics = run_steps(model, optimizer, "contiguous", n=8)
    tree, tree_metrics = run_steps(model, optimizer, "pytree", n=8)
    assert jax.tree.leaves(flat.model_state)
    assert_trees_close(readable(flat), readable(tree), **CLOSE)
    assert_trees_close(flat_metrics, tree_metrics, **CLOSE)


class MixedPrecision(nn.Module):
    """A bfloat16 layer and a float32 one: two buffers."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Dense(8, param_dtype=jnp.bfloat16, dtype=jnp.float32)(x))
        return nn.Dense(3)(x)


def test_mixed_dtype_parameters_train_the_same_in_two_buffers():
    model, optimizer = pl.from_flax(MixedPrecision(), jnp.ones((1, 5))), pl.adam(0.01)
    flat, flat_metrics = run_steps(model, optimizer, "contiguous", weight_decay=0.0)
    tree, tree_metrics = run_steps(model, optimizer, "pytree", weight_decay=0.0)
    assert [np.dtype(a.dtype) for a in flat.params.buffers] == [BF16, np.dtype(np.float32)]
    assert_trees_close(readable(flat), readable(tree), **CLOSE)
    _, params, _, opt_state, _ = readable(flat)
    assert same_dtypes(params, tree.params) and same_dtypes(opt_state, tree.opt_state)
    assert_trees_close(flat_metrics, tree_metrics, **CLOSE)


def test_a_non_leafwise_optimizer_trains_as_the_pytree_or_is_refused():
    model, data = pl.mlp([5, 8, 3]), toy_data(n=32)
    for optimizer in (optax.masked(optax.sgd(0.1), BY_RANK), pl.adamw(0.1, mask=BY_RANK)):
        assert storage_for(optimizer, model.init(0)[0], "auto") is None
        with pytest.raises(ValueError, match=r"layout='contiguous'.*elementwise"):
            pl.PackedState.pack(pl.TrainState.create(model, optimizer, 0), optimizer)
        with pytest.raises(ValueError, match="layout='contiguous'"):
            pl.train_run(model, optimizer, data, epochs=1, batch_size=16, key=0,
                         layout="contiguous")  # fmt: skip
        auto = pl.train_run(model, optimizer, data, epochs=2, batch_size=16, key=0, layout="auto")
        tree = pl.train_run(model, optimizer, data, epochs=2, batch_size=16, key=0)
        assert trees_equal(auto, tree)  # refused: the very same pytree program
    with pytest.raises(ValueError, match="layout"):
        pl.fit(model, pl.sgd(), data, epochs=1, batch_size=16, key=0, layout="flat")
    with pytest.raises(ValueError, match="layout"):
        pl.PackedState.pack(pl.TrainState.create(model, pl.sgd(), 0), pl.sgd(), layout="flat")


def test_auto_keeps_a_single_parameter_array_as_a_pytree():
    model = pl.from_flax(nn.Dense(3, use_bias=False), jnp.ones((1, 5)))
    params = model.init(0)[0]
    assert storage_for(pl.adam(), params, "auto") is None  # nothing would share
    assert storage_for(pl.adam(), params, "contiguous") is not None
    packed = pl.PackedState.pack(pl.TrainState.create(model, pl.adam(), 0), pl.adam())
    assert trees_equal(readable(packed), readable(pl.TrainState.create(model, pl.adam(), 0)))


def test_fit_history_is_close_in_every_layout_and_the_default_is_the_pytree():
    model, optimizer = pl.mlp([5, 8, 3], dropout_rate=0.1), pl.adam(0.01)
    data, held_out = toy_data(n=64), toy_data(n=32, seed=2)
    kw = {"epochs": 3, "batch_size": 16, "key": 1, "eval_data": held_out, "progress": False}
    flat, h_flat = pl.fit(model, optimizer, data, weight_decay=0.01, layout="contiguous", **kw)
    tree, h_tree = pl.fit(model, optimizer, data, weight_decay=0.01, layout="pytree", **kw)
    default, h_default = pl.fit(model, optimizer, data, weight_decay=0.01, **kw)
    assert trees_equal(default, tree) and h_default == h_tree
    assert isinstance(flat, pl.TrainState)  # packed only inside the program
    assert set(h_flat) == set(h_tree)
    for name in h_tree:
        np.testing.assert_allclose(h_flat[name], h_tree[name], rtol=2e-6, err_msg=name)
    assert_trees_close(flat, tree, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_train_run_curves_are_the_same_in_both_layouts():
    model = pl.mlp([5, 8, 3], batch_norm=True, dropout_rate=0.1)
    optimizer = pl.momentum(0.05)  # batch norm: see test_batch_norm_steps_equal_pytree_steps
    kw = {"epochs": 3, "batch_size": 16, "key": 4, "eval_data": toy_data(n=32, seed=2),
          "weight_decay": 0.01}  # fmt: skip
    flat, c_flat = pl.train_run(model, optimizer, toy_data(n=64), layout="contiguous", **kw)
    tree, c_tree = pl.train_run(model, optimizer, toy_data(n=64), layout="pytree", **kw)
    assert isinstance(flat, pl.TrainState)
    assert_trees_close(c_flat, c_tree, rtol=1e-6, atol=1e-7)
    assert_trees_close(flat, tree, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_vmapped_packed_runs_return_batched_pytrees():
    model, optimizer, data = pl.mlp([5, 8, 3]), pl.adam(0.01), toy_data(n=48)
    keys = jax.random.split(jax.random.key(0), 3)

    def run(key, how):
        return pl.train_run(model, optimizer, data, epochs=2, batch_size=16, key=key, layout=how)

    batched, curves = jax.jit(jax.vmap(lambda k: run(k, "contiguous")))(keys)
    assert isinstance(batched, pl.TrainState)
    assert batched.params[0]["w"].shape == (3, 5, 8)
    assert batched.opt_state.mu[1]["b"].shape == (3, 3)
    for i in range(3):
        single, single_curves = run(keys[i], "pytree")
        lane = jax.tree.map(lambda a, i=i: a[i], batched)
        assert_trees_close(lane, single, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(curves["loss"][i], single_curves["loss"], rtol=1e-5)
    assert not np.allclose(batched.params[0]["w"][0], batched.params[0]["w"][1])


# -- PackedState: storage kept across step calls ---------------------------------------


def test_packed_state_is_a_pytree_of_its_buffers():
    model, optimizer = pl.mlp([5, 8, 3], batch_norm=True), pl.adam(0.01)
    packed, _ = run_steps(model, optimizer, "contiguous", n=2)
    doubled = jax.tree.map(lambda a: a * 2 if jnp.issubdtype(a.dtype, jnp.floating) else a,
                           packed._replace(key=None))  # fmt: skip
    assert isinstance(doubled, pl.PackedState) and doubled.optimizer is optimizer
    np.testing.assert_array_equal(doubled.params.buffers[0], packed.params.buffers[0] * 2)
    with pytest.raises(ValueError, match="no field"):
        packed._replace(weights=1)
    assert "PackedState(" in repr(packed)


def test_the_step_donates_the_stored_buffers():
    model, optimizer = pl.mlp([5, 8, 3]), pl.sgd(0.1)
    packed = start_state(model, optimizer, "contiguous")
    pl.make_train_step(model, optimizer)(packed, *toy_data(n=32))
    assert all(b.is_deleted() for b in packed.params.buffers)
    with pytest.raises(RuntimeError, match="deleted"):
        packed.params.tree  # noqa: B018
    kept = start_state(model, optimizer, "contiguous")
    pl.make_train_step(model, optimizer, donate=False)(kept, *toy_data(n=32))
    assert not any(b.is_deleted() for b in kept.params.buffers)


def test_an_abstract_packed_state_reads_as_abstract_pytrees():
    model, optimizer = pl.mlp([5, 8, 3]), pl.adam(0.01)
    abstract = jax.eval_shape(lambda: start_state(model, optimizer, "contiguous"))
    params = abstract.params.tree
    assert isinstance(params[0]["w"], jax.ShapeDtypeStruct) and params[0]["w"].shape == (5, 8)


def test_a_state_cast_to_float64_trains_in_float64_packed_and_not():
    script = textwrap.dedent(
        """
        import jax
        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp, numpy as np, purelearn as pl
        model, opt = pl.mlp([4, 6, 3]), pl.adam(0.01)
        x = jnp.asarray(np.random.default_rng(0).normal(size=(16, 4)))
        y = jnp.arange(16) % 3
        results = []
        for how in ("pytree", "contiguous"):
            state = pl.TrainState.create(model, opt, 0)
            state = jax.tree.map(lambda a: a.astype(jnp.float64)
                                 if jnp.issubdtype(a.dtype, jnp.floating) else a, state)
            if how == "contiguous":
                state = pl.PackedState.pack(state, opt, layout=how)
            step = pl.make_train_step(model, opt)
            for _ in range(3):
                state, _ = step(state, x, y)
            if how == "contiguous":
                state = state.unpack()
            assert state.params[0]["w"].dtype == jnp.float64
            results.append(state.params)
        d = max(float(np.max(np.abs(a - b))) for a, b in
                zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1])))
        assert d < 1e-12, d
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


def test_a_resumed_packed_fit_equals_an_uninterrupted_one():
    model, optimizer, data = pl.mlp([5, 8, 3]), pl.adam(0.01), toy_data(n=48)
    kw = {"batch_size": 16, "progress": False, "layout": "contiguous"}
    whole, h_whole = pl.fit(model, optimizer, data, epochs=4, key=0, **kw)
    half, h1 = pl.fit(model, optimizer, data, epochs=2, key=0, **kw)
    rest, h2 = pl.fit(model, optimizer, data, epochs=2, state=half, **kw)
    assert trees_equal(rest, whole)
    assert h1["loss"] + h2["loss"] == h_whole["loss"]


def test_the_checkpoints_callback_of_a_packed_fit_saves_pytree_states(tmp_path):
    model, optimizer = pl.mlp([5, 8, 3]), pl.adam(0.01)
    ckpts = pl.Checkpoints(tmp_path / "run", keep=2)
    state, _ = pl.fit(model, optimizer, toy_data(n=32), epochs=1, batch_size=16, key=0,
                      progress=False, callback=ckpts, layout="contiguous")  # fmt: skip
    like = pl.TrainState.create(model, optimizer, 0)
    assert trees_equal(ckpts.restore(like), state)


def test_deprecated_with_layout_still_converts():
    model, optimizer = pl.mlp([5, 8, 3]), pl.adam(0.01)
    plain, _ = run_steps(model, optimizer, "pytree")
    with pytest.warns(DeprecationWarning):
        packed = plain.with_layout(optimizer, "contiguous")
    assert isinstance(packed, pl.PackedState) and trees_equal(readable(packed), readable(plain))
    with pytest.warns(DeprecationWarning):
        assert plain.with_layout(optimizer, "pytree") is plain


def test_a_packed_state_crosses_jit_as_a_few_arrays_whatever_the_depth():
    # what PackedState is for: per step, the arrays passed in and out do not grow with
    # the number of parameter arrays (pytree: three per parameter array with Adam)
    for depth in (2, 40):
        model = pl.mlp([6] + [4] * depth + [3])
        plain = pl.TrainState.create(model, pl.adam(), 0)
        packed = pl.PackedState.pack(plain, pl.adam(), layout="contiguous")
        # step, one parameter buffer, Adam's count and two moment buffers, the key
        assert len(jax.tree.leaves(packed)) == 6
        assert len(jax.tree.leaves(plain)) == 3 + 3 * 2 * (depth + 1)


def test_alone_from_gives_big_matrices_their_own_buffers_and_vectors_share():
    tree = {
        "big": jnp.ones((64, 64)),  # 4096 elements, rank 2: alone
        "long": jnp.ones(5000),  # a vector shares however long
        "small": jnp.ones((3, 4)),
        "half": jnp.ones((64, 64), jnp.float16),  # alone, in its own dtype
    }
    group = layout.layout_of(tree, alone_from=4096)
    names = sorted(tree)  # flatten order of a dict
    where = dict(zip(names, group.buffer_of, strict=True))
    assert where["long"] == where["small"] != where["big"] != where["half"]
    assert group.sizes[where["big"]] == 4096 and group.sizes[where["long"]] == 5012
    assert len(group.dtypes) == 3
    assert layout.layout_of(tree).buffer_of.count(0) == 3  # default: one buffer per dtype
    packed = layout.pack(tree, layout.storage_of(tree, alone_from=4096))
    assert trees_equal(packed.tree, tree)


def test_auto_packs_the_textbook_way_with_big_kernels_alone():
    model, optimizer = pl.mlp([5, 70, 70, 3]), pl.adam(0.01)  # the 70x70 kernel is alone
    params_storage, _ = storage_for(optimizer, model.init(0)[0], "auto")
    assert len(params_storage.group.dtypes) == 2
    auto, _ = run_steps(model, optimizer, "auto")
    assert len(auto.params.buffers) == 2
    plain, _ = run_steps(model, optimizer, "pytree")
    assert_trees_close(readable(auto), readable(plain), rtol=2e-6, atol=1e-7)
    single = pl.from_flax(nn.Dense(80, use_bias=False), jnp.ones((1, 80)))
    assert storage_for(optimizer, single.init(0)[0], "auto") is None
