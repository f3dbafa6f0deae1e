"""Figures for the chapter's experiments, verdicts against the textbook, and the HTML report.

Every experiment in :mod:`purelearn.experiments` returns a plain dict; this module
turns one into a matplotlib figure shaped like the textbook's (:func:`figure`,
:func:`save_figure`), judges whether the run reproduces the textbook's conclusion
(:func:`verdict`), and gathers all of them into one self-contained HTML page
(:func:`write_report`).

Figures are built on :class:`matplotlib.figure.Figure` directly (no pyplot, no
global state, no display needed). matplotlib is an optional dependency, imported
only when a figure is drawn; verdicts and tables work without it.
"""

from __future__ import annotations

import datetime
import html
import math
import numbers
import os
import pathlib
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from purelearn.tuning import hyperparameter_names

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "EXPERIMENTS",
    "TITLES",
    "CONCLUSIONS",
    "figure",
    "save_figure",
    "verdict",
    "headline_table",
    "write_report",
    "smooth_curve",
    "search_figure",
]

#: The experiments, in the chapter's (and the report's) order.
EXPERIMENTS = (
    "paths",
    "optimizers",
    "activations",
    "init",
    "batchnorm",
    "weight-decay",
    "dropout",
    "search",
)

#: A heading for each experiment, naming the textbook figure it reproduces.
TITLES = {
    "paths": "Update paths on f(x, y) = x²/20 + y² (Figure 6-8)",
    "optimizers": "Optimizers compared on MNIST (Figure 6-9)",
    "activations": "Hidden-layer activations by weight initialization (Figures 6-10 to 6-14)",
    "init": "Weight initialization compared on MNIST (Figure 6-15)",
    "batchnorm": "Batch normalization across initial weight scales (Figure 6-19)",
    "weight-decay": "Overfitting and weight decay (Figures 6-20 and 6-21)",
    "dropout": "Overfitting and Dropout (Figure 6-23)",
    "search": "Random search over learning rate and weight decay (Figure 6-24)",
}

#: What the textbook concludes from each experiment.
CONCLUSIONS = {
    "paths": (
        "SGD moves along the gradient, which on this elongated bowl points mostly along the "
        "steep y axis, so its path zig-zags and wastes most of its steps. Momentum rolls "
        "towards the minimum like a ball, AdaGrad damps the large y steps and moves straight, "
        "and Adam combines both: all three reach the minimum region far more directly."
    ),
    "optimizers": (
        "On MNIST with the 5-layer ReLU net, SGD learns the slowest; Momentum, AdaGrad and "
        "Adam (and Nesterov and RMSProp) bring the training loss down much faster, AdaGrad "
        "often the fastest. Which optimizer is best depends on the problem and on its "
        "hyperparameters."
    ),
    "activations": (
        "With sigmoid and weights of std 1 the activations pile up at 0 and 1, where the "
        "sigmoid's gradient vanishes; with std 0.01 they collapse onto 0.5, so every unit "
        "computes the same thing and the layers lose expressiveness. Xavier initialization "
        "(std 1/√n) keeps sigmoid and tanh activations spread out in every layer. For ReLU, "
        "std 0.01 and Xavier make the activations shrink layer by layer, while He "
        "initialization (std √(2/n)) keeps them equally spread in all layers."
    ),
    "init": (
        "With weights of std 0.01 the signal vanishes in the forward pass and the gradients "
        "in the backward pass, so the 5-layer ReLU net does not learn at all. Xavier and He "
        "initialization both learn, He the fastest."
    ),
    "batchnorm": (
        "With batch normalization the network learns faster, and it learns for almost every "
        "initial weight scale, including scales at which the plain network does not learn at "
        "all: batch normalization makes training much less dependent on the initialization."
    ),
    "weight-decay": (
        "Trained on only 300 images, the 7-layer net overfits: its training accuracy reaches "
        "about 100% while its test accuracy stays far below. Adding the L2 penalty ½λ‖W‖² "
        "with λ = 0.1 keeps the weights small; the training accuracy no longer reaches 100% "
        "and the gap between training and test accuracy narrows."
    ),
    "dropout": (
        "Dropout, which deletes randomly chosen hidden units at every training step, narrows "
        "the gap between training and test accuracy, and the training accuracy no longer "
        "reaches 100%: like weight decay it suppresses overfitting, and it acts like an "
        "ensemble of thinned networks."
    ),
    "search": (
        "Sampling the learning rate and weight decay at random on a log scale, and judging "
        "each trial by its validation (never test) accuracy, shows the good region: learning "
        "rates roughly between 1e-3 and 1e-2, weight decay roughly 1e-8 to 1e-6, which "
        "matters much less than the learning rate. The search is then repeated in the "
        "narrowed range."
    ),
}

_MATPLOTLIB_HINT = "purelearn.plotting needs matplotlib: pip install 'purelearn[examples]'"


# ---------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------


def _check_name(name: str) -> None:
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; expected one of {', '.join(EXPERIMENTS)}")


def _new_figure(width: float, height: float) -> Figure:
    """A fresh constrained-layout figure, independent of pyplot."""
    try:
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError(_MATPLOTLIB_HINT) from err
    return Figure(figsize=(width, height), layout="constrained")


def smooth_curve(x: Sequence[float]) -> np.ndarray:
    """The textbook's ``smooth_curve``: a Kaiser-window moving average, same length.

    The window is 11 points (shorter for curves shorter than that); the ends are
    padded by reflection, so the result has as many points as ``x``.

    >>> smooth_curve([1.0] * 20).round(6).tolist() == [1.0] * 20
    True
    >>> len(smooth_curve(np.arange(5.0)))
    5
    """
    x = np.asarray(x, dtype=float)
    n = x.shape[0]
    window = min(11, n if n % 2 else n - 1)
    if window < 3:
        return x.copy()
    half = window // 2
    padded = np.r_[x[window - 1 : 0 : -1], x, x[-1:-window:-1]]
    w = np.kaiser(window, 2)
    y = np.convolve(w / w.sum(), padded, mode="valid")
    return y[half : len(y) - half]


def _tail_mean(values: Sequence[float], fraction: float = 0.1, cap: int | None = None) -> float:
    """Mean of the last ``fraction`` of ``values`` (at least one, at most ``cap``)."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return float("nan")
    k = max(1, round(v.size * fraction))
    if cap is not None:
        k = min(k, cap)
    return float(np.mean(v[-k:]))


def _grid(n: int, max_cols: int) -> tuple[int, int]:
    """Rows and columns for ``n`` panels, at most ``max_cols`` wide."""
    cols = max(1, min(n, max_cols))
    return max(1, math.ceil(n / cols)), cols


def _fmt(x: Any, digits: int = 3) -> str:
    """A number for a table: fixed-point when readable, else scientific."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isnan(v):
        return "nan"
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
        return f"{v:.2e}"
    return f"{v:.{digits}f}"


def _g2(x: float) -> str:
    """Two significant digits, without a "-0"."""
    v = float(x)
    return f"{v + 0.0 if v else 0.0:.2g}"


def _key_value(key: str) -> float:
    try:
        return float(key)
    except ValueError:
        return math.inf


def _sorted_runs(data: Mapping) -> list[tuple[str, dict]]:
    """A ``runs`` mapping as (key, run) pairs in numeric order of the keys."""
    return sorted(data["runs"].items(), key=lambda kv: (_key_value(kv[0]), kv[0]))


def _panels(fig: Figure, n: int, max_cols: int, **kw) -> np.ndarray:
    """``n`` visible axes in a grid; surplus grid cells are removed."""
    rows, cols = _grid(n, max_cols)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False, **kw)).reshape(-1)
    for ax in axes[n:]:
        fig.delaxes(ax)
    return axes[:n]


# ---------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------


def _paths_figure(data: Mapping) -> Figure:
    paths = {k: np.asarray(v, dtype=float).reshape(-1, 2) for k, v in data["paths"].items()}
    lrs = data.get("lr", {})
    rows, cols = _grid(len(paths), 2)
    fig = _new_figure(5.6 * cols, 3.4 * rows + 0.4)
    axes = _panels(fig, len(paths), 2)
    # The textbook's window, widened only if a path leaves it (so nothing is cut off).
    pts = np.concatenate([p for p in paths.values() if p.size] or [np.zeros((1, 2))])
    pts = pts[np.all(np.isfinite(pts), axis=1)]
    x_lo = min(-10.0, float(pts[:, 0].min()) - 0.5) if pts.size else -10.0
    x_hi = max(10.0, float(pts[:, 0].max()) + 0.5) if pts.size else 10.0
    y_lo = min(-5.0, float(pts[:, 1].min()) - 0.5) if pts.size else -5.0
    y_hi = max(5.0, float(pts[:, 1].max()) + 0.5) if pts.size else 5.0
    gx, gy = np.meshgrid(np.linspace(x_lo, x_hi, 241), np.linspace(y_lo, y_hi, 161))
    z = gx**2 / 20.0 + gy**2
    levels = [0.25, 0.5, 1, 2, 3, 4, 5, 6, 7]
    for ax, (name, p) in zip(axes, paths.items(), strict=True):
        ax.contour(gx, gy, z, levels=levels, cmap="Greens_r", linewidths=0.8, alpha=0.9)
        ax.plot(p[:, 0], p[:, 1], "o-", color="red", markersize=3, linewidth=1, label=name)
        ax.plot([0], [0], "+", color="black", markersize=14, markeredgewidth=2)
        lr = lrs.get(name)
        ax.set_title(f"{name} (lr={lr:g})" if lr is not None else name)
        ax.set_xlim(x_lo, x_hi)
        ax.set_ylim(y_lo, y_hi)
        ax.set_xlabel("x")
        ax.set_ylabel("y")
    steps = data.get("steps")
    fig.suptitle(
        "f(x, y) = x²/20 + y², from (-7, 2)" + (f", {steps} updates" if steps else ""),
        fontsize=11,
    )
    return fig


_OPT_MARKERS = {
    "SGD": "o",
    "Momentum": "x",
    "Nesterov": "^",
    "AdaGrad": "s",
    "RMSProp": "v",
    "Adam": "D",
}
_INIT_MARKERS = {"std=0.01": "o", "xavier": "s", "he": "D"}
_INIT_LABELS = {"std=0.01": "std=0.01", "xavier": "Xavier", "he": "He"}


def _loss_figure(
    data: Mapping, *, ylim: tuple[float, float], markers: Mapping, labels: Mapping, title: str
) -> Figure:
    fig = _new_figure(10.0, 5.0)
    ax = fig.add_subplot()
    accs = data.get("test_accuracy", {})
    fallback = iter("op*hd<>")
    for name, loss in data["loss"].items():
        y = smooth_curve(loss)
        label = labels.get(name, name)
        if name in accs:
            label += f" (test acc {float(accs[name]):.3f})"
        ax.plot(
            np.arange(len(y)),
            y,
            marker=markers.get(name) or next(fallback, "."),
            markevery=max(1, len(y) // 20),
            markersize=5,
            linewidth=1.2,
            label=label,
        )
    ax.set_xlabel("iterations")
    ax.set_ylabel("loss (smoothed)")
    ax.set_ylim(*ylim)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    fig.legend(loc="outside right upper", fontsize=9)
    ax.set_title(title, fontsize=11)
    return fig


def _optimizers_figure(data: Mapping) -> Figure:
    return _loss_figure(
        data,
        ylim=(0.0, 1.0),
        markers=_OPT_MARKERS,
        labels={},
        title="MNIST, 5-layer ReLU net: training loss by optimizer",
    )


def _init_figure(data: Mapping) -> Figure:
    return _loss_figure(
        data,
        ylim=(0.0, 2.5),
        markers=_INIT_MARKERS,
        labels=_INIT_LABELS,
        title="MNIST, 5-layer ReLU net: training loss by weight initialization",
    )


def _activations_figure(data: Mapping) -> Figure:
    settings = data["settings"]
    n_rows = max(1, len(settings))
    n_cols = max([len(s["layers"]) for s in settings.values()] or [1])
    fig = _new_figure(2.1 * n_cols + 0.6, 2.0 * n_rows + 0.5)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for r, (name, setting) in enumerate(settings.items()):
        layers = setting["layers"]
        relu = setting.get("activation") == "relu" or name.startswith("relu")
        # ReLU puts about half of all values in the first bin; like the textbook
        # (plt.ylim(0, 7000)) the row's scale follows the other bins instead.
        top = max([max(layer["counts"], default=0) for layer in layers] or [1])
        if relu:
            rest = max([max(layer["counts"][1:], default=0) for layer in layers] or [0])
            if rest > 0:
                top = rest
        for c in range(n_cols):
            ax = axes[r, c]
            if c >= len(layers):
                ax.set_visible(False)
                continue
            layer = layers[c]
            counts = np.asarray(layer["counts"], dtype=float)
            edges = np.asarray(layer["edges"], dtype=float)
            ax.stairs(counts, edges, fill=True, color="tab:blue", alpha=0.85)
            ax.set_xlim(edges[0], edges[-1])
            cut = bool(counts.size) and counts[0] > top * 1.05
            # Headroom above the bars for the note on a cut first bin.
            ax.set_ylim(0, (top * (1.3 if cut else 1.08)) if top > 0 else 1)
            ax.set_title(
                f"{c + 1}-layer  $\\mu$={_g2(layer['mean'])}  $\\sigma$={_g2(layer['std'])}",
                fontsize=8,
                pad=3,
            )
            ax.tick_params(labelsize=7)
            ax.set_yticks([])
            if cut:
                ax.text(
                    0.97,
                    0.97,
                    f"bin 1 cut: {counts[0]:,.0f}",
                    transform=ax.transAxes,
                    ha="right",
                    va="top",
                    fontsize=7,
                    color="tab:red",
                )
        axes[r, 0].set_ylabel(name, fontsize=10, fontweight="bold")
    fig.suptitle("Activation histograms per layer (rows: activation, weight init)", fontsize=11)
    return fig


def _batchnorm_figure(data: Mapping) -> Figure:
    scales = [float(s) for s in data["weight_scales"]]
    bn, plain = data["train_acc_bn"], data["train_acc_plain"]
    rows, cols = _grid(len(scales), 4)
    fig = _new_figure(2.7 * cols + 0.4, 2.1 * rows + 0.9)
    axes = _panels(fig, len(scales), 4, sharex=True, sharey=True)
    for i, (ax, scale) in enumerate(zip(axes, scales, strict=True)):
        x = np.arange(1, len(bn[i]) + 1)
        ax.plot(x, bn[i], "-", color="tab:blue", linewidth=1.5, label="Batch Normalization")
        ax.plot(
            np.arange(1, len(plain[i]) + 1),
            plain[i],
            "--",
            color="tab:orange",
            linewidth=1.5,
            label="Normal (without BN)",
        )
        ax.set_title(f"W:{scale:.2g}", fontsize=10)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    for ax in axes:
        if not _has_panel_below(ax, axes):
            ax.set_xlabel("epochs", fontsize=9)
        if ax.get_subplotspec().is_first_col():
            ax.set_ylabel("train accuracy", fontsize=9)
    _hide_inner_labels_partial(axes)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncols=2, fontsize=9)
    return fig


def _has_panel_below(ax: Axes, axes: np.ndarray) -> bool:
    spec = ax.get_subplotspec()
    row, col = spec.rowspan.start, spec.colspan.start
    return any(
        o.get_subplotspec().rowspan.start == row + 1 and o.get_subplotspec().colspan.start == col
        for o in axes
    )


def _hide_inner_labels_partial(axes: np.ndarray) -> None:
    """Like ``label_outer``, but keep x labels on panels with no panel below them."""
    for ax in axes:
        ax.tick_params(labelbottom=not _has_panel_below(ax, axes))
        if not ax.get_subplotspec().is_first_col():
            ax.tick_params(labelleft=False)


def _overfit_figure(data: Mapping, *, describe: Callable[[str], str], title: str) -> Figure:
    runs = _sorted_runs(data)
    fig = _new_figure(min(11.0, 3.8 * len(runs) + 0.4), 3.8)
    axes = _panels(fig, len(runs), len(runs), sharey=True)
    for ax, (key, run) in zip(axes, runs, strict=True):
        train, test = run["train_acc"], run["test_acc"]
        every = max(1, len(train) // 15)
        ax.plot(np.arange(1, len(train) + 1), train, "o-", markevery=every, ms=4, label="train")
        ax.plot(np.arange(1, len(test) + 1), test, "s-", markevery=every, ms=4, label="test")
        gap = _tail_mean(train, cap=10) - _tail_mean(test, cap=10)
        ax.set_title(f"{describe(key)}: final gap {gap:.2f}", fontsize=10)
        ax.set_xlabel("epochs")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    fig.suptitle(title, fontsize=11)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize=9)
    return fig


def _describe_lambda(key: str) -> str:
    return "no weight decay (λ = 0)" if _key_value(key) == 0 else f"weight decay λ = {key}"


def _describe_rate(key: str) -> str:
    return "no dropout" if _key_value(key) == 0 else f"dropout rate {key}"


def _weight_decay_figure(data: Mapping) -> Figure:
    return _overfit_figure(
        data, describe=_describe_lambda, title="300 training images, 7-layer net: weight decay"
    )


def _dropout_figure(data: Mapping) -> Figure:
    return _overfit_figure(
        data, describe=_describe_rate, title="300 training images, 7-layer net: Dropout"
    )


_SHORT_NAMES = {"learning_rate": "lr", "weight_decay": "wd"}


def _hyperparameters(result: Mapping) -> list[tuple[str, float]]:
    """A result's numeric hyperparameters, under short names."""
    return [
        (_SHORT_NAMES.get(k, k), float(result[k]))
        for k in hyperparameter_names(result)
        if isinstance(result[k], int | float) and not isinstance(result[k], bool)
    ]


def search_figure(results: Sequence[Mapping], k: int = 20) -> Figure:
    """The textbook's Figure 6-24 for any search: one panel per trial, best first.

    Each panel draws the trial's per-epoch validation (solid) and training
    (dashed) accuracy and lists its hyperparameters.

    Args:
      results: the list :func:`~purelearn.tuning.random_search` (or
        ``grid_search``, ``bayes_search``) returns, best first.
      k: how many of the best trials to draw.
    """
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    trials = list(results)[:k]
    n = max(1, len(trials))
    rows, cols = _grid(n, 5)
    fig = _new_figure(2.15 * cols + 0.4, 1.9 * rows + 0.9)
    axes = _panels(fig, n, 5, sharex=True, sharey=True)
    for i, (ax, t) in enumerate(zip(axes, trials, strict=False)):
        val, train = t["val_acc_curve"], t["train_acc_curve"]
        ax.plot(np.arange(1, len(val) + 1), val, "-", color="tab:blue", label="validation")
        ax.plot(np.arange(1, len(train) + 1), train, "--", color="tab:orange", label="train")
        ax.set_title(f"Best-{i + 1} (val {float(t['val_acc']):.2f})", fontsize=9)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        ax.text(
            0.03,
            0.96,
            "\n".join(f"{name} {value:.1e}" for name, value in _hyperparameters(t)),
            transform=ax.transAxes,
            ha="left",
            va="top",
            fontsize=7,
            bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1},
        )
    for ax in axes:
        if not _has_panel_below(ax, axes):
            ax.set_xlabel("epochs", fontsize=8)
    _hide_inner_labels_partial(axes)
    if trials:
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside upper center", ncols=2, fontsize=9)
    return fig


def _search_figure(data: Mapping) -> Figure:
    return search_figure(data["trials"])


_FIGURES: dict[str, Callable[[Mapping], Figure]] = {
    "paths": _paths_figure,
    "optimizers": _optimizers_figure,
    "activations": _activations_figure,
    "init": _init_figure,
    "batchnorm": _batchnorm_figure,
    "weight-decay": _weight_decay_figure,
    "dropout": _dropout_figure,
    "search": _search_figure,
}


def figure(name: str, data: Mapping) -> Figure:
    """The figure for experiment ``name`` drawn from its result dict.

    Returns a :class:`matplotlib.figure.Figure` not registered with pyplot, so it
    needs no display and no closing; panels follow the sizes found in ``data``
    (a quick run's fewer scales, trials or epochs give fewer or shorter panels).
    """
    _check_name(name)
    return _FIGURES[name](data)


def save_figure(name: str, data: Mapping, path: str | os.PathLike, *, dpi: int = 110) -> None:
    """Draw experiment ``name``'s figure and write it to ``path`` (PNG unless the
    suffix names another format), creating the parent directory if needed."""
    fig = figure(name, data)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, dpi=dpi, format=None if path.suffix else "png")
    finally:
        fig.clear()


# ---------------------------------------------------------------------------
# verdicts
# ---------------------------------------------------------------------------

Verdict = tuple[bool | None, str]


def _path_stats(path: Sequence[Sequence[float]]) -> dict[str, float]:
    p = np.asarray(path, dtype=float).reshape(-1, 2)
    steps = np.diff(p, axis=0)
    dy = np.sign(steps[:, 1])
    return {
        "length": float(np.linalg.norm(steps, axis=1).sum()),
        "distance": float(np.linalg.norm(p[-1])) if len(p) else float("nan"),
        "reversals": int(np.sum(dy[1:] * dy[:-1] < 0)),
    }


def _paths_verdict(data: Mapping) -> Verdict:
    stats = {k: _path_stats(v) for k, v in data["paths"].items()}
    if "SGD" not in stats or len(stats) < 2:
        return None, "the run has no SGD path to compare with the others"
    sgd = stats.pop("SGD")
    start = np.asarray(data["paths"]["SGD"][0], dtype=float)
    straight = float(np.linalg.norm(start)) or float("nan")
    longest = max(stats, key=lambda k: stats[k]["length"])
    most_rev = max(s["reversals"] for s in stats.values())
    agrees = sgd["length"] > stats[longest]["length"] and sgd["reversals"] > most_rev
    others = ", ".join(stats)
    return agrees, (
        f"SGD's path is {sgd['length']:.1f} long ({sgd['length'] / straight:.1f} times the "
        f"{straight:.1f} straight-line distance to the minimum) and reverses its y direction "
        f"{sgd['reversals']} times, while {others} travel at most "
        f"{stats[longest]['length']:.1f} ({longest}) with at most {most_rev} reversals; "
        "final distances to the minimum: "
        f"SGD {sgd['distance']:.2f}, "
        + ", ".join(f"{k} {s['distance']:.2f}" for k, s in stats.items())
        + "."
    )


def _loss_summary(data: Mapping) -> dict[str, tuple[float, float, float]]:
    """Per run: (initial loss, final loss, mean loss), the ends averaged over 10%."""
    out = {}
    for name, loss in data["loss"].items():
        v = np.asarray(loss, dtype=float)
        first = float(np.mean(v[: max(1, round(v.size * 0.1))])) if v.size else float("nan")
        out[name] = (first, _tail_mean(v), float(np.mean(v)) if v.size else float("nan"))
    return out


def _optimizers_verdict(data: Mapping) -> Verdict:
    s = _loss_summary(data)
    if "SGD" not in s or len(s) < 2:
        return None, "the run has no SGD loss curve to compare with the others"
    final = {k: v[1] for k, v in s.items()}
    others = {k: v for k, v in final.items() if k != "SGD"}
    best = min(final, key=final.get)
    runner_up = max(others, key=others.get)
    agrees = final["SGD"] > others[runner_up]
    iters = f"{data['iterations']} " if "iterations" in data else ""
    if agrees:
        compare = f"the highest; the next highest is {runner_up}'s {others[runner_up]:.3f}"
    else:
        compare = f"not the highest: {runner_up}'s is {others[runner_up]:.3f}"
    return agrees, (
        f"SGD's final loss (mean of the last 10% of {iters}iterations) is {final['SGD']:.3f}, "
        f"{compare}, and the lowest is {best}'s {final[best]:.3f}."
    )


def _init_verdict(data: Mapping) -> Verdict:
    s = _loss_summary(data)
    missing = [k for k in ("std=0.01", "xavier", "he") if k not in s]
    if missing:
        return None, f"the run lacks the {', '.join(missing)} curve(s)"
    (f0, l0, _), (fx, lx, mx), (fh, lh, mh) = s["std=0.01"], s["xavier"], s["he"]
    stuck = l0 > 0.9 * f0
    learn_x, learn_h = lx < 0.85 * fx, lh < 0.85 * fh
    fastest = mh < mx
    agrees = stuck and learn_x and learn_h and fastest
    problems = []
    if not stuck:
        problems.append("std=0.01 did learn")
    if not (learn_x and learn_h):
        problems.append("Xavier or He did not bring its loss down by 15%")
    if not fastest:
        problems.append("He was not faster than Xavier")
    return agrees, (
        f"loss went from {f0:.2f} to {l0:.2f} with std=0.01, {fx:.2f} to {lx:.2f} with "
        f"Xavier and {fh:.2f} to {lh:.2f} with He, whose mean loss over the run "
        f"({mh:.3f}) is {'below' if fastest else 'not below'} Xavier's ({mx:.3f})"
        + (f" — {'; '.join(problems)}" if problems else "")
        + "."
    )


def _layer5_saturation(layer: Mapping, lo: float, hi: float) -> float:
    counts = np.asarray(layer["counts"], dtype=float)
    edges = np.asarray(layer["edges"], dtype=float)
    centers = (edges[:-1] + edges[1:]) / 2
    margin = 0.1 * (hi - lo)
    outer = (centers < lo + margin) | (centers > hi - margin)
    total = counts.sum()
    return float(counts[outer].sum() / total) if total else float("nan")


_RANGES = {"sigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0)}


def _activations_verdict(data: Mapping) -> Verdict:
    settings = data["settings"]

    def find(act: str, init: str) -> Mapping | None:
        for name, s in settings.items():
            a = s.get("activation", name.split(",")[0].strip())
            i = s.get("init", name.split(",")[-1].strip())
            if a == act and i == init:
                return s
        return None

    checks: list[tuple[bool, str]] = []
    for act, (lo, hi) in _RANGES.items():
        width = hi - lo
        parts = []
        s1 = find(act, "std=1")
        if s1:
            sat = _layer5_saturation(s1["layers"][-1], lo, hi)
            checks.append((sat > 0.5, f"{act} std=1 not saturated"))
            parts.append(f"std=1 {sat:.0%} saturated")
        s2 = find(act, "std=0.01")
        if s2:
            sd = float(s2["layers"][-1]["std"])
            checks.append((sd < 0.05 * width, f"{act} std=0.01 not collapsed"))
            parts.append(f"std=0.01 gives std {sd:.3g}")
        sx = find(act, "xavier")
        if sx:
            sd = float(sx["layers"][-1]["std"])
            sat = _layer5_saturation(sx["layers"][-1], lo, hi)
            checks.append((sd > 0.05 * width and sat < 0.5, f"{act} Xavier not spread"))
            parts.append(f"Xavier gives std {sd:.3g} ({sat:.0%} saturated)")
        if parts:
            checks.append((True, f"layer 5 {act}: " + ", ".join(parts)))
    ratios = {}
    for init in ("he", "xavier", "std=0.01"):
        s = find("relu", init)
        if s:
            first, last = float(s["layers"][0]["std"]), float(s["layers"][-1]["std"])
            ratios[init] = last / first if first else float("nan")
    if "he" in ratios:
        checks.append((0.5 <= ratios["he"] <= 2.0, "ReLU He not constant across layers"))
    for init in ("xavier", "std=0.01"):
        if init in ratios:
            checks.append((ratios[init] < 0.7, f"ReLU {init} not shrinking"))
    if ratios:
        names = {"he": "He", "xavier": "Xavier", "std=0.01": "std=0.01"}
        checks.append(
            (
                True,
                "ReLU std ratio layer 5 / layer 1: "
                + ", ".join(f"{names[k]} {v:.3g}" for k, v in ratios.items()),
            )
        )
    if not checks:
        return None, "the run has none of the textbook's activation/initialization settings"
    failed = [msg for ok, msg in checks if not ok]
    facts = [msg for ok, msg in checks if ok and (":" in msg)]
    reason = "; ".join(facts)
    if failed:
        reason += " — but " + ", ".join(failed)
    return not failed, reason + "."


def _batchnorm_verdict(data: Mapping) -> Verdict:
    bn = [np.asarray(c, dtype=float) for c in data["train_acc_bn"]]
    plain = [np.asarray(c, dtype=float) for c in data["train_acc_plain"]]
    n = len(bn)
    if n == 0:
        return None, "the run has no weight scales"
    diff = [float(b[-1] - p[-1]) for b, p in zip(bn, plain, strict=True)]
    ahead = sum(d > 0.01 for d in diff)
    behind = sum(d < -0.01 for d in diff)
    faster = sum(b.mean() > p.mean() for b, p in zip(bn, plain, strict=True))
    plain_fail = sum(p[-1] < 0.2 for p in plain)
    bn_fail = sum(b[-1] < 0.2 for b in bn)
    return ahead > n / 2, (
        f"batch norm ends more than 0.01 ahead of the plain net in {ahead} of {n} weight "
        f"scales (level in {n - ahead - behind}, behind in {behind}) and has the higher mean "
        f"accuracy over the epochs in {faster}; the plain net ends below 20% accuracy at "
        f"{plain_fail} scales, batch norm at {bn_fail}."
    )


def _gaps(data: Mapping) -> list[tuple[str, float, float, float]]:
    """(key, final train, final test, gap) per run; finals are means of the last 10 epochs."""
    out = []
    for key, run in _sorted_runs(data):
        tr, te = _tail_mean(run["train_acc"], cap=10), _tail_mean(run["test_acc"], cap=10)
        out.append((key, tr, te, tr - te))
    return out


def _overfit_verdict(data: Mapping, what: str, symbol: str) -> Verdict:
    gaps = _gaps(data)
    base = [g for g in gaps if _key_value(g[0]) == 0]
    rest = [g for g in gaps if _key_value(g[0]) != 0]
    if not base or not rest:
        return None, f"the run needs one run without {what} and one with it"
    _, tr0, te0, gap0 = base[0]
    narrower = all(g[3] < gap0 for g in rest)
    overfits = gap0 >= 0.05
    agrees = narrower and overfits
    reason = f"without {what} train {tr0:.2f} vs test {te0:.2f} (gap {gap0:.2f}); " + "; ".join(
        f"{symbol} = {k}: train {tr:.2f} vs test {te:.2f} (gap {g:.2f})" for k, tr, te, g in rest
    )
    if not overfits:
        reason += f" — the run without {what} barely overfits, so there is no gap to narrow"
    elif not narrower:
        reason += f" — {what} did not narrow the gap"
    return agrees, reason + " (means of the last 10 epochs)."


def _weight_decay_verdict(data: Mapping) -> Verdict:
    return _overfit_verdict(data, "weight decay", "λ")


def _dropout_verdict(data: Mapping) -> Verdict:
    return _overfit_verdict(data, "dropout", "rate")


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean rank)."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=float)
    ranks[order] = np.arange(len(x), dtype=float)
    for value in np.unique(x):
        tie = x == value
        ranks[tie] = ranks[tie].mean()
    return ranks


def _spearman(a: Sequence[float], b: Sequence[float]) -> float:
    ra, rb = _ranks(np.asarray(a, dtype=float)), _ranks(np.asarray(b, dtype=float))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def _search_verdict(data: Mapping) -> Verdict:
    trials = sorted(data["trials"], key=lambda t: -float(t["val_acc"]))
    n = len(trials)
    if n < 3:
        return None, f"{n} trial(s) are too few to tell which hyperparameters matter"
    if float(trials[0]["val_acc"]) < 0.3:
        return None, (
            f"no trial learned (best validation accuracy {float(trials[0]['val_acc']):.2f} of "
            f"{n} trials, chance is 0.1), so the run cannot show which hyperparameters work."
        )
    k = max(1, min(5, n // 4))
    top_lr = [float(t["learning_rate"]) for t in trials[:k]]
    in_range = all(5e-4 <= lr <= 2e-2 for lr in top_lr)
    val = [float(t["val_acc"]) for t in trials]
    rho_lr = _spearman(np.log10([float(t["learning_rate"]) for t in trials]), val)
    rho_wd = _spearman(np.log10([float(t["weight_decay"]) for t in trials]), val)
    lr_matters = bool(abs(rho_lr) > abs(rho_wd)) if not math.isnan(rho_lr) else False
    if math.isnan(rho_wd) and not math.isnan(rho_lr):
        lr_matters = True
    lrs = ", ".join(f"{lr:.1e}" for lr in top_lr)
    reason = (
        f"the best {k} of {n} trials (val acc {val[0]:.2f}"
        + (f" to {val[k - 1]:.2f}" if k > 1 else "")
        + f") used learning rates {lrs}, "
        + ("all" if in_range else "not all")
        + " within about 1e-3 to 1e-2; the rank correlation of validation accuracy with "
        f"log learning rate is {rho_lr:.2f}, with log weight decay {rho_wd:.2f}"
    )
    if not lr_matters:
        reason += ", so the learning rate did not matter more than the weight decay"
    return in_range and lr_matters, reason + "."


_VERDICTS: dict[str, Callable[[Mapping], Verdict]] = {
    "paths": _paths_verdict,
    "optimizers": _optimizers_verdict,
    "activations": _activations_verdict,
    "init": _init_verdict,
    "batchnorm": _batchnorm_verdict,
    "weight-decay": _weight_decay_verdict,
    "dropout": _dropout_verdict,
    "search": _search_verdict,
}


def verdict(name: str, data: Mapping) -> tuple[bool | None, str]:
    """Whether this run of experiment ``name`` agrees with the textbook, and why.

    Returns ``(agrees, reason)``: ``True`` or ``False`` with a one-sentence reason
    quoting the run's numbers, or ``None`` when the data cannot decide (for example
    a run without the SGD curve). The criteria, per experiment:

    - paths: SGD's path is the longest and reverses its y direction most often.
    - optimizers: SGD's final loss (mean of the last 10% of steps) is the highest.
    - activations: at layer 5, sigmoid/tanh with std 1 have most values in the outer
      10% of their range, with std 0.01 a std under 5% of the range, with Xavier
      neither; for ReLU, σ(layer 5)/σ(layer 1) is within [0.5, 2] for He and under
      0.7 for Xavier and std 0.01.
    - init: std=0.01 keeps over 90% of its initial loss, Xavier and He end below 85%
      of theirs, and He's mean loss over the run is below Xavier's (initial and final
      losses are means of the first and last 10% of the steps).
    - batchnorm: batch norm's final accuracy is more than 0.01 above the plain net's
      at a majority of the weight scales.
    - weight-decay, dropout: the run without regularization overfits (train-test gap
      at least 0.05, means of the last 10 epochs) and every regularized run has a
      smaller gap.
    - search: the best trials' (top quarter, at most 5) learning rates all lie in
      [5e-4, 2e-2] (about 1e-3..1e-2) and the validation accuracy follows the log
      learning rate more closely (Spearman) than the log weight decay; ``None`` with
      fewer than 3 trials or when no trial reaches 0.3 validation accuracy.

    >>> verdict("optimizers", {"loss": {"SGD": [2.0, 1.0], "Adam": [2.0, 0.2]}})[0]
    True
    """
    _check_name(name)
    agrees, reason = _VERDICTS[name](data)
    return (None if agrees is None else bool(agrees)), reason


# ---------------------------------------------------------------------------
# headline tables
# ---------------------------------------------------------------------------

Table = tuple[list[str], list[list[str]]]


def _paths_table(data: Mapping) -> Table:
    lrs = data.get("lr", {})
    rows = []
    for name, path in data["paths"].items():
        s = _path_stats(path)
        final = data.get("final", {}).get(name, path[-1])
        rows.append(
            [
                name,
                f"{lrs[name]:g}" if name in lrs else "",
                f"({float(final[0]):.3f}, {float(final[1]):.3f})",
                _fmt(s["distance"]),
                f"{s['length']:.2f}",
                str(s["reversals"]),
            ]
        )
    return (
        ["optimizer", "lr", "final (x, y)", "distance to minimum", "path length", "y reversals"],
        rows,
    )


def _loss_table(data: Mapping, labels: Mapping) -> Table:
    s = _loss_summary(data)
    accs = data.get("test_accuracy", {})
    rows = [
        [labels.get(k, k), _fmt(f), _fmt(last), _fmt(mean), _fmt(accs.get(k, float("nan")))]
        for k, (f, last, mean) in s.items()
    ]
    head = ["", "initial loss", "final loss", "mean loss", "test accuracy"]
    return head, rows


def _activations_table(data: Mapping) -> Table:
    settings = data["settings"]
    n = max([len(s["layers"]) for s in settings.values()] or [0])
    rows = []
    for name, s in settings.items():
        stds = [_fmt(layer["std"]) for layer in s["layers"]]
        rows.append([name, *stds, *([""] * (n - len(stds))), _fmt(s["layers"][-1]["mean"])])
    return ["setting", *(f"std, layer {i + 1}" for i in range(n)), f"mean, layer {n}"], rows


def _batchnorm_table(data: Mapping) -> Table:
    rows = []
    for s, b, p in zip(
        data["weight_scales"], data["train_acc_bn"], data["train_acc_plain"], strict=True
    ):
        rows.append([f"{float(s):.2g}", _fmt(b[-1]), _fmt(p[-1]), f"{b[-1] - p[-1]:+.3f}"])
    return ["weight scale", "final acc, BN", "final acc, plain", "BN - plain"], rows


def _overfit_table(data: Mapping, symbol: str) -> Table:
    rows = [[k, _fmt(tr), _fmt(te), _fmt(g)] for k, tr, te, g in _gaps(data)]
    return [symbol, "train acc", "test acc", "gap"], rows


def _search_table(data: Mapping) -> Table:
    trials = sorted(data["trials"], key=lambda t: -float(t["val_acc"]))[:20]
    rows = [
        [
            str(i + 1),
            _fmt(t["val_acc"]),
            _fmt(t.get("train_acc", float("nan"))),
            f"{float(t['learning_rate']):.2e}",
            f"{float(t['weight_decay']):.2e}",
        ]
        for i, t in enumerate(trials)
    ]
    return ["rank", "val acc", "train acc", "learning rate", "weight decay"], rows


_TABLES: dict[str, Callable[[Mapping], Table]] = {
    "paths": _paths_table,
    "optimizers": lambda d: _loss_table(d, {}),
    "activations": _activations_table,
    "init": lambda d: _loss_table(d, _INIT_LABELS),
    "batchnorm": _batchnorm_table,
    "weight-decay": lambda d: _overfit_table(d, "λ"),
    "dropout": lambda d: _overfit_table(d, "dropout rate"),
    "search": _search_table,
}


def headline_table(name: str, data: Mapping) -> tuple[list[str], list[list[str]]]:
    """The headline numbers of a run as ``(header, rows)`` of strings.

    Losses are averaged over the first / last 10% of the steps and accuracies over
    the last 10 epochs, as in :func:`verdict`.

    >>> headline_table("dropout", {"runs": {"0": {"train_acc": [1.0], "test_acc": [0.7]}}})
    (['dropout rate', 'train acc', 'test acc', 'gap'], [['0', '1.000', '0.700', '0.300']])
    """
    _check_name(name)
    return _TABLES[name](data)


# ---------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0;
       color: #1d2330; background: #f6f7f9; line-height: 1.5; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 32px 64px; background: #fff; }
h1 { margin: 0 0 4px; font-size: 1.9em; }
h2 { margin-top: 2.2em; padding-top: .6em; border-top: 2px solid #e3e6eb; font-size: 1.35em; }
.meta { color: #5b6475; font-size: .92em; margin: .2em 0 .8em; }
a { color: #1f5fbf; text-decoration: none; } a:hover { text-decoration: underline; }
img { max-width: 100%; height: auto; border: 1px solid #e3e6eb; display: block;
      margin: 12px auto; }
table { border-collapse: collapse; margin: 10px 0 14px; font-size: .9em; }
th, td { border: 1px solid #d8dce3; padding: 3px 10px; text-align: right; }
th { background: #eef1f5; } td:first-child, th:first-child { text-align: left; }
tr:nth-child(even) td { background: #fafbfc; }
.textbook { background: #f3f5f8; border-left: 4px solid #9aa5b8; padding: 8px 14px; }
.verdict { padding: 8px 14px; border-left: 4px solid; }
.agree, td.agree { background: #eaf6ec; border-color: #2e9a48; }
.disagree, td.disagree { background: #fdecec; border-color: #c93c3c; }
.unknown, td.unknown { background: #f4f1e6; border-color: #b89a3a; }
td.agree, td.disagree, td.unknown { text-align: left; border-color: #d8dce3; }
table.toc td, table.toc th { text-align: left; }
.badge { font-weight: 600; }
.quick { color: #a05a00; font-weight: 600; }
"""


def _html_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    esc = html.escape
    out = ["<table>", "<tr>" + "".join(f"<th>{esc(str(h))}</th>" for h in head) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in rows]
    out.append("</table>")
    return "\n".join(out)


def _safe_verdict(name: str, data: Mapping) -> tuple[bool | None, str]:
    try:
        return verdict(name, data) if name in EXPERIMENTS else (None, "no criterion defined")
    except (KeyError, IndexError, TypeError, ValueError, ZeroDivisionError) as err:
        return None, f"the data could not be judged ({type(err).__name__}: {err})"


def _verdict_html(agrees: bool | None, reason: str) -> str:
    cls, text = {
        True: ("agree", "This run agrees with the textbook"),
        False: ("disagree", "This run does not agree with the textbook"),
        None: ("unknown", "This run cannot be judged against the textbook"),
    }[agrees]
    return f'<p class="verdict {cls}"><span class="badge">{text}:</span> {html.escape(reason)}</p>'


def _contents_table(summary: Sequence[tuple[str, str, bool | None, str]]) -> str:
    """The table of contents: linked headings with each verdict and runtime."""
    head = "".join(f"<th>{h}</th>" for h in ("#", "experiment", "verdict", "runtime"))
    rows = ['<table class="toc">', f"<tr>{head}</tr>"]
    for i, (anchor, heading, agrees, runtime) in enumerate(summary, 1):
        cls, word = {
            True: ("agree", "agrees"),
            False: ("disagree", "does not agree"),
            None: ("unknown", "not judged"),
        }[agrees]
        rows.append(
            f'<tr><td>{i}</td><td><a href="#{anchor}">{html.escape(heading)}</a></td>'
            f'<td class="{cls}">{word}</td><td>{html.escape(runtime)}</td></tr>'
        )
    rows.append("</table>")
    return "\n".join(rows)


def _anchor(name: str) -> str:
    return "exp-" + "".join(c if c.isalnum() or c in "-_" else "-" for c in name)


def _seconds(data: Mapping) -> float | None:
    try:
        return float(data["seconds"])
    except (KeyError, TypeError, ValueError):
        return None


def write_report(
    results: Mapping[str, Mapping],
    out_dir: str | os.PathLike,
    *,
    render_missing: bool = True,
    title: str = "purelearn: the experiments of chapter 6",
) -> pathlib.Path:
    """Write ``out_dir/report.html`` for the experiments in ``results`` and return its path.

    ``results`` maps experiment names to their result dicts; experiments absent
    from it are skipped, and the known ones appear in the chapter's order. Each
    section shows ``<name>.png`` (by a relative link, so the directory can be
    moved as a whole; drawn first when ``render_missing`` and the file does not
    exist), a table of headline numbers, the textbook's conclusion and the
    verdict on this run. The page is self-contained: inline CSS, no scripts, no
    external resources.
    """
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    esc = html.escape
    names = [n for n in EXPERIMENTS if n in results]
    names += [n for n in results if n not in EXPERIMENTS]

    sections, summary = [], []
    for name in names:
        data = results[name]
        anchor = _anchor(name)
        heading = TITLES.get(name, name)
        png = out / f"{name}.png"
        if render_missing and name in EXPERIMENTS and not png.exists():
            try:
                save_figure(name, data, png)
            except (KeyError, IndexError, TypeError, ValueError) as err:
                warnings.warn(f"no figure for {name}: {err}", stacklevel=2)
        agrees, reason = _safe_verdict(name, data)
        secs = _seconds(data)
        runtime = f"{secs:.1f} s" if secs is not None else "unknown"
        meta = [f"<code>purelearn {esc(name)}</code>", f"runtime {esc(runtime)}"]
        if data.get("data"):
            meta.append(f"data: {esc(str(data['data']))}")
        if data.get("quick"):
            meta.append('<span class="quick">quick run (reduced size)</span>')
        parts = [
            f'<section id="{anchor}">',
            f"<h2>{esc(heading)}</h2>",
            f'<p class="meta">{" · ".join(meta)}</p>',
        ]
        if png.exists() or name in EXPERIMENTS:
            src = esc(f"{name}.png", quote=True)
            parts.append(f'<img src="{src}" alt="{esc(heading, quote=True)}">')
        if name in EXPERIMENTS:
            try:
                head, rows = headline_table(name, data)
                parts.append(_html_table(head, rows))
            except (KeyError, IndexError, TypeError, ValueError) as err:
                parts.append(f"<p>No table: {esc(f'{type(err).__name__}: {err}')}</p>")
            parts.append(
                f'<p class="textbook"><strong>The textbook:</strong> {esc(CONCLUSIONS[name])}</p>'
            )
        parts.append(_verdict_html(agrees, reason))
        parts.append("</section>")
        sections.append("\n".join(parts))
        summary.append((anchor, heading, agrees, runtime))

    total = sum(s for s in (_seconds(results[n]) for n in names) if s is not None)
    agreed = sum(row[2] is True for row in summary)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<main>
<h1>{esc(title)}</h1>
<p class="meta">The chapter "techniques for learning" of <em>Deep Learning from Scratch</em>
(Koki Saito), reproduced with purelearn. Generated {esc(stamp)};
{len(names)} experiment(s), {agreed} agreeing with the textbook; total runtime {total:.1f} s.</p>
<nav><h3>Contents</h3>
{_contents_table(summary)}
</nav>
{chr(10).join(sections)}
</main>
</body>
</html>
"""
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
