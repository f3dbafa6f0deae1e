"""Whether an optax transformation can run on contiguous buffers instead of the pytree.

An optimizer whose rule is the same elementwise function on every leaf
(SGD, momentum, Adam, ... with scalar schedules and injected
hyperparameters) gives bit for bit the same numbers when handed the
parameters as one buffer per dtype: the buffer is only the leaves side by
side. One that treats leaves differently (``optax.masked``,
``multi_transform``, a default weight-decay mask by rank) or mixes them
(``clip_by_global_norm``, factored second moments) does not. Which is which
is read from the programs themselves, not from a list of names: both
``update``\\ s are traced (on the pytree and on the buffers) and compared
equation by equation, with every value named by what it is computed from
(a gradient, a parameter, a state buffer, a literal; never a leaf's shape).
They must match, leaf by leaf, using only elementwise operations and
scalars, and a leaf's result may depend on no other leaf. Anything the
comparison does not understand counts as "not leafwise", which only costs
speed: the pytree layout is then used.

The comparison steps into plain calls only (``jax.jit``, ``jax.checkpoint``,
``custom_jvp``/``custom_vjp`` functions: a body run once on the caller's
operands). A loop or a branch (``scan``, which ``fori_loop`` with static
bounds and ``lax.map`` become, ``while_loop``, ``cond``, ``switch``) on an
array is not leafwise: a loop body sees slices of the whole buffer and
carries values from one element to the next, and a predicate may read
anything. On scalars only (a schedule's step count) such a primitive is one
opaque scalar operation, as any other.

An optimizer that fails on the pytree itself raises its error here too; one
that fails only when handed the buffers (a mask tree made for the pytree) is
not leafwise.

"Bit for bit" holds for the programs. XLA then compiles ``x / s`` (``s`` a
scalar broadcast to the array ``x``, as in Adam's bias correction) as
``x * (1 / s)``, but not where ``x`` has one element: there a leaf of one
element can get another last digit on the buffer than in the pytree.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.extend import core as jex_core

from purelearn.layout import Layout, Segment, Storage

__all__ = ["optimizer_storage"]

# Elementwise primitives: every non-scalar operand has the output's shape and
# element k of the result depends only on element k of each operand.
_ELEMENTWISE = frozenset(
    """abs acos acosh add and asin asinh atan atan2 atanh cbrt ceil clamp conj
    convert_element_type copy copy_p cos cosh div eq erf erf_inv erfc exp exp2 expm1
    floor ge gt imag integer_pow is_finite le lgamma digamma log log1p logistic lt max
    min mul ne neg nextafter not or pow real reduce_precision rem round rsqrt select_n
    sign sin sinh sqrt square sub tan tanh xor""".split()
)

# Plain calls, the only primitives with a body that the comparison steps into: the body
# runs once on the equation's operands, in order, and its results are the equation's.
# Name -> the parameter holding the body (a ClosedJaxpr; remat's is an open Jaxpr). Seen
# on jax 0.10.2: jit, closed_call, remat2 (jax.checkpoint), custom_jvp_call and
# custom_vjp_call (whose body is the primal function: what a forward pass runs). The
# same calls in older jax: pjit, checkpoint, custom_vjp_call_jaxpr. Every other
# primitive with a body (scan, while, cond, custom_linear_solve, ...) is opaque: see
# _equation. Core ``call`` has no public producer on jax 0.10.2 and is left out.
_CALLS = {
    "jit": "jaxpr",
    "pjit": "jaxpr",
    "closed_call": "call_jaxpr",
    "remat2": "jaxpr",
    "checkpoint": "jaxpr",
    "custom_jvp_call": "call_jaxpr",
    "custom_vjp_call": "call_jaxpr",
    "custom_vjp_call_jaxpr": "fun_jaxpr",
}


class _NotLeafwise(Exception):
    pass


class _Interner:
    """Hash-consing: structurally equal expressions get the same small integer."""

    def __init__(self) -> None:
        self.ids: dict[Any, int] = {}

    def __call__(self, key: Any) -> int:
        return self.ids.setdefault(key, len(self.ids))


def _params_key(params: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, repr(v)) for k, v in params.items() if k != "sharding"))


def _scalar(aval: Any) -> bool:
    return getattr(aval, "shape", None) == ()


def _const_key(c: Any) -> tuple[Any, ...]:
    """A scalar numeric constant, named by its value (a tracer of an enclosing trace:
    by its identity). Any other constant is not modelled: not leafwise."""
    if np.shape(c) != ():
        raise _NotLeafwise("a non-scalar constant")
    if isinstance(c, jax.core.Tracer):
        return ("tracer", id(c))
    dtype = c.dtype if hasattr(c, "dtype") else np.asarray(c).dtype
    if not (jnp.issubdtype(dtype, jnp.number) or jnp.issubdtype(dtype, jnp.bool_)):
        raise _NotLeafwise(f"a constant of dtype {dtype}")  # a PRNG key, ...
    a = np.asarray(c)
    return ("const", str(a.dtype), repr(a.tolist()))


def _call_body(eqn: Any) -> tuple[Any, Sequence[Any]] | None:
    """The body and constants of a plain call (see ``_CALLS``), checked to take the
    equation's operands and give its results; None for any other primitive."""
    param = _CALLS.get(eqn.primitive.name)
    if param is None or param not in eqn.params:
        return None
    inner = eqn.params[param]
    if isinstance(inner, jex_core.ClosedJaxpr):
        body, consts = inner.jaxpr, inner.consts
    elif isinstance(inner, jex_core.Jaxpr) and not inner.constvars:
        body, consts = inner, ()
    else:
        raise _NotLeafwise(f"{eqn.primitive.name} with a body of another kind")
    if len(body.invars) != len(eqn.invars) or len(body.outvars) != len(eqn.outvars):
        raise _NotLeafwise(f"{eqn.primitive.name} whose body takes other operands")
    return body, consts


def _run(
    jaxpr: Any,
    consts: Sequence[Any],
    args: Sequence[tuple[int, int | None]],
    intern: _Interner,
) -> list[tuple[int, int | None]]:
    """Canonical ids of ``jaxpr``'s outputs; each value is ``(id, leaf)`` where ``leaf``
    is the pytree leaf it was computed from (None: from scalars only)."""
    env: dict[Any, tuple[int, int | None]] = {}

    def read(v: Any) -> tuple[int, int | None]:
        if isinstance(v, jex_core.Literal):
            # a Literal's aval is a ShapedArray; jax annotates it as the AbstractValue base
            dtype = str(v.aval.dtype)  # type: ignore[attr-defined]
            return intern(("literal", dtype, repr(np.asarray(v.val).tolist()))), None
        return env[v]

    for v, c in zip(jaxpr.constvars, consts, strict=True):
        env[v] = intern(_const_key(c)), None
    for v, a in zip(jaxpr.invars, args, strict=True):
        env[v] = a
    for eqn in jaxpr.eqns:
        ins = [read(v) for v in eqn.invars]
        leaves = {leaf for _, leaf in ins if leaf is not None}
        if len(leaves) > 1:
            raise _NotLeafwise("an operation mixes two leaves")
        leaf = leaves.pop() if leaves else None
        call = _call_body(eqn)
        if call is not None:
            outs = _run(*call, ins, intern)
        else:
            outs = _equation(eqn, ins, leaf, intern)
        for v, out in zip(eqn.outvars, outs, strict=True):
            env[v] = out
    return [read(v) for v in jaxpr.outvars]


def _sub_jaxprs(value: Any) -> list[Any]:
    """The (closed) jaxprs in one parameter: a body, a tuple of branches, ..."""
    if isinstance(value, jex_core.ClosedJaxpr | jex_core.Jaxpr):
        return [value]
    if isinstance(value, tuple | list):
        return [j for v in value for j in _sub_jaxprs(v)]
    return []


def _equation(
    eqn: Any, ins: list[tuple[int, int | None]], leaf: int | None, intern: _Interner
) -> list[tuple[int, int | None]]:
    """Ids of one equation's outputs. Only an elementwise primitive, or any primitive
    on scalars only, has one: named by its parameters and operands (a body it has is
    not stepped into but named by its text and its constants' values)."""
    name = eqn.primitive.name
    all_scalar = all(_scalar(v.aval) for v in (*eqn.invars, *eqn.outvars))
    if name == "broadcast_in_dim" and _scalar(eqn.invars[0].aval):
        key = ("broadcast", ins[0][0], str(eqn.outvars[0].aval.dtype))
        return [(intern(key), leaf)]
    if not (all_scalar or name in _ELEMENTWISE):
        raise _NotLeafwise(f"{name} on an array")
    # a body's text names its constants without their values: two bodies that differ
    # only in a constant must not get one id
    bodies = [j for v in eqn.params.values() for j in _sub_jaxprs(v)]
    consts = tuple(_const_key(c) for j in bodies for c in getattr(j, "consts", ()))
    base = (name, _params_key(eqn.params), consts, tuple(i for i, _ in ins))
    return [(intern((*base, k)), leaf) for k in range(len(eqn.outvars))]


def _state_segments(tree_state: Any, flat_state: Any, group: Layout) -> tuple[Segment, ...] | None:
    """Which leaves of the state made on the pytree are one buffer-sized leaf of the
    state made on the buffers (a moment: one copy of the parameters), which one
    scalar; None when the two do not line up."""
    tree_leaves, flat_leaves = jax.tree.leaves(tree_state), jax.tree.leaves(flat_state)
    k, n = len(group.dtypes), group.num_leaves
    buffers = group.abstract_buffers()
    params = jax.tree.leaves(group.abstract_tree())
    segments: list[Segment] = []
    i = j = 0
    while j < len(flat_leaves):
        chunk = flat_leaves[j : j + k]
        if [(a.shape, a.dtype) for a in chunk] == [(b.shape, b.dtype) for b in buffers] and [
            (a.shape, a.dtype) for a in tree_leaves[i : i + n]
        ] == [(p.shape, p.dtype) for p in params]:
            segments.append(Segment(True, tuple(range(j, j + k))))
            i, j = i + n, j + k
        elif i < len(tree_leaves) and _scalar(flat_leaves[j]) and _scalar(tree_leaves[i]):
            if flat_leaves[j].dtype != tree_leaves[i].dtype:
                return None
            segments.append(Segment(False, (j,)))
            i, j = i + 1, j + 1
        else:
            return None
    return tuple(segments) if i == len(tree_leaves) else None


#: answers per optimizer, held as long as its ``update`` function lives: an optimizer
#: built inside a trace (``inject_hyperparams`` of traced values) is not kept alive
_ANSWERS: weakref.WeakKeyDictionary[
    Callable[..., Any], dict[tuple[Callable[..., Any], Layout], Storage | None]
] = weakref.WeakKeyDictionary()


def optimizer_storage(optimizer: optax.GradientTransformation, group: Layout) -> Storage | None:
    """How to store ``optimizer``'s state beside parameters stored as ``group``, if its
    rule is leafwise (see the module doc); else None.

    The stored form is the state ``optimizer.init`` makes for the buffers
    (the structure its ``update`` then takes); :class:`~purelearn.layout.Packed`
    reads it back as the state made for the pytree. The answer is remembered
    for the same optimizer and layout (the comparison traces ``update`` twice).

    Raises whatever ``optimizer.init`` or ``optimizer.update`` raises on the
    pytree ``group`` describes (an error of the optimizer, not a layout
    question); an error on the buffers only means None.
    """
    try:
        answers = _ANSWERS.setdefault(optimizer.update, {})
    except TypeError:  # an update that cannot be weakly referenced: no memo
        answers = {}
    key = (optimizer.init, group)
    if key not in answers:
        answers[key] = _storage(optimizer, group)
    return answers[key]


class _Program(NamedTuple):
    """``update`` traced on some parameters, with the state it was given."""

    closed: Any  # the ClosedJaxpr of update(grads, state, params)
    state: Any  # the state init made (abstract)
    returns_its_structure: bool  # updates like params, new state like state


def _program(optimizer: optax.GradientTransformation, params: Any) -> _Program:
    """``optimizer.init`` and ``update`` traced on ``params`` (abstract), the gradients
    shaped like them; raises what the optimizer raises."""
    state = jax.eval_shape(optimizer.init, params)

    def update(grads: Any, state: Any, params: Any) -> tuple[Any, Any]:
        return optimizer.update(grads, state, params)

    closed, (updates_shape, state_shape) = jax.make_jaxpr(update, return_shape=True)(
        params, state, params
    )
    # jaxlib ships no stub for PyTreeDef, so mypy cannot see its __eq__
    same = jax.tree.structure(updates_shape) == jax.tree.structure(params) and (  # type: ignore[operator]
        jax.tree.structure(state_shape) == jax.tree.structure(state)  # type: ignore[operator]
    )
    return _Program(closed, state, same)


def _buffers_program(optimizer: optax.GradientTransformation, group: Layout) -> _Program | None:
    """``update`` traced on the buffers; None where the optimizer cannot take them.

    Called only after the same tracing succeeded on the pytree, so a failure
    here comes from the buffers standing in for the tree (a mask or a label
    tree with the pytree's structure, a rule that reads ``.ndim``), whatever
    the exception's type.
    """
    try:
        return _program(optimizer, group.abstract_buffers())
    except Exception:  # noqa: BLE001 -- the buffers, not the optimizer (see above): any type
        return None


def _storage(optimizer: optax.GradientTransformation, group: Layout) -> Storage | None:
    # the pytree first and outside any try: an optimizer's own error propagates
    tree = _program(optimizer, group.abstract_tree())
    flat = _buffers_program(optimizer, group)
    if flat is None:
        return None
    try:
        return _compare(tree, flat, group)
    except _NotLeafwise:
        return None


def _compare(tree: _Program, flat: _Program, group: Layout) -> Storage | None:
    """The storage if the two programs compute the same per buffer (see the module doc);
    raises ``_NotLeafwise`` (or returns None) where they do not."""
    if not (tree.returns_its_structure and flat.returns_its_structure):
        raise _NotLeafwise("update returns another structure than it takes")
    segments = _state_segments(tree.state, flat.state, group)
    if segments is None:
        return None
    storage = Storage(
        jax.tree.structure(tree.state), jax.tree.structure(flat.state), segments, group
    )
    intern = _Interner()
    flat_out = _ids(flat, storage, intern, per_leaf=False)
    tree_out = _ids(tree, storage, intern, per_leaf=True)
    return storage if flat_out == tree_out else None


def _ids(program: _Program, storage: Storage, intern: _Interner, *, per_leaf: bool) -> list[int]:
    """The canonical ids of ``update``'s outputs (updates, then state), with the tree's
    leaves mapped to the buffers they live in; a leaf's result checked to use that
    leaf only."""
    group = storage.group
    n = group.num_leaves

    def inputs(kind: str) -> list[tuple[int, int | None]]:
        # a leaf is named by the buffer it lives in, and tagged with its own index
        if per_leaf:
            return [(intern((kind, group.buffer_of[i])), i) for i in range(n)]
        return [(intern((kind, b)), None) for b in range(len(group.dtypes))]

    grads_in, params_in = inputs("grad"), inputs("param")
    state_in: list[tuple[int, int | None]] = []
    for s, seg in enumerate(storage.segments):
        if seg.grouped and per_leaf:
            state_in += [(intern(("state", s, group.buffer_of[i])), i) for i in range(n)]
        elif seg.grouped:
            state_in += [(intern(("state", s, b)), None) for b in range(len(group.dtypes))]
        else:
            state_in.append((intern(("state", s, 0)), None))
    closed = program.closed
    outs = _run(closed.jaxpr, closed.consts, [*grads_in, *state_in, *params_in], intern)
    updates, new_state = outs[: len(grads_in)], outs[len(grads_in) :]
    if per_leaf:
        # the i-th update must be computed from leaf i (or from scalars only)
        if any(leaf not in (i, None) for i, (_, leaf) in enumerate(updates)):
            raise _NotLeafwise("an update uses another leaf")
        ids = [u for u, _ in updates]
        by_buffer = [ids[group.buffer_of.index(b)] for b in range(len(group.dtypes))]
        if ids != [by_buffer[group.buffer_of[i]] for i in range(n)]:
            raise _NotLeafwise("leaves of one buffer get different rules")
        return [*by_buffer, *_state_ids(new_state, storage)]
    return [u for u, _ in updates] + [s for s, _ in new_state]


def _state_ids(new_state: list[tuple[int, int | None]], storage: Storage) -> list[int]:
    """The new state's ids, one per stored leaf: a moment's leaves must share one rule."""
    group, out, i = storage.group, [], 0
    n = group.num_leaves
    for seg in storage.segments:
        if not seg.grouped:
            sid, leaf = new_state[i]
            if leaf is not None:
                raise _NotLeafwise("a scalar state entry computed from a leaf")
            out.append(sid)
            i += 1
            continue
        chunk = new_state[i : i + n]
        if any(leaf not in (j, None) for j, (_, leaf) in enumerate(chunk)):
            raise _NotLeafwise("a moment uses another leaf")
        ids = [sid for sid, _ in chunk]
        for b in range(len(group.dtypes)):
            same = {ids[j] for j in range(n) if group.buffer_of[j] == b}
            if len(same) != 1:
                raise _NotLeafwise("leaves of one buffer get different rules")
            out.append(same.pop())
        i += n
    return out
