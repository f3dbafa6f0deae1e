"""The training state: one ordinary pytree, and the checks that bind it to a model and optimizer.

:class:`TrainState` is a ``NamedTuple`` of the step, the parameters, the
model state, the optimizer state and the key, with exactly the shapes and
key paths that ``model.init`` and ``optimizer.init`` give, as optax and
flax users expect: ``jax.tree.map`` between two states,
``optax.tree_utils.tree_get(state, "count")``, writing
``state.opt_state.hyperparams["learning_rate"]``, sharding specs built from
``state.params`` all work on it. A state does not remember what made it;
every entry point that takes one checks it against the model and optimizer
it is given (:func:`check_state`), so a state from another model or
optimizer is a ``ValueError`` naming both, and a state whose structure fits
another optimizer (``adam``'s for ``adamw``) trains with that optimizer's
own numbers.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple, cast, overload

import jax
import jax.numpy as jnp
import numpy as np
import optax

from purelearn import _checks
from purelearn._cache import memoize
from purelearn._tree import unaliased
from purelearn.models import Model

__all__ = ["TrainState", "check_model", "check_optimizer", "check_state"]


class TrainState(NamedTuple):
    """Everything that changes during training, as one pytree.

    Attributes:
      step: number of steps taken (int32 scalar).
      params: the model's trainable parameters.
      model_state: the model's non-trainable state (batch-norm statistics).
      opt_state: the optimizer's state, as ``optimizer.init(params)`` made it.
      key: the run's PRNG key; per-step keys are derived from it and ``step``.

    Example:
      >>> import jax, optax, purelearn as pl
      >>> state = pl.TrainState.create(pl.mlp([4, 3]), pl.adam(), 0)
      >>> int(optax.tree_utils.tree_get(state, "count"))
      0
    """

    step: jax.Array
    params: Any
    model_state: Any
    opt_state: Any
    key: jax.Array

    @overload
    @classmethod
    def create(
        cls, model: Model, optimizer: optax.GradientTransformation, key: jax.Array | int
    ) -> TrainState: ...

    # 0.1's layout= (deprecated) may give a PackedState instead, see with_layout
    @overload
    @classmethod
    def create(
        cls,
        model: Model,
        optimizer: optax.GradientTransformation,
        key: jax.Array | int,
        **deprecated: Any,
    ) -> Any: ...

    @classmethod
    def create(
        cls,
        model: Model,
        optimizer: optax.GradientTransformation,
        key: jax.Array | int,
        **deprecated: Any,
    ) -> Any:
        """Initialize the model and the optimizer from one key (or an int seed).

        ``init_key, run_key = split(key)``: the model is initialized from
        ``init_key``; ``run_key`` becomes ``state.key`` (dropout and shuffling).

        Example:
          >>> import jax, purelearn as pl
          >>> state = pl.TrainState.create(pl.mlp([4, 3]), pl.sgd(), jax.random.key(0))
          >>> int(state.step), state.params[0]["w"].shape
          (0, (4, 3))
        """
        how = _deprecated_layout(deprecated)
        model, optimizer = check_model(model), check_optimizer(optimizer)
        init_key, run_key = jax.random.split(_checks.key_or_seed("key", key))
        params, model_state = model.init(init_key)
        state = cls(
            step=jnp.zeros([], jnp.int32),
            params=params,
            model_state=model_state,
            opt_state=optimizer.init(params),
            key=run_key,
        )
        # optimizers that keep the parameters (prodigy, dog, mechanize) hold the same
        # arrays twice; one copy each, so that a step can donate the state
        state = unaliased(state)
        return state if how is None else state.with_layout(optimizer, how)

    def with_layout(self, optimizer: optax.GradientTransformation, layout: str = "auto") -> Any:
        """Deprecated: :meth:`PackedState.pack` (``"pytree"``: the state itself)."""
        warnings.warn(
            "TrainState.with_layout is deprecated: a TrainState is always the pytree; "
            "pl.PackedState.pack(state, optimizer) stores one contiguously across step calls",
            DeprecationWarning,
            stacklevel=2,
        )
        _checks.choice("layout", layout, ("auto", "contiguous", "pytree"))
        if layout == "pytree":
            return self
        from purelearn.training.packing import PackedState  # packing builds on this module

        return PackedState.pack(self, optimizer, layout=layout)


def _deprecated_layout(deprecated: dict[str, Any]) -> str | None:
    """``TrainState.create(..., layout=)`` of 0.1's contiguous storage, with a warning."""
    unknown = sorted(set(deprecated) - {"layout"})
    if unknown:
        raise TypeError(f"TrainState.create() got unexpected keyword arguments {unknown}")
    if "layout" not in deprecated:
        return None
    how = _checks.choice("layout", deprecated["layout"], ("auto", "contiguous", "pytree"))
    warnings.warn(
        "TrainState.create(layout=...) is deprecated: a TrainState is always the pytree "
        "(fit and train_run take layout= for how their compiled programs store it); for "
        "storage that stays packed across step calls use pl.PackedState.pack(state, optimizer)",
        DeprecationWarning,
        stacklevel=3,
    )
    return None if how in ("auto", "pytree") else how


# -- binding a state to its model and optimizer ------------------------------------


def check_model(model: Any) -> Model:
    """``model`` if it is a purelearn :class:`~purelearn.models.Model`, else a
    ``TypeError`` (also a ``ValueError``, as before) naming ``model`` and what it got."""
    if not (isinstance(model, tuple) and callable(getattr(model, "init", None))) or not callable(
        getattr(model, "apply", None)
    ):
        raise _checks.ArgumentTypeError(
            "model must be a purelearn Model: pass pl.mlp(...) or pl.from_flax(module, x), "
            f"got {type(model).__name__} {_name(model)}"
        )
    return cast(Model, model)  # (a tuple with callable init and apply: checked above)


def check_optimizer(optimizer: Any) -> optax.GradientTransformation:
    """``optimizer`` if it has optax's ``init`` and ``update``, else a ``TypeError``
    (also a ``ValueError``, as before) naming ``optimizer`` and what it got."""
    if not (
        callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))
    ):
        hint = f"pl.{optimizer}(...)" if isinstance(optimizer, str) else "pl.adam(1e-3)"
        raise _checks.ArgumentTypeError(
            "optimizer must be an optax GradientTransformation: pass pl.adam(...) or any "
            f"optax transformation (here perhaps {hint}), got {type(optimizer).__name__} "
            f"{_name(optimizer)}"
        )
    checked: optax.GradientTransformation = optimizer
    return checked


@memoize
def _expected(model: Model, optimizer: optax.GradientTransformation) -> tuple[Any, Any, Any]:
    """The abstract params, model state and optimizer state this pair makes (traced once)."""
    params, model_state = jax.eval_shape(model.init, jax.random.key(0))
    return params, model_state, jax.eval_shape(optimizer.init, params)


def _same_shapes(want: Any, got: Any) -> bool:
    if jax.tree.structure(want) != jax.tree.structure(got):  # type: ignore[operator]  # no PyTreeDef stub
        return False
    pairs = zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True)
    return all(np.shape(a) == np.shape(b) for a, b in pairs)


def check_state(state: Any, model: Model, optimizer: optax.GradientTransformation) -> None:
    """``ValueError`` unless ``state`` is a :class:`TrainState` of ``model`` and ``optimizer``:
    the same structures and shapes as ``model.init`` and ``optimizer.init`` give.

    The message names what the model or optimizer expects and what the state
    holds. A state whose optimizer state has the structure of this optimizer's
    (made by another optimizer of the same family) passes: it then trains with
    this optimizer's rule, exactly as a fresh one would.
    """
    if not isinstance(state, TrainState):
        raise ValueError(
            "state must be a pl.TrainState (from pl.TrainState.create, fit or a checkpoint; "
            f"pl.PackedState.unpack() gives one), got {type(state).__name__}"
        )
    want_params, want_model_state, want_opt = _expected(model, optimizer)
    for name, want, got, kind in (
        ("params", want_params, state.params, "model"),
        ("model_state", want_model_state, state.model_state, "model"),
        ("opt_state", want_opt, state.opt_state, "optimizer"),
    ):
        if not _same_shapes(want, got):
            raise ValueError(
                f"state.{name} does not match the {kind} given (a state from a different "
                f"{kind}?): the {kind} given makes {_describe(want)}; the state holds "
                f"{_describe(got)}. Create the state with this {kind}, or train with the "
                f"{kind} that made it"
            )


def _name(obj: Any) -> str:
    """A short name for a model or optimizer in messages."""
    text = repr(obj)
    return text if len(text) <= 120 else text[:117] + "..."


def _describe(tree: Any) -> str:
    """A pytree's structure and leaf shapes, shortened for a message."""
    shapes = [tuple(np.shape(a)) for a in jax.tree.leaves(tree)]
    text = f"{jax.tree.structure(tree)} with leaf shapes {shapes}"
    return text if len(text) <= 400 else text[:397] + "..."
