"""Contiguous parameter storage: a pytree kept as a few flat buffers, one per dtype.

A model with a thousand parameter arrays costs a thousand arrays at every
``jax.jit`` call (each one checked, donated and wrapped again, a few
microseconds apiece) and a thousand small kernels per optimizer rule. A
:class:`Packed` value stores the same numbers as one 1-D buffer per dtype
(the leaves in flatten order, back to back) plus a static
:class:`Layout`, so it crosses a jit boundary as a handful of arrays and an
elementwise optimizer updates it in one pass. Reading it as the pytree is
free inside a compiled function (the leaves are slices of the buffers) and
one small program outside::

    leaf i  =  buffers[b_i][o_i : o_i + size_i].reshape(shape_i)

``Packed`` is itself a pytree (its children are the buffers), so
``jax.tree.map(jnp.copy, packed)``, donation, ``jax.device_put`` and
checkpoints of the whole state see a few arrays. Buffers may carry leading
batch axes (a ``vmap``-ed run returns them so): every leaf then carries them
too.

Example:
  >>> import jax.numpy as jnp, purelearn as pl
  >>> tree = {"b": jnp.zeros(3), "w": jnp.ones((2, 3))}
  >>> packed = pl.layout.pack(tree)
  >>> [b.shape for b in packed.buffers], packed.tree["w"].shape
  ([(9,)], (2, 3))
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from purelearn import _checks

__all__ = [
    "Layout",
    "Segment",
    "Storage",
    "Packed",
    "layout_of",
    "storage_of",
    "packable",
    "pack",
    "unpack",
    "to_pytree",
    "pack_like",
    "views",
]


class Layout(NamedTuple):
    """Where each leaf of a pytree lives in the buffers (static, hashable).

    Attributes:
      treedef: the pytree's structure.
      shapes: each leaf's shape, in flatten order.
      buffer_of: the buffer holding each leaf.
      offsets: where each leaf starts in its buffer.
      dtypes: the buffers' dtypes (one buffer per distinct leaf dtype, in order
        of first appearance).
      sizes: the buffers' lengths.
    """

    treedef: Any
    shapes: tuple[tuple[int, ...], ...]
    buffer_of: tuple[int, ...]
    offsets: tuple[int, ...]
    dtypes: tuple[np.dtype, ...]
    sizes: tuple[int, ...]

    @property
    def num_leaves(self) -> int:
        return len(self.shapes)

    def leaf_dtype(self, i: int) -> np.dtype:
        return self.dtypes[self.buffer_of[i]]

    def abstract_buffers(self) -> tuple[jax.ShapeDtypeStruct, ...]:
        return tuple(
            jax.ShapeDtypeStruct((n,), d) for d, n in zip(self.dtypes, self.sizes, strict=True)
        )

    def abstract_tree(self) -> Any:
        leaves = [jax.ShapeDtypeStruct(s, self.leaf_dtype(i)) for i, s in enumerate(self.shapes)]
        return jax.tree.unflatten(self.treedef, leaves)


def packable(tree: Any) -> bool:
    """Whether every leaf is a numeric array (or number) that a buffer can hold."""
    leaves = jax.tree.leaves(tree)
    return bool(leaves) and all(_numeric(leaf) for leaf in leaves)


def _numeric(leaf: Any) -> bool:
    dtype = getattr(leaf, "dtype", None)
    if dtype is None or not hasattr(leaf, "shape"):
        return False
    return jnp.issubdtype(dtype, jnp.number) or jnp.issubdtype(dtype, jnp.bool_)


def layout_of(tree: Any, *, alone_from: int | None = None) -> Layout:
    """The layout that packs ``tree``: one buffer per dtype, leaves back to back.

    Args:
      tree: a pytree of numeric arrays.
      alone_from: matrices and higher-rank leaves of at least this many
        elements get a buffer of their own (their view is then a free reshape:
        a matmul operand sliced from a shared buffer is copied out by XLA:CPU,
        while vectors feed elementwise operations that read the slice in
        place); default: none, every leaf shares its dtype's buffer.

    Buffers come in order of their first leaf. Raises ``ValueError`` for a tree
    with no leaves or with a leaf that is not a numeric array (a PRNG key, a
    string; ``None`` is no leaf).
    """
    if alone_from is not None:
        alone_from = _checks.nonnegative_int("alone_from", alone_from)
    leaves, treedef = jax.tree.flatten(tree)
    if not leaves:
        raise ValueError("cannot pack a pytree with no array leaves")
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if not _numeric(leaf):
            raise ValueError(
                f"cannot pack leaf {jax.tree_util.keystr(path) or '(the root)'}: "
                f"{getattr(leaf, 'dtype', type(leaf).__name__)} is not a numeric array dtype"
            )
    dtypes: list[np.dtype] = []
    sizes: list[int] = []
    shared: dict[np.dtype, int] = {}  # dtype -> its shared buffer
    buffer_of, offsets = [], []
    for leaf in leaves:
        dtype = np.dtype(jax.dtypes.canonicalize_dtype(leaf.dtype))  # float64 is float32 sans x64
        size = math.prod(leaf.shape)
        alone = alone_from is not None and len(leaf.shape) >= 2 and size >= alone_from
        if alone or dtype not in shared:
            dtypes.append(dtype)
            sizes.append(0)
            if not alone:
                shared[dtype] = len(dtypes) - 1
        b = len(dtypes) - 1 if alone else shared[dtype]
        buffer_of.append(b)
        offsets.append(sizes[b])
        sizes[b] += size
    return Layout(
        treedef=treedef,
        shapes=tuple(tuple(int(d) for d in leaf.shape) for leaf in leaves),
        buffer_of=tuple(buffer_of),
        offsets=tuple(offsets),
        dtypes=tuple(dtypes),
        sizes=tuple(sizes),
    )


def pack_leaves(layout: Layout, leaves: Sequence[Any]) -> tuple[jax.Array, ...]:
    """The buffers holding ``leaves`` (flatten order) as ``layout`` places them."""
    parts: list[list[jax.Array]] = [[] for _ in layout.dtypes]
    kinds: list[Any] = list(layout.dtypes)
    for i, leaf in enumerate(leaves):
        kinds[layout.buffer_of[i]] = jnp.result_type(leaf)
        # empty leaves stay out of the concatenation (XLA:CPU aborts on some empty slices)
        if math.prod(layout.shapes[i]):
            parts[layout.buffer_of[i]].append(jnp.ravel(leaf))
    # no cast: the buffers keep the leaves' dtype (cotangents, a state cast as a whole)
    return tuple(
        jnp.concatenate(p) if len(p) > 1 else p[0] if p else jnp.zeros((0,), k)
        for p, k in zip(parts, kinds, strict=True)
    )


def unpack_leaves(layout: Layout, buffers: Sequence[jax.Array]) -> list[jax.Array]:
    """The leaves (flatten order) stored in ``buffers``; leading batch axes are kept."""
    leaves = []
    for i, shape in enumerate(layout.shapes):
        buf = buffers[layout.buffer_of[i]]
        start, size = layout.offsets[i], math.prod(shape)
        if not size:  # not sliced: XLA:CPU aborts on an empty slice at a buffer's end
            leaves.append(jnp.zeros((*buf.shape[:-1], *shape), buf.dtype))
            continue
        flat = jax.lax.slice_in_dim(buf, start, start + size, axis=buf.ndim - 1)
        leaves.append(flat.reshape((*buf.shape[:-1], *shape)))
    return leaves


class Segment(NamedTuple):
    """A run of the tree's leaves stored together: a whole copy of the grouped layout
    (``raw`` holds the indices of its buffers) or one leaf stored as it is."""

    grouped: bool
    raw: tuple[int, ...]


class Storage(NamedTuple):
    """How a :class:`Packed` maps its stored leaves (``raw``) to the pytree (static).

    The tree's leaves, in flatten order, split into :class:`Segment`\\ s: each
    grouped one is a copy of ``group``'s leaves, held in ``len(group.dtypes)``
    buffers; each other one is a single leaf stored unchanged (an optimizer's
    step count). Parameters are one grouped segment; an optimizer state has one
    per moment (Adam: the count, then ``mu``, then ``nu``).
    """

    treedef: Any
    raw_treedef: Any
    segments: tuple[Segment, ...]
    group: Layout


def storage_of(tree: Any, *, alone_from: int | None = None) -> Storage:
    """The storage of ``tree`` as one group (see :func:`layout_of`): a tuple of buffers."""
    group = layout_of(tree, alone_from=alone_from)
    k = len(group.dtypes)
    raw_treedef = jax.tree.structure(tuple(range(k)))
    return Storage(group.treedef, raw_treedef, (Segment(True, tuple(range(k))),), group)


def _expand(storage: Storage, raw_leaves: Sequence[Any]) -> list[Any]:
    leaves: list[Any] = []
    for seg in storage.segments:
        if seg.grouped:
            leaves.extend(unpack_leaves(storage.group, [raw_leaves[r] for r in seg.raw]))
        else:
            leaves.append(raw_leaves[seg.raw[0]])
    return leaves


def _compress(storage: Storage, leaves: Sequence[Any]) -> list[Any]:
    raw: list[Any] = [None] * storage.raw_treedef.num_leaves
    i = 0
    for seg in storage.segments:
        if seg.grouped:
            n = storage.group.num_leaves
            for r, buf in zip(seg.raw, pack_leaves(storage.group, leaves[i : i + n]), strict=True):
                raw[r] = buf
            i += n
        else:
            raw[seg.raw[0]] = leaves[i]
            i += 1
    return raw


@jax.tree_util.register_pytree_node_class
class Packed:
    """A pytree stored as contiguous buffers; ``.tree`` reads it back, ``.raw`` is
    what is stored (the buffers, in the structure an optimizer sees).

    Build one with :func:`pack`. Its pytree children are the stored leaves,
    its static data the :class:`Storage`.
    """

    __slots__ = ("leaves", "storage")

    def __init__(self, leaves: Sequence[Any], storage: Storage) -> None:
        self.leaves: tuple[Any, ...] = tuple(leaves)
        self.storage: Storage = storage

    @property
    def buffers(self) -> tuple[jax.Array, ...]:
        """The stored leaves (for parameters, one buffer per dtype)."""
        return self.leaves

    @property
    def raw(self) -> Any:
        """The stored leaves in their own structure (for parameters, a tuple of buffers)."""
        return jax.tree.unflatten(self.storage.raw_treedef, self.leaves)

    @property
    def tree(self) -> Any:
        """The pytree, as slices of the buffers inside a trace and fresh arrays outside."""
        if any(isinstance(b, jax.core.Tracer) for b in self.leaves):
            return _tree(self.storage, self.leaves)
        if not all(isinstance(b, jax.Array | np.ndarray | np.generic) for b in self.leaves):
            # jax.ShapeDtypeStruct stand-ins (a state from jax.eval_shape): their shapes
            return jax.eval_shape(functools.partial(_tree, self.storage), self.leaves)
        if any(isinstance(b, jax.Array) and b.is_deleted() for b in self.leaves):
            raise RuntimeError(
                "Array has been deleted: these buffers were donated (to a training step?); "
                "read the state it returned"
            )
        return _tree_jitted(self.storage, self.leaves)

    def tree_flatten(self) -> tuple[tuple[Any, ...], Storage]:
        return self.leaves, self.storage

    @classmethod
    def tree_unflatten(cls, storage: Storage, leaves: Sequence[Any]) -> Packed:
        return cls(leaves, storage)

    def __repr__(self) -> str:
        group = self.storage.group
        kinds = ", ".join(f"{d.name}[{n}]" for d, n in zip(group.dtypes, group.sizes, strict=True))
        copies = sum(seg.grouped for seg in self.storage.segments)
        return f"Packed({copies} x {group.num_leaves} leaves in {kinds})"


def _tree(storage: Storage, leaves: Sequence[Any]) -> Any:
    return jax.tree.unflatten(storage.treedef, _expand(storage, leaves))


# one program for all the slices: a thousand eager slices would be a thousand dispatches
_tree_jitted = jax.jit(_tree, static_argnums=0)


_compress_jitted = jax.jit(_compress, static_argnums=0)


def pack(tree: Any, storage: Storage | None = None) -> Packed:
    """``tree`` as contiguous buffers (see the module doc).

    Args:
      tree: a pytree of numeric arrays.
      storage: how to store it (it must match ``tree``); by default one buffer
        per dtype (:func:`storage_of`).
    """
    if storage is not None and not isinstance(storage, Storage):
        raise ValueError(f"storage must be a Storage (layout.storage_of) or None, got {storage!r}")
    storage = storage_of(tree) if storage is None else storage
    leaves, treedef = jax.tree.flatten(tree)
    if treedef != storage.treedef:
        raise ValueError(
            f"the pytree does not match the stored layout: expected {storage.treedef}, "
            f"got {treedef}"
        )
    _check_shapes(storage, leaves)
    if any(isinstance(a, jax.core.Tracer) for a in leaves):
        return Packed(_compress(storage, leaves), storage)
    return Packed(_compress_jitted(storage, tuple(leaves)), storage)


def _check_shapes(storage: Storage, leaves: Sequence[Any]) -> None:
    """Grouped leaves must have the group's shapes, and one dtype per buffer."""
    i, group = 0, storage.group
    for seg in storage.segments:
        n = group.num_leaves if seg.grouped else 1
        if seg.grouped:
            chunk = leaves[i : i + n]
            got = tuple(tuple(np.shape(a)) for a in chunk)
            if got != group.shapes:
                raise ValueError(
                    f"the leaves' shapes {list(got)} do not match the stored layout's "
                    f"{list(group.shapes)}"
                )
            for b in range(len(group.dtypes)):
                kinds = {
                    np.dtype(jnp.result_type(a))
                    for a, j in zip(chunk, group.buffer_of, strict=True)
                    if j == b
                }
                if len(kinds) > 1:
                    raise ValueError(
                        "leaves stored in one buffer must share a dtype; got "
                        f"{sorted(map(str, kinds))}"
                    )
        i += n


def unpack(packed: Packed) -> Any:
    """The pytree a :class:`Packed` holds (``packed.tree``)."""
    return packed.tree


def to_pytree(tree: Any) -> Any:
    """``tree`` with every :class:`Packed` inside replaced by the pytree it holds."""
    if not any(isinstance(x, Packed) for x in jax.tree.leaves(tree, is_leaf=_is_packed)):
        return tree
    return jax.tree.map(lambda x: x.tree if isinstance(x, Packed) else x, tree, is_leaf=_is_packed)


def pack_like(tree: Any, like: Any) -> Any:
    """``tree`` (with pytrees where ``like`` has :class:`Packed` values) stored as
    ``like`` is: the inverse of :func:`to_pytree`."""
    if not any(isinstance(x, Packed) for x in jax.tree.leaves(like, is_leaf=_is_packed)):
        return tree
    return jax.tree.map(
        lambda old, new: pack(new, old.storage) if isinstance(old, Packed) else new,
        like,
        tree,
        is_leaf=_is_packed,
    )


def _is_packed(x: Any) -> bool:
    return isinstance(x, Packed)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def views(storage: Storage, raw: Any) -> Any:
    """The pytree as slices of the stored buffers, for differentiating through.

    Same values as :attr:`Packed.tree`; its derivative packs the leaves'
    cotangents back into buffers with one concatenation per dtype, where
    differentiating the slices directly would add one zero-padded buffer per leaf.
    """
    return _tree(storage, jax.tree.leaves(raw))


def _views_fwd(storage: Storage, raw: Any) -> tuple[Any, None]:
    return views(storage, raw), None


def _views_bwd(storage: Storage, _: None, cotangent: Any) -> tuple[Any]:
    raw = _compress(storage, jax.tree.leaves(cotangent))
    return (jax.tree.unflatten(storage.raw_treedef, raw),)


views.defvjp(_views_fwd, _views_bwd)
