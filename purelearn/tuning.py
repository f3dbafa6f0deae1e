"""Hyperparameter search: vmapped random and grid search, Bayesian search through Optuna.

Every search trains its trials as one vmapped, jitted program of
:func:`~purelearn.training.train_run` (no Python loop over trials): the
optimizer is ``optax.inject_hyperparams(optimizer_factory)(**hyperparams)``
with the sampled values traced, and the L2 penalty ``weight_decay`` is
traced too. Trials run in chunks of ``max_parallel`` (the last chunk padded
by repeating a trial, the padding dropped), so memory stays bounded; a
different chunk width changes the numbers only by float rounding (batched
matmuls may sum in another order). Trial ``i`` uses the key
``jax.random.split(key, num_trials)[i]`` and, in a random search, row ``i``
of one uniform draw: it trains as ``train_run(..., key=keys[i])`` would
alone, and a longer search with the same key extends a shorter one.

A search space maps names to distributions or fixed numbers::

    space = {"learning_rate": pl.log_uniform(1e-6, 1e-2),   # exp(U(log lo, log hi))
             "weight_decay": pl.log_uniform(1e-8, 1e-4),
             "b1": 0.9}                                      # fixed

Fixed numbers are injected like sampled ones; fixed bools, strings and None
(``nesterov=True``) are passed to the factory as they are. Before anything
is traced, the factory is built once with the space's low ends and once with
its high ends (as float32), so its own checks (a negative rate, ``b1 >= 1``,
a missing argument) raise a ``ValueError`` at the call.

Names are ``"weight_decay"`` (always the L2 penalty) and the arguments of
``optimizer_factory``. Results are dicts, best validation accuracy first
(ties keep trial order): the hyperparameters as Python floats (the float32
values trained with), ``"trial"`` (the index ``i`` above, so the best run
can be repeated alone to keep its parameters), ``"val_acc"`` and
``"train_acc"`` after the last epoch, per-epoch ``"val_acc_curve"``,
``"train_acc_curve"`` and ``"loss_curve"`` (mean training loss), and with
early stopping ``"epochs_run"``.
:func:`top_k_table` prints them; :func:`purelearn.plotting.search_figure`
draws the best curves as the textbook's Figure 6-24 does.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import itertools
import math
import numbers
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from purelearn.models import Model
from purelearn.training import (
    EarlyStopping,
    _check_pair,
    _check_positive_int,
    _check_run,
    train_run,
)

__all__ = [
    "Distribution",
    "log_uniform",
    "uniform",
    "random_search",
    "grid_search",
    "bayes_search",
    "top_k_table",
]

Batch = tuple[jax.Array, jax.Array]
OptimizerFactory = Callable[..., optax.GradientTransformation]

_RESULT_KEYS = (
    "trial",
    "val_acc",
    "train_acc",
    "val_acc_curve",
    "train_acc_curve",
    "loss_curve",
    "epochs_run",
)


# -- distributions ---------------------------------------------------------------


def _check_bounds(low: float, high: float, *, positive: bool) -> None:
    for name, value in (("low", low), ("high", high)):
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            raise ValueError(f"{name} must be a real number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value!r}")
        if positive and value <= 0:
            raise ValueError(f"{name} must be > 0 for a log-uniform distribution, got {value!r}")
    if low >= high:
        raise ValueError(f"low must be < high, got low={low!r}, high={high!r}")


@dataclasses.dataclass(frozen=True)
class Distribution:
    """One continuous dimension of a search space: ``x ~ U(low, high)``, or with
    ``log``, ``x = exp(u)``, ``u ~ U(log low, log high)``. Build with
    :func:`uniform` or :func:`log_uniform`."""

    low: float
    high: float
    log: bool = False

    def __post_init__(self):
        if not isinstance(self.log, bool):
            raise ValueError(f"log must be True or False, got {self.log!r}")
        _check_bounds(self.low, self.high, positive=self.log)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` float64 samples in ``[low, high]``."""
        return self.from_unit(rng.random(n))

    def from_unit(self, u: np.ndarray) -> np.ndarray:
        """Map uniform draws ``u`` in ``[0, 1)`` onto the distribution (float64)."""
        u = np.asarray(u, np.float64)
        if not self.log:
            return self.low + (self.high - self.low) * u
        lo, hi = math.log(self.low), math.log(self.high)
        return np.clip(np.exp(lo + (hi - lo) * u), self.low, self.high)  # exp may round past


def uniform(low: float, high: float) -> Distribution:
    """The uniform distribution on ``[low, high)``.

    Raises ``ValueError`` naming the value for non-finite bounds or ``low >= high``.

    Example:
      >>> import numpy as np, purelearn as pl
      >>> x = pl.uniform(0.0, 0.5).sample(np.random.default_rng(0), 1000)
      >>> bool(((0.0 <= x) & (x < 0.5)).all())
      True
    """
    return Distribution(low, high)


def log_uniform(low: float, high: float) -> Distribution:
    """The log-uniform distribution: ``exp(U(log low, log high))``, for scale parameters.

    Raises ``ValueError`` naming the value for non-finite or non-positive
    bounds, or ``low >= high``.

    Example:
      >>> import numpy as np, purelearn as pl
      >>> x = pl.log_uniform(1e-6, 1e-2).sample(np.random.default_rng(0), 1000)
      >>> bool(((1e-6 <= x) & (x <= 1e-2)).all()), round(float(np.median(np.log10(x))))
      (True, -4)
    """
    return Distribution(low, high, log=True)


# -- validation --------------------------------------------------------------------


def _check_names(names: Sequence[str], optimizer_factory: OptimizerFactory, what: str) -> None:
    if not names:
        raise ValueError(f"{what} is empty: give at least one hyperparameter")
    params = inspect.signature(optimizer_factory).parameters
    factory = getattr(optimizer_factory, "__name__", repr(optimizer_factory))
    if "weight_decay" in names and "weight_decay" in params:
        # silently picking one of the two meanings would train the wrong thing
        raise ValueError(
            f"{what} names 'weight_decay', which here is the L2 penalty, but {factory} has "
            "its own 'weight_decay' argument; wrap the factory under another name, e.g. "
            "lambda learning_rate, decay: pl.adamw(learning_rate, weight_decay=decay)"
        )
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    allowed = {"weight_decay"} | {
        n
        for n, p in params.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    for name in names:
        if name not in allowed:
            raise ValueError(
                f"{what} names {name!r}, which is neither 'weight_decay' nor an argument of "
                f"{factory} (arguments: {sorted(allowed - {'weight_decay'})})"
            )


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_fixed(name: str, value: Any) -> Any:
    """A fixed value: a finite number (injected like a sampled one) or a bool, string or
    None (passed to the factory as is, e.g. ``nesterov=True``)."""
    if _is_number(value):
        if not math.isfinite(value):
            raise ValueError(f"{name!r} must be finite, got {value!r}")
        if name == "weight_decay" and value < 0:
            raise ValueError(f"'weight_decay' must be >= 0, got {value!r}")
        return float(value)
    if isinstance(value, bool | str) or value is None:
        if name == "weight_decay":
            raise ValueError(f"'weight_decay' must be a number, got {value!r}")
        return value
    raise ValueError(
        f"{name!r} must be a distribution (uniform, log_uniform), a finite number, "
        f"a bool, a string or None, got {value!r}"
    )


def _check_factory(
    optimizer_factory: OptimizerFactory, settings: Mapping[str, Any], what: str
) -> None:
    """Build the optimizer once with plain values, so its own checks (negative rates,
    ``b1 >= 1``, missing arguments) fail here and not inside a traced program."""
    kwargs = {k: v for k, v in settings.items() if k != "weight_decay"}
    try:
        optimizer_factory(**kwargs)
    except (TypeError, ValueError) as err:
        factory = getattr(optimizer_factory, "__name__", repr(optimizer_factory))
        shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise ValueError(f"{what}: {factory}({shown}) fails: {err}") from err


def _float32(x: float) -> float:
    """``x`` as training will see it (hyperparameters are injected as float32)."""
    return float(np.float32(x))


def _split_space(
    space: Mapping[str, Any], optimizer_factory: OptimizerFactory
) -> tuple[dict[str, Distribution], dict[str, Any]]:
    """The space's distributions and fixed values, validated against the factory."""
    if not isinstance(space, Mapping):
        raise ValueError(f"space must be a mapping of names to distributions, got {space!r}")
    _check_names(list(space), optimizer_factory, "space")
    dists, fixed = {}, {}
    for name, value in space.items():
        if isinstance(value, Distribution):
            if name == "weight_decay" and value.low < 0:
                raise ValueError(f"'weight_decay' must be >= 0, got a range from {value.low!r}")
            dists[name] = value
        else:
            fixed[name] = _check_fixed(name, value)
    for end in ("low", "high"):
        bounds = {name: _float32(getattr(d, end)) for name, d in dists.items()}
        _check_factory(optimizer_factory, {**fixed, **bounds}, f"the space's {end} ends")
    return dists, fixed


def _as_key(key: Any) -> jax.Array:
    """A typed key, a raw ``uint32[2]`` key, or an int seed."""
    if isinstance(key, bool):
        raise ValueError(f"key must be a PRNG key or an int seed, got {key!r}")
    if isinstance(key, numbers.Integral):
        return jax.random.key(int(key))
    dtype, shape = getattr(key, "dtype", None), getattr(key, "shape", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if shape == ():
            return key
    elif dtype == np.uint32 and shape == (2,):
        return key
    elif dtype is not None and jax.dtypes.issubdtype(dtype, np.integer) and shape == ():
        return jax.random.key(int(key))
    raise ValueError(f"key must be one PRNG key (jax.random.key(0)) or an int seed, got {key!r}")


def _numpy_rng(key: jax.Array) -> np.random.Generator:
    """A NumPy generator seeded by the key's bits (for sampling the space)."""
    typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    data = jax.random.key_data(key) if typed else key
    return np.random.default_rng(np.asarray(data, np.uint32).ravel().tolist())


def _sample(dists: Mapping[str, Distribution], rng: np.random.Generator, n: int) -> dict:
    """Trial ``i``'s values come from row ``i`` of one draw, so they do not depend on
    ``n``: a longer search extends a shorter one with the same key."""
    u = rng.random((n, len(dists)))
    return {name: dist.from_unit(u[:, j]) for j, (name, dist) in enumerate(dists.items())}


# -- the vmapped runner ----------------------------------------------------------------


def _make_runner(
    model: Model,
    optimizer_factory: OptimizerFactory,
    fixed: Mapping[str, float],
    *,
    epochs: int,
    batch_size: int,
    early_stopping: EarlyStopping | None,
) -> Callable:
    """``run(hparams, keys, x, y, vx, vy) -> (val_curves, train_curves, loss_curves,
    epochs_run)``,
    jitted and vmapped over the leading axis of ``hparams`` (a dict of arrays) and ``keys``."""
    injected = {k: v for k, v in fixed.items() if k != "weight_decay" and _is_number(v)}
    static = {k: v for k, v in fixed.items() if not _is_number(v)}
    # bools and strings select code paths: they must not become traced arrays
    factory = functools.partial(optimizer_factory, **static) if static else optimizer_factory

    def trial(hparams, key, x, y, vx, vy):
        hparams = dict(hparams)
        weight_decay = hparams.pop("weight_decay", fixed.get("weight_decay", 0.0))
        optimizer = optax.inject_hyperparams(factory)(**injected, **hparams)
        _, curves = train_run(
            model,
            optimizer,
            (x, y),
            epochs=epochs,
            batch_size=batch_size,
            key=key,
            eval_data=(vx, vy),
            weight_decay=weight_decay,
            early_stopping=early_stopping,
        )
        epochs_run = curves["trained"].sum() if early_stopping else jnp.int32(epochs)
        return curves["eval_accuracy"], curves["train_accuracy"], curves["loss"], epochs_run

    return jax.jit(jax.vmap(trial, in_axes=(0, 0, None, None, None, None)))


#: Trials per vmapped chunk on CPU when ``max_parallel`` is None (see random_search).
_CPU_MAX_PARALLEL = 8


def _chunk(max_parallel: int | None, num_trials: int) -> int:
    if max_parallel is None:
        max_parallel = _CPU_MAX_PARALLEL if jax.default_backend() == "cpu" else num_trials
    return min(max_parallel, num_trials)


def _run_chunked(
    runner: Callable, hparams: Mapping[str, np.ndarray], keys: jax.Array, data: tuple, chunk: int
) -> tuple[np.ndarray, ...]:
    """Run ``len(keys)`` trials in chunks of exactly ``chunk`` (one compiled shape):
    the last chunk is padded by repeating its last trial and the padding dropped."""
    n = len(keys)
    outputs = []
    for start in range(0, n, chunk):
        idx = np.arange(start, min(start + chunk, n))
        padded = np.concatenate([idx, np.full(chunk - len(idx), idx[-1])])
        hp = {k: jnp.asarray(np.asarray(v)[padded], jnp.float32) for k, v in hparams.items()}
        out = runner(hp, keys[padded], *data)
        outputs.append([np.asarray(a)[: len(idx)] for a in out])
    return tuple(np.concatenate(parts) for parts in zip(*outputs, strict=True))


def _results(
    values: Mapping[str, np.ndarray],
    fixed: Mapping[str, float],
    curves: tuple[np.ndarray, ...],
    early_stopping: EarlyStopping | None,
) -> list[dict]:
    """Result dicts, best validation accuracy first (stable)."""
    val, train, loss, epochs_run = curves
    results = []
    for i in range(len(val)):
        result: dict[str, Any] = {name: float(v[i]) for name, v in values.items()}
        result.update(fixed)
        result["trial"] = i
        result["val_acc"] = float(val[i, -1])
        result["train_acc"] = float(train[i, -1])
        result["val_acc_curve"] = val[i].tolist()
        result["train_acc_curve"] = train[i].tolist()
        result["loss_curve"] = loss[i].tolist()
        if early_stopping is not None:
            result["epochs_run"] = int(epochs_run[i])
        results.append(result)
    results.sort(key=lambda r: -r["val_acc"])
    return results


def _search(
    model: Model,
    optimizer_factory: OptimizerFactory,
    data: tuple[jax.Array, ...],
    *,
    values: dict[str, np.ndarray],
    fixed: dict[str, Any],
    num_trials: int,
    epochs: int,
    batch_size: int,
    key: jax.Array,
    max_parallel: int | None,
    early_stopping: EarlyStopping | None,
) -> list[dict]:
    """Train ``num_trials`` trials (the hyperparameters in ``values`` and ``fixed``)."""
    runner = _make_runner(
        model,
        optimizer_factory,
        fixed,
        epochs=epochs,
        batch_size=batch_size,
        early_stopping=early_stopping,
    )
    keys = jax.random.split(key, num_trials)
    chunk = _chunk(max_parallel, num_trials)
    curves = _run_chunked(runner, values, keys, data, chunk)
    return _results(values, fixed, curves, early_stopping)


def _check_common(
    train_data: Batch,
    val_data: Batch,
    epochs: int,
    batch_size: int,
    max_parallel: int | None,
    early_stopping: EarlyStopping | None,
) -> tuple[jax.Array, ...]:
    """Validate what every search shares before anything is traced; the data arrays."""
    if max_parallel is not None:
        _check_positive_int("max_parallel", max_parallel)
    if early_stopping is not None and early_stopping.mode != "max":
        raise ValueError(
            "a search's early stopping watches validation accuracy, so its mode must be "
            f"'max', got {early_stopping.mode!r}"
        )
    x, y = _check_run(train_data, epochs=epochs, batch_size=batch_size)
    vx, vy = _check_pair("val_data", val_data)
    if len(vx) == 0:
        raise ValueError("val_data is empty: trials are ranked by validation accuracy")
    if vx.shape[1:] != x.shape[1:] or vy.shape[1:] != y.shape[1:]:
        raise ValueError(
            f"val_data's shapes {vx.shape[1:]} / {vy.shape[1:]} per example differ from "
            f"train_data's {x.shape[1:]} / {y.shape[1:]}"
        )
    return x, y, vx, vy


# -- searches ------------------------------------------------------------------------


def random_search(
    model: Model,
    optimizer_factory: OptimizerFactory,
    train_data: Batch,
    val_data: Batch,
    *,
    space: Mapping[str, Any],
    num_trials: int,
    epochs: int,
    batch_size: int,
    key: jax.Array | int,
    max_parallel: int | None = None,
    early_stopping: EarlyStopping | None = None,
) -> list[dict]:
    """Random search: ``num_trials`` draws from ``space``, trained as one vmapped program.

    Trial ``i`` trains ``train_run(model, inject_hyperparams(optimizer_factory)(**h_i),
    train_data, key=split(key, num_trials)[i], weight_decay=h_i["weight_decay"])`` and is
    scored by its validation accuracy after the last epoch.

    Args:
      model: a :class:`~purelearn.models.Model`.
      optimizer_factory: e.g. ``pl.sgd``; called through ``optax.inject_hyperparams``.
      train_data, val_data: ``(x, y)`` pairs.
      space: ``{name: uniform(...) | log_uniform(...) | fixed value}``; names are
        ``"weight_decay"`` (the L2 penalty) and arguments of ``optimizer_factory``.
      num_trials, epochs, batch_size: positive integers.
      key: a JAX key (or an int seed); it seeds both the draws and the trials.
      max_parallel: trials per vmapped chunk. The default trains all trials at
        once on GPU and TPU, and 8 at a time on CPU, where one trial already keeps
        the cores busy and wider vmaps fall out of cache (benchmarks/bench_search.py
        measured 8 as fast as a loop of single runs, all 100 at once 0.7x of it).
      early_stopping: stop a trial when its validation accuracy stops improving
        (mode "max"); a stopped trial's state and curves stay frozen, its
        ``"val_acc"`` is the accuracy it stopped at (not its best), and its
        result gains ``"epochs_run"``.

    Returns:
      Result dicts, best ``"val_acc"`` first.

    Example:
      >>> import jax, jax.numpy as jnp, purelearn as pl
      >>> x = jax.random.normal(jax.random.key(1), (64, 2))
      >>> y = (x[:, 0] > 0).astype(jnp.int32)
      >>> results = pl.random_search(pl.mlp([2, 8, 2]), pl.sgd, (x, y), (x, y),
      ...     space={"learning_rate": pl.log_uniform(1e-3, 1.0)}, num_trials=4,
      ...     epochs=3, batch_size=16, key=jax.random.key(0))
      >>> best = results[0]
      >>> len(results), best["val_acc"] == best["val_acc_curve"][-1], len(best["loss_curve"])
      (4, True, 3)
    """
    _check_positive_int("num_trials", num_trials)
    dists, fixed = _split_space(space, optimizer_factory)
    key = _as_key(key)
    data = _check_common(train_data, val_data, epochs, batch_size, max_parallel, early_stopping)
    values = _sample(dists, _numpy_rng(key), num_trials)
    return _search(
        model,
        optimizer_factory,
        data,
        values=values,
        fixed=fixed,
        num_trials=num_trials,
        epochs=epochs,
        batch_size=batch_size,
        key=key,
        max_parallel=max_parallel,
        early_stopping=early_stopping,
    )


def grid_search(
    model: Model,
    optimizer_factory: OptimizerFactory,
    train_data: Batch,
    val_data: Batch,
    *,
    grid: Mapping[str, Sequence[float]],
    epochs: int,
    batch_size: int,
    key: jax.Array | int,
    max_parallel: int | None = None,
    early_stopping: EarlyStopping | None = None,
) -> list[dict]:
    """Grid search: every point of the Cartesian product of ``grid``'s value lists.

    The same vmapped machinery as :func:`random_search`; the trials are the
    product in ``itertools.product`` order (the last name varies fastest), and
    trial ``i`` uses ``split(key, num_points)[i]``.

    Example:
      >>> import jax, jax.numpy as jnp, purelearn as pl
      >>> x = jax.random.normal(jax.random.key(1), (64, 2))
      >>> y = (x[:, 0] > 0).astype(jnp.int32)
      >>> results = pl.grid_search(pl.mlp([2, 8, 2]), pl.sgd, (x, y), (x, y),
      ...     grid={"learning_rate": [0.01, 0.1], "weight_decay": [0.0, 1e-3]},
      ...     epochs=2, batch_size=16, key=jax.random.key(0))
      >>> len(results)
      4
    """
    if not isinstance(grid, Mapping):
        raise ValueError(f"grid must be a mapping of names to value lists, got {grid!r}")
    _check_names(list(grid), optimizer_factory, "grid")
    lists = {}
    for name, options in grid.items():
        if isinstance(options, str | bytes | Mapping):
            options = None  # iterable, but not a list of values
        try:
            array = np.asarray(options, np.float64)
        except (TypeError, ValueError):
            array = np.empty((0, 0))
        if array.ndim != 1:
            raise ValueError(f"grid[{name!r}] must be a 1-D list of numbers, got {options!r}")
        if array.size == 0:
            raise ValueError(f"grid[{name!r}] is empty")
        lists[name] = [_check_fixed(name, float(v)) for v in array]
    first = {name: _float32(values[0]) for name, values in lists.items()}
    for name, values in lists.items():
        for v in values:
            _check_factory(optimizer_factory, {**first, name: _float32(v)}, f"grid[{name!r}]")
    key = _as_key(key)
    data = _check_common(train_data, val_data, epochs, batch_size, max_parallel, early_stopping)
    points = list(itertools.product(*lists.values()))
    values = {name: np.array([p[j] for p in points]) for j, name in enumerate(lists)}
    return _search(
        model,
        optimizer_factory,
        data,
        values=values,
        fixed={},
        num_trials=len(points),
        epochs=epochs,
        batch_size=batch_size,
        key=key,
        max_parallel=max_parallel,
        early_stopping=early_stopping,
    )


def bayes_search(
    model: Model,
    optimizer_factory: OptimizerFactory,
    train_data: Batch,
    val_data: Batch,
    *,
    space: Mapping[str, Any],
    num_trials: int,
    epochs: int,
    batch_size: int,
    key: jax.Array | int,
    trials_per_batch: int = 8,
    sampler: str = "tpe",
    max_parallel: int | None = None,
    early_stopping: EarlyStopping | None = None,
) -> list[dict]:
    """Bayesian search with Optuna: ask a batch of trials, train it vmapped, tell the scores.

    Optuna's sampler (``"tpe"``: ``TPESampler`` with the constant liar for
    batches; ``"gp"``: ``GPSampler``, which needs PyTorch) is seeded from
    ``key``; ``uniform``/``log_uniform`` become ``suggest_float(log=False/True)``
    and the study maximizes validation accuracy. Each batch of
    ``trials_per_batch`` trials is one vmapped program (chunked by
    ``max_parallel``, compiled once); trial ``i`` (in the order asked) uses
    ``split(key, num_trials)[i]``. Other arguments and the results are as in
    :func:`random_search`.

    Example:
      >>> import jax, jax.numpy as jnp, purelearn as pl
      >>> x = jax.random.normal(jax.random.key(1), (64, 2))
      >>> y = (x[:, 0] > 0).astype(jnp.int32)
      >>> results = pl.bayes_search(pl.mlp([2, 8, 2]), pl.sgd, (x, y), (x, y),
      ...     space={"learning_rate": pl.log_uniform(1e-3, 1.0)}, num_trials=4,
      ...     trials_per_batch=2, epochs=2, batch_size=16, key=jax.random.key(0))
      >>> len(results)
      4
    """
    try:
        import optuna
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("bayes_search needs Optuna: pip install 'purelearn[examples]'") from err
    _check_positive_int("num_trials", num_trials)
    _check_positive_int("trials_per_batch", trials_per_batch)
    if sampler not in ("tpe", "gp"):
        raise ValueError(f"sampler must be 'tpe' or 'gp', got {sampler!r}")
    dists, fixed = _split_space(space, optimizer_factory)
    key = _as_key(key)
    data = _check_common(train_data, val_data, epochs, batch_size, max_parallel, early_stopping)
    seed = int(_numpy_rng(key).integers(2**31))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if sampler == "gp":
            try:
                import scipy  # noqa: F401
                import torch  # noqa: F401
            except ImportError as err:
                raise ImportError(
                    "sampler='gp' needs PyTorch and SciPy: pip install torch scipy"
                ) from err
            chosen = optuna.samplers.GPSampler(seed=seed)
        else:
            chosen = optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    runner = _make_runner(
        model,
        optimizer_factory,
        fixed,
        epochs=epochs,
        batch_size=batch_size,
        early_stopping=early_stopping,
    )
    keys = jax.random.split(key, num_trials)
    chunk = _chunk(max_parallel, min(trials_per_batch, num_trials))
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one INFO line per trial otherwise
    try:
        study = optuna.create_study(direction="maximize", sampler=chosen)
        values, curves = _ask_train_tell(study, runner, dists, keys, data, trials_per_batch, chunk)
    finally:
        optuna.logging.set_verbosity(verbosity)
    return _results(values, fixed, curves, early_stopping)


def _ask_train_tell(
    study: Any,
    runner: Callable,
    dists: Mapping[str, Distribution],
    keys: jax.Array,
    data: tuple[jax.Array, ...],
    trials_per_batch: int,
    chunk: int,
) -> tuple[dict[str, np.ndarray], tuple[np.ndarray, ...]]:
    """Optuna's loop a batch at a time: every trial's values and curves, in asked order."""
    import optuna

    values: dict[str, list[float]] = {name: [] for name in dists}
    curves = []
    for start in range(0, len(keys), trials_per_batch):
        count = min(trials_per_batch, len(keys) - start)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            trials = [study.ask() for _ in range(count)]
            batch = {
                name: np.array(
                    [t.suggest_float(name, d.low, d.high, log=d.log) for t in trials], np.float64
                )
                for name, d in dists.items()
            }
        out = _run_chunked(runner, batch, keys[start : start + count], data, chunk)
        for trial, score in zip(trials, out[0][:, -1], strict=True):
            study.tell(trial, float(score))
        for name in dists:
            values[name].extend(batch[name].tolist())
        curves.append(out)
    stacked = tuple(np.concatenate(parts) for parts in zip(*curves, strict=True))
    return {name: np.asarray(v) for name, v in values.items()}, stacked


# -- reporting ---------------------------------------------------------------------


def _hyperparameter_names(result: Mapping[str, Any]) -> list[str]:
    """A result's hyperparameters: every key but the trial index, scores and curves."""
    return [name for name in result if name not in _RESULT_KEYS]


def top_k_table(results: Sequence[Mapping[str, Any]], k: int = 10) -> str:
    """The first ``k`` results as a plain-text table (rank, hyperparameters, accuracies).

    Example:
      >>> import purelearn as pl
      >>> print(pl.top_k_table([{"learning_rate": 0.01, "val_acc": 0.9, "train_acc": 0.95}]))
      rank  learning_rate  val_acc  train_acc
         1           0.01   0.9000     0.9500
    """
    _check_positive_int("k", k)
    rows = list(results)[:k]
    if not rows:
        return "(no results)"
    names = _hyperparameter_names(rows[0])
    header = ["rank", *names, "val_acc", "train_acc"]
    body = [
        [
            str(i + 1),
            *(f"{r[n]:.3g}" if _is_number(r[n]) else str(r[n]) for n in names),
            f"{r['val_acc']:.4f}",
            f"{r['train_acc']:.4f}",
        ]
        for i, r in enumerate(rows)
    ]
    widths = [max(len(row[j]) for row in [header, *body]) for j in range(len(header))]
    return "\n".join(
        "  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True))
        for row in [header, *body]
    )
