"""Training: one engine behind ``make_train_step``, ``fit``, ``train_run`` and the searches.

The loss is the textbook's: softmax cross-entropy plus the L2 penalty
``0.5 * wd * sum(W**2)`` over the weight matrices. Randomness is explicit:
:class:`TrainState` carries a key, and step ``t`` uses
``fold_in(dropout_root, t)`` where ``dropout_root, shuffle_root =
split(state.key)``, so no key is ever used twice and a resumed run repeats
an uninterrupted one bit for bit.

One engine: an *epoch* is a ``lax.scan`` of the step over the epoch's
batches followed by an on-device evaluation (the metrics of
:data:`~purelearn.early_stopping.METRICS`), and early stopping is a mask on
it. :func:`train_run` scans epochs inside one program; :func:`fit` calls the
very same compiled epoch from a host loop (progress bar, early-stopping
break, callbacks); the searches ``vmap`` :func:`train_run`'s body. Compiled
programs are cached on the model, the optimizer and the static settings
(batch size, sampling, early stopping), so calling any of them again with
the same ones compiles nothing.

Batches come one of two ways (``sampling``): ``"epoch"`` (default) shuffles
the training set every epoch and takes ``len(x) // batch_size`` disjoint
batches (the remainder dropped); ``"random"`` draws every batch with
replacement, as the textbook's iteration-based experiments do
(``np.random.choice(train_size, batch_size)``), ``steps_per_epoch`` of them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from purelearn import _checks, _leafwise, distributed, layout
from purelearn._cache import memoize
from purelearn.checkpoints import load_checkpoint, save_checkpoint
from purelearn.early_stopping import METRICS, EarlyStopping, EarlyStoppingState
from purelearn.models import Model
from purelearn.regularization import l2_penalty

__all__ = [
    "TrainState",
    "make_train_step",
    "fit",
    "train_run",
    "evaluate",
    "check_data",
    "EarlyStopping",
    "EarlyStoppingState",
    "METRICS",
    "save_checkpoint",
    "load_checkpoint",
]

Batch = tuple[jax.Array, jax.Array]
Metrics = dict[str, jax.Array]
Step = Callable[[Any, jax.Array, jax.Array], tuple[Any, Metrics]]


LAYOUTS = ("auto", "contiguous", "pytree")


@jax.tree_util.register_pytree_with_keys_class
class TrainState:
    """Everything that changes during training, as one pytree.

    Attributes:
      step: number of steps taken (int32 scalar).
      params: the model's trainable parameters (always read as the pytree).
      model_state: the model's non-trainable state (batch-norm statistics).
      opt_state: the optimizer's state (always read as the pytree the
        optimizer's ``init`` makes for ``params``).
      key: the run's PRNG key; per-step keys are derived from it and ``step``.

    Parameters and optimizer state may be *stored* contiguously (``layout``
    of :meth:`create`; see :mod:`purelearn.layout`): one buffer per dtype,
    so that a step passes a few arrays through ``jax.jit`` instead of three
    per parameter and the optimizer updates everything in one pass.
    ``state.params`` and ``state.opt_state`` still read as the pytrees, and
    ``state._replace(params=tree)`` writes one (stored the same way). As a
    pytree (``jax.tree.map``, donation, checkpoints' paths) its children are
    what is stored; :func:`~purelearn.checkpoints.save_checkpoint` writes
    the pytree form, so a checkpoint loads into either layout.

    It behaves as the named tuple it used to be: ``_replace``, ``_fields``,
    ``_asdict``, iteration and indexing over the five fields.
    """

    __slots__ = ("_opt_state", "_params", "key", "model_state", "step")
    _fields = ("step", "params", "model_state", "opt_state", "key")

    def __init__(self, step: Any, params: Any, model_state: Any, opt_state: Any, key: Any):
        self.step = step
        self._params = params
        self.model_state = model_state
        self._opt_state = opt_state
        self.key = key

    @property
    def params(self) -> Any:
        return layout.to_pytree(self._params)

    @property
    def opt_state(self) -> Any:
        return layout.to_pytree(self._opt_state)

    @property
    def layout(self) -> str:
        """``"contiguous"`` if the parameters are stored in buffers, else ``"pytree"``."""
        return "contiguous" if isinstance(self._params, layout.Packed) else "pytree"

    def _stored(self) -> tuple[Any, ...]:
        return (self.step, self._params, self.model_state, self._opt_state, self.key)

    def _replace(self, **changes: Any) -> TrainState:
        """A copy with some fields replaced; a pytree given for ``params`` or
        ``opt_state`` is stored as the one it replaces is."""
        stored = dict(zip(self._fields, self._stored(), strict=True))
        for name, value in changes.items():
            if name not in stored:
                raise ValueError(f"TrainState has no field {name!r}; fields: {self._fields}")
            old = stored[name]
            if isinstance(old, layout.Packed) and value is not None:
                if not isinstance(value, layout.Packed):
                    value = layout.pack(value, old.storage)
            stored[name] = value
        return TrainState(**stored)

    def _asdict(self) -> dict[str, Any]:
        return dict(zip(self._fields, self, strict=True))

    def __iter__(self):
        return iter((self.step, self.params, self.model_state, self.opt_state, self.key))

    def __len__(self) -> int:
        return len(self._fields)

    def __getitem__(self, i: int) -> Any:
        return tuple(self)[i]

    def __repr__(self) -> str:
        return (
            f"TrainState(step={self.step!r}, params={self._params!r}, "
            f"model_state={self.model_state!r}, opt_state={self._opt_state!r}, key={self.key!r})"
        )

    def tree_flatten_with_keys(self) -> tuple[list[tuple[Any, Any]], None]:
        keys = [jax.tree_util.GetAttrKey(name) for name in self._fields]
        return list(zip(keys, self._stored(), strict=True)), None

    def tree_flatten(self) -> tuple[tuple[Any, ...], None]:
        return self._stored(), None

    @classmethod
    def tree_unflatten(cls, _: None, children: Any) -> TrainState:
        return cls(*children)

    def with_layout(
        self, optimizer: optax.GradientTransformation, layout: str = "auto"
    ) -> TrainState:
        """This state stored as ``layout`` says (see :meth:`create`), for ``optimizer``.

        A state built by hand or loaded as a pytree becomes contiguous with
        ``state.with_layout(opt, "contiguous")``; ``"pytree"`` undoes it.
        Raises ``ValueError`` for ``"contiguous"`` with an optimizer whose rule
        is not the same elementwise function on every leaf, or non-numeric
        parameters.

        Example:
          >>> import purelearn as pl
          >>> opt = pl.sgd(0.1)
          >>> state = pl.TrainState.create(pl.mlp([4, 3, 2]), opt, 0, layout="pytree")
          >>> state.with_layout(opt, "contiguous").layout
          'contiguous'
        """
        return _arrange(self, optimizer, layout)

    @classmethod
    def create(
        cls,
        model: Model,
        optimizer: optax.GradientTransformation,
        key: jax.Array | int,
        *,
        layout: str = "auto",
    ) -> TrainState:
        """Initialize the model and the optimizer from one key (or an int seed).

        Args:
          model, optimizer: the model and the optimizer.
          key: a PRNG key or an int seed.
          layout: how parameters and optimizer state are stored.
            ``"contiguous"``: one buffer per dtype (needs an optimizer whose
            rule is the same elementwise function on every leaf, which
            :func:`~purelearn._leafwise.optimizer_storage` reads from its
            traced program: all of purelearn's, optax's ``sgd``/``adam``/...
            with schedules or ``inject_hyperparams``; not ``masked``,
            ``multi_transform`` or ``clip_by_global_norm``). ``"pytree"``:
            as the model and the optimizer make them. ``"auto"`` (default):
            where the optimizer allows it, vectors and matrices under 1,024
            elements share a buffer per dtype and bigger matrices keep one
            each (see ``_ALONE_FROM``); pytree when nothing would share. The
            numbers are the same either way.

        Example:
          >>> import jax, purelearn as pl
          >>> state = pl.TrainState.create(pl.mlp([4, 3]), pl.sgd(), jax.random.key(0))
          >>> int(state.step), state.params[0]["w"].shape
          (0, (4, 3))
        """
        _checks.choice("layout", layout, LAYOUTS)
        init_key, run_key = jax.random.split(_checks.key_or_seed("key", key))
        params, model_state = model.init(init_key)
        state = cls(
            step=jnp.zeros([], jnp.int32),
            params=params,
            model_state=model_state,
            opt_state=optimizer.init(params),
            key=run_key,
        )
        return state.with_layout(optimizer, layout)


def _state_dict(state: TrainState) -> dict[str, Any]:
    """flax.serialization's form: the named tuple's, fields by name, pytrees not buffers
    (so ``flax.serialization.to_bytes(state)`` reads as it did before the storage)."""
    return {name: serialization.to_state_dict(value) for name, value in state._asdict().items()}


def _from_state_dict(like: TrainState, saved: dict[str, Any]) -> TrainState:
    values = {
        name: serialization.from_state_dict(value, saved[name], name=name)
        for name, value in like._asdict().items()
    }
    return layout.pack_like(TrainState(**values), like)


serialization.register_serialization_state(TrainState, _state_dict, _from_state_dict)


def _arrange(state: TrainState, optimizer: optax.GradientTransformation, how: str) -> TrainState:
    _checks.choice("layout", how, LAYOUTS)
    params, opt_state = state.params, state.opt_state
    if how == "pytree":
        return TrainState(state.step, params, state.model_state, opt_state, state.key)
    storage = params_storage = None
    if layout.packable(params):
        # "auto" leaves big arrays alone (see _ALONE_FROM) and keeps the pytree when
        # nothing would share a buffer; "contiguous" packs everything
        alone_from = _ALONE_FROM if how == "auto" else None
        params_storage = layout.storage_of(params, alone_from=alone_from)
        group = params_storage.group
        if how == "contiguous" or len(group.dtypes) < group.num_leaves:
            storage = _leafwise.optimizer_storage(optimizer, group)
    if storage is None:
        if how == "contiguous":
            raise ValueError(
                f"layout='contiguous' needs numeric parameters and an optimizer that applies "
                f"one elementwise rule to every leaf; {optimizer!r} does not (a mask, a "
                f"global norm or a per-leaf rule?): use layout='pytree'"
            )
        return TrainState(state.step, params, state.model_state, opt_state, state.key)
    return TrainState(
        state.step,
        layout.pack(params, params_storage),
        state.model_state,
        layout.pack(opt_state, storage),
        state.key,
    )


#: Under layout="auto", matrices (and higher-rank arrays) of at least this many elements
#: keep a buffer of their own; vectors always share. A kernel in a shared buffer is sliced
#: out (XLA:CPU copies it) for its matmul and its gradient concatenated back, and its update
#: waits for the whole gradient instead of running beside the backward pass: in a compiled
#: epoch of benchmarks/bench_layout.py's deep net that costs more than it saves from 32x32
#: kernels up, and saves 10-14% at 8x8.
_ALONE_FROM = 1 << 10


# -- validation -------------------------------------------------------------------


def _check_model(model: Any) -> Model:
    if not (isinstance(model, tuple) and callable(getattr(model, "init", None))) or not callable(
        getattr(model, "apply", None)
    ):
        raise ValueError(
            "model must be a purelearn Model (pl.mlp(...) or pl.from_flax(...)), "
            f"got {type(model).__name__}"
        )
    return model


def _check_optimizer(optimizer: Any) -> optax.GradientTransformation:
    if not (
        callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))
    ):
        raise ValueError(
            "optimizer must be an optax GradientTransformation (e.g. pl.adam(1e-3)), "
            f"got {optimizer!r}"
        )
    return optimizer


def _check_weight_decay(weight_decay: Any) -> Any:
    return _checks.hyperparameter("weight_decay", weight_decay, low=0.0)


@memoize
def _output_shape(model: Model, example_shape: tuple[int, ...], dtype: Any) -> tuple[int, ...]:
    """The model's output shape for one example, traced abstractly (no compute), once."""
    params, model_state = jax.eval_shape(model.init, jax.random.key(0))
    x = jax.ShapeDtypeStruct((1, *example_shape), dtype)
    out, _ = jax.eval_shape(functools.partial(model.apply, train=False), params, model_state, x)
    return out.shape


def _check_labels(name: str, model: Model, x: jax.Array, y: jax.Array) -> None:
    """Labels the loss can use: integers in ``[0, classes)`` or one-hot rows of ``classes``.

    Out-of-range labels make the cross-entropy NaN without an error, so they
    are refused here, on the host, before anything trains.
    """
    try:
        logits = _output_shape(model, tuple(x.shape[1:]), x.dtype)
    except Exception as err:  # the model cannot take x: say so instead of a deep trace
        raise ValueError(
            f"{name}: the model cannot be applied to inputs of shape {tuple(x.shape[1:])} "
            f"per example: {err}"
        ) from err
    classes = logits[-1]
    if y.ndim == len(logits):
        if y.shape[1:] != logits[1:]:
            raise ValueError(
                f"{name}: one-hot labels of shape {tuple(y.shape[1:])} per example do not "
                f"match the model's {classes} outputs"
            )
        return
    if not jnp.issubdtype(y.dtype, jnp.integer):
        raise ValueError(f"{name}: labels must be integers (or one-hot rows), got {y.dtype}")
    if y.size and not isinstance(y, jax.core.Tracer):
        if _spans_processes(y):  # no host copy: reduce on the devices, read the replicas
            lo, hi = (int(v) for v in distributed.to_host(_min_max(y)))
        else:
            labels = np.asarray(y)  # on the host: jnp would trace under a caller's jit
            lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= classes:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"{name}: label {bad} is outside [0, {classes}) for a model with {classes} outputs"
            )


@jax.jit
def _min_max(y: jax.Array) -> tuple[jax.Array, jax.Array]:
    return y.min(), y.max()


def _spans_processes(x: Any) -> bool:
    if not isinstance(x, jax.Array) or isinstance(x, jax.core.Tracer):
        return False
    return not x.is_fully_addressable


def _data_sharding(x: Any) -> NamedSharding | None:
    """The sharding of a training set split over several devices along its examples:
    each batch is split the same way (data parallel). None for anything else."""
    sharding = getattr(x, "sharding", None) if isinstance(x, jax.Array) else None
    if isinstance(x, jax.core.Tracer) or not isinstance(sharding, NamedSharding):
        return None
    if len(sharding.device_set) < 2 or not sharding.spec or sharding.spec[0] is None:
        return None
    return NamedSharding(sharding.mesh, PartitionSpec(sharding.spec[0]))


def _explicit(sharding: NamedSharding) -> bool:
    return any(t == AxisType.Explicit for t in sharding.mesh.axis_types)


def _place(x: Any, sharding: NamedSharding | None) -> Any:
    """Inside jit: ``x`` laid out as ``sharding`` (explicit axes are resharded, auto
    ones constrained); as it is without one."""
    if sharding is None:
        return x
    if _explicit(sharding):
        return jax.tree.map(lambda a: jax.sharding.reshard(a, sharding), x)
    return jax.lax.with_sharding_constraint(x, sharding)


def _replicated(sharding: NamedSharding | None) -> NamedSharding | None:
    return None if sharding is None else NamedSharding(sharding.mesh, PartitionSpec())


def _gather(x: jax.Array, idx: jax.Array, sharding: NamedSharding | None) -> jax.Array:
    """The rows ``idx`` of the global set, split over the data axis like the set."""
    if sharding is None:
        return x[idx]
    if _explicit(sharding):
        spec = PartitionSpec(sharding.spec[0], *([None] * (x.ndim - 1)))
        return x.at[idx].get(out_sharding=NamedSharding(sharding.mesh, spec))
    return jax.lax.with_sharding_constraint(x[idx], sharding)


def check_data(
    model: Model,
    train_data: Any,
    eval_data: Any = None,
    *,
    batch_size: int,
    sampling: str = "epoch",
    eval_name: str = "eval_data",
) -> tuple[Batch, Batch | None]:
    """Both data sets as arrays, checked against each other and against the model.

    Raises ``ValueError`` for pairs of unequal lengths, empty sets, a batch
    larger than the training set, inputs the model cannot take, and labels
    that are not integers in ``[0, classes)`` (or one-hot rows of
    ``classes``): out-of-range labels would train to a NaN loss silently.
    """
    x, y = _checks.pair("train_data", train_data)
    if sampling == "epoch" and batch_size > len(x):
        raise ValueError(f"batch_size {batch_size} exceeds the {len(x)} training examples")
    _check_labels("train_data", model, x, y)
    if eval_data is None:
        return (x, y), None
    ex, ey = _checks.pair(eval_name, eval_data)
    if ex.shape[1:] != x.shape[1:] or ey.shape[1:] != y.shape[1:]:
        raise ValueError(
            f"{eval_name}'s shapes {tuple(ex.shape[1:])} / {tuple(ey.shape[1:])} per example "
            f"differ from train_data's {tuple(x.shape[1:])} / {tuple(y.shape[1:])}"
        )
    _check_labels(eval_name, model, ex, ey)
    return (x, y), (ex, ey)


# -- the step ---------------------------------------------------------------------


def _streams(state: TrainState) -> tuple[jax.Array, jax.Array]:
    """The dropout and shuffle key streams: independent children of state.key."""
    dropout_root, shuffle_root = jax.random.split(state.key)
    return dropout_root, shuffle_root


def _loss_and_accuracy(logits: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean softmax cross-entropy and accuracy, for integer or one-hot labels."""
    if y.ndim == logits.ndim:
        loss = optax.softmax_cross_entropy(logits, y)
    else:
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return loss.mean(), _correct(logits, y).mean()


def _correct(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Per example: predicted the label. Non-finite logits never count as correct
    (``argmax`` of NaNs is 0, which would score a diverged model as the class-0 share)."""
    labels = jnp.argmax(y, axis=-1) if y.ndim == logits.ndim else y
    finite = jnp.isfinite(logits).all(axis=-1)
    return (jnp.argmax(logits, axis=-1) == labels) & finite


def _all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.isfinite(a).all() for a in jax.tree.leaves(tree)]
    return jnp.stack(leaves).all() if leaves else jnp.array(True)


def _step_fn(model: Model, optimizer: optax.GradientTransformation, decay: bool) -> Callable:
    """The un-jitted step ``step(state, x, y, weight_decay) -> (state, metrics)``.

    ``decay`` is static: False skips the penalty (weight decay known to be 0).
    """

    def loss_fn(params, model_state, x, y, key, weight_decay, view):
        params = params if view is None else view(params)
        logits, new_model_state = model.apply(params, model_state, x, train=True, key=key)
        data_loss, accuracy = _loss_and_accuracy(logits, y)
        loss = data_loss + l2_penalty(params, weight_decay) if decay else data_loss
        return loss, (new_model_state, accuracy)

    def step(state: TrainState, x: jax.Array, y: jax.Array, weight_decay: Any):
        dropout_root, _ = _streams(state)
        key = jax.random.fold_in(dropout_root, state.step)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        packed = isinstance(state._params, layout.Packed)
        # Contiguous storage: the model and the penalty read the leaves as slices of the
        # buffers, the gradient comes back as buffers, and the optimizer (proven leafwise
        # when the state was arranged) updates the buffers themselves.
        params = state._params.raw if packed else state._params
        opt_state = state._opt_state.raw if packed else state._opt_state
        view = functools.partial(layout.views, state._params.storage) if packed else None
        (loss, (model_state, accuracy)), grads = grad_fn(
            params, state.model_state, x, y, key, weight_decay, view
        )
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        if packed:
            params = layout.Packed(params, state._params.storage)
            opt_state = layout.Packed(jax.tree.leaves(opt_state), state._opt_state.storage)
        # A batch whose loss or statistics are not finite (which optax.apply_if_finite
        # skips for the parameters) must not poison the running statistics for good.
        keep = jnp.isfinite(loss) & _all_finite(model_state)
        model_state = jax.tree.map(
            lambda new, old: jnp.where(keep, new, old), model_state, state.model_state
        )
        new_state = TrainState(
            step=state.step + 1,
            params=params,
            model_state=model_state,
            opt_state=opt_state,
            key=state.key,
        )
        return new_state, {"loss": loss, "accuracy": accuracy}

    return step


def _decays(weight_decay: Any) -> bool:
    """Whether the penalty can be non-zero (a traced value might be)."""
    return not (_checks.is_real(weight_decay) and float(weight_decay) == 0.0)


@functools.partial(jax.jit, static_argnums=(0, 1, 2), donate_argnums=3)
def _jitted_step(model, optimizer, decay, state, x, y, weight_decay):
    return _step_fn(model, optimizer, decay)(state, x, y, weight_decay)


def make_train_step(
    model: Model, optimizer: optax.GradientTransformation, *, weight_decay: float = 0.0
) -> Step:
    """One jitted training step: ``step(state, x, y) -> (state, metrics)``.

    ``loss = mean softmax cross-entropy + 0.5 * weight_decay * sum(W**2)``
    (weight matrices only); ``grads = d loss / d params``; the optimizer's
    updates are applied and the model state (batch-norm statistics) replaced,
    unless the batch's loss or statistics are not finite, which leaves the
    statistics as they were. The input state's buffers are donated: do not
    reuse it after the call (copy it first with ``jax.tree.map(jnp.copy, s)``
    to keep it). The same function runs on one device or with ``x, y``
    sharded over a ``jax.sharding.Mesh`` (data parallel; batch-norm
    statistics are global). The compiled program is cached on the model,
    optimizer and shapes: a second ``make_train_step`` with the same ones
    compiles nothing.

    Args:
      model: a :class:`~purelearn.models.Model`.
      optimizer: any ``optax.GradientTransformation``.
      weight_decay: the L2 penalty's ``lambda`` (the textbook's weight decay).

    Returns:
      ``step``; its metrics are ``{"loss", "accuracy"}`` on the batch.

    Example:
      >>> import jax, jax.numpy as jnp, purelearn as pl
      >>> model, opt = pl.mlp([4, 3]), pl.sgd(0.1)
      >>> step = pl.make_train_step(model, opt)
      >>> state = pl.TrainState.create(model, opt, jax.random.key(0))
      >>> state, metrics = step(state, jnp.ones((8, 4)), jnp.zeros(8, jnp.int32))
      >>> int(state.step), sorted(metrics)
      (1, ['accuracy', 'loss'])
    """
    model = _check_model(model)
    optimizer = _check_optimizer(optimizer)
    weight_decay = _check_weight_decay(weight_decay)
    decay = _decays(weight_decay)

    def step(state: TrainState, x: jax.Array, y: jax.Array) -> tuple[TrainState, Metrics]:
        if getattr(x, "shape", (None,))[:1] != getattr(y, "shape", (None,))[:1]:
            raise ValueError(
                f"x and y must hold the same number of examples, got x of shape "
                f"{getattr(x, 'shape', x)} and y of shape {getattr(y, 'shape', y)}"
            )
        state = _replicate_for(state, x)
        try:
            return _jitted_step(model, optimizer, decay, state, x, y, weight_decay)
        except (TypeError, ValueError) as err:
            _explain_state(state, model, optimizer, err)
            raise

    return step


def _replicate_for(state: Any, x: Any) -> Any:
    """A state living on one process, replicated over the mesh of a batch that spans
    processes (a jitted step cannot mix the two) or whose mesh is explicit (the sharding
    of every gradient must be known from its types); anything else as it is."""
    sharding = _data_sharding(x)
    if sharding is None or not isinstance(state, TrainState):
        return state
    if not (_spans_processes(x) or _explicit(sharding)):
        return state
    leaves = jax.tree.leaves(state)
    if all(isinstance(a, jax.Array) and not a.is_fully_addressable for a in leaves):
        return state
    return distributed.replicate(state, sharding.mesh)


def _explain_state(state: Any, model: Model, optimizer: Any, err: Exception) -> None:
    """After a failed trace: a clear error if the state does not belong to this
    model and optimizer (the usual cause), else nothing (the original error stands)."""
    if not isinstance(state, TrainState):
        raise ValueError(
            f"state must be a TrainState (pl.TrainState.create(model, optimizer, key)), "
            f"got {type(state).__name__}"
        ) from err
    try:
        params, opt_state = jax.eval_shape(lambda s: (s.params, s.opt_state), state)
        expected = jax.eval_shape(optimizer.init, params)
    except Exception:
        return
    if jax.tree.structure(expected) != jax.tree.structure(opt_state):
        raise ValueError(
            "state.opt_state was made by a different optimizer than the one given "
            f"(expected the structure {jax.tree.structure(expected)}, got "
            f"{jax.tree.structure(opt_state)}); create the state with this optimizer"
        ) from err


# -- the epoch --------------------------------------------------------------------


class _Plan(NamedTuple):
    """A run's static settings: every one of them is part of the compiled program."""

    batch_size: int
    steps: int  # per epoch
    sampling: str  # "epoch" or "random"
    decay: bool  # whether the L2 penalty can be non-zero
    has_eval: bool
    early_stopping: EarlyStopping | None
    monitor: str | None  # the metric early stopping watches
    # the training set's split over devices (data parallel), or None on one device
    data_sharding: NamedSharding | None = None
    layout: str = "auto"  # how train_run's state is stored (TrainState.create's layout)


def _plan(
    n: int,
    *,
    batch_size: int,
    steps_per_epoch: int | None,
    sampling: str,
    weight_decay: Any,
    has_eval: bool,
    early_stopping: EarlyStopping | None,
    data_sharding: NamedSharding | None = None,
    layout: str = "auto",
) -> _Plan:
    if steps_per_epoch is None:
        steps = n // batch_size
    elif sampling == "epoch":
        raise ValueError(
            "steps_per_epoch goes with sampling='random'; an epoch of sampling='epoch' "
            f"is len(x) // batch_size = {n // batch_size} steps"
        )
    else:
        steps = _checks.positive_int("steps_per_epoch", steps_per_epoch)
    if steps < 1:
        raise ValueError(f"batch_size {batch_size} exceeds the {n} training examples")
    return _Plan(
        batch_size=batch_size,
        steps=steps,
        sampling=sampling,
        decay=_decays(weight_decay),
        has_eval=has_eval,
        early_stopping=early_stopping,
        monitor=early_stopping.watched(has_eval) if early_stopping is not None else None,
        data_sharding=data_sharding,
        layout=_checks.choice("layout", layout, LAYOUTS),
    )


def _batches(state: TrainState, n: int, plan: _Plan) -> jax.Array:
    """The epoch's batch indices, ``(steps, batch_size)``, from the shuffle stream."""
    _, shuffle_root = _streams(state)
    key = jax.random.fold_in(shuffle_root, state.step)
    if plan.sampling == "random":
        return jax.random.randint(key, (plan.steps, plan.batch_size), 0, n)
    order = jax.random.permutation(key, n)
    return order[: plan.steps * plan.batch_size].reshape(plan.steps, plan.batch_size)


def _accuracy(model: Model, state: TrainState, x: jax.Array, y: jax.Array) -> jax.Array:
    logits, _ = model.apply(state.params, state.model_state, x, train=False)
    return _correct(logits, y).mean()


class _Carry(NamedTuple):
    """What one epoch hands the next: the state, early stopping's, and the best state."""

    state: TrainState
    stopper: EarlyStoppingState | None
    best: TrainState | None


def _select(take_old: jax.Array, old: TrainState, new: TrainState) -> TrainState:
    # the key never changes within a run, and key arrays do not go through jnp.where
    merged = jax.tree.map(
        lambda n, o: jnp.where(take_old, o, n), new._replace(key=None), old._replace(key=None)
    )
    return merged._replace(key=new.key)


def _epoch(
    model: Model,
    optimizer: optax.GradientTransformation,
    plan: _Plan,
    carry: _Carry,
    data: Batch,
    eval_data: Batch | None,
    weight_decay: Any,
) -> tuple[_Carry, Metrics]:
    """One epoch: train, evaluate (inference mode, whole sets), update early stopping.

    Once early stopping has fired the epoch still runs but its result is
    discarded (a mask, so vmapped runs stop on their own); "trained" says so.
    """
    x, y = data
    step = _step_fn(model, optimizer, plan.decay)
    batches = _batches(carry.state, x.shape[0], plan)
    shard, whole = plan.data_sharding, _replicated(plan.data_sharding)
    trained, metrics = jax.lax.scan(
        lambda s, idx: step(s, _gather(x, idx, shard), _gather(y, idx, shard), weight_decay),
        _place(carry.state, whole),
        batches,
    )
    es = plan.early_stopping
    stopped = carry.stopper.should_stop if es is not None else jnp.array(False)
    state = _select(stopped, carry.state, trained) if es is not None else trained
    curves = {"loss": metrics["loss"].mean(), "train_accuracy": _accuracy(model, state, x, y)}
    if eval_data is not None:
        curves["eval_accuracy"] = _accuracy(model, state, *eval_data)
    curves["step_loss"] = metrics["loss"]
    # Replicated results: every process reads the same metrics and holds the whole state.
    state, curves = _place((state, curves), whole)
    if es is None:
        return _Carry(state, None, None), curves
    stopper = es.update(carry.stopper, curves[plan.monitor])
    best = carry.best
    if es.restore_best:
        improved = (stopper.wait == 0) & ~stopped
        best = _select(~improved, carry.best, state)
    curves["trained"] = ~stopped
    return _Carry(state, stopper, best), curves


def _start(plan: _Plan, state: TrainState) -> _Carry:
    es = plan.early_stopping
    if es is None:
        return _Carry(state, None, None)
    best = jax.tree.map(jnp.copy, state) if es.restore_best else None
    return _Carry(state, es.init(), best)


def _finish(plan: _Plan, carry: _Carry) -> TrainState:
    es = plan.early_stopping
    return carry.best if es is not None and es.restore_best else carry.state


def _run(
    model: Model,
    optimizer: optax.GradientTransformation,
    plan: _Plan,
    epochs: int,
    key: jax.Array,
    data: Batch,
    eval_data: Batch | None,
    weight_decay: Any,
) -> tuple[TrainState, Metrics]:
    """A whole run, pure: create the state, scan ``epochs`` epochs (train_run's body)."""
    state = TrainState.create(model, optimizer, key, layout=plan.layout)
    state = _place(state, _replicated(plan.data_sharding))
    carry = _start(plan, state)
    carry, curves = jax.lax.scan(
        lambda c, _: _epoch(model, optimizer, plan, c, data, eval_data, weight_decay),
        carry,
        length=epochs,
    )
    if plan.early_stopping is not None:
        # Stopping is sticky, so the trained epochs are a prefix (never empty: the first
        # epoch always trains); a masked epoch's losses are those of a discarded update.
        last = curves["trained"].sum() - 1
        trained = curves["trained"]
        curves["loss"] = jnp.where(trained, curves["loss"], curves["loss"][last])
        curves["step_loss"] = jnp.where(
            trained[:, None], curves["step_loss"], curves["step_loss"][last]
        )
    return _finish(plan, carry), curves


_jitted_run = jax.jit(_run, static_argnums=(0, 1, 2, 3))
_jitted_epoch = jax.jit(_epoch, static_argnums=(0, 1, 2), donate_argnums=3)


def _validate_run(
    model: Any,
    optimizer: Any,
    train_data: Any,
    *,
    epochs: Any,
    batch_size: Any,
    eval_data: Any,
    weight_decay: Any,
    early_stopping: Any,
    steps_per_epoch: Any,
    sampling: Any,
    layout: Any = "auto",
) -> tuple[_Plan, Batch, Batch | None, Any]:
    """Everything a run takes, checked before anything is traced."""
    model = _check_model(model)
    _check_optimizer(optimizer)
    _checks.positive_int("epochs", epochs)
    batch_size = _checks.positive_int("batch_size", batch_size)
    _checks.choice("sampling", sampling, ("epoch", "random"))
    weight_decay = _check_weight_decay(weight_decay)
    if early_stopping is not None and not isinstance(early_stopping, EarlyStopping):
        raise ValueError(
            f"early_stopping must be a pl.EarlyStopping(...) or None, got {early_stopping!r}"
        )
    data, eval_data = check_data(
        model, train_data, eval_data, batch_size=batch_size, sampling=sampling
    )
    data_sharding = _check_distributed(data, eval_data, batch_size)
    plan = _plan(
        data[0].shape[0],
        batch_size=batch_size,
        steps_per_epoch=steps_per_epoch,
        sampling=sampling,
        weight_decay=weight_decay,
        has_eval=eval_data is not None,
        early_stopping=early_stopping,
        data_sharding=data_sharding,
        layout=layout,
    )
    return plan, data, eval_data, weight_decay


def _check_distributed(
    data: Batch, eval_data: Batch | None, batch_size: int
) -> NamedSharding | None:
    """The data-parallel layout of a training set split over devices, checked: labels
    split like the inputs, batches that split evenly, and (across processes) no set
    held by one process only, which would be taken for the whole set."""
    sharding = _data_sharding(data[0])
    if sharding is None:
        if _spans_processes(data[0]) or _spans_processes(data[1]):
            raise ValueError(
                "train_data spans processes but is not split along its examples over a "
                "mesh; build it with pl.distributed.global_batch"
            )
        return None
    if _data_sharding(data[1]) != sharding:
        raise ValueError(
            f"train_data's labels must be split over the devices like its inputs "
            f"({sharding.spec}), got {getattr(data[1], 'sharding', None)}"
        )
    devices = (
        sharding.mesh.shape[sharding.spec[0]]
        if isinstance(sharding.spec[0], str)
        else (int(np.prod([sharding.mesh.shape[a] for a in sharding.spec[0]])))
    )
    if batch_size % devices:
        raise ValueError(
            f"batch_size {batch_size} does not split evenly over the {devices} devices "
            f"the training set is split over"
        )
    if _spans_processes(data[0]) and eval_data is not None:
        if not all(_spans_processes(a) for a in eval_data):
            raise ValueError(
                "train_data spans processes but eval_data does not: build eval_data "
                "from every process's rows with pl.distributed.global_batch too"
            )
    return sharding


def train_run(
    model: Model,
    optimizer: optax.GradientTransformation,
    train_data: Batch,
    *,
    epochs: int,
    batch_size: int,
    key: jax.Array | int,
    eval_data: Batch | None = None,
    weight_decay: float | jax.Array = 0.0,
    early_stopping: EarlyStopping | None = None,
    steps_per_epoch: int | None = None,
    sampling: str = "epoch",
    layout: str = "auto",
) -> tuple[TrainState, dict[str, jax.Array]]:
    """A whole training run as one compiled function: ``vmap`` it over keys or hyperparameters.

    The same epochs as :func:`fit` (the same compiled epoch, the same key
    streams, so the same numbers), as a ``lax.scan`` over epochs with no
    Python in the loop. Inside ``jax.jit`` and ``jax.vmap`` it trains many
    runs as one program (the key, the weight decay, and hyperparameters
    injected with ``optax.inject_hyperparams`` may be traced). Called
    directly, its program is cached: a second call with the same model,
    optimizer, shapes and settings compiles nothing.

    Early stopping is a mask, not a break: the scan always runs ``epochs``
    epochs, but once ``early_stopping`` fires (on its monitored metric,
    checked after each epoch as :func:`fit` does) the state stops changing,
    so a vmapped run stops on its own while its neighbours go on. The state
    returned is the one :func:`fit` would return (the best epoch's with
    ``restore_best``).

    Args:
      model, optimizer, weight_decay: as in :func:`make_train_step`.
      train_data: ``(x, y)`` with integer or one-hot labels.
      epochs: number of epochs.
      batch_size: examples per step.
      key: the run's key, or an int seed.
      eval_data: optional ``(x, y)`` evaluated after every epoch.
      early_stopping: an :class:`~purelearn.early_stopping.EarlyStopping`.
      steps_per_epoch, sampling: how batches are drawn (see the module doc);
        ``sampling="random"`` with ``steps_per_epoch`` is the textbook's
        iteration-based loop.
      layout: how the state is stored: ``"auto"``, ``"contiguous"`` or
        ``"pytree"`` (see :meth:`TrainState.create`); the numbers are the same.

    Returns:
      ``(state, curves)``; ``curves`` holds per-epoch arrays "loss",
      "train_accuracy", "eval_accuracy" (with ``eval_data``), "step_loss"
      (``(epochs, steps)``: every step's loss) and, with ``early_stopping``,
      "trained" (bool: whether that epoch trained). After a stop the curves
      repeat their last trained values.

    Example:
      >>> import jax, jax.numpy as jnp, optax, purelearn as pl
      >>> x = jax.random.normal(jax.random.key(1), (64, 2))
      >>> y = (x[:, 0] > 0).astype(jnp.int32)
      >>> def run(lr):
      ...     opt = optax.inject_hyperparams(pl.sgd)(learning_rate=lr)
      ...     return pl.train_run(pl.mlp([2, 8, 2]), opt, (x, y), epochs=10, batch_size=16,
      ...                         key=0)[1]["train_accuracy"]
      >>> jax.jit(jax.vmap(run))(jnp.array([0.0, 0.5])).shape
      (2, 10)
    """
    plan, data, eval_data, weight_decay = _validate_run(
        model,
        optimizer,
        train_data,
        epochs=epochs,
        batch_size=batch_size,
        eval_data=eval_data,
        weight_decay=weight_decay,
        early_stopping=early_stopping,
        steps_per_epoch=steps_per_epoch,
        sampling=sampling,
        layout=layout,
    )
    key = _checks.key_or_seed("key", key)
    return _jitted_run(model, optimizer, plan, epochs, key, data, eval_data, weight_decay)


def _copy(state: TrainState) -> TrainState:
    """A fresh copy, so that donating it leaves the caller's state usable."""
    return jax.tree.map(lambda a: a.copy(), state)


def fit(
    model: Model,
    optimizer: optax.GradientTransformation,
    train_data: Batch,
    *,
    epochs: int,
    batch_size: int,
    key: jax.Array | int | None = None,
    eval_data: Batch | None = None,
    weight_decay: float = 0.0,
    early_stopping: EarlyStopping | None = None,
    progress: bool = True,
    state: TrainState | None = None,
    callback: Callable[[int, TrainState, dict[str, list[float]]], Any] | None = None,
    steps_per_epoch: int | None = None,
    sampling: str = "epoch",
    layout: str = "auto",
) -> tuple[TrainState, dict[str, list[float]]]:
    """Train for ``epochs`` epochs, as the textbook's ``Trainer`` does.

    A host loop around :func:`train_run`'s compiled epoch (a ``lax.scan`` of
    the step over the epoch's batches, then the model evaluated in inference
    mode on the training data and on ``eval_data``, on the device): the same
    numbers as :func:`train_run`, plus a progress bar, an early-stopping
    break and a per-epoch callback. A second identical call compiles nothing.

    Args:
      model, optimizer, weight_decay: as in :func:`make_train_step`.
      train_data: ``(x, y)`` with integer or one-hot labels.
      epochs: number of epochs (at most; early stopping may end sooner).
      batch_size: examples per step.
      key: the run's key or an int seed; not needed when ``state`` is given.
      eval_data: optional ``(x, y)`` evaluated after every epoch.
      early_stopping: an :class:`~purelearn.early_stopping.EarlyStopping`
        (its monitor defaults to eval accuracy, else train accuracy).
      progress: show a tqdm progress bar.
      state: continue from this state (e.g. a loaded checkpoint); it is
        copied once, so the caller's ``state`` stays usable.
      callback: ``callback(epoch, state, history)`` after each epoch; a
        truthy return value stops training. ``state`` is valid during the
        call (save it, read it); keep it with ``jax.tree.map(jnp.copy, state)``.
      steps_per_epoch, sampling, layout: as in :func:`train_run` (``layout``
        is used when ``state`` is not given; a given state keeps its own).

    Returns:
      ``(state, history)``; ``history`` has per-epoch lists "loss" (mean
      training loss), "train_accuracy", "eval_accuracy" (with ``eval_data``),
      and "step_loss" (every step's loss, all epochs in one list).

    Example:
      >>> import jax, jax.numpy as jnp, purelearn as pl
      >>> x = jax.random.normal(jax.random.key(1), (64, 2))
      >>> y = (x[:, 0] > 0).astype(jnp.int32)
      >>> state, history = pl.fit(pl.mlp([2, 8, 2]), pl.adam(0.05), (x, y), epochs=20,
      ...                         batch_size=16, key=0, progress=False)
      >>> history["train_accuracy"][-1] > 0.9
      True
    """
    from tqdm.auto import tqdm

    plan, data, eval_data, weight_decay = _validate_run(
        model,
        optimizer,
        train_data,
        epochs=epochs,
        batch_size=batch_size,
        eval_data=eval_data,
        weight_decay=weight_decay,
        early_stopping=early_stopping,
        steps_per_epoch=steps_per_epoch,
        sampling=sampling,
        layout=layout,
    )
    if callback is not None and not callable(callback):
        raise ValueError(f"callback must be callable or None, got {callback!r}")
    if state is None:
        if key is None:
            raise ValueError("fit needs a key (or an int seed), or a state to resume from")
        state = TrainState.create(model, optimizer, _checks.key_or_seed("key", key), layout=layout)
    else:
        _check_resumable(state, model, optimizer)
        state = _copy(state)
    state = _replicate_for(state, data[0])
    carry = _start(plan, state)
    history: dict[str, list[float]] = {"loss": [], "train_accuracy": [], "step_loss": []}
    if eval_data is not None:
        history["eval_accuracy"] = []

    bar = tqdm(range(epochs), disable=not progress, desc="fit", unit="epoch")
    for epoch in bar:
        carry, curves = _jitted_epoch(model, optimizer, plan, carry, data, eval_data, weight_decay)
        curves = jax.device_get(curves)
        history["step_loss"].extend(np.asarray(curves["step_loss"]).tolist())
        for name in METRICS:
            if name in history:
                history[name].append(float(curves[name]))
        bar.set_postfix({k: history[k][-1] for k in METRICS if k in history})
        # carry.state is donated to the next epoch: a callback that keeps it must copy it
        if callback is not None and callback(epoch, carry.state, history):
            break
        if carry.stopper is not None and bool(carry.stopper.should_stop):
            break
    bar.close()
    return _finish(plan, carry), history


def _check_resumable(state: Any, model: Model, optimizer: Any) -> None:
    """A state to resume from must be this model's and this optimizer's."""
    if not isinstance(state, TrainState):
        raise ValueError(
            f"state must be a TrainState (from pl.TrainState.create, fit or a checkpoint), "
            f"got {type(state).__name__}"
        )
    want_params, want_model_state = jax.eval_shape(model.init, jax.random.key(0))
    params, opt_state = jax.eval_shape(lambda s: (s.params, s.opt_state), state)
    want_opt = jax.eval_shape(optimizer.init, want_params)
    for name, want, got in (
        ("params", want_params, params),
        ("model_state", want_model_state, state.model_state),
        ("opt_state", want_opt, opt_state),
    ):
        same = jax.tree.structure(want) == jax.tree.structure(got) and all(
            np.shape(a) == np.shape(b)
            for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True)
        )
        if not same:
            made_by = "optimizer" if name == "opt_state" else "model"
            raise ValueError(
                f"state.{name} does not match the {made_by} given (a state from another "
                f"{made_by}?): expected {jax.tree.structure(want)}, got "
                f"{jax.tree.structure(got)}"
            )


# -- evaluation -------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=0)
def _count_correct(model: Model, params, model_state, x, y) -> jax.Array:
    logits, _ = model.apply(layout.to_pytree(params), model_state, x, train=False)
    return _correct(logits, y).sum()


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _count_correct_chunked(model: Model, chunk: int, sharding, params, model_state, x, y):
    """The correct predictions on all of ``x`` in chunks of ``chunk`` rows, on the devices.

    The last chunk overlaps the one before; the rows already counted are masked out."""
    n, params = x.shape[0], layout.to_pytree(params)
    starts = jnp.minimum(jnp.arange(0, n, chunk), n - chunk)

    def count(i, start):
        xs = jax.lax.dynamic_slice_in_dim(x, start, chunk)
        ys = jax.lax.dynamic_slice_in_dim(y, start, chunk)
        logits, _ = model.apply(params, model_state, xs, train=False)
        fresh = start + jnp.arange(chunk) >= i * chunk
        return (_correct(logits, ys) & fresh).sum()

    counts = jax.lax.map(lambda a: count(*a), (jnp.arange(starts.shape[0]), starts))
    return _place(counts.sum(), _replicated(sharding))


def evaluate(
    model: Model, state: TrainState, x: jax.Array, y: jax.Array, *, batch_size: int = 10_000
) -> float:
    """Accuracy of the model in inference mode (running batch-norm statistics, no dropout).

    Computed on the device in chunks of ``batch_size`` examples; a prediction
    from non-finite logits counts as wrong. The program is cached on the
    model and the chunk shape.

    Example:
      >>> import jax, jax.numpy as jnp, purelearn as pl
      >>> model = pl.mlp([4, 3])
      >>> state = pl.TrainState.create(model, pl.sgd(), jax.random.key(0))
      >>> 0.0 <= pl.evaluate(model, state, jnp.ones((5, 4)), jnp.zeros(5, jnp.int32)) <= 1.0
      True
    """
    model = _check_model(model)
    batch_size = _checks.positive_int("batch_size", batch_size)
    x, y = _checks.pair("(x, y)", (x, y))
    _check_labels("(x, y)", model, x, y)
    sharding = _data_sharding(x)
    if sharding is not None or _spans_processes(x) or _spans_processes(y):
        # A set split over devices (or processes) is never sliced on the host: one program
        # scores it chunk by chunk and returns the replicated count.
        if _data_sharding(y) != sharding:
            raise ValueError(
                f"(x, y): the labels must be split over the devices like the inputs "
                f"({getattr(x, 'sharding', None)}), got {getattr(y, 'sharding', None)}"
            )
        state = _replicate_for(state, x)
        chunk = min(batch_size, len(x))
        count = _count_correct_chunked(
            model, chunk, sharding, state._params, state.model_state, x, y
        )
        return float(distributed.to_host(count)) / len(x)
    correct = sum(
        _count_correct(
            model,
            state._params,
            state.model_state,
            x[start : start + batch_size],
            y[start : start + batch_size],
        )
        for start in range(0, len(x), batch_size)
    )
    return float(correct) / len(x)
