"""What the two overfitting experiments (weight decay, dropout) share: 300 training
images, the 7-layer net, SGD lr 0.01, batches of 100, the test set after every epoch,
trained over seeds; their per-seed gaps and their figure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

import jax
import numpy as np

from purelearn._types import Figure
from purelearn.experiments._common import (
    Settings,
    keys_of,
    seed_curves,
    subsets,
    tail_mean,
    train_over,
    train_test_curves,
)
from purelearn.models import Model
from purelearn.optimizers import sgd
from purelearn.training.data import ArrayPair, Batch

SIZES = [784, 100, 100, 100, 100, 100, 100, 10]
TRAIN_SIZE = 300


class Run(TypedDict):
    train_acc: list[float]  # per epoch
    test_acc: list[float]
    history: dict[str, list[float]]  # the engine's vocabulary


class SeedRun(TypedDict):
    train_acc: list[list[float]]  # [seed][epoch]
    test_acc: list[list[float]]


def overfit_data(x: jax.Array, y: jax.Array, seeds: Sequence[int]) -> Batch:
    """Every seed's 300 training images, stacked."""
    return subsets(x, y, TRAIN_SIZE, seeds)


def overfit_runs(
    model: Model,
    train: ArrayPair,
    test: ArrayPair,
    *,
    seeds: Sequence[int],
    epochs: int,
    weight_decays: Sequence[float] | None = None,
) -> list[dict[str, np.ndarray]]:
    """The overfitting runs of ``model``: for every seed (its own images) and, with
    ``weight_decays``, every weight decay, as vmapped programs two runs wide on CPU
    (one seed's weight decays together). Returns one dict of curves (leading seed
    axis) per weight decay (one dict without them)."""
    lams = list(weight_decays) if weight_decays is not None else [None]
    n, m = len(seeds), len(lams)
    keys = keys_of(seeds)
    # Seed-major: run j is seed j // m with weight decay j % m.
    flat_keys = jax.numpy.repeat(keys, m, axis=0)
    x, y = train
    data = (np.repeat(np.asarray(x), m, axis=0), np.repeat(np.asarray(y), m, axis=0))
    wd = None if weight_decays is None else np.tile(np.asarray(lams, np.float32), n)
    curves = train_over(
        model,
        sgd(0.01),
        data,
        keys=flat_keys,
        settings=Settings(epochs=epochs, batch_size=100),
        eval_data=test,
        weight_decay=wd,
        shared_data=False,
    )
    return [{k: v[j::m] for k, v in curves.items()} for j in range(m)]


def first_and_per_seed(curves: Mapping[str, np.ndarray]) -> tuple[Run, SeedRun]:
    """The first seed's run JSON and every seed's train/test curves."""
    first = {k: v[0] for k, v in curves.items()}
    run, seeds = train_test_curves(first), seed_curves(curves)
    return (
        Run(train_acc=run["train_acc"], test_acc=run["test_acc"], history=run["history"]),
        SeedRun(train_acc=seeds["train_acc"], test_acc=seeds["test_acc"]),
    )


def gaps(per_seed_runs: Mapping[str, SeedRun], i: int) -> dict[str, tuple[float, float, float]]:
    """Seed ``i``'s (train, test, gap) per run, as means of the last 10 epochs."""
    out = {}
    for key, run in per_seed_runs.items():
        tr = tail_mean(run["train_acc"][i], cap=10)
        te = tail_mean(run["test_acc"][i], cap=10)
        out[key] = (tr, te, tr - te)
    return out


def key_value(key: str) -> float:
    try:
        return float(key)
    except ValueError:
        return float("inf")


def narrows(g: Mapping[str, tuple[float, float, float]]) -> bool | None:
    """Whether the run without regularization overfits (gap >= 0.05) and every
    regularized run has a smaller gap; None without both kinds of run."""
    base = [v for k, v in g.items() if key_value(k) == 0]
    rest = [v for k, v in g.items() if key_value(k) != 0]
    if not base or not rest:
        return None
    return base[0][2] >= 0.05 and all(v[2] < base[0][2] for v in rest)


def overfit_panels(
    fig_rows: Sequence[tuple[str, Mapping[str, SeedRun]]],
    describe: Any,
    title: str,
    seeds: int,
) -> Figure:
    """One row of panels per ``(row label, runs)``, one panel per run: the train and
    test accuracy per epoch, mean over seeds with a min-max band."""
    from purelearn.plotting import band, new_figure

    cols = max(len(runs) for _, runs in fig_rows)
    fig = new_figure(min(12.0, 3.8 * cols + 0.6), 3.3 * len(fig_rows) + 0.6)
    axes = fig.subplots(len(fig_rows), cols, squeeze=False, sharey=True)
    for r, (row_label, runs) in enumerate(fig_rows):
        items = sorted(runs.items(), key=lambda kv: (key_value(kv[0]), kv[0]))
        for c in range(cols):
            ax = axes[r, c]
            if c >= len(items):
                ax.set_visible(False)
                continue
            key, run = items[c]
            train = np.asarray(run["train_acc"], dtype=float)
            test = np.asarray(run["test_acc"], dtype=float)
            every = max(1, train.shape[-1] // 15)
            band(ax, train, marker="o", markevery=every, ms=3, label="train")
            band(ax, test, marker="s", markevery=every, ms=3, label="test")
            gap = np.mean(
                [
                    tail_mean(a, cap=10) - tail_mean(b, cap=10)
                    for a, b in zip(np.atleast_2d(train), np.atleast_2d(test), strict=True)
                ]
            )
            ax.set_title(f"{describe(key)}: gap {gap:.2f}", fontsize=9)
            ax.set_xlabel("epochs", fontsize=9)
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
        if row_label:
            axes[r, 0].set_ylabel(f"{row_label}\naccuracy", fontsize=9)
        else:
            axes[r, 0].set_ylabel("accuracy", fontsize=9)
    spread = f" (mean of {seeds} seeds, band: min to max)" if seeds > 1 else ""
    fig.suptitle(title + spread, fontsize=11)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize=9)
    return fig
