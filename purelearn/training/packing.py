"""Contiguous storage of a training state: decided per compiled program, or asked for by name.

A compiled epoch, run or search packs its state when it starts (parameters
and the optimizer's state as a few buffers, :mod:`purelearn.layout`) and
unpacks it when it ends, so that the optimizer updates a handful of arrays
instead of one per parameter; what goes in and comes out is the ordinary
:class:`~purelearn.training.state.TrainState`. Whether (and how) to pack is
decided for the optimizer that program runs (:func:`storage_for`), from its
traced update, never from what the state was made with.

A caller who wants the buffers to persist across step calls (a
``make_train_step`` loop with a thousand leaves, where each call would
otherwise pass three thousand arrays through ``jax.jit``) asks for it:
``packed = PackedState.pack(state, optimizer)``, a value of its own type,
stepped by the same ``step`` and read back with ``packed.unpack()``.
"""

from __future__ import annotations

from typing import Any

import jax
import optax

from purelearn import _checks, _leafwise
from purelearn.layout import Packed, Storage, pack, packable, storage_of
from purelearn.training.state import TrainState, _name

__all__ = ["PackedState", "storage_for", "pack_state", "unpack_state", "LAYOUTS"]

#: The values of ``layout=`` (:func:`purelearn.fit`, :meth:`purelearn.TrainState.with_layout`).
LAYOUTS = ("auto", "contiguous", "pytree")

#: Under layout="auto", matrices (and higher-rank arrays) of at least this many elements
#: keep a buffer of their own; vectors always share. A kernel in a shared buffer is sliced
#: out (XLA:CPU copies it) for its matmul and its gradient concatenated back, and its update
#: waits for the whole gradient instead of running beside the backward pass: in a compiled
#: epoch of benchmarks/bench_layout.py's deep net that costs more than it saves from 32x32
#: kernels up, and saves 10-14% at 8x8.
ALONE_FROM = 1 << 10


def storage_for(
    optimizer: optax.GradientTransformation, params: Any, how: str = "auto"
) -> tuple[Storage, Storage] | None:
    """How a program running ``optimizer`` stores ``params`` and the optimizer's state,
    or None for the pytree itself.

    ``"pytree"``: None. ``"auto"``: vectors and small matrices share one
    buffer per dtype, matrices of ``ALONE_FROM`` elements or more keep
    one each; None when nothing would share or the optimizer's rule is not
    one elementwise function of each leaf (``optax.masked``, a mask by rank,
    ``clip_by_global_norm``: see ``purelearn._leafwise``).
    ``"contiguous"``: every leaf shares; a ``ValueError`` naming the optimizer
    when it is not leafwise. ``params`` may be abstract (shapes and dtypes).
    """
    _checks.choice("layout", how, LAYOUTS)
    if how == "pytree":
        return None
    if how == "contiguous":
        return _required(optimizer, params, alone_from=None)
    if not packable(params):
        return None
    params_storage = storage_of(params, alone_from=ALONE_FROM)
    group = params_storage.group
    if len(group.dtypes) == group.num_leaves:
        return None  # nothing shares a buffer: packing would only copy
    opt_storage = _leafwise.optimizer_storage(optimizer, group)
    return None if opt_storage is None else (params_storage, opt_storage)


def _required(
    optimizer: optax.GradientTransformation, params: Any, *, alone_from: int | None
) -> tuple[Storage, Storage]:
    """The storages of packing asked for by name, or a ``ValueError`` saying why not."""
    if not packable(params):
        raise ValueError(
            "layout='contiguous' needs parameters that are all numeric arrays; use layout='pytree'"
        )
    params_storage = storage_of(params, alone_from=alone_from)
    opt_storage = _leafwise.optimizer_storage(optimizer, params_storage.group)
    if opt_storage is None:
        raise ValueError(
            f"layout='contiguous' needs an optimizer that applies one elementwise rule "
            f"to every leaf; {_name(optimizer)} does not (a mask, a global norm or a "
            f"per-leaf rule?): use layout='auto' or 'pytree'"
        )
    return params_storage, opt_storage


@jax.tree_util.register_pytree_with_keys_class
class PackedState:
    """A :class:`~purelearn.training.state.TrainState` stored as contiguous buffers for one
    optimizer: what a ``make_train_step`` loop keeps across calls when it asks for it.

    ``params`` and ``opt_state`` are :class:`~purelearn.layout.Packed` (a few
    1-D buffers, read back with ``.tree``); ``step``, ``model_state`` and
    ``key`` are as in the ``TrainState``. Its pytree children are what is
    stored, so it crosses ``jax.jit`` as a handful of arrays; the optimizer it
    was packed for is static data. A step with another optimizer runs when
    that optimizer's state is stored the same way (same numbers as its pytree
    path), else it is a ``ValueError`` naming both. Build one with
    :meth:`pack`; :meth:`unpack` gives the ``TrainState`` back (checkpoints,
    ``fit(state=...)``).

    Example:
      >>> import jax, jax.numpy as jnp, purelearn as pl
      >>> model, opt = pl.mlp([4, 3, 2]), pl.adam(0.01)
      >>> packed = pl.PackedState.pack(pl.TrainState.create(model, opt, 0), opt)
      >>> step = pl.make_train_step(model, opt)
      >>> packed, _ = step(packed, jnp.ones((8, 4)), jnp.zeros(8, jnp.int32))
      >>> state = packed.unpack()
      >>> type(state).__name__, int(state.step), state.params[0]["w"].shape
      ('TrainState', 1, (4, 3))
    """

    __slots__ = ("key", "model_state", "opt_state", "optimizer", "params", "step")
    _fields = ("step", "params", "model_state", "opt_state", "key")

    def __init__(
        self,
        step: Any,
        params: Packed,
        model_state: Any,
        opt_state: Packed,
        key: Any,
        optimizer: optax.GradientTransformation,
    ) -> None:
        self.step: Any = step
        self.params: Packed = params
        self.model_state: Any = model_state
        self.opt_state: Packed = opt_state
        self.key: Any = key
        self.optimizer: optax.GradientTransformation = optimizer

    @classmethod
    def pack(
        cls, state: TrainState, optimizer: optax.GradientTransformation, *, layout: str = "auto"
    ) -> PackedState:
        """``state`` stored contiguously for ``optimizer``.

        ``layout="auto"`` keeps matrices of 1,024 elements or more in buffers
        of their own (a matmul operand sliced from a shared buffer is copied
        first); ``"contiguous"`` shares everything. ``ValueError`` for an
        optimizer whose rule is not one elementwise function of each leaf.
        """
        if not isinstance(state, TrainState):
            raise ValueError(f"state must be a pl.TrainState, got {type(state).__name__}")
        _checks.choice("layout", layout, ("auto", "contiguous"))
        alone_from = ALONE_FROM if layout == "auto" else None
        storages = _required(optimizer, state.params, alone_from=alone_from)
        return pack_with(state, optimizer, storages)

    def unpack(self) -> TrainState:
        """The :class:`~purelearn.training.state.TrainState` this holds (fresh arrays)."""
        return unpack_state(self)

    def _replace(self, **changes: Any) -> PackedState:
        values = {name: getattr(self, name) for name in (*self._fields, "optimizer")}
        for name in changes:
            if name not in values:
                raise ValueError(f"PackedState has no field {name!r}; fields: {self._fields}")
        values.update(changes)
        return PackedState(**values)

    def tree_flatten_with_keys(self) -> tuple[list[tuple[Any, Any]], Any]:
        children = [(jax.tree_util.GetAttrKey(n), getattr(self, n)) for n in self._fields]
        return children, self.optimizer

    def tree_flatten(self) -> tuple[tuple[Any, ...], Any]:
        return tuple(getattr(self, n) for n in self._fields), self.optimizer

    @classmethod
    def tree_unflatten(cls, optimizer: Any, children: Any) -> PackedState:
        step, params, model_state, opt_state, key = children
        return cls(step, params, model_state, opt_state, key, optimizer=optimizer)

    def __repr__(self) -> str:
        return (
            f"PackedState(step={self.step!r}, params={self.params!r}, "
            f"opt_state={self.opt_state!r}, optimizer={_name(self.optimizer)})"
        )


def pack_with(
    state: TrainState, optimizer: optax.GradientTransformation, storages: tuple[Storage, Storage]
) -> PackedState:
    """``state`` packed as ``storages`` (from :func:`storage_for`) say."""
    params_storage, opt_storage = storages
    return PackedState(
        state.step,
        pack(state.params, params_storage),
        state.model_state,
        pack(state.opt_state, opt_storage),
        state.key,
        optimizer,
    )


def pack_state(
    state: TrainState, optimizer: optax.GradientTransformation, how: str
) -> TrainState | PackedState:
    """Inside a program: ``state`` packed for ``optimizer`` as ``how`` decides
    (:func:`storage_for`), or as it is."""
    storages = storage_for(optimizer, state.params, how)
    return state if storages is None else pack_with(state, optimizer, storages)


def unpack_state(state: TrainState | PackedState) -> TrainState:
    """The pytree form of a state (a ``TrainState`` as it is)."""
    if not isinstance(state, PackedState):
        return state
    return TrainState(
        state.step, state.params.tree, state.model_state, state.opt_state.tree, state.key
    )


def check_packed_for(state: PackedState, optimizer: optax.GradientTransformation) -> None:
    """``ValueError`` unless ``optimizer`` can step ``state``'s buffers with its own numbers:
    it is the optimizer the state was packed for, or its state is stored the same way."""
    if state.optimizer is optimizer or state.optimizer == optimizer:
        return
    group = state.params.storage.group
    if _leafwise.optimizer_storage(optimizer, group) != state.opt_state.storage:
        raise ValueError(
            f"this PackedState was packed for the optimizer {_name(state.optimizer)}; the "
            f"optimizer {_name(optimizer)} cannot run on its buffers (another state "
            f"structure, or not one elementwise rule per leaf): step state.unpack() instead, "
            f"or pack it for this optimizer"
        )
