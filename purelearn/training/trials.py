"""Many runs as one program: :func:`run_trials`, the vmapped, chunked ``train_run``.

The searches (:mod:`purelearn.tuning`) and the experiments
(:mod:`purelearn.experiments`) train their runs here. Run ``i`` is
:func:`~purelearn.training.train_run` with the key ``keys[i]``, the L2
penalty ``weight_decay[i]``, the optimizer
``optax.inject_hyperparams(factory)(**{name: hparams[name][i]})`` and, unless
``shared_data``, the training set ``(x[i], y[i])``; all of them train as one
``jax.vmap`` of the run, jitted once and cached on the model, the optimizer,
the static settings and the shapes (a second identical call compiles
nothing).

Runs go in chunks of one compiled width (:func:`chunk_width`), the last
chunk padded by repeating its last run and the padding dropped, so memory
stays bounded and one program serves every number of runs. On CPU the width
is :data:`CPU_CHUNK` even for fewer runs, so a run's numbers do not depend on
how many ran beside it; on accelerators all runs go at once. A different
width changes the numbers only by float rounding (a batched matmul may sum
in another order than an unbatched one).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from purelearn import _checks
from purelearn.early_stopping import EarlyStopping, EarlyStoppingState
from purelearn.models import Model
from purelearn.training.data import ArrayPair, Batch
from purelearn.training.loops import train_run

__all__ = [
    "CPU_CHUNK",
    "Settings",
    "chunk_width",
    "in_chunks",
    "restored_epoch",
    "run_trials",
]

#: Runs per vmapped call on CPU, for the searches and the experiments alike. On two
#: cores one run already keeps both busy, so vmapping wider buys little and costs
#: compile time and padding. Measured on a 2-core CPU (best of 5 warm rounds, quiet
#: machine; widths 1/2/4/8): 32 trials x 10 epochs of the textbook search
#: (784-100x6-10, 400 images) 2.14/2.24/2.18/2.17 s, all within noise (on a loaded
#: machine 4 and 8 were 10-40% slower than 1 and 2); ``purelearn weight-decay
#: --quick`` (4 runs x 60 epochs) 1.96/1.91/1.73/4.00 s warm and 12.3/9.2/11.1/12.7 s
#: for its first, mostly compiling, call. The chunk is padded to this width even for
#: fewer runs (one program for any count, and a run's numbers do not depend on how
#: many ran beside it), so the narrowest width that is as fast wastes least: 2.
#: Accelerators take all runs at once.
CPU_CHUNK = 2


class Settings(NamedTuple):
    """A run's static settings, passed to :func:`~purelearn.training.train_run` as they
    are; each is part of the compiled program (so this is hashable)."""

    epochs: int
    batch_size: int
    steps_per_epoch: int | None = None
    sampling: str = "epoch"
    early_stopping: EarlyStopping | None = None
    layout: str = "pytree"


def chunk_width(n: int, chunk: int | None = None) -> int:
    """Runs per vmapped call: ``chunk``, else :data:`CPU_CHUNK` on CPU (even for fewer
    runs: the same program for any count), else all ``n``.

    >>> chunk_width(5, 3)
    3
    """
    if chunk is None:
        return CPU_CHUNK if jax.default_backend() == "cpu" else max(1, n)
    return _checks.positive_int("chunk", chunk)


def in_chunks(call: Callable[[Any], Any], n: int, batched: Any, chunk: int) -> Any:
    """``call(batched)`` on ``n`` runs, ``chunk`` at a time, as NumPy with a leading ``n`` axis.

    ``batched`` is a pytree whose leaves have a leading axis of ``n``; every
    call gets exactly ``chunk`` runs (the last chunk padded by repeating its
    last run: one compiled width), and the padding is dropped.

    >>> import numpy as np
    >>> in_chunks(lambda a: 2 * a, 5, np.arange(5), 2)
    array([0, 2, 4, 6, 8])
    """
    n, chunk = _checks.positive_int("n", n), _checks.positive_int("chunk", chunk)
    outs = []
    for start in range(0, n, chunk):
        idx = np.arange(start, min(start + chunk, n))
        padded = np.concatenate([idx, np.full(chunk - len(idx), idx[-1])])
        outs.append((len(idx), call(jax.tree.map(lambda a, p=padded: a[p], batched))))
    # every chunk is dispatched before the first is read back
    parts = [jax.tree.map(lambda a, k=keep: np.asarray(a)[:k], out) for keep, out in outs]
    return jax.tree.map(lambda *p: np.concatenate(p), *parts)


def restored_epoch(
    curves: Mapping[str, jax.Array], early_stopping: EarlyStopping, has_eval: bool
) -> jax.Array:
    """The epoch whose state ``restore_best`` returns, from one run's curves (-1: none).

    That is the last trained epoch at which ``early_stopping``'s own
    :meth:`~purelearn.EarlyStopping.update` reset ``wait`` to 0
    (the monitored metric beat the best so far by more than ``min_delta`` in
    ``mode``'s direction), replayed over the monitored curve. It is -1 when no
    epoch improved (no trained epoch had a finite monitored value: a loss
    that was NaN or infinite throughout); the state returned is then the
    untrained one.
    """
    values = curves[early_stopping.watched(has_eval)]
    trained = curves.get("trained", jnp.ones(values.shape, bool))

    def update(
        stopper: EarlyStoppingState, xs: tuple[jax.Array, jax.Array]
    ) -> tuple[EarlyStoppingState, jax.Array]:
        value, was_trained = xs
        new = early_stopping.update(stopper, value)
        return new, (new.wait == 0) & was_trained

    _, improved = jax.lax.scan(update, early_stopping.init(), (values, trained))
    return jnp.max(jnp.where(improved, jnp.arange(values.shape[0]), -1))


@functools.partial(
    jax.jit,
    static_argnames=(
        "model",
        "optimizer",
        "static",
        "inject",
        "settings",
        "decay",
        "shared_data",
        "step_loss",
    ),
)
def _program(
    keys: jax.Array, weight_decay: jax.Array, hparams: Mapping[str, jax.Array],
    data: Batch, eval_data: Batch | None, *, model: Model, optimizer: Any,
    static: tuple[tuple[str, Any], ...], inject: bool, settings: Settings, decay: bool,
    shared_data: bool, step_loss: bool,
) -> dict[str, jax.Array]:  # fmt: skip
    """The curves of ``len(keys)`` runs, vmapped: run_trials's one compiled program."""
    make = functools.partial(optimizer, **dict(static)) if static else optimizer
    es = settings.early_stopping

    def trial(
        key: jax.Array, wd: jax.Array, h: Mapping[str, jax.Array], data: Batch
    ) -> dict[str, jax.Array]:
        _, curves = train_run(
            model,
            optax.inject_hyperparams(make)(**h) if inject else optimizer,
            data,
            epochs=settings.epochs,
            batch_size=settings.batch_size,
            key=key,
            eval_data=eval_data,
            weight_decay=wd if decay else 0.0,
            early_stopping=es,
            steps_per_epoch=settings.steps_per_epoch,
            sampling=settings.sampling,
            layout=settings.layout,
        )
        if not step_loss:
            del curves["step_loss"]
        if es is not None and es.restore_best:
            curves["best_epoch"] = restored_epoch(curves, es, eval_data is not None)
        return curves

    in_axes = (0, 0, 0, None if shared_data else 0)
    return jax.vmap(trial, in_axes=in_axes)(keys, weight_decay, hparams, data)


def _per_run(name: str, values: Any, n: int) -> jax.Array:
    a = jnp.asarray(values, jnp.float32)
    if a.shape != (n,):
        raise ValueError(f"{name} must hold one number per key ({n}), got shape {a.shape}")
    return a


def run_trials(
    model: Model,
    optimizer: Any,
    data: ArrayPair,
    eval_data: ArrayPair | None = None,
    *,
    keys: jax.Array,
    settings: Settings,
    weight_decay: Any = None,
    hparams: Mapping[str, Any] | None = None,
    static: Mapping[str, Any] | tuple[tuple[str, Any], ...] = (),
    shared_data: bool = True,
    chunk: int | None = None,
    step_loss: bool = False,
) -> dict[str, np.ndarray]:
    """:func:`~purelearn.training.train_run` for ``len(keys)`` runs, vmapped in chunks.

    Args:
      model: a :class:`~purelearn.models.Model`.
      optimizer: an ``optax.GradientTransformation``; or, with ``hparams`` or
        ``static``, a factory: run ``i`` trains with
        ``optax.inject_hyperparams(partial(optimizer, **static))(**hparams_i)``.
      data: the training set ``(x, y)``, shared by every run; with
        ``shared_data=False``, one per run (``(x[i], y[i])`` for run ``i``).
      eval_data: an optional ``(x, y)`` evaluated after every epoch (shared).
      keys: the runs' PRNG keys, one per run (their count is the number of runs).
      settings: the static :class:`Settings` (epochs, batches, early stopping, layout).
      weight_decay: one L2 penalty per run (traced), or None for none.
      hparams: ``{name: one number per run}``, injected (traced) as float32.
      static: factory arguments passed as they are (bools, strings, None select
        code paths), a mapping or name-value pairs; part of the compiled program.
      shared_data: whether every run trains on ``data``.
      chunk: runs per vmapped call (see :func:`chunk_width`).
      step_loss: keep ``train_run``'s ``"step_loss"`` (every step's loss) in the
        curves; off by default (``epochs * steps`` numbers per run).

    Returns:
      ``train_run``'s curves as NumPy arrays with a leading run axis
      (``"loss"``, ``"train_accuracy"``, ``"eval_accuracy"`` with eval data,
      ``"trained"`` with early stopping, ``"step_loss"`` if asked) and, with
      ``EarlyStopping(restore_best=True)``, ``"best_epoch"``: per run, the
      epoch whose state ``train_run`` returns (:func:`restored_epoch`).

    Example:
      >>> import jax, jax.numpy as jnp, numpy as np, purelearn as pl
      >>> from purelearn.training.trials import Settings, run_trials
      >>> x = jax.random.normal(jax.random.key(1), (32, 4))
      >>> y = (x[:, 0] > 0).astype(jnp.int32)
      >>> curves = run_trials(pl.mlp([4, 8, 2]), pl.sgd, (x, y), keys=jax.random.split(
      ...     jax.random.key(0), 3), settings=Settings(epochs=2, batch_size=16),
      ...     hparams={"learning_rate": np.array([0.01, 0.1, 1.0])})
      >>> curves["train_accuracy"].shape
      (3, 2)
    """
    if not isinstance(settings, Settings):
        raise ValueError(f"settings must be a trials.Settings(...), got {settings!r}")
    if not isinstance(model, Model):
        raise ValueError(f"model must be a pl.Model (pl.mlp, pl.from_flax), got {model!r}")
    key_dtype = getattr(keys, "dtype", None)
    if key_dtype is None or not jnp.issubdtype(key_dtype, jax.dtypes.prng_key):
        raise ValueError(f"keys must be an array of PRNG keys (one per run), got {keys!r}")
    if keys.ndim != 1:
        raise ValueError(f"keys must be one PRNG key per run (shape (n,)), got shape {keys.shape}")
    n = len(keys)
    if n < 1:
        raise ValueError("keys is empty: give at least one key")
    static = tuple(sorted(static.items() if isinstance(static, Mapping) else static))
    inject = hparams is not None or bool(static)
    decay = weight_decay is not None
    runs = {
        "keys": keys,
        "weight_decay": _per_run("weight_decay", weight_decay if decay else np.zeros(n), n),
        "hparams": {k: _per_run(f"hparams[{k!r}]", v, n) for k, v in (hparams or {}).items()},
    }
    if not shared_data:
        lengths = [np.shape(a)[0] if np.ndim(a) else 0 for a in data]  # (a scalar: none)
        if any(length != n for length in lengths):
            raise ValueError(
                f"with shared_data=False, data must hold one training set per key ({n}), got "
                f"{lengths}"
            )
        runs["data"] = tuple(data)
    program = functools.partial(
        _program,
        model=model,
        optimizer=optimizer,
        static=static,
        inject=inject,
        settings=settings,
        decay=decay,
        shared_data=shared_data,
        step_loss=step_loss,
    )

    def call(r: dict[str, Any]) -> dict[str, jax.Array]:
        d = r["data"] if not shared_data else data
        out: dict[str, jax.Array] = program(
            r["keys"], r["weight_decay"], r["hparams"], d, eval_data
        )
        return out

    results: dict[str, np.ndarray] = in_chunks(call, n, runs, chunk_width(n, chunk))
    return results
