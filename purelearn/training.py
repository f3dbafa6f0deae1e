"""Training: one jitted ``train_step``, ``fit``, early stopping, checkpoints.

The loss is the textbook's: softmax cross-entropy plus the L2 penalty
``0.5 * wd * sum(W**2)`` over the weight matrices. Randomness is explicit:
:class:`TrainState` carries a key, and step ``t`` uses
``fold_in(dropout_root, t)`` where ``dropout_root, shuffle_root =
split(state.key)``, so no key is ever used twice and a resumed run repeats
an uninterrupted one bit for bit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import numbers
import os
import tempfile
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from purelearn.models import Model
from purelearn.regularization import l2_penalty

__all__ = [
    "TrainState",
    "make_train_step",
    "fit",
    "train_run",
    "evaluate",
    "EarlyStopping",
    "EarlyStoppingState",
    "save_checkpoint",
    "load_checkpoint",
]

Batch = tuple[jax.Array, jax.Array]


class TrainState(NamedTuple):
    """Everything that changes during training, as one pytree.

    Attributes:
      step: number of steps taken (int32 scalar).
      params: the model's trainable parameters.
      model_state: the model's non-trainable state (batch-norm statistics).
      opt_state: the optimizer's state.
      key: the run's PRNG key; per-step keys are derived from it and ``step``.
    """

    step: jax.Array
    params: Any
    model_state: Any
    opt_state: Any
    key: jax.Array

    @classmethod
    def create(
        cls, model: Model, optimizer: optax.GradientTransformation, key: jax.Array
    ) -> TrainState:
        """Initialize the model and the optimizer from one key.

        Example:
          >>> import jax, purelearn as pl
          >>> state = pl.TrainState.create(pl.mlp([4, 3]), pl.sgd(), jax.random.key(0))
          >>> int(state.step), state.params[0]["w"].shape
          (0, (4, 3))
        """
        init_key, run_key = jax.random.split(key)
        params, model_state = model.init(init_key)
        return cls(
            step=jnp.zeros([], jnp.int32),
            params=params,
            model_state=model_state,
            opt_state=optimizer.init(params),
            key=run_key,
        )


def _streams(state: TrainState) -> tuple[jax.Array, jax.Array]:
    """The dropout and shuffle key streams: independent children of state.key."""
    dropout_root, shuffle_root = jax.random.split(state.key)
    return dropout_root, shuffle_root


def _loss_and_accuracy(logits: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean softmax cross-entropy and accuracy, for integer or one-hot labels."""
    if y.ndim == logits.ndim:
        loss = optax.softmax_cross_entropy(logits, y)
        labels = jnp.argmax(y, axis=-1)
    else:
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        labels = y
    return loss.mean(), jnp.mean(jnp.argmax(logits, axis=-1) == labels)


def _check_weight_decay(weight_decay: float) -> None:
    if isinstance(weight_decay, numbers.Real) and not (
        weight_decay >= 0 and math.isfinite(weight_decay)
    ):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")


def _check_positive_int(name: str, value: Any) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_pair(name: str, data: Batch) -> tuple[jax.Array, jax.Array]:
    """``(x, y)`` as arrays with as many labels as inputs."""
    x, y = (jnp.asarray(a) for a in data)
    if len(x) != len(y):
        raise ValueError(f"{name} has {len(x)} inputs but {len(y)} labels")
    return x, y


def _check_run(train_data: Batch, *, epochs: int, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """Validate a run's sizes before anything is traced; the training arrays."""
    _check_positive_int("epochs", epochs)
    _check_positive_int("batch_size", batch_size)
    x, y = _check_pair("train_data", train_data)
    if batch_size > len(x):
        raise ValueError(f"batch_size {batch_size} exceeds the {len(x)} training examples")
    return x, y


def _step_fn(
    model: Model, optimizer: optax.GradientTransformation, weight_decay: float
) -> Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
    """The un-jitted step, shared by ``make_train_step`` and ``fit``'s scan."""

    def loss_fn(params, model_state, x, y, key):
        logits, new_model_state = model.apply(params, model_state, x, train=True, key=key)
        data_loss, accuracy = _loss_and_accuracy(logits, y)
        loss = data_loss + l2_penalty(params, weight_decay)
        return loss, (new_model_state, accuracy)

    def step(state: TrainState, x: jax.Array, y: jax.Array):
        dropout_root, _ = _streams(state)
        key = jax.random.fold_in(dropout_root, state.step)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, (model_state, accuracy)), grads = grad_fn(state.params, state.model_state, x, y, key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        new_state = TrainState(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            model_state=model_state,
            opt_state=opt_state,
            key=state.key,
        )
        return new_state, {"loss": loss, "accuracy": accuracy}

    return step


def make_train_step(
    model: Model, optimizer: optax.GradientTransformation, *, weight_decay: float = 0.0
) -> Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
    """One jitted training step: ``step(state, x, y) -> (state, metrics)``.

    ``loss = mean softmax cross-entropy + 0.5 * weight_decay * sum(W**2)``
    (weight matrices only); ``grads = d loss / d params``; the optimizer's
    updates are applied and the model state (batch-norm statistics) replaced.
    The input state's buffers are donated: do not reuse it after the call.
    The same function runs on one device or with ``x, y`` sharded over a
    ``jax.sharding.Mesh`` (data parallel; batch-norm statistics are global).

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
    _check_weight_decay(weight_decay)
    return jax.jit(_step_fn(model, optimizer, weight_decay), donate_argnums=0)


def evaluate(
    model: Model, state: TrainState, x: jax.Array, y: jax.Array, *, batch_size: int = 10_000
) -> float:
    """Accuracy of the model in inference mode (running batch-norm statistics, no dropout).

    Example:
      >>> import jax, jax.numpy as jnp, purelearn as pl
      >>> model = pl.mlp([4, 3])
      >>> state = pl.TrainState.create(model, pl.sgd(), jax.random.key(0))
      >>> 0.0 <= pl.evaluate(model, state, jnp.ones((5, 4)), jnp.zeros(5, jnp.int32)) <= 1.0
      True
    """
    correct = 0.0
    for start in range(0, len(x), batch_size):
        correct += float(
            _correct(
                model,
                state.params,
                state.model_state,
                x[start : start + batch_size],
                y[start : start + batch_size],
            )
        )
    return correct / len(x)


def _count_correct(model: Model, params, model_state, x, y) -> jax.Array:
    logits, _ = model.apply(params, model_state, x, train=False)
    labels = jnp.argmax(y, axis=-1) if y.ndim == logits.ndim else y
    return jnp.sum(jnp.argmax(logits, axis=-1) == labels)


_correct = jax.jit(_count_correct, static_argnums=0)


# -- early stopping ------------------------------------------------------------


class EarlyStoppingState(NamedTuple):
    """Best metric so far (sign-adjusted so larger is better), epochs since it
    improved, and whether to stop (sticky)."""

    best: jax.Array
    wait: jax.Array
    should_stop: jax.Array


@dataclasses.dataclass(frozen=True)
class EarlyStopping:
    """Stop when the monitored metric has not improved for ``patience`` checks.

    A pure state machine (``init``/``update`` on arrays), so it also runs
    inside ``lax.while_loop`` or ``vmap``. An improvement is a change better
    than ``min_delta`` in the direction of ``mode`` ("max" for accuracies,
    "min" for losses).

    Example:
      >>> import purelearn as pl
      >>> es = pl.EarlyStopping(patience=2)
      >>> s = es.init()
      >>> for acc in [0.5, 0.6, 0.6, 0.59]:
      ...     s = es.update(s, acc)
      >>> bool(s.should_stop), float(s.best)
      (True, 0.6000000238418579)
    """

    patience: int = 5
    min_delta: float = 0.0
    mode: str = "max"

    def __post_init__(self):
        if (
            not isinstance(self.patience, numbers.Integral)
            or isinstance(self.patience, bool)
            or self.patience < 1
        ):
            raise ValueError(f"patience must be an integer >= 1, got {self.patience!r}")
        if not isinstance(self.min_delta, numbers.Real) or not (
            self.min_delta >= 0 and math.isfinite(self.min_delta)
        ):
            raise ValueError(f"min_delta must be a finite number >= 0, got {self.min_delta!r}")
        if self.mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {self.mode!r}")

    def init(self) -> EarlyStoppingState:
        return EarlyStoppingState(
            best=jnp.array(-jnp.inf, jnp.float32),
            wait=jnp.zeros([], jnp.int32),
            should_stop=jnp.zeros([], bool),
        )

    def update(self, state: EarlyStoppingState, metric: jax.Array | float) -> EarlyStoppingState:
        value = jnp.asarray(metric, jnp.float32)
        value = value if self.mode == "max" else -value
        improved = value - state.best > self.min_delta
        wait = jnp.where(improved, 0, state.wait + 1)
        return EarlyStoppingState(
            best=jnp.where(improved, value, state.best),
            wait=wait,
            should_stop=state.should_stop | (wait >= self.patience),
        )

    def best_metric(self, state: EarlyStoppingState) -> jax.Array:
        """The best metric seen, in its own sign."""
        return state.best if self.mode == "max" else -state.best


# -- fit ----------------------------------------------------------------------


def _epoch_fn(step, batch_size: int):
    """One shuffled epoch: a scan of ``step`` over ``len(x) // batch_size`` batches."""

    def run_epoch(state: TrainState, x: jax.Array, y: jax.Array):
        steps = x.shape[0] // batch_size
        _, shuffle_root = _streams(state)
        order = jax.random.permutation(jax.random.fold_in(shuffle_root, state.step), x.shape[0])
        batches = order[: steps * batch_size].reshape(steps, batch_size)

        def body(state, idx):
            return step(state, x[idx], y[idx])

        return jax.lax.scan(body, state, batches)

    return run_epoch


def _accuracy(model: Model, state: TrainState, x: jax.Array, y: jax.Array) -> jax.Array:
    return _count_correct(model, state.params, state.model_state, x, y) / x.shape[0]


def train_run(
    model: Model,
    optimizer: optax.GradientTransformation,
    train_data: Batch,
    *,
    epochs: int,
    batch_size: int,
    key: jax.Array,
    eval_data: Batch | None = None,
    weight_decay: float | jax.Array = 0.0,
    early_stopping: EarlyStopping | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """A whole training run as one pure function: ``vmap`` it over keys or hyperparameters.

    The same epochs as :func:`fit` (same key streams, so the same numbers),
    but as a ``lax.scan`` over epochs with no Python in the loop: wrap it in
    ``jax.jit``, and in ``jax.vmap`` to train many runs as one program (the
    weight decay, and hyperparameters injected with
    ``optax.inject_hyperparams``, may be traced).

    Early stopping is a mask, not a break: the scan always runs ``epochs``
    epochs, but once ``early_stopping`` fires (on eval accuracy, or train
    accuracy without ``eval_data``, checked after each epoch as :func:`fit`
    does) the state stops changing, so a vmapped run can stop on its own
    while its neighbours go on. The returned state is then the one
    :func:`fit` would return.

    Returns:
      ``(state, curves)``; ``curves`` holds per-epoch arrays "loss",
      "train_accuracy" and, with ``eval_data``, "eval_accuracy" (accuracies
      in inference mode on the whole sets); with ``early_stopping`` also
      "trained" (bool: whether that epoch trained). After a stop the curves
      repeat their last trained values.

    Example:
      >>> import jax, jax.numpy as jnp, optax, purelearn as pl
      >>> x = jax.random.normal(jax.random.key(1), (64, 2))
      >>> y = (x[:, 0] > 0).astype(jnp.int32)
      >>> def run(lr):
      ...     opt = optax.inject_hyperparams(pl.sgd)(learning_rate=lr)
      ...     return pl.train_run(pl.mlp([2, 8, 2]), opt, (x, y), epochs=10, batch_size=16,
      ...                         key=jax.random.key(0))[1]["train_accuracy"]
      >>> jax.jit(jax.vmap(run))(jnp.array([0.0, 0.5])).shape
      (2, 10)
    """
    _check_weight_decay(weight_decay)
    x, y = _check_run(train_data, epochs=epochs, batch_size=batch_size)
    if eval_data is not None:
        eval_data = _check_pair("eval_data", eval_data)
    run_epoch = _epoch_fn(_step_fn(model, optimizer, weight_decay), batch_size)

    def measure(state, loss):
        curves = {"loss": loss, "train_accuracy": _accuracy(model, state, x, y)}
        if eval_data is not None:
            curves["eval_accuracy"] = _accuracy(model, state, *eval_data)
        return curves

    def epoch(state, _):
        state, metrics = run_epoch(state, x, y)
        return state, measure(state, metrics["loss"].mean())

    def stoppable_epoch(carry, _):
        state, stopper = carry
        stopped = stopper.should_stop  # sticky: once set, every later epoch is masked
        trained, metrics = run_epoch(state, x, y)
        # the key never changes, and key arrays do not go through jnp.where
        state = jax.tree.map(
            lambda new, old: jnp.where(stopped, old, new),
            trained._replace(key=None),
            state._replace(key=None),
        )._replace(key=trained.key)
        curves = measure(state, metrics["loss"].mean())
        stopper = early_stopping.update(
            stopper, curves.get("eval_accuracy", curves["train_accuracy"])
        )
        return (state, stopper), {**curves, "trained": ~stopped}

    start = TrainState.create(model, optimizer, key)
    if early_stopping is None:
        return jax.lax.scan(epoch, start, length=epochs)
    (state, _), curves = jax.lax.scan(
        stoppable_epoch, (start, early_stopping.init()), length=epochs
    )
    # Stopping is sticky, so the trained epochs are a prefix (never empty: the first
    # epoch always trains); a masked epoch's loss is that of a discarded update.
    last = curves["trained"].sum() - 1
    curves["loss"] = jnp.where(curves["trained"], curves["loss"], curves["loss"][last])
    return state, curves


def fit(
    model: Model,
    optimizer: optax.GradientTransformation,
    train_data: Batch,
    *,
    epochs: int,
    batch_size: int,
    key: jax.Array,
    eval_data: Batch | None = None,
    weight_decay: float = 0.0,
    early_stopping: EarlyStopping | None = None,
    progress: bool = True,
    state: TrainState | None = None,
) -> tuple[TrainState, dict[str, list[float]]]:
    """Train for ``epochs`` shuffled epochs, as the textbook's ``Trainer`` does.

    Each epoch is one compiled program (a ``lax.scan`` of the jitted step over
    ``len(x) // batch_size`` batches; the remainder is dropped); after each
    epoch the model is evaluated in inference mode on the training data and
    on ``eval_data``.

    Args:
      model, optimizer, weight_decay: as in :func:`make_train_step`.
      train_data: ``(x, y)`` with integer or one-hot labels.
      epochs: number of epochs (at most; early stopping may end sooner).
      batch_size: examples per step.
      key: the run's key (ignored when ``state`` is given).
      eval_data: optional ``(x, y)`` evaluated after every epoch.
      early_stopping: stops when eval accuracy (train accuracy without
        ``eval_data``) stops improving.
      progress: show a tqdm progress bar.
      state: continue from this state (e.g. a loaded checkpoint).

    Returns:
      ``(state, history)``; ``history`` has per-epoch lists "loss" (mean
      training loss), "train_accuracy", "eval_accuracy" (with ``eval_data``),
      and "step_loss" (every step's loss).

    Example:
      >>> import jax, jax.numpy as jnp, purelearn as pl
      >>> x = jax.random.normal(jax.random.key(1), (64, 2))
      >>> y = (x[:, 0] > 0).astype(jnp.int32)
      >>> state, history = pl.fit(pl.mlp([2, 8, 2]), pl.adam(0.05), (x, y), epochs=20,
      ...                         batch_size=16, key=jax.random.key(0), progress=False)
      >>> history["train_accuracy"][-1] > 0.9
      True
    """
    from tqdm.auto import tqdm

    _check_weight_decay(weight_decay)
    x, y = _check_run(train_data, epochs=epochs, batch_size=batch_size)
    if state is None:
        state = TrainState.create(model, optimizer, key)
    run_epoch = jax.jit(
        _epoch_fn(_step_fn(model, optimizer, weight_decay), batch_size), donate_argnums=0
    )
    history: dict[str, list[float]] = {"loss": [], "train_accuracy": [], "step_loss": []}
    if eval_data is not None:
        history["eval_accuracy"] = []
    stopper = early_stopping.init() if early_stopping else None

    bar = tqdm(range(epochs), disable=not progress, desc="fit", unit="epoch")
    for _ in bar:
        state, metrics = run_epoch(state, x, y)
        losses = np.asarray(metrics["loss"])
        history["step_loss"].extend(losses.tolist())
        history["loss"].append(float(losses.mean()))
        history["train_accuracy"].append(evaluate(model, state, x, y))
        monitored = history["train_accuracy"][-1]
        if eval_data is not None:
            history["eval_accuracy"].append(evaluate(model, state, *eval_data))
            monitored = history["eval_accuracy"][-1]
        bar.set_postfix(loss=history["loss"][-1], acc=monitored)
        if stopper is not None:
            stopper = early_stopping.update(stopper, monitored)
            if bool(stopper.should_stop):
                break
    bar.close()
    return state, history


# -- checkpoints ----------------------------------------------------------------

_MAGIC = b"purelearn-checkpoint-v1\n"


def _is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _raw(tree: Any) -> Any:
    """Typed PRNG keys as their uint32 data, everything on the host."""
    return jax.device_get(jax.tree.map(lambda a: jax.random.key_data(a) if _is_key(a) else a, tree))


def save_checkpoint(path: str | os.PathLike, state: Any) -> None:
    """Write ``state`` (any pytree of arrays) to ``path`` atomically.

    The bytes (flax msgpack serialization behind a header and a SHA-256
    digest) go to a temporary file in the same directory, are flushed to
    disk, and replace ``path`` in one ``os.replace``: a crash mid-write
    leaves the previous checkpoint intact.
    """
    payload = serialization.to_bytes(_raw(state))
    digest = hashlib.sha256(payload).hexdigest().encode()
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".ckpt-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(_MAGIC + digest + b"\n" + payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | os.PathLike, like_state: Any) -> Any:
    """Read a checkpoint written by :func:`save_checkpoint`.

    ``like_state`` gives the expected structure, shapes and dtypes (e.g. a
    freshly created :class:`TrainState`). Raises ``ValueError`` naming the
    problem when the file is not a checkpoint, is truncated or corrupt, or
    holds a different structure; nothing is half-loaded.
    """
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(_MAGIC):
        raise ValueError(f"{path} is not a purelearn checkpoint (bad header)")
    digest, _, payload = data[len(_MAGIC) :].partition(b"\n")
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise ValueError(f"{path} is corrupt or truncated: its SHA-256 digest does not match")
    like_raw = _raw(like_state)
    try:
        restored = serialization.from_bytes(like_raw, payload)
    except Exception as err:  # flax raises several types for mismatched trees
        raise ValueError(f"{path} does not match the structure of like_state: {err}") from err
    got = jax.tree_util.tree_flatten_with_path(restored)[0]
    want, _treedef = jax.tree_util.tree_flatten_with_path(like_raw)
    if len(got) != len(want):
        raise ValueError(f"{path} holds {len(got)} arrays but like_state has {len(want)}")
    for (where, a), (_, b) in zip(got, want, strict=True):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape or a.dtype != b.dtype:
            raise ValueError(
                f"{path}: leaf {jax.tree_util.keystr(where)} is {a.dtype}{list(a.shape)} "
                f"in the checkpoint but {b.dtype}{list(b.shape)} in like_state"
            )
    leaves = [
        jax.random.wrap_key_data(jnp.asarray(a), impl=jax.random.key_impl(like))
        if _is_key(like)
        else jnp.asarray(a)
        for (_, a), like in zip(got, jax.tree.leaves(like_state), strict=True)
    ]
    return jax.tree.unflatten(jax.tree.structure(like_state), leaves)
