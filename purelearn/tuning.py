"""Hyperparameter search: vmapped random and grid search, Bayesian search through Optuna.

Every search trains its trials as one vmapped, jitted program of
:func:`~purelearn.training.train_run` (no Python loop over trials), through
the runner the experiments use too,
:func:`purelearn.training.trials.run_trials`: the optimizer is
``optax.inject_hyperparams(optimizer_factory)(**hyperparams)`` with every
numeric value traced, and the L2 penalty ``weight_decay`` is traced too.
Trials run in chunks of ``max_parallel`` (the last chunk padded by repeating
a trial, the padding dropped), so memory stays bounded; a different chunk
width changes the numbers only by float rounding (batched matmuls may sum in
another order). Trial ``i`` uses the key
``jax.random.split(key, num_trials)[i]`` and, in a random search, row ``i``
of one uniform draw: it trains as ``train_run(..., key=keys[i])`` would
alone, and a longer search with the same key extends a shorter one. The
compiled program is cached on the model, the factory, the static settings
and the shapes: a second identical search compiles nothing.

A search space maps names to distributions or fixed values::

    space = {"learning_rate": pl.log_uniform(1e-6, 1e-2),   # exp(U(log lo, log hi))
             "weight_decay": pl.log_uniform(1e-8, 1e-4),
             "b1": 0.9,                                      # fixed, injected
             "nesterov": True}                               # static, passed as is

Numbers are injected (traced); bools, strings and None select code paths,
so they are passed to the factory as they are (in a grid, each combination
of them is its own program). Before anything is traced, the factory is
built once with the space's low ends and once with its high ends (as
float32), so its own checks (a negative rate, ``b1 >= 1``, a missing
argument) raise a ``ValueError`` at the call.

Names are ``"weight_decay"`` (always the L2 penalty) and the arguments of
``optimizer_factory``; a name that is also a result field (``"trial"``,
``"val_acc"``, ...) is a ``ValueError``. Results are :class:`SearchResults`,
best first: finite trials by validation accuracy (ties keep trial order),
then diverged ones (whose loss went non-finite). A trial is judged by the
epoch whose state it returns: the last trained one, or with
``EarlyStopping(restore_best=True)`` the restored (best) one. Each row is a
dict of plain values:

- the hyperparameters as drawn or given (training sees numbers rounded to
  float32);
- ``"trial"``: the index ``i`` above, so the best run can be repeated alone;
- ``"val_acc"``, ``"train_acc"``: accuracies after the last trained epoch,
  or with ``restore_best`` after the restored epoch;
- ``"val_acc_curve"``, ``"train_acc_curve"``, ``"loss_curve"``: per epoch;
- ``"diverged"``: whether the training loss became NaN or infinite (with
  ``restore_best``: up to the restored epoch, since a later divergence does
  not reach the state returned);
- ``"history"``: the run's curves in the one vocabulary of
  :data:`purelearn.early_stopping.METRICS` (``"loss"``,
  ``"train_accuracy"``, ``"eval_accuracy"`` — the validation set is the eval
  set — and ``"trained"`` with early stopping);
- ``"epochs_run"`` with early stopping;
- ``"best_epoch"`` with ``restore_best``: the restored epoch (0-based), the
  last trained epoch at which early stopping's monitored metric improved by
  more than ``min_delta`` (see
  :func:`~purelearn.training.trials.restored_epoch`); None when no epoch
  improved (a monitored loss that was never finite: the untrained state is
  returned, and the row's numbers are the last trained epoch's).

:meth:`purelearn.SearchResults.table` prints them; :func:`purelearn.plotting.search_figure`
draws the best curves as the textbook's Figure 6-24 does.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
import optax

from purelearn import _checks
from purelearn.early_stopping import METRICS, EarlyStopping
from purelearn.models import Model
from purelearn.training import check_data
from purelearn.training.data import ArrayPair
from purelearn.training.trials import Settings, chunk_width, run_trials

__all__ = [
    "Distribution",
    "log_uniform",
    "uniform",
    "SearchResults",
    "random_search",
    "grid_search",
    "bayes_search",
    "top_k_table",
]

Batch = tuple[jax.Array, jax.Array]
OptimizerFactory = Callable[..., optax.GradientTransformation]

#: The fields of a result row besides the hyperparameters: no space may use these names.
RESULT_FIELDS = (
    "trial",
    "val_acc",
    "train_acc",
    "val_acc_curve",
    "train_acc_curve",
    "loss_curve",
    "diverged",
    "history",
    "epochs_run",
    "best_epoch",
)


# -- distributions ---------------------------------------------------------------


def _check_bounds(low: float, high: float, *, positive: bool) -> None:
    for name, value in (("low", low), ("high", high)):
        if not _checks.is_real(value):  # NumPy scalars and 0-d arrays count, bools do not
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

    def __post_init__(self) -> None:
        if not isinstance(self.log, bool):
            raise ValueError(f"log must be True or False, got {self.log!r}")
        _check_bounds(self.low, self.high, positive=self.log)
        # plain floats from here: a 0-d array bound would make every sample an array
        object.__setattr__(self, "low", float(self.low))
        object.__setattr__(self, "high", float(self.high))

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


def _factory_name(optimizer_factory: OptimizerFactory) -> str:
    return getattr(optimizer_factory, "__name__", repr(optimizer_factory))


def _check_names(names: Sequence[str], optimizer_factory: OptimizerFactory, what: str) -> None:
    if not callable(optimizer_factory):
        raise ValueError(
            f"optimizer_factory must be callable (e.g. pl.sgd), got {optimizer_factory!r}"
        )
    if not names:
        raise ValueError(f"{what} is empty: give at least one hyperparameter")
    for name in names:
        if not isinstance(name, str):
            raise ValueError(f"{what}'s names must be strings, got {name!r}")
        if name in RESULT_FIELDS:
            raise ValueError(
                f"{what} names {name!r}, which is also a field of every result row "
                f"({', '.join(RESULT_FIELDS)}); rename the factory's argument"
            )
    params = inspect.signature(optimizer_factory).parameters
    factory = _factory_name(optimizer_factory)
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


def _is_static(value: Any) -> bool:
    """Bools, strings and None select code paths: passed to the factory, never traced."""
    return isinstance(_plain(value), bool | str) or value is None


def _plain(value: Any) -> Any:
    """NumPy scalars (np.bool_, np.float64) as Python values."""
    return value.item() if isinstance(value, np.generic) else value


def _check_value(name: str, value: Any, *, label: str | None = None) -> Any:
    """A fixed value: a finite number (injected like a sampled one) or a bool, string or
    None (passed to the factory as is, e.g. ``nesterov=True``). ``label`` names it in
    errors (e.g. ``grid['learning_rate']``)."""
    label = label or repr(name)
    value = _plain(value)
    if _is_static(value):
        if name == "weight_decay":
            raise ValueError(f"{label} must be a number, got {value!r}")
        return value
    if not _checks.is_real(value):
        raise ValueError(
            f"{label} must be a distribution (uniform, log_uniform), a finite number, "
            f"a bool, a string or None, got {value!r}"
        )
    return _checks.real(label, value, low=0.0 if name == "weight_decay" else None)


def _check_factory(
    optimizer_factory: OptimizerFactory, settings: Mapping[str, Any], what: str
) -> None:
    """Build the optimizer once with plain values, so its own checks (negative rates,
    ``b1 >= 1``, missing arguments) fail here and not inside a traced program."""
    kwargs = {k: v for k, v in settings.items() if k != "weight_decay"}
    try:
        optimizer_factory(**kwargs)
    except (TypeError, ValueError) as err:
        shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise ValueError(
            f"{what}: {_factory_name(optimizer_factory)}({shown}) fails: {err}"
        ) from err


def _float32(x: Any) -> Any:
    """``x`` as training will see it (numbers are injected as float32)."""
    return x if _is_static(x) else float(np.float32(x))


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
            fixed[name] = _check_value(name, value)
    for end in ("low", "high"):
        bounds = {name: _float32(getattr(d, end)) for name, d in dists.items()}
        fixed32 = {name: _float32(v) for name, v in fixed.items()}
        _check_factory(optimizer_factory, {**fixed32, **bounds}, f"the space's {end} ends")
    return dists, fixed


def _check_grid(
    grid: Mapping[str, Any], optimizer_factory: OptimizerFactory
) -> dict[str, list[Any]]:
    """Each name's list of values (numbers, or bools/strings/None), validated."""
    if not isinstance(grid, Mapping):
        raise ValueError(f"grid must be a mapping of names to value lists, got {grid!r}")
    _check_names(list(grid), optimizer_factory, "grid")
    lists = {}
    for name, options in grid.items():
        label = f"grid[{name!r}]"
        if isinstance(options, np.ndarray | jax.Array):
            options = np.asarray(options).tolist() if options.ndim == 1 else options
        flat = isinstance(options, Sequence) and not isinstance(options, str | bytes)
        if not flat or any(isinstance(v, Sequence | np.ndarray) for v in options):
            if not isinstance(options, str) and flat:
                options = list(options)
            raise ValueError(f"{label} must be a 1-D list of values, got {options!r}")
        if len(options) == 0:
            raise ValueError(f"{label} is empty")
        values = [_check_value(name, v, label=label) for v in options]
        lists[name] = values
    first = {name: _float32(values[0]) for name, values in lists.items()}
    for name, values in lists.items():
        for v in values:
            _check_factory(optimizer_factory, {**first, name: _float32(v)}, f"grid[{name!r}]")
    return lists


def _numpy_rng(key: jax.Array) -> np.random.Generator:
    """A NumPy generator seeded by the key's bits (for sampling the space)."""
    return np.random.default_rng(np.asarray(jax.random.key_data(key), np.uint32).ravel().tolist())


def _sample(
    dists: Mapping[str, Distribution], rng: np.random.Generator, n: int
) -> dict[str, np.ndarray]:
    """Trial ``i``'s values come from row ``i`` of one draw, so they do not depend on
    ``n``: a longer search extends a shorter one with the same key."""
    u = rng.random((n, len(dists)))
    return {name: dist.from_unit(u[:, j]) for j, (name, dist) in enumerate(dists.items())}


# -- the vmapped runner ------------------------------------------------------------


def _chunk(max_parallel: int | None, num_trials: int) -> int:
    """Trials per vmapped call: ``max_parallel`` (at most the trials there are), else
    the runner's default (:func:`purelearn.training.trials.chunk_width`)."""
    if max_parallel is None:
        return chunk_width(num_trials)
    return min(max_parallel, num_trials)


@dataclasses.dataclass(frozen=True)
class _Search:
    """What every search shares, validated: the model, the data and the settings."""

    model: Model
    factory: OptimizerFactory
    data: Batch
    val_data: Batch
    epochs: int
    batch_size: int
    early_stopping: EarlyStopping | None
    max_parallel: int | None
    width: int | None = None  # trials per vmapped call for every run, if set

    def run(
        self, numeric: Mapping[str, Any], static: Mapping[str, Any], keys: jax.Array
    ) -> dict[str, np.ndarray]:
        """Curves (name -> ``(trials, epochs)`` NumPy array) of the trials in ``keys``' order,
        trained by :func:`~purelearn.training.trials.run_trials` (without the per-step
        losses: more than a search reports)."""
        hparams = dict(numeric)
        weight_decay = hparams.pop("weight_decay", None)
        return run_trials(
            self.model,
            self.factory,
            self.data,
            self.val_data,
            keys=keys,
            settings=Settings(self.epochs, self.batch_size, early_stopping=self.early_stopping),
            weight_decay=weight_decay,
            hparams=hparams,
            static=static,
            chunk=self.width or _chunk(self.max_parallel, len(keys)),
        )


def _prepare(
    model: Model,
    optimizer_factory: OptimizerFactory,
    train_data: ArrayPair,
    val_data: ArrayPair,
    *,
    epochs: int,
    batch_size: int,
    max_parallel: int | None,
    early_stopping: EarlyStopping | None,
) -> _Search:
    """Validate what every search shares before anything is traced."""
    _checks.positive_int("epochs", epochs)
    batch_size = _checks.positive_int("batch_size", batch_size)
    if max_parallel is not None:
        _checks.positive_int("max_parallel", max_parallel)
    if early_stopping is not None:
        if not isinstance(early_stopping, EarlyStopping):
            raise ValueError(
                f"early_stopping must be a pl.EarlyStopping(...) or None, got {early_stopping!r}"
            )
        early_stopping.watched(has_eval=True)
    if val_data is None:  # check_data takes None (no evaluation); a search cannot rank without
        raise ValueError("val_data must be a pair (x, y) of validation data, got None")
    data, val = check_data(model, train_data, val_data, batch_size=batch_size, eval_name="val_data")
    assert val is not None  # (for mypy: a pair in, a pair out)
    return _Search(
        model, optimizer_factory, data, val, epochs, batch_size, early_stopping, max_parallel
    )


# -- results -----------------------------------------------------------------------


class SearchResults(list[dict[str, Any]]):
    """A search's result rows (dicts), best first, with a few helpers.

    A plain ``list`` of dicts otherwise: ``results[0]["val_acc"]``, slicing
    and iteration work as on a list.

    Example:
      >>> import purelearn as pl
      >>> r = pl.SearchResults([{"learning_rate": 0.1, "trial": 0, "val_acc": 0.9,
      ...                        "train_acc": 0.95, "diverged": False}])
      >>> r.best["learning_rate"], len(r.top_k(5))
      (0.1, 1)
    """

    @property
    def best(self) -> dict[str, Any]:
        """The best row."""
        if not self:
            raise ValueError("no results")
        return self[0]

    def top_k(self, k: int) -> SearchResults:
        """The best ``k`` rows."""
        return SearchResults(self[: _checks.positive_int("k", k)])

    def table(self, k: int = 10) -> str:
        """The best ``k`` rows as a plain-text table (see :func:`top_k_table`)."""
        return top_k_table(self, k)

    def hyperparameters(self) -> list[str]:
        """The names of the searched hyperparameters."""
        return hyperparameter_names(self[0]) if self else []

    def records(self) -> list[dict[str, Any]]:
        """Rows as JSON-ready dicts: non-finite numbers become None (JSON has no NaN)."""
        return [_json_ready(row) for row in self]

    def __repr__(self) -> str:
        return f"SearchResults({len(self)} trials)\n{self.table()}"


def _json_ready(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class _Outcome(NamedTuple):
    """What a trial is ranked by: the epoch whose state it returns and that epoch's numbers."""

    epoch: int  # the last trained epoch, or the restored (best) one with restore_best
    val_acc: float
    train_acc: float
    diverged: bool  # a non-finite training loss up to that epoch


def _outcome(curves: Mapping[str, np.ndarray], i: int) -> _Outcome:
    """Trial ``i``'s outcome. With ``restore_best`` the trial returns the best epoch's
    state (``curves["best_epoch"]``, early stopping's own rule), so that epoch's numbers
    rank it; else the last trained epoch's (after a stop the curves repeat them)."""
    loss = curves["loss"][i]
    trained = curves["trained"][i] if "trained" in curves else np.ones(len(loss), bool)
    last = int(trained.sum()) - 1  # stopping is sticky: the trained epochs are a prefix
    best = int(curves["best_epoch"][i]) if "best_epoch" in curves else -1
    # -1: no epoch improved (a monitored loss never finite): the untrained state,
    # judged by the whole run
    epoch = best if best >= 0 else last
    return _Outcome(
        epoch=epoch,
        val_acc=float(curves["eval_accuracy"][i][epoch]),
        train_acc=float(curves["train_accuracy"][i][epoch]),
        diverged=not bool(np.isfinite(loss[: epoch + 1]).all()),
    )


def _rows(
    values: Mapping[str, _Column], curves: Mapping[str, np.ndarray], stopping: bool
) -> SearchResults:
    """One row per trial, ranked: finite trials by validation accuracy (the last
    trained epoch's, or with ``restore_best`` the restored epoch's), then diverged
    ones; ties keep trial order."""
    restore = "best_epoch" in curves
    rows = []
    for i in range(len(curves["loss"])):
        history = {name: curves[name][i].tolist() for name in METRICS}
        if stopping:
            history["trained"] = curves["trained"][i].tolist()
        outcome = _outcome(curves, i)
        row: dict[str, Any] = {name: _plain(v[i]) for name, v in values.items()}
        row.update(
            trial=i,
            val_acc=outcome.val_acc,
            train_acc=outcome.train_acc,
            val_acc_curve=history["eval_accuracy"],
            train_acc_curve=history["train_accuracy"],
            loss_curve=history["loss"],
            diverged=outcome.diverged,
            history=history,
        )
        if stopping:
            row["epochs_run"] = int(curves["trained"][i].sum())
        if restore:
            best = int(curves["best_epoch"][i])
            row["best_epoch"] = best if best >= 0 else None
        rows.append(row)
    rows.sort(key=lambda r: (r["diverged"], -r["val_acc"]))
    return SearchResults(rows)


#: one hyperparameter's values, one per trial
_Column = Sequence[Any] | np.ndarray


def _per_trial(fixed: Mapping[str, Any], n: int) -> dict[str, list[Any]]:
    return {name: [value] * n for name, value in fixed.items()}


def _numeric(values: Mapping[str, _Column]) -> dict[str, np.ndarray]:
    return {name: np.asarray(v, np.float64) for name, v in values.items() if not _is_static(v[0])}


# -- searches ----------------------------------------------------------------------


def random_search(
    model: Model,
    optimizer_factory: OptimizerFactory,
    train_data: ArrayPair,
    val_data: ArrayPair,
    *,
    space: Mapping[str, Any],
    num_trials: int,
    epochs: int,
    batch_size: int,
    key: jax.Array | int,
    max_parallel: int | None = None,
    early_stopping: EarlyStopping | None = None,
) -> SearchResults:
    """Random search: ``num_trials`` draws from ``space``, trained as one vmapped program.

    Trial ``i`` trains ``train_run(model, inject_hyperparams(optimizer_factory)(**h_i),
    train_data, key=split(key, num_trials)[i], eval_data=val_data,
    weight_decay=h_i["weight_decay"])`` and is scored by its validation
    accuracy after the last epoch.

    Args:
      model: a :class:`~purelearn.models.Model`.
      optimizer_factory: e.g. ``pl.sgd``; called through ``optax.inject_hyperparams``.
      train_data, val_data: ``(x, y)`` pairs.
      space: ``{name: uniform(...) | log_uniform(...) | fixed value}``; names are
        ``"weight_decay"`` (the L2 penalty) and arguments of ``optimizer_factory``.
      num_trials, epochs, batch_size: positive integers.
      key: a JAX key (or an int seed); it seeds both the draws and the trials.
      max_parallel: trials per vmapped chunk. The default trains all trials at
        once on GPU and TPU, and
        :data:`~purelearn.training.trials.CPU_CHUNK` at a time on CPU, where one
        trial already keeps the cores busy and wider vmaps fall out of cache.
      early_stopping: stop each trial on its own when its monitored metric
        (validation accuracy by default) stops improving; a stopped trial's
        curves stay frozen and its row gains ``"epochs_run"``. Its
        ``"val_acc"`` is the accuracy it stopped at, or with
        ``restore_best=True`` the restored epoch's (the state the trial
        returns), and then its row gains ``"best_epoch"``.

    Returns:
      :class:`SearchResults`, best ``"val_acc"`` first.

    Example:
      >>> import jax, jax.numpy as jnp, purelearn as pl
      >>> x = jax.random.normal(jax.random.key(1), (64, 2))
      >>> y = (x[:, 0] > 0).astype(jnp.int32)
      >>> results = pl.random_search(pl.mlp([2, 8, 2]), pl.sgd, (x, y), (x, y),
      ...     space={"learning_rate": pl.log_uniform(1e-3, 1.0)}, num_trials=4,
      ...     epochs=3, batch_size=16, key=0)
      >>> best = results.best
      >>> len(results), best["val_acc"] == best["history"]["eval_accuracy"][-1]
      (4, True)
    """
    num_trials = _checks.positive_int("num_trials", num_trials)
    dists, fixed = _split_space(space, optimizer_factory)
    key = _checks.key_or_seed("key", key)
    search = _prepare(
        model,
        optimizer_factory,
        train_data,
        val_data,
        epochs=epochs,
        batch_size=batch_size,
        max_parallel=max_parallel,
        early_stopping=early_stopping,
    )
    values: dict[str, _Column] = {
        **_sample(dists, _numpy_rng(key), num_trials),
        **_per_trial(fixed, num_trials),
    }
    static = {name: v for name, v in fixed.items() if _is_static(v)}
    curves = search.run(_numeric(values), static, jax.random.split(key, num_trials))
    return _rows(values, curves, early_stopping is not None)


def grid_search(
    model: Model,
    optimizer_factory: OptimizerFactory,
    train_data: ArrayPair,
    val_data: ArrayPair,
    *,
    grid: Mapping[str, Sequence[Any]],
    epochs: int,
    batch_size: int,
    key: jax.Array | int,
    max_parallel: int | None = None,
    early_stopping: EarlyStopping | None = None,
) -> SearchResults:
    """Grid search: every point of the Cartesian product of ``grid``'s value lists.

    The same vmapped machinery as :func:`random_search`; the trials are the
    product in ``itertools.product`` order (the last name varies fastest), and
    trial ``i`` uses ``split(key, num_points)[i]``. Lists of numbers are
    traced; lists of bools, strings or None (``"nesterov": [True, False]``)
    are passed to the factory as they are, each combination its own program.

    Example:
      >>> import jax, jax.numpy as jnp, purelearn as pl
      >>> x = jax.random.normal(jax.random.key(1), (64, 2))
      >>> y = (x[:, 0] > 0).astype(jnp.int32)
      >>> results = pl.grid_search(pl.mlp([2, 8, 2]), pl.sgd, (x, y), (x, y),
      ...     grid={"learning_rate": [0.01, 0.1], "weight_decay": [0.0, 1e-3]},
      ...     epochs=2, batch_size=16, key=0)
      >>> len(results)
      4
    """
    lists = _check_grid(grid, optimizer_factory)
    key = _checks.key_or_seed("key", key)
    search = _prepare(
        model,
        optimizer_factory,
        train_data,
        val_data,
        epochs=epochs,
        batch_size=batch_size,
        max_parallel=max_parallel,
        early_stopping=early_stopping,
    )
    points = list(itertools.product(*lists.values()))
    values = {name: [p[j] for p in points] for j, name in enumerate(lists)}
    keys = jax.random.split(key, len(points))
    static_names = [name for name, options in lists.items() if _is_static(options[0])]
    mixed = [n for n, opts in lists.items() if len({_is_static(v) for v in opts}) > 1]
    if mixed:
        raise ValueError(
            f"grid[{mixed[0]!r}] mixes numbers with bools/strings/None: {lists[mixed[0]]!r}"
        )
    # Trials that share their static settings train as one program; results keep trial order.
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, point in enumerate(points):
        combo = tuple((n, point[list(lists).index(n)]) for n in static_names)
        groups.setdefault(combo, []).append(i)
    parts: dict[int, dict[str, np.ndarray]] = {}
    for combo, members in groups.items():
        idx = np.asarray(members)
        numeric = {k: v[idx] for k, v in _numeric(values).items()}
        out = search.run(numeric, dict(combo), keys[idx])
        for j, i in enumerate(members):
            parts[i] = {k: v[j] for k, v in out.items()}
    curves = {k: np.stack([parts[i][k] for i in range(len(points))]) for k in parts[0]}
    return _rows(values, curves, early_stopping is not None)


def bayes_search(
    model: Model,
    optimizer_factory: OptimizerFactory,
    train_data: ArrayPair,
    val_data: ArrayPair,
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
) -> SearchResults:
    """Bayesian search with Optuna: ask a batch of trials, train it vmapped, tell the scores.

    Optuna's sampler (``"tpe"``: ``TPESampler`` with the constant liar for
    batches; ``"gp"``: ``GPSampler``, which needs PyTorch) is seeded from
    ``key``; ``uniform``/``log_uniform`` become ``suggest_float(log=False/True)``
    and the study maximizes validation accuracy (a diverged trial is told
    0). Each batch of ``trials_per_batch`` trials is one vmapped program
    (chunked by ``max_parallel``, compiled once); trial ``i`` (in the order
    asked) uses ``split(key, num_trials)[i]``. Other arguments and the
    results are as in :func:`random_search`.

    Example:
      >>> import jax, jax.numpy as jnp, purelearn as pl
      >>> x = jax.random.normal(jax.random.key(1), (64, 2))
      >>> y = (x[:, 0] > 0).astype(jnp.int32)
      >>> results = pl.bayes_search(pl.mlp([2, 8, 2]), pl.sgd, (x, y), (x, y),
      ...     space={"learning_rate": pl.log_uniform(1e-3, 1.0)}, num_trials=4,
      ...     trials_per_batch=2, epochs=2, batch_size=16, key=0)
      >>> len(results)
      4
    """
    try:
        import optuna
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("bayes_search needs Optuna: pip install 'purelearn[examples]'") from err
    num_trials = _checks.positive_int("num_trials", num_trials)
    trials_per_batch = _checks.positive_int("trials_per_batch", trials_per_batch)
    _checks.choice("sampler", sampler, ("tpe", "gp"))
    dists, fixed = _split_space(space, optimizer_factory)
    key = _checks.key_or_seed("key", key)
    search = _prepare(
        model,
        optimizer_factory,
        train_data,
        val_data,
        epochs=epochs,
        batch_size=batch_size,
        max_parallel=max_parallel,
        early_stopping=early_stopping,
    )
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
            chosen: optuna.samplers.BaseSampler = optuna.samplers.GPSampler(seed=seed)
        else:
            chosen = optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    # Every batch (the last one padded) is as wide as the first: one compiled program.
    search = dataclasses.replace(
        search, width=_chunk(max_parallel, min(trials_per_batch, num_trials))
    )
    static = {name: v for name, v in fixed.items() if _is_static(v)}
    keys = jax.random.split(key, num_trials)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one INFO line per trial otherwise
    try:
        study = optuna.create_study(direction="maximize", sampler=chosen)
        drawn, curves = _ask_train_tell(study, search, dists, fixed, static, keys, trials_per_batch)
    finally:
        optuna.logging.set_verbosity(verbosity)
    values = {**drawn, **_per_trial(fixed, num_trials)}
    return _rows(values, curves, early_stopping is not None)


def _ask_train_tell(
    study: Any,
    search: _Search,
    dists: Mapping[str, Distribution],
    fixed: Mapping[str, Any],
    static: Mapping[str, Any],
    keys: jax.Array,
    trials_per_batch: int,
) -> tuple[dict[str, list[float]], dict[str, np.ndarray]]:
    """Optuna's loop a batch at a time: every trial's drawn values and curves, in asked order."""
    import optuna

    drawn: dict[str, list[float]] = {name: [] for name in dists}
    parts = []
    for start in range(0, len(keys), trials_per_batch):
        count = min(trials_per_batch, len(keys) - start)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            trials = [study.ask() for _ in range(count)]
            batch = {
                name: [t.suggest_float(name, d.low, d.high, log=d.log) for t in trials]
                for name, d in dists.items()
            }
        numeric = _numeric({**batch, **_per_trial(fixed, count)})
        out = search.run(numeric, static, keys[start : start + count])
        for i, trial in enumerate(trials):
            outcome = _outcome(out, i)
            study.tell(trial, 0.0 if outcome.diverged else outcome.val_acc)
        for name in dists:
            drawn[name].extend(batch[name])
        parts.append(out)
    return drawn, {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# -- reporting ---------------------------------------------------------------------


def hyperparameter_names(result: Mapping[str, Any]) -> list[str]:
    """A result row's hyperparameters: every key but the trial index, scores and curves."""
    return [name for name in result if name not in RESULT_FIELDS]


def result_rows(results: Any) -> list[Mapping[str, Any]]:
    """``results`` as a list of result rows (mappings), else a ``ValueError`` naming it."""
    if isinstance(results, str | bytes | Mapping) or not isinstance(results, Iterable):
        raise ValueError(f"results must be a list of result dicts, got {results!r}")
    rows = list(results)
    if not all(isinstance(r, Mapping) for r in rows):
        raise ValueError(f"results must be a list of result dicts, got {rows!r}")
    return rows


def top_k_table(results: Sequence[Mapping[str, Any]], k: int = 10) -> str:
    """The first ``k`` results as a plain-text table (rank, hyperparameters, accuracies).

    Diverged trials are marked ``diverged``.

    Example:
      >>> import purelearn as pl
      >>> print(pl.top_k_table([{"learning_rate": 0.01, "val_acc": 0.9, "train_acc": 0.95}]))
      rank  learning_rate  val_acc  train_acc
         1           0.01   0.9000     0.9500
    """
    _checks.positive_int("k", k)
    rows = result_rows(results)[:k]
    if not rows:
        return "(no results)"
    names = hyperparameter_names(rows[0])
    header = ["rank", *names, "val_acc", "train_acc"]
    body = [
        [
            str(i + 1),
            *(f"{r[n]:.3g}" if _checks.is_real(r[n]) else str(r[n]) for n in names),
            f"{r['val_acc']:.4f}",
            f"{r['train_acc']:.4f}" + ("  diverged" if r.get("diverged") else ""),
        ]
        for i, r in enumerate(rows)
    ]
    widths = [max(len(row[j]) for row in [header, *body]) for j in range(len(header))]
    return "\n".join(
        "  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *body]
    )
