"""What the experiments share: the record, seeds, training over seeds, verdicts over seeds.

An experiment is one :class:`Experiment` record in one module. Its ``run``
trains every setting for several seeds (``seed, seed + 1, ...``) as vmapped,
jitted programs (:func:`~purelearn.training.trials.run_trials`, the runner
the searches use too) and returns plain JSON-ready numbers: the textbook's keys hold
the *first* seed's run (so ``seeds=1`` is the single run), and ``"per_seed"``
holds the same numbers with a leading seed axis. Its ``verdict`` judges every
seed on its own (:class:`SeedCheck`) and agrees with the textbook when a clear
majority of the seeds do (:func:`clear_majority`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from purelearn import _checks
from purelearn._types import Figure
from purelearn.datasets import load_mnist
from purelearn.early_stopping import METRICS
from purelearn.models import Model
from purelearn.training.data import ArrayPair, Batch

# The experiments import the runner's settings and chunking from here.
from purelearn.training.trials import Settings as Settings
from purelearn.training.trials import chunk_width as chunk_width
from purelearn.training.trials import in_chunks as in_chunks
from purelearn.training.trials import run_trials

#: The largest seed: ``jax.random.key`` (without x64) keeps only a seed's low
#: 32 bits, so ``2**32`` would silently repeat seed 0.
MAX_SEED = 2**32 - 1

Table = tuple[list[str], list[list[str]]]
#: numbers as a list or a NumPy array
Floats = Sequence[float] | np.ndarray


class SeedCheck(NamedTuple):
    """One seed judged against the textbook: ``agrees`` (None: cannot tell) and the
    named numbers the judgement rests on (the per-seed table's columns)."""

    agrees: bool | None
    numbers: dict[str, float]


class Verdict(NamedTuple):
    """An experiment's verdict over its seeds.

    ``agrees`` is True when a clear majority of the seeds agree
    (:func:`clear_majority`), None when most seeds cannot be judged;
    ``reason`` states the count and the effect sizes (mean ± std over seeds).
    """

    agrees: bool | None
    reason: str
    agreeing: int
    judged: int
    seeds: int


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One chapter experiment: what it is, how it runs, and how it is shown and judged.

    Attributes:
      name: the command's name for it (``purelearn <name>``).
      title: a heading naming the textbook figure it reproduces.
      conclusion: what the textbook concludes from it.
      order: the textbook's figure number; the registry follows it.
      run: ``run(*, seed=0, seeds=1, data="auto", quick=False) -> schema``.
      figure: ``figure(result) -> matplotlib Figure`` (curves with seed bands).
      verdict: ``verdict(result) -> Verdict``.
      table: ``table(result) -> (header, rows)``: the per-seed numbers.
      schema: the result's TypedDict, shared by the figure, verdict, table and JSON.
      explanation: an optional paragraph the report shows (plain text).
      seeded: False for a deterministic experiment (every seed gives the same run).

    Calling the record runs it (``EXPERIMENTS["init"](seed=0)``).
    """

    name: str
    title: str
    conclusion: str
    order: int
    run: Callable[..., Any]
    figure: Callable[[Mapping[str, Any]], Figure]
    verdict: Callable[[Mapping[str, Any]], Verdict]
    table: Callable[[Mapping[str, Any]], Table]
    schema: type
    explanation: str = ""
    seeded: bool = True

    def __call__(self, **kwargs: Any) -> Any:
        # A falsy non-bool ``quick`` (None, 0) would silently run the full-length experiment.
        if "quick" in kwargs:
            kwargs["quick"] = _checks.boolean("quick", kwargs["quick"])
        data = kwargs.get("data", "auto")
        # checked here too: experiments that train on no MNIST would ignore a bad one
        if not isinstance(data, str | os.PathLike) or (
            data not in ("auto", "embedded") and not os.path.isdir(data)
        ):
            raise ValueError(f"data must be 'auto', 'embedded' or a directory, got {data!r}")
        seed_list(kwargs.get("seed", 0), kwargs.get("seeds", 1))
        return self.run(**kwargs)


# -- seeds -------------------------------------------------------------------------


def seed_list(seed: int, seeds: int) -> list[int]:
    """``[seed, seed + 1, ..., seed + seeds - 1]``, all within ``[0, MAX_SEED]``.

    >>> seed_list(3, 2)
    [3, 4]
    """
    seed = _checks.nonnegative_int("seed", seed)
    seeds = _checks.positive_int("seeds", seeds)
    if seed + seeds - 1 > MAX_SEED:
        raise ValueError(
            f"seed + seeds - 1 must be at most 2**32 - 1 = {MAX_SEED} (larger seeds repeat "
            f"smaller ones), got seed={seed}, seeds={seeds}"
        )
    return [seed + i for i in range(seeds)]


def keys_of(seeds: Sequence[int]) -> jax.Array:
    """``jax.random.key(s)`` for every seed, stacked."""
    return jnp.stack([jax.random.key(s) for s in seeds])


# -- data --------------------------------------------------------------------------


def mnist(data: str) -> tuple[Batch, Batch, str]:
    """``(x, y), (xt, yt)`` as device arrays, and a one-line description."""
    (x, y), (xt, yt) = load_mnist(data)
    kind = "embedded MNIST sample" if len(x) == 4000 else "MNIST"
    return (
        (jnp.asarray(x), jnp.asarray(y)),
        (jnp.asarray(xt), jnp.asarray(yt)),
        (f"{kind} ({len(x)} train / {len(xt)} test)"),
    )


def subset(x: jax.Array, y: jax.Array, n: int, seed: int) -> Batch:
    """``n`` examples drawn without replacement (the textbook's ``x_train[:n]``
    after a shuffle, so every digit appears)."""
    idx = np.random.default_rng(seed).permutation(len(x))[:n]
    return x[idx], y[idx]


def subsets(x: jax.Array, y: jax.Array, n: int, seeds: Sequence[int]) -> Batch:
    """:func:`subset` for every seed, stacked: ``(len(seeds), n, ...)``."""
    idx = np.stack([np.random.default_rng(s).permutation(len(x))[:n] for s in seeds])
    return x[idx], y[idx]


# -- training over seeds ------------------------------------------------------------


def train_over(
    model: Model,
    optimizer: Any,
    data: ArrayPair,
    *,
    keys: jax.Array,
    settings: Settings,
    eval_data: ArrayPair | None = None,
    weight_decay: np.ndarray | None = None,
    hparams: Mapping[str, np.ndarray] | None = None,
    shared_data: bool = True,
    chunk: int | None = None,
) -> dict[str, np.ndarray]:
    """:func:`~purelearn.training.trials.run_trials` for the experiments: the same
    arguments, and the curves keep ``"step_loss"`` (the iteration-based experiments
    plot it).

    Run ``i`` uses ``keys[i]``, ``weight_decay[i]`` (when given), the
    hyperparameters ``hparams[name][i]`` (then ``optimizer`` is a factory,
    wrapped in ``optax.inject_hyperparams``) and, unless ``shared_data``, the
    training set ``data[0][i], data[1][i]``. Returns ``train_run``'s curves as
    NumPy arrays with a leading run axis.
    """
    return run_trials(
        model,
        optimizer,
        data,
        eval_data,
        keys=keys,
        settings=settings,
        weight_decay=weight_decay,
        hparams=hparams,
        shared_data=shared_data,
        chunk=chunk,
        step_loss=True,
    )


def diverged_epochs(loss: Any) -> list[Any]:
    """For curves of per-epoch losses (last axis: epochs), the 1-based epoch at which
    each run's loss first became non-finite, ``None`` for a run that never did; nested
    like the leading axes.

    A diverged run's accuracy is that of NaN logits (every prediction counted wrong),
    which a figure would show as a run that does not learn: this says it diverged.

    >>> diverged_epochs([[0.5, 0.4, 0.3], [0.5, float("nan"), float("nan")]])
    [None, 2]
    """
    bad = ~np.isfinite(np.asarray(loss, dtype=float))
    first = np.where(bad.any(axis=-1), bad.argmax(axis=-1) + 1, 0)
    out: list[Any] = np.vectorize(lambda e: int(e) or None, otypes=[object])(first).tolist()
    return out


def round_list(a: Any, digits: int = 4) -> list[Any]:
    """A NumPy array as nested lists of floats rounded to ``digits``."""
    rounded: list[Any] = np.round(np.asarray(a, np.float64), digits).tolist()
    return rounded


def train_test_curves(curves: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """One run's JSON from :func:`~purelearn.training.train_run`'s curves: its per-epoch
    ``"history"`` in the engine's vocabulary, and the textbook's ``"train_acc"`` /
    ``"test_acc"`` names beside it (the experiments' JSON has always had them)."""
    history = {name: round_list(curves[name]) for name in METRICS}
    return {
        "train_acc": history["train_accuracy"],
        "test_acc": history["eval_accuracy"],
        "history": history,
    }


def seed_curves(curves: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Per-seed ``"train_acc"`` / ``"test_acc"`` (``[seed][epoch]``) from curves with a
    leading seed axis."""
    return {
        "train_acc": round_list(curves["train_accuracy"]),
        "test_acc": round_list(curves["eval_accuracy"]),
    }


# -- numbers and verdicts -----------------------------------------------------------


def tail_mean(values: Floats, fraction: float = 0.1, cap: int | None = None) -> float:
    """Mean of the last ``fraction`` of ``values`` (at least one, at most ``cap``).

    >>> tail_mean([0.0] * 90 + [1.0] * 10)
    1.0
    """
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return float("nan")
    k = max(1, round(v.size * fraction))
    if cap is not None:
        k = min(k, cap)
    return float(np.mean(v[-k:]))


def head_mean(values: Floats, fraction: float = 0.1) -> float:
    """Mean of the first ``fraction`` of ``values`` (at least one)."""
    v = np.asarray(values, dtype=float)
    return float(np.mean(v[: max(1, round(v.size * fraction))])) if v.size else float("nan")


def fmt(x: Any, digits: int = 3) -> str:
    """A number for a table: fixed-point when readable, else scientific.

    >>> fmt(0.12345), fmt(1e-5), fmt(float("nan"))
    ('0.123', '1.00e-05', 'nan')
    """
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isnan(v):
        return "nan"
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
        return f"{v:.2e}"
    return f"{v:.{digits}f}"


def pm(values: Sequence[float], digits: int = 3) -> str:
    """``"mean ± std"`` over seeds (sample std), or the one value for one seed.

    >>> pm([0.1, 0.3]), pm([0.5])
    ('0.200 ± 0.141', '0.500')
    """
    v = np.asarray(values, dtype=float)
    if v.size == 1:
        return fmt(v[0], digits)
    return f"{fmt(v.mean(), digits)} ± {fmt(v.std(ddof=1), digits)}"


def clear_majority(agreeing: int, seeds: int) -> bool:
    """At least two thirds of the seeds (all of one or two seeds, 2 of 3, 3 of 4, 4 of 5).

    >>> [clear_majority(k, 3) for k in range(4)]
    [False, False, True, True]
    """
    agreeing = _checks.nonnegative_int("agreeing", agreeing)
    seeds = _checks.nonnegative_int("seeds", seeds)
    return seeds > 0 and 3 * agreeing >= 2 * seeds


def verdict_over(checks: Sequence[SeedCheck], claim: str, effect: str) -> Verdict:
    """The verdict on per-seed ``checks``: "<claim> in k of n seeds; <effect>."."""
    n = len(checks)
    judged = [c for c in checks if c.agrees is not None]
    k = sum(bool(c.agrees) for c in judged)
    if 2 * len(judged) <= n:
        return Verdict(None, f"most seeds cannot be judged: {effect}.", k, len(judged), n)
    unit = "seed" if n == 1 else "seeds"
    return Verdict(
        clear_majority(k, n), f"{claim} in {k} of {n} {unit}; {effect}.", k, len(judged), n
    )


def column(checks: Sequence[SeedCheck], name: str) -> list[float]:
    """One number across the seeds."""
    return [c.numbers[name] for c in checks]


def seed_table(
    seeds: Sequence[int], checks: Sequence[SeedCheck], columns: Sequence[tuple[Any, ...]]
) -> Table:
    """The per-seed table: one row per seed (its numbers and whether it agrees), then
    the mean ± std over the seeds. ``columns`` are ``(number name, heading)`` or
    ``(number name, heading, digits)`` (default 3 digits; 0 for counts)."""
    word = {True: "yes", False: "no", None: "n/a"}
    spec = [(c[0], c[1], c[2] if len(c) > 2 else 3) for c in columns]
    rows = [
        [str(s), *(fmt(c.numbers[name], d) for name, _, d in spec), word[c.agrees]]
        for s, c in zip(seeds, checks, strict=True)
    ]
    if len(checks) > 1:
        agree = sum(c.agrees is True for c in checks)
        rows.append(
            [
                "mean ± std",
                *(pm(column(checks, name), max(d, 1)) for name, _, d in spec),
                f"{agree} of {len(checks)}",
            ]
        )
    return ["seed", *(head for _, head, _ in spec), "agrees"], rows
