"""Figure 6-24: random search over learning rate and weight decay.

The textbook's setting: 500 training images split 400 / 100 into training
and validation, a 784-100x6-10 net, SGD, batches of 100, 50 epochs, 100
trials with learning rate log-uniform in [1e-6, 1e-2] and weight decay
log-uniform in [1e-8, 1e-4]. All trials train as one vmapped program
(:func:`purelearn.tuning.random_search`) with the first seed.

With more seeds, the best trials (the figure's 20) are re-run with every
other seed's initial weights and batch order (the trial's key in that
seed's search, on the same split), so each panel shows the trial's spread.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

import jax
import numpy as np

from purelearn import optimizers
from purelearn._types import Figure
from purelearn.experiments._common import (
    Experiment,
    Floats,
    SeedCheck,
    Settings,
    Table,
    Verdict,
    column,
    mnist,
    pm,
    round_list,
    seed_list,
    seed_table,
    subset,
    train_over,
    verdict_over,
)
from purelearn.experiments._overfit import SIZES
from purelearn.models import mlp
from purelearn.training.data import Batch
from purelearn.tuning import log_uniform, random_search

SPACE = {"learning_rate": (1e-6, 1e-2), "weight_decay": (1e-8, 1e-4)}
#: How many of the best trials the figure draws and the seeds re-run.
TOP = 20


class Trial(TypedDict):
    trial: int
    learning_rate: float
    weight_decay: float
    val_acc: float
    train_acc: float
    val_acc_curve: list[float]
    train_acc_curve: list[float]


class TopPerSeed(TypedDict):
    """The best ``len(trial)`` trials (in the first seed's order) for every seed."""

    trial: list[int]  # trial numbers
    val_acc: list[list[float]]  # [top trial][seed]
    val_acc_curve: list[list[list[float]]]  # [top trial][seed][epoch]
    train_acc_curve: list[list[list[float]]]


class SearchResult(TypedDict):
    """``trials``: the first seed's search, best first; ``per_seed``: its best trials
    re-run with every seed (the first seed's column is the search's own run)."""

    trials: list[Trial]
    per_seed: TopPerSeed
    space: dict[str, list[float]]
    num_trials: int
    epochs: int
    seeds: list[int]
    data: str
    quick: bool
    seconds: float


def rerun(
    trials: Sequence[Mapping[str, Any]],
    seeds: Sequence[int],
    num_trials: int,
    train: Batch,
    val: Batch,
    *,
    epochs: int,
) -> dict[str, np.ndarray]:
    """The ``trials`` again for every seed in ``seeds``: trial ``i`` with seed ``s`` uses
    ``split(key(s), num_trials)[i]`` (its key in seed ``s``'s search); one vmapped
    program for all of them. Curves are ``(len(seeds), len(trials), epochs)``."""
    index = np.asarray([t["trial"] for t in trials])
    keys = jax.numpy.concatenate(
        [jax.random.split(jax.random.key(s), num_trials)[index] for s in seeds]
    )
    m = len(trials)
    curves = train_over(
        mlp(SIZES),
        optimizers.sgd,
        train,
        keys=keys,
        settings=Settings(epochs=epochs, batch_size=100),
        eval_data=val,
        weight_decay=np.tile([t["weight_decay"] for t in trials], len(seeds)),
        hparams={"learning_rate": np.tile([t["learning_rate"] for t in trials], len(seeds))},
    )
    return {k: v.reshape(len(seeds), m, *v.shape[1:]) for k, v in curves.items()}


def run(*, seed: int = 0, seeds: int = 1, data: str = "auto", quick: bool = False) -> SearchResult:
    start = time.perf_counter()
    seed_values = seed_list(seed, seeds)
    (x, y), _, described = mnist(data)
    x, y = subset(x, y, 500, seed)
    train, val = (x[:400], y[:400]), (x[400:], y[400:])
    num_trials = 16 if quick else 100
    epochs = 50
    results = random_search(
        mlp(SIZES),
        optimizers.sgd,
        train,
        val,
        space={name: log_uniform(lo, hi) for name, (lo, hi) in SPACE.items()},
        num_trials=num_trials,
        epochs=epochs,
        batch_size=100,
        key=jax.random.key(seed),
    )
    trials = [
        Trial(
            trial=int(r["trial"]),
            learning_rate=r["learning_rate"],
            weight_decay=r["weight_decay"],
            val_acc=r["val_acc"],
            train_acc=r["train_acc"],
            val_acc_curve=round_list(r["val_acc_curve"]),
            train_acc_curve=round_list(r["train_acc_curve"]),
        )
        for r in results
    ]
    top = trials[: min(TOP, num_trials)]
    val_curves = [[t["val_acc_curve"]] for t in top]
    train_curves = [[t["train_acc_curve"]] for t in top]
    if len(seed_values) > 1:
        again = rerun(top, seed_values[1:], num_trials, train, val, epochs=epochs)
        for j in range(len(top)):
            val_curves[j] += round_list(again["eval_accuracy"][:, j])
            train_curves[j] += round_list(again["train_accuracy"][:, j])
    return SearchResult(
        trials=trials,
        per_seed=TopPerSeed(
            trial=[t["trial"] for t in top],
            val_acc=[[c[-1] for c in v] for v in val_curves],
            val_acc_curve=val_curves,
            train_acc_curve=train_curves,
        ),
        space={k: list(v) for k, v in SPACE.items()},
        num_trials=num_trials,
        epochs=epochs,
        seeds=seed_values,
        data=f"400 training / 100 validation images of the {described} (the first seed's split)",
        quick=quick,
        seconds=round(time.perf_counter() - start, 2),
    )


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean rank)."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=float)
    ranks[order] = np.arange(len(x), dtype=float)
    for value in np.unique(x):
        tie = x == value
        ranks[tie] = ranks[tie].mean()
    return ranks


def spearman(a: Floats, b: Floats) -> float:
    """Spearman's rank correlation (nan when either side is constant)."""
    ra, rb = _ranks(np.asarray(a, dtype=float)), _ranks(np.asarray(b, dtype=float))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def judge(lrs: Floats, wds: Floats, val: Floats) -> SeedCheck:
    """Trials (any order) judged as the textbook's conclusion: the best (top quarter,
    at most 5) have learning rates in [5e-4, 2e-2] (about 1e-3..1e-2), and validation
    accuracy follows log learning rate more closely (Spearman) than log weight decay.
    None with fewer than 3 trials or when none reaches 0.3 validation accuracy."""
    lrs, wds, val = (np.asarray(v, dtype=float) for v in (lrs, wds, val))
    n = len(val)
    order = np.argsort(-val, kind="stable")
    k = max(1, min(5, n // 4))
    best = lrs[order[:k]]
    numbers = {
        "best val": float(val[order[0]]) if n else float("nan"),
        "best lr in range": float(np.mean((best >= 5e-4) & (best <= 2e-2))) if n else 0.0,
        "rho lr": spearman(np.log10(lrs), val) if n else float("nan"),
        "rho wd": spearman(np.log10(wds), val) if n else float("nan"),
    }
    if n < 3 or numbers["best val"] < 0.3:
        return SeedCheck(None, numbers)
    rho_lr, rho_wd = numbers["rho lr"], numbers["rho wd"]
    lr_matters = (not math.isnan(rho_lr)) and (math.isnan(rho_wd) or abs(rho_lr) > abs(rho_wd))
    return SeedCheck(bool(numbers["best lr in range"] == 1.0 and lr_matters), numbers)


def checks(result: Mapping[str, Any]) -> list[SeedCheck]:
    """Every seed judged on the best trials re-run with it (``per_seed``)."""
    by_trial = {t["trial"]: t for t in result["trials"]}
    top = [by_trial[i] for i in result["per_seed"]["trial"]]
    lrs = [t["learning_rate"] for t in top]
    wds = [t["weight_decay"] for t in top]
    val = np.asarray(result["per_seed"]["val_acc"], dtype=float)  # (top, seeds)
    return [judge(lrs, wds, val[:, j]) for j in range(val.shape[1])]


def verdict(result: Mapping[str, Any]) -> Verdict:
    trials = result["trials"]
    whole = judge(
        [t["learning_rate"] for t in trials],
        [t["weight_decay"] for t in trials],
        [t["val_acc"] for t in trials],
    )
    per_seed = checks(result)
    m = len(result["per_seed"]["trial"])
    v = verdict_over(
        per_seed,
        f"among the best {m} trials re-run with each seed, the best have learning rates in "
        "about 1e-3..1e-2 and the learning rate matters more than the weight decay",
        f"best validation accuracy {pm(column(per_seed, 'best val'), 2)}, rank correlation "
        f"of validation accuracy with log learning rate {pm(column(per_seed, 'rho lr'), 2)}, "
        f"with log weight decay {pm(column(per_seed, 'rho wd'), 2)}. The whole search of "
        f"{len(trials)} trials (first seed) "
        + (
            "agrees"
            if whole.agrees
            else "does not agree"
            if whole.agrees is False
            else "cannot be judged"
        )
        + f": rank correlation {whole.numbers['rho lr']:.2f} with log learning rate, "
        f"{whole.numbers['rho wd']:.2f} with log weight decay, best validation accuracy "
        f"{whole.numbers['best val']:.2f}",
    )
    return v


def table(result: Mapping[str, Any]) -> Table:
    cols = [
        ("best val", "best val acc"),
        ("best lr in range", "best lrs in 1e-3..1e-2"),
        ("rho lr", "rho(val, log lr)"),
        ("rho wd", "rho(val, log wd)"),
    ]
    return seed_table(result["seeds"], checks(result), cols)


def figure(result: Mapping[str, Any]) -> Figure:
    from purelearn.plotting import search_figure

    spread = [
        {"val_acc_curve": v, "train_acc_curve": t}
        for v, t in zip(
            result["per_seed"]["val_acc_curve"], result["per_seed"]["train_acc_curve"], strict=True
        )
    ]
    return search_figure(
        result["trials"], k=TOP, spread=spread if len(result["seeds"]) > 1 else None
    )


EXPERIMENT = Experiment(
    name="search",
    title="Random search over learning rate and weight decay (Figure 6-24)",
    conclusion=(
        "Sampling the learning rate and weight decay at random on a log scale, and judging "
        "each trial by its validation (never test) accuracy, shows the good region: learning "
        "rates roughly between 1e-3 and 1e-2, weight decay roughly 1e-8 to 1e-6, which "
        "matters much less than the learning rate. The search is then repeated in the "
        "narrowed range."
    ),
    order=24,
    run=run,
    figure=figure,
    verdict=verdict,
    table=table,
    schema=SearchResult,
    explanation=(
        "The search itself runs once, with the first seed. Each seed then re-runs the best "
        "trials (the same hyperparameters and 400/100 split, that seed's initial weights "
        "and batch order); the figure's bands and the per-seed table come from those "
        "re-runs, so they show how much of a trial's rank is luck."
    ),
)

__all__ = ["EXPERIMENT"]
