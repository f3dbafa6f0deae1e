"""The leafwise proof never accepts an optimizer that gives other numbers on the buffers.

The oracle is the optimizer itself, run on the pytree: wherever
``optimizer_storage`` accepts an optimizer, the same optimizer run on the
packed buffers must give bit for bit the updates (compared with a NumPy
concatenation of the pytree's) and the state (read back through the storage
it returned); a one-element leaf may differ in the last place, XLA's doing
(see ``assert_leaf_matches``). Loops, branches and calls are each tried on a vector, where
a loop body sees slices and carries values from one element to the next.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import PURELEARN_OPTIMIZERS
from hypothesis import given, settings
from hypothesis import strategies as st

import purelearn as pl
from purelearn import layout
from purelearn._leafwise import optimizer_storage

BF16 = np.dtype(jnp.bfloat16)

# leaves of several ranks and sizes, a scalar one, and a bfloat16 one (two buffers)
PARAMS = {
    "w": jnp.linspace(-1.0, 1.0, 12, dtype=jnp.float32).reshape(3, 4),
    "b": jnp.linspace(0.1, 0.4, 4, dtype=jnp.float32),
    "e": [jnp.array([0.5, -0.25], jnp.bfloat16), jnp.linspace(-2.0, 2.0, 5, dtype=jnp.float32)],
    "s": jnp.float32(0.3),
}


# -- the oracle: the pytree run, and the buffers as a NumPy concatenation ------------------


def numpy_buffers(tree: Any) -> list[np.ndarray]:
    """One buffer per dtype in order of first appearance, the leaves raveled back to back."""
    leaves = [np.asarray(a) for a in jax.tree.leaves(tree)]
    dtypes: list[np.dtype] = []
    for a in leaves:
        if a.dtype not in dtypes:
            dtypes.append(a.dtype)
    return [np.concatenate([np.ravel(a) for a in leaves if a.dtype == d]).astype(d) for d in dtypes]


def grads_like(tree: Any, seed: int) -> Any:
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda a: jnp.asarray(rng.normal(size=a.shape).astype(np.float32)).astype(a.dtype), tree
    )


def numpy_slices(tree: Any, buffers: Any) -> list[np.ndarray]:
    """The leaves of ``tree`` cut out of ``buffers`` by hand (offsets counted here)."""
    dtypes: list[np.dtype] = []
    used: list[int] = []
    out = []
    for a in jax.tree.leaves(tree):
        d = np.dtype(a.dtype)
        if d not in dtypes:
            dtypes.append(d)
            used.append(0)
        b, n = dtypes.index(d), math.prod(np.shape(a))
        out.append(np.asarray(buffers[b])[used[b] : used[b] + n].reshape(np.shape(a)))
        used[b] += n
    return out


def assert_leaf_matches(got: Any, want: Any) -> None:
    """Bit for bit (same dtype and shape, NaNs in the same places), except in the last
    place for a floating leaf of one element.

    That exception is XLA's, not the analysis's: the programs are the same, but XLA
    compiles ``x / s`` (``s`` a scalar broadcast to the array ``x``) as
    ``x * (1 / s)``, except where ``x`` has one element (Adam's bias correction
    divides so): a one-element leaf is divided exactly, its place in the buffer not.
    """
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape
    if want.size == 1 and jnp.issubdtype(want.dtype, jnp.floating):
        rtol = 4 * float(jnp.finfo(want.dtype).eps)
        np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=rtol)
    else:
        np.testing.assert_array_equal(got, want)


def assert_trees_match(got: Any, want: Any) -> None:
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert_leaf_matches(a, b)


def assert_buffers_hold(buffers: Any, tree: Any) -> None:
    """``buffers`` are ``tree``'s leaves concatenated by dtype (the NumPy oracle)."""
    wanted = numpy_buffers(tree)
    assert [np.dtype(b.dtype) for b in buffers] == [b.dtype for b in wanted]
    assert [np.shape(b) for b in buffers] == [b.shape for b in wanted]
    for got, want in zip(numpy_slices(tree, buffers), jax.tree.leaves(tree), strict=True):
        assert_leaf_matches(got, want)


def assert_exact_on_buffers(optimizer, params: Any, storage, steps: int = 3) -> None:
    """The optimizer run on the packed buffers gives the pytree run's numbers."""
    tree_params, tree_state = params, optimizer.init(params)
    assert storage.treedef == jax.tree.structure(tree_state)
    flat_params = layout.pack(params).raw
    flat_state = optimizer.init(flat_params)  # the state made for the buffers themselves
    for step in range(steps):
        grads = grads_like(params, step)
        updates, tree_state = optimizer.update(grads, tree_state, tree_params)
        flat_updates, flat_state = optimizer.update(layout.pack(grads).raw, flat_state, flat_params)
        assert_buffers_hold(flat_updates, updates)
        assert_trees_match(layout.Packed(jax.tree.leaves(flat_state), storage).tree, tree_state)
        tree_params = optax.apply_updates(tree_params, updates)
        flat_params = optax.apply_updates(flat_params, flat_updates)
    assert_buffers_hold(flat_params, tree_params)


def refused_or_exact(optimizer, params: Any = PARAMS) -> bool:
    """The rule that holds for every optimizer: refused, or exact; True when accepted."""
    storage = optimizer_storage(optimizer, layout.layout_of(params))
    if storage is not None:
        assert_exact_on_buffers(optimizer, params, storage)
    return storage is not None


# -- custom optimizers: a rule per leaf, built from one control-flow construct --------------


def count_init(params: Any) -> jax.Array:
    del params
    return jnp.zeros([], jnp.int32)


def per_leaf(rule, init=count_init) -> optax.GradientTransformation:
    """``rule(g, count)`` on every leaf's gradient; the state is a step count."""

    def update(updates, count, params=None):
        del params
        return jax.tree.map(lambda g: rule(g, count), updates), count + 1

    return optax.GradientTransformation(init, update)


# Rules run on the leaf as it is, never reshaped (a reshape alone is refused): on
# vectors, a loop over axis 0 walks the elements, and on the buffer walks on into the
# next leaf. Trees of vectors (two dtypes, a one-element one) and of matrices.
VECTORS = {
    "a": jnp.linspace(-1.0, 1.0, 4, dtype=jnp.float32),
    "b": jnp.array([0.5, -0.25, 2.0], jnp.bfloat16),
    "c": jnp.linspace(0.1, 0.5, 5, dtype=jnp.float32),
    "d": jnp.array([3.0], jnp.float32),
}
ROWS = {
    "m": jnp.linspace(-1.0, 1.0, 12, dtype=jnp.float32).reshape(3, 4),
    "n": jnp.arange(4.0, dtype=jnp.float32).reshape(2, 2),
    "v": jnp.linspace(-2.0, 2.0, 5, dtype=jnp.float32),
}


def running_sum(g, count):
    # the bug: a lax.scan whose body looks elementwise on slices; it carries the sum
    # along the vector, and on the buffer from one leaf into the next
    zero = jnp.zeros(g.shape[1:], g.dtype)
    return jax.lax.scan(lambda c, x: (c + x, c + x), zero, g)[1]


def moving_average(g, count):
    zero = jnp.zeros(g.shape[1:], g.dtype)
    return jax.lax.scan(lambda c, x: (0.9 * c + x, 0.9 * c + x), zero, g)[1]


def fori_static(g, count):
    # an elementwise body over the whole leaf: leafwise in truth, refused as a loop
    return jax.lax.fori_loop(0, 3, lambda i, c: c * 0.5 + 0.1, g)


def fori_dynamic(g, count):
    return jax.lax.fori_loop(0, count + 1, lambda i, c: c * 0.5 + 0.1, g)


def while_halving(g, count):
    body = lambda c: (c[0] + 1, c[1] * 0.5)  # noqa: E731
    return jax.lax.while_loop(lambda c: c[0] < count + 2, body, (jnp.int32(0), g))[1]


def cond_on_count(g, count):
    return jax.lax.cond(count % 2 == 0, lambda x: x * 2.0, lambda x: x - 1.0, g)


def switch_on_count(g, count):
    branches = [lambda x: x * 2.0, lambda x: x - 1.0, lambda x: x * x]
    return jax.lax.switch(count % 3, branches, g)


def map_doubling(g, count):
    return jax.lax.map(lambda x: x * 2.0, g)


def cumsum(g, count):
    return jnp.cumsum(g, axis=0)


def associative_scan(g, count):
    return jax.lax.associative_scan(jnp.add, g)


def with_custom_jvp(rule):
    """``rule`` as a ``jax.custom_jvp`` function (a derivative of the gradient alone)."""
    f = jax.custom_jvp(rule)
    f.defjvp(lambda primals, tangents: (f(*primals), tangents[0]))
    return f


ARRAY_CONTROL_FLOW = {
    "scan running sum": running_sum,
    "scan moving average": moving_average,
    "scan in jit": jax.jit(running_sum),
    "scan in checkpoint": jax.checkpoint(running_sum),
    "scan in custom_jvp": with_custom_jvp(running_sum),
    "fori_loop static": fori_static,
    "fori_loop dynamic": fori_dynamic,
    "while_loop": while_halving,
    "cond": cond_on_count,
    "switch": switch_on_count,
    "lax.map": map_doubling,
    "cumsum": cumsum,
    "associative_scan": associative_scan,
}
ARRAY_TREES = {"vectors": VECTORS, "rows": ROWS}


@pytest.mark.parametrize("tree", list(ARRAY_TREES))
@pytest.mark.parametrize("name", list(ARRAY_CONTROL_FLOW))
def test_a_loop_or_branch_on_an_array_is_refused_and_never_wrong(name, tree):
    # refused: a loop or a branch on an array is not modelled; and were it accepted,
    # the buffers would have to give the pytree's numbers
    assert not refused_or_exact(per_leaf(ARRAY_CONTROL_FLOW[name]), ARRAY_TREES[tree])


@pytest.mark.parametrize("rule", [running_sum, moving_average], ids=["sum", "average"])
def test_the_running_sums_that_used_to_pass_give_other_numbers_on_the_buffers(rule):
    # why they must be refused: on the buffer the sum runs on from one leaf into the next
    optimizer = per_leaf(rule)
    grads = grads_like(VECTORS, 0)
    tree_updates, _ = optimizer.update(grads, optimizer.init(VECTORS), VECTORS)
    flat = layout.pack(VECTORS).raw
    flat_updates, _ = optimizer.update(layout.pack(grads).raw, optimizer.init(flat), flat)
    assert not all(
        np.array_equal(np.asarray(a), b)
        for a, b in zip(flat_updates, numpy_buffers(tree_updates), strict=True)
    )
    assert optimizer_storage(optimizer, layout.layout_of(VECTORS)) is None


# -- plain calls stay leafwise ---------------------------------------------------------------


def affine(g, count):
    return g * 0.5 - 0.125


@jax.custom_jvp
def soft_step(g):
    return g * 0.25 + jnp.tanh(g)


soft_step.defjvp(lambda primals, tangents: (soft_step(*primals), tangents[0] * 0.25))


@jax.custom_vjp
def scaled(g):
    return g * 0.75


scaled.defvjp(lambda g: (scaled(g), None), lambda _, ct: (ct * 0.75,))


def lr_by_fori(g, count):
    # a loop on scalars only (the step count): one opaque scalar operation
    lr = jax.lax.fori_loop(0, count, lambda i, c: c * 0.9, jnp.float32(0.1))
    return g * lr.astype(g.dtype)


def lr_by_static_fori(g, count):
    lr = jax.lax.fori_loop(0, 3, lambda i, c: c * 0.9 + count.astype(c.dtype), jnp.float32(0.1))
    return g * lr.astype(g.dtype)


def lr_by_cond(g, count):
    lr = jax.lax.cond(count > 1, lambda: jnp.float32(0.01), lambda: jnp.float32(0.1))
    return g * lr.astype(g.dtype)


def lr_by_switch(g, count):
    lrs = [lambda: jnp.float32(0.3), lambda: jnp.float32(0.2), lambda: jnp.float32(0.1)]
    return g * jax.lax.switch(count % 3, lrs).astype(g.dtype)


CALLS = {
    "nested jax.jit": jax.jit(jax.jit(affine)),
    "jax.checkpoint": jax.checkpoint(affine),
    "checkpoint with a policy": jax.checkpoint(
        affine, policy=jax.checkpoint_policies.nothing_saveable
    ),
    "jit inside checkpoint inside jit": jax.jit(jax.checkpoint(lambda g, c: jax.jit(affine)(g, c))),
    "custom_jvp": lambda g, count: soft_step(g),
    "custom_jvp of a rule": with_custom_jvp(affine),
    "custom_vjp": lambda g, count: scaled(g),
    "jit of custom_jvp": jax.jit(lambda g, count: soft_step(g) * 2.0),
    "fori_loop on scalars, dynamic": lr_by_fori,
    "fori_loop on scalars, static": lr_by_static_fori,
    "cond on scalars": lr_by_cond,
    "switch on scalars": lr_by_switch,
}


@pytest.mark.parametrize("tree", ["params", "vectors"])
@pytest.mark.parametrize("name", list(CALLS))
def test_elementwise_rules_inside_calls_are_accepted_and_exact(name, tree):
    assert refused_or_exact(per_leaf(CALLS[name]), {"params": PARAMS, "vectors": VECTORS}[tree])


def lr_by_size_in_a_loop(g, count):
    # a loop on scalars whose body reads the leaf's size: one rule per leaf size
    lr = jax.lax.fori_loop(0, count, lambda i, c: c / g.size, jnp.float32(1.0))
    return g * lr.astype(g.dtype)


def lr_by_size_in_a_branch(g, count):
    lr = jax.lax.cond(count > 0, lambda: jnp.float32(1.0 / g.size), lambda: jnp.float32(1.0))
    return g * lr.astype(g.dtype)


@pytest.mark.parametrize("rule", [lr_by_size_in_a_loop, lr_by_size_in_a_branch])
def test_a_scalar_loop_or_branch_that_differs_by_leaf_is_refused(rule):
    # opaque, but named by its body: leaves of one buffer get different rules
    assert not refused_or_exact(per_leaf(rule))


def test_a_checkpointed_moment_is_accepted_and_exact():
    # a state the size of the parameters, updated inside calls
    def init(params):
        return jax.tree.map(jnp.zeros_like, params)

    @jax.jit
    def decay(m, g):
        return jax.checkpoint(lambda m, g: 0.9 * m + 0.1 * g)(m, g)

    def update(updates, moments, params=None):
        moments = jax.tree.map(decay, moments, updates)
        return jax.tree.map(lambda m: -0.1 * scaled(m), moments), moments

    assert refused_or_exact(optax.GradientTransformation(init, update))


# -- every purelearn optimizer is leafwise, and exact, on any tree ----------------------------

OPTIMIZERS = PURELEARN_OPTIMIZERS


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_purelearn_optimizers_are_accepted_and_exact(name):
    assert refused_or_exact(OPTIMIZERS[name]())


def tree_specs(min_rank: int = 0, max_rank: int = 3, min_leaves: int = 1) -> st.SearchStrategy:
    """Dicts of (dtype, shape): float32 and bfloat16 leaves of rank ``min_rank`` to
    ``max_rank``."""
    shapes = st.lists(st.integers(1, 4), min_size=min_rank, max_size=max_rank).map(tuple)
    leaves = st.tuples(st.sampled_from([np.float32, BF16]), shapes)
    names = st.text("abcd", min_size=1, max_size=2)
    return st.dictionaries(names, leaves, min_size=min_leaves, max_size=4)


def build(spec: dict[str, tuple[Any, tuple[int, ...]]], seed: int) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    return {
        k: jnp.asarray(rng.normal(size=shape).astype(np.float32)).astype(dtype)
        for k, (dtype, shape) in spec.items()
    }


@settings(max_examples=12, deadline=None, database=None)
@given(spec=tree_specs(), seed=st.integers(0, 2**16), name=st.sampled_from(sorted(OPTIMIZERS)))
def test_purelearn_optimizers_are_exact_on_any_tree(spec, seed, name):
    assert refused_or_exact(OPTIMIZERS[name](), build(spec, seed))


@settings(max_examples=30, deadline=None, database=None)
@given(
    # vectors: where a loop over axis 0 walks from one leaf into the next on the buffer
    spec=tree_specs(min_rank=1, max_rank=1, min_leaves=2),
    seed=st.integers(0, 2**16),
    name=st.sampled_from(sorted(ARRAY_CONTROL_FLOW)),
)
def test_loops_and_branches_on_arrays_are_never_accepted_with_other_numbers(spec, seed, name):
    # refused in general; but some traces hold no loop (associative_scan of one element
    # is the element): accepting those is right, so the property is the oracle's
    refused_or_exact(per_leaf(ARRAY_CONTROL_FLOW[name]), build(spec, seed))


@settings(max_examples=15, deadline=None, database=None)
@given(spec=tree_specs(), seed=st.integers(0, 2**16), name=st.sampled_from(sorted(CALLS)))
def test_elementwise_rules_inside_calls_are_exact_on_any_tree(spec, seed, name):
    assert refused_or_exact(per_leaf(CALLS[name]), build(spec, seed))


# -- errors: the optimizer's own are raised, the buffers' mean "not leafwise" -----------------


class Boom(Exception):
    pass


BOOM = Boom("the optimizer's own error")


def test_an_update_that_fails_on_the_pytree_raises_its_error():
    def update(updates, state, params=None):
        raise BOOM

    optimizer = optax.GradientTransformation(lambda p: optax.EmptyState(), update)
    for _ in range(2):  # and the failure is not remembered as an answer
        with pytest.raises(Boom) as caught:
            optimizer_storage(optimizer, layout.layout_of(PARAMS))
        assert caught.value is BOOM


def test_an_init_that_fails_on_the_pytree_raises_its_error():
    def init(params):
        raise BOOM

    optimizer = optax.GradientTransformation(init, lambda u, s, p=None: (u, s))
    with pytest.raises(Boom) as caught:
        optimizer_storage(optimizer, layout.layout_of(PARAMS))
    assert caught.value is BOOM


def test_a_rule_that_fails_on_the_pytree_raises_even_if_it_also_fails_on_buffers():
    # ValueError on both forms: the pytree's is the optimizer's error, never "not leafwise"
    def update(updates, state, params=None):
        raise ValueError(f"no rule for {jax.tree.structure(updates)}")

    optimizer = optax.GradientTransformation(lambda p: optax.EmptyState(), update)
    with pytest.raises(ValueError, match="no rule for PyTreeDef\\(\\{"):
        optimizer_storage(optimizer, layout.layout_of(PARAMS))


BY_RANK = lambda p: jax.tree.map(lambda x: x.ndim > 1, p)  # noqa: E731


def by_key(updates, state, params=None):
    # reads the pytree by its keys: a tuple of buffers has none
    return {k: jax.tree.map(lambda g: g * 0.5, updates[k]) for k in updates}, state


FAIL_ON_BUFFERS = {
    "optax.masked": lambda: optax.masked(optax.sgd(0.1), BY_RANK),
    "pl.adamw masked": lambda: pl.adamw(0.1, mask=BY_RANK),
    "reads keys": lambda: optax.GradientTransformation(lambda p: optax.EmptyState(), by_key),
    "init reads keys": lambda: optax.GradientTransformation(
        lambda p: {k: jax.tree.map(jnp.zeros_like, v) for k, v in p.items()},
        lambda u, s, p=None: (u, s),
    ),
}


@pytest.mark.parametrize("name", list(FAIL_ON_BUFFERS))
def test_an_optimizer_that_fails_only_on_the_buffers_is_not_leafwise(name):
    optimizer = FAIL_ON_BUFFERS[name]()
    optimizer.update(PARAMS, optimizer.init(PARAMS), PARAMS)  # fine on the pytree
    assert optimizer_storage(optimizer, layout.layout_of(PARAMS)) is None
