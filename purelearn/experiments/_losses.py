"""What the two iteration-based experiments (optimizers, init) share: training several
named runs over seeds with the textbook's loop, their figure and their numbers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict

import jax
import numpy as np
import optax
from tqdm.auto import tqdm

from purelearn._types import Figure
from purelearn.experiments._common import (
    Settings,
    head_mean,
    round_list,
    tail_mean,
    train_over,
)
from purelearn.models import Model
from purelearn.training.data import ArrayPair


class LossPerSeed(TypedDict):
    loss: dict[str, list[list[float]]]  # name -> [seed][step]
    test_accuracy: dict[str, list[float]]  # name -> [seed]


class LossCurves(TypedDict):
    """What :func:`compare_loss_curves` measures: the first seed's curves, every seed's."""

    loss: dict[str, list[float]]
    test_accuracy: dict[str, float]
    iterations: int
    per_seed: LossPerSeed


class LossResult(TypedDict):
    """The result of an iteration-based experiment; ``loss`` and ``test_accuracy`` are
    the first seed's, ``per_seed`` holds every seed's."""

    loss: dict[str, list[float]]  # name -> per-step training loss
    test_accuracy: dict[str, float]
    iterations: int
    seeds: list[int]
    per_seed: LossPerSeed
    data: str
    quick: bool
    seconds: float


def compare_loss_curves(
    runs: Mapping[str, tuple[Model, optax.GradientTransformation]],
    data: tuple[ArrayPair, ArrayPair],
    *,
    iterations: int,
    keys: jax.Array,
    desc: str,
) -> LossCurves:
    """Train each ``name -> (model, optimizer)`` with the textbook's iteration loop, for
    every key (seed) as one vmapped program per name.

    The loop is :func:`~purelearn.training.train_run` with ``sampling="random"``:
    ``iterations`` steps on mini-batches of 128 drawn with replacement, then the
    test set evaluated. Every name gets the same keys (same initial draws, same
    mini-batches per seed), so the curves differ only by what the runs vary.
    """
    train, test = data
    settings = Settings(epochs=1, batch_size=128, steps_per_epoch=iterations, sampling="random")
    losses, accuracies = {}, {}
    for name, (model, optimizer) in tqdm(runs.items(), desc=desc, leave=False):
        curves = train_over(model, optimizer, train, keys=keys, settings=settings, eval_data=test)
        losses[name] = round_list(curves["step_loss"][:, 0, :], 5)
        accuracies[name] = round_list(curves["eval_accuracy"][:, -1], 4)
    return {
        "loss": {k: v[0] for k, v in losses.items()},
        "test_accuracy": {k: v[0] for k, v in accuracies.items()},
        "iterations": iterations,
        "per_seed": {"loss": losses, "test_accuracy": accuracies},
    }


def summary(result: Mapping[str, Any], name: str, i: int) -> tuple[float, float, float]:
    """Seed ``i``'s (initial, final, mean) loss of run ``name``; the ends are means of
    the first and last 10% of the steps."""
    loss = np.asarray(result["per_seed"]["loss"][name][i], dtype=float)
    return head_mean(loss), tail_mean(loss), float(loss.mean()) if loss.size else float("nan")


def loss_figure(
    result: Mapping[str, Any],
    *,
    ylim: tuple[float, float],
    markers: Mapping[str, str],
    labels: Mapping[str, str],
    title: str,
) -> Figure:
    """Smoothed training loss per run: the mean over seeds, a band from the lowest to
    the highest seed, and the test accuracy (mean over seeds) in the legend."""
    from purelearn.plotting import band, new_figure

    fig = new_figure(10.0, 5.0)
    ax = fig.add_subplot()
    per_seed = result["per_seed"]
    n = len(result["seeds"])
    for name, curves in per_seed["loss"].items():
        acc = float(np.mean(per_seed["test_accuracy"][name]))
        steps = len(curves[0])
        band(
            ax,
            curves,
            x=np.arange(steps),
            smooth=True,
            marker=markers.get(name, "."),
            markevery=max(1, steps // 20),
            markersize=5,
            linewidth=1.2,
            label=f"{labels.get(name, name)} (test acc {acc:.3f})",
        )
    ax.set_xlabel("iterations")
    ax.set_ylabel("loss (smoothed)")
    ax.set_ylim(*ylim)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    fig.legend(loc="outside right upper", fontsize=9)
    spread = f"mean of {n} seeds, band: min to max" if n > 1 else "1 seed"
    ax.set_title(f"{title} ({spread})", fontsize=11)
    return fig
