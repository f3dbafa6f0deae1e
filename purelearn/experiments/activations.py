"""Figures 6-10 to 6-14: hidden-layer activations under each initialization.

1,000 random inputs of 100 features through five 100-unit layers (no
biases), for every pairing of sigmoid, tanh and ReLU with weights of std 1,
std 0.01, Xavier and He. Std 1 saturates sigmoid units at 0 and 1 (vanishing
gradients), std 0.01 collapses them onto one value (no expressiveness);
Xavier keeps sigmoid and tanh spread out, He keeps ReLU layers alike.
Every seed draws its own inputs and weights; the figure pools the seeds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, TypedDict

import jax
import jax.numpy as jnp
import numpy as np

from purelearn import initializers
from purelearn._types import Figure
from purelearn.experiments._common import (
    Experiment,
    SeedCheck,
    Table,
    Verdict,
    column,
    pm,
    seed_list,
    seed_table,
    verdict_over,
)
from purelearn.initializers import Initializer

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
}
INITS = {
    "std=1": initializers.normal(1.0),
    "std=0.01": initializers.normal(0.01),
    "xavier": initializers.xavier_normal(),
    "he": initializers.he_normal(),
}
RANGES = {"sigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0), "relu": (0.0, 1.0)}
BINS = 30


class Histogram(TypedDict):
    counts: list[int]
    edges: list[float]
    mean: float
    std: float


class Setting(TypedDict):
    activation: str
    init: str
    layers: list[Histogram]  # five layers


class LayerStats(TypedDict):
    """Per seed (outer list) and layer (inner list)."""

    mean: list[list[float]]
    std: list[list[float]]
    saturation: list[list[float]]  # share of values in the outer 10% of the range


class ActivationsResult(TypedDict):
    """``settings`` holds the first seed's histograms, ``pooled`` the histograms of all
    seeds' values together, ``per_seed`` every seed's moments."""

    settings: dict[str, Setting]  # "sigmoid, std=1" -> ...
    pooled: dict[str, Setting]
    per_seed: dict[str, dict[str, LayerStats]]  # {"settings": {name: LayerStats}}
    seeds: list[int]
    data: str
    quick: bool
    seconds: float


def activations(
    key: jax.Array,
    activation: Callable[[jax.Array], jax.Array],
    init: Initializer,
    *,
    samples: int = 1000,
    width: int = 100,
    layers: int = 5,
) -> jax.Array:
    """The ``(layers, samples, width)`` activations of the stack."""
    input_key, *layer_keys = jax.random.split(key, layers + 1)
    x = jax.random.normal(input_key, (samples, width))
    outputs = []
    for layer_key in layer_keys:
        x = activation(x @ init(layer_key, (width, width)))
        outputs.append(x)
    return jnp.stack(outputs)


def _histogram(values: np.ndarray, act: str) -> Histogram:
    low, high = RANGES[act]
    if act == "relu":
        # ReLU is unbounded: std 1 grows it ~sqrt(50)x a layer, so widen the
        # textbook's (0, 1) to hold the bulk of the values.
        high = max(high, float(np.quantile(values, 0.99)))
    counts, edges = np.histogram(values, bins=BINS, range=(low, high))
    return Histogram(
        counts=counts.tolist(),
        edges=[float(f"{e:.5g}") for e in edges],
        mean=round(float(values.mean()), 5),
        std=round(float(values.std()), 5),
    )


def _saturation(values: np.ndarray, act: str) -> float:
    low, high = RANGES[act]
    margin = 0.1 * (high - low)
    return float(np.mean((values < low + margin) | (values > high - margin)))


def run(
    *, seed: int = 0, seeds: int = 1, data: str = "auto", quick: bool = False
) -> ActivationsResult:
    """Per-layer histograms (30 bins) and moments for all twelve settings and seeds."""
    del data
    start = time.perf_counter()
    seed_values = seed_list(seed, seeds)
    settings, pooled, per_seed = {}, {}, {}
    for act_name, act in ACTIVATIONS.items():
        for init_name, init in INITS.items():
            name = f"{act_name}, {init_name}"
            # Ten small ops a seed: eager dispatch beats compiling twelve programs.
            a = np.stack(
                [np.asarray(activations(jax.random.key(s), act, init)) for s in seed_values]
            )
            settings[name] = Setting(
                activation=act_name,
                init=init_name,
                layers=[_histogram(layer, act_name) for layer in a[0]],
            )
            pooled[name] = Setting(
                activation=act_name,
                init=init_name,
                layers=[_histogram(a[:, i], act_name) for i in range(a.shape[1])],
            )
            # the moments exactly as the histograms state them (float32, then rounded)
            per_seed[name] = LayerStats(
                mean=[[round(float(layer.mean()), 5) for layer in s] for s in a],
                std=[[round(float(layer.std()), 5) for layer in s] for s in a],
                saturation=[[round(_saturation(layer, act_name), 4) for layer in s] for s in a],
            )
    return ActivationsResult(
        settings=settings,
        pooled=pooled,
        per_seed={"settings": per_seed},
        seeds=seed_values,
        data="1000 x 100 inputs ~ N(0, 1), five 100-unit layers",
        quick=quick,
        seconds=round(time.perf_counter() - start, 2),
    )


def check(result: Mapping[str, Any], i: int) -> SeedCheck:
    """Seed ``i`` agrees when, at layer 5, sigmoid and tanh with std 1 have most values in
    the outer 10% of their range, with std 0.01 a std under 5% of the range, with Xavier
    neither; and for ReLU, std(layer 5) / std(layer 1) is within [0.5, 2] for He and under
    0.7 for Xavier and std 0.01."""
    stats = result["per_seed"]["settings"]

    def get(act: str, init: str, what: str, layer: int = -1) -> float:
        return float(stats[f"{act}, {init}"][what][i][layer])

    numbers, ok = {}, []
    for act in ("sigmoid", "tanh"):
        width = RANGES[act][1] - RANGES[act][0]
        numbers[f"{act} std=1 saturated"] = sat1 = get(act, "std=1", "saturation")
        numbers[f"{act} std=0.01 std"] = sd2 = get(act, "std=0.01", "std")
        numbers[f"{act} Xavier std"] = sdx = get(act, "xavier", "std")
        satx = get(act, "xavier", "saturation")
        ok += [sat1 > 0.5, sd2 < 0.05 * width, sdx > 0.05 * width and satx < 0.5]
    for init, label in (("he", "He"), ("xavier", "Xavier"), ("std=0.01", "std=0.01")):
        first = get("relu", init, "std", 0)
        numbers[f"ReLU {label} ratio"] = get("relu", init, "std") / first if first else 0.0
    ok.append(0.5 <= numbers["ReLU He ratio"] <= 2.0)
    ok += [numbers["ReLU Xavier ratio"] < 0.7, numbers["ReLU std=0.01 ratio"] < 0.7]
    return SeedCheck(all(ok), numbers)


_COLUMNS = [
    ("sigmoid std=1 saturated", "sigmoid std=1: saturated"),
    ("sigmoid std=0.01 std", "sigmoid std=0.01: std"),
    ("sigmoid Xavier std", "sigmoid Xavier: std"),
    ("tanh std=1 saturated", "tanh std=1: saturated"),
    ("tanh Xavier std", "tanh Xavier: std"),
    ("ReLU He ratio", "ReLU He: std5/std1"),
    ("ReLU Xavier ratio", "ReLU Xavier: std5/std1"),
    ("ReLU std=0.01 ratio", "ReLU std=0.01: std5/std1"),
]


def verdict(result: Mapping[str, Any]) -> Verdict:
    checks = [check(result, i) for i in range(len(result["seeds"]))]
    return verdict_over(
        checks,
        "every setting behaves as the textbook says at layer 5",
        f"sigmoid with std 1 has {pm(column(checks, 'sigmoid std=1 saturated'))} of its values "
        f"saturated, tanh {pm(column(checks, 'tanh std=1 saturated'))}; std 0.01 collapses "
        f"sigmoid to a std of {pm(column(checks, 'sigmoid std=0.01 std'))}, Xavier keeps "
        f"{pm(column(checks, 'sigmoid Xavier std'))}; ReLU's std ratio layer 5 / layer 1 is "
        f"{pm(column(checks, 'ReLU He ratio'))} with He, "
        f"{pm(column(checks, 'ReLU Xavier ratio'))} with Xavier and "
        f"{pm(column(checks, 'ReLU std=0.01 ratio'))} with std 0.01",
    )


def table(result: Mapping[str, Any]) -> Table:
    checks = [check(result, i) for i in range(len(result["seeds"]))]
    return seed_table(result["seeds"], checks, _COLUMNS)


def _g2(x: float) -> str:
    """Two significant digits, without a "-0"."""
    v = float(x)
    return f"{v + 0.0 if v else 0.0:.2g}"


def figure(result: Mapping[str, Any]) -> Figure:
    from purelearn.plotting import histogram, new_figure

    settings = result.get("pooled") or result["settings"]
    n_rows = max(1, len(settings))
    n_cols = max([len(s["layers"]) for s in settings.values()] or [1])
    fig = new_figure(2.1 * n_cols + 0.6, 2.0 * n_rows + 0.5)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for r, (name, setting) in enumerate(settings.items()):
        layers = setting["layers"]
        # ReLU puts about half of all values in the first bin; like the textbook
        # (plt.ylim(0, 7000)) the row's scale follows the other bins instead.
        top = max([max(layer["counts"], default=0) for layer in layers] or [1])
        if setting.get("activation") == "relu":
            rest = max([max(layer["counts"][1:], default=0) for layer in layers] or [0])
            top = rest if rest > 0 else top
        for c in range(n_cols):
            ax = axes[r, c]
            if c >= len(layers):
                ax.set_visible(False)
                continue
            layer = layers[c]
            histogram(ax, layer["counts"], layer["edges"], cut_above=top)
            ax.set_title(
                f"{c + 1}-layer  $\\mu$={_g2(layer['mean'])}  $\\sigma$={_g2(layer['std'])}",
                fontsize=8,
                pad=3,
            )
        axes[r, 0].set_ylabel(name, fontsize=10, fontweight="bold")
    n = len(result["seeds"])
    pooled = f", {n} seeds pooled" if n > 1 else ""
    fig.suptitle(
        f"Activation histograms per layer (rows: activation, weight init{pooled})", fontsize=11
    )
    return fig


EXPERIMENT = Experiment(
    name="activations",
    title="Hidden-layer activations by weight initialization (Figures 6-10 to 6-14)",
    conclusion=(
        "With sigmoid and weights of std 1 the activations pile up at 0 and 1, where the "
        "sigmoid's gradient vanishes; with std 0.01 they collapse onto 0.5, so every unit "
        "computes the same thing and the layers lose expressiveness. Xavier initialization "
        "(std 1/√n) keeps sigmoid and tanh activations spread out in every layer. For ReLU, "
        "std 0.01 and Xavier make the activations shrink layer by layer, while He "
        "initialization (std √(2/n)) keeps them equally spread in all layers."
    ),
    order=10,
    run=run,
    figure=figure,
    verdict=verdict,
    table=table,
    schema=ActivationsResult,
)

__all__ = ["EXPERIMENT"]
