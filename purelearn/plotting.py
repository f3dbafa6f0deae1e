"""Generic drawing helpers: curves with seed bands, panels, histograms, the search grid.

The experiments (:mod:`purelearn.experiments`) draw their figures with these;
nothing here knows an experiment. Figures are built on
:class:`matplotlib.figure.Figure` directly (no pyplot, no global state, no
display needed). matplotlib is an optional dependency, imported only when a
figure is drawn.

A *band* is how every curve over several seeds is drawn: its mean (or median)
as a line, and the range from the lowest to the highest seed shaded around it.
"""

from __future__ import annotations

import math
import numbers
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from purelearn import _checks
from purelearn._types import Axes, Figure, Line2D
from purelearn.tuning import hyperparameter_names, result_rows

__all__ = [
    "new_figure",
    "grid",
    "panels",
    "label_outer",
    "smooth_curve",
    "band",
    "band_stats",
    "histogram",
    "search_figure",
    "save",
]

_MATPLOTLIB_HINT = "purelearn.plotting needs matplotlib: pip install 'purelearn[examples]'"


def new_figure(width: float, height: float) -> Figure:
    """A fresh constrained-layout figure, independent of pyplot."""
    try:
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError(_MATPLOTLIB_HINT) from err
    width = _checks.real("width", width, low=0, low_open=True)
    height = _checks.real("height", height, low=0, low_open=True)
    return Figure(figsize=(width, height), layout="constrained")


def _curve(name: str, values: Any, *, ndim: int | tuple[int, ...]) -> np.ndarray:
    """``values`` as a float64 array of rank ``ndim``, else a ``ValueError`` naming it."""
    try:
        a = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as err:  # ragged, strings, None: name the argument
        raise ValueError(f"{name} must be numbers of one shape, got {values!r}") from err
    if a.ndim not in ((ndim,) if isinstance(ndim, int) else ndim):
        raise ValueError(f"{name} must have rank {ndim}, got shape {a.shape}")
    return a


def grid(n: int, max_cols: int) -> tuple[int, int]:
    """Rows and columns for ``n`` panels, at most ``max_cols`` wide.

    >>> grid(16, 4), grid(3, 5), grid(0, 4)
    ((4, 4), (1, 3), (1, 1))
    """
    n = _checks.nonnegative_int("n", n)
    cols = max(1, min(n, _checks.positive_int("max_cols", max_cols)))
    return max(1, math.ceil(n / cols)), cols


def panels(fig: Figure, n: int, max_cols: int, **kw: Any) -> np.ndarray:
    """``n`` visible axes in a grid of at most ``max_cols`` columns (surplus cells removed)."""
    rows, cols = grid(n, max_cols)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False, **kw)).reshape(-1)
    for ax in axes[n:]:
        fig.delaxes(ax)
    return axes[:n]


def _cell(ax: Axes) -> tuple[int, int]:
    """The grid row and column of a panel's top-left cell."""
    spec = ax.get_subplotspec()
    if spec is None:
        raise ValueError(f"{ax!r} is not a panel of a grid (see panels)")
    return spec.rowspan.start, spec.colspan.start


def _has_panel_below(ax: Axes, axes: Sequence[Axes] | np.ndarray) -> bool:
    row, col = _cell(ax)
    return any(_cell(o) == (row + 1, col) for o in axes)


def label_outer(
    axes: Sequence[Axes] | np.ndarray, xlabel: str, ylabel: str, fontsize: float = 9
) -> None:
    """Axis labels and tick labels only on the outer panels (like ``label_outer``,
    but a panel with no panel below it keeps its x labels)."""
    fontsize = _checks.real("fontsize", fontsize, low=0, low_open=True)
    for ax in axes:
        below = _has_panel_below(ax, axes)
        ax.tick_params(labelbottom=not below)
        if not below:
            ax.set_xlabel(xlabel, fontsize=fontsize)
        if _cell(ax)[1] == 0:  # the first column
            ax.set_ylabel(ylabel, fontsize=fontsize)
        else:
            ax.tick_params(labelleft=False)


def smooth_curve(x: Sequence[float] | np.ndarray) -> np.ndarray:
    """The textbook's ``smooth_curve``: a Kaiser-window moving average, same length.

    The window is 11 points (shorter for curves shorter than that); the ends are
    padded by reflection, so the result has as many points as ``x``.

    >>> smooth_curve([1.0] * 20).round(6).tolist() == [1.0] * 20
    True
    >>> len(smooth_curve(np.arange(5.0)))
    5
    """
    x = _curve("x", x, ndim=1)
    n = x.shape[0]
    window = min(11, n if n % 2 else n - 1)
    if window < 3:
        short: np.ndarray = x.copy()
        return short
    half = window // 2
    padded = np.r_[x[window - 1 : 0 : -1], x, x[-1:-window:-1]]
    w = np.kaiser(window, 2)
    y = np.convolve(w / w.sum(), padded, mode="valid")
    smoothed: np.ndarray = y[half : len(y) - half]
    return smoothed


def band_stats(
    curves: Sequence[Sequence[float]] | np.ndarray, center: str = "mean"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(centre, low, high)`` of ``(seeds, points)`` curves: the mean (or median) and
    the lowest and highest seed at every point. A single curve is its own band.

    >>> [a.tolist() for a in band_stats([[1.0, 2.0], [3.0, 2.0]])]
    [[2.0, 2.0], [1.0, 2.0], [3.0, 2.0]]
    """
    if center not in ("mean", "median"):
        raise ValueError(f"center must be 'mean' or 'median', got {center!r}")
    c = np.atleast_2d(_curve("curves", curves, ndim=(1, 2)))
    if c.size == 0:
        raise ValueError(f"curves must hold at least one point, got {curves!r}")
    mid = c.mean(axis=0) if center == "mean" else np.median(c, axis=0)
    return mid, c.min(axis=0), c.max(axis=0)


def band(
    ax: Axes,
    curves: Sequence[Sequence[float]] | np.ndarray,
    *,
    x: Sequence[float] | np.ndarray | None = None,
    center: str = "mean",
    smooth: bool = False,
    alpha: float = 0.2,
    **line_kw: Any,
) -> Line2D:
    """Draw ``(seeds, points)`` curves as their centre line with a min-max band.

    Args:
      ax: the axes.
      curves: one curve per seed (a 1-D curve is one seed, drawn without a band).
      x: the x values (default 1, 2, ...).
      center: "mean" or "median".
      smooth: smooth every seed's curve with :func:`smooth_curve` first.
      alpha: the band's opacity.
      line_kw: passed to ``ax.plot`` (label, color, marker, linestyle, ...).

    Returns:
      The centre line (its colour is the band's).
    """
    alpha = _checks.real("alpha", alpha, low=0, high=1)
    c = np.atleast_2d(_curve("curves", curves, ndim=(1, 2)))
    if smooth:
        c = np.stack([smooth_curve(row) for row in c])
    mid, low, high = band_stats(c, center)
    xs = np.arange(1, c.shape[1] + 1) if x is None else np.asarray(x, dtype=float)
    (line,) = ax.plot(xs, mid, **line_kw)
    if c.shape[0] > 1:
        ax.fill_between(xs, low, high, color=line.get_color(), alpha=alpha, linewidth=0)
    return line


#: The legend entry of :func:`mark_diverged`'s marker.
DIVERGED = "diverged"


def mark_diverged(
    ax: Axes,
    curves: Sequence[Sequence[float]] | np.ndarray,
    epochs: Sequence[int | None],
    *,
    color: Any = "black",
) -> np.ndarray:
    """Mark the runs of ``(seeds, epochs)`` ``curves`` that diverged, and cut them there.

    ``epochs[i]`` is the 1-based epoch at which run ``i`` diverged (its loss turned
    non-finite), or ``None``. Each diverged run gets an ``X`` at that epoch, at the
    last value it reached (0 if none), labelled :data:`DIVERGED` for the legend.

    Returns:
      ``curves`` as floats with every diverged run's values from its epoch on set to
      NaN, for :func:`band`: a diverged run's numbers (the accuracy of NaN logits) are
      not a learning curve.
    """
    c = np.array(np.atleast_2d(np.asarray(curves, dtype=float)))
    for i, epoch in enumerate(epochs):
        if epoch is None:
            continue
        before = c[i, : epoch - 1]
        y = float(before[-1]) if before.size and np.isfinite(before[-1]) else 0.0
        c[i, epoch - 1 :] = np.nan
        ax.plot(
            [epoch],
            [y],
            marker="X",
            markersize=8,
            color=color,
            markeredgecolor="black",
            linestyle="none",
            label=DIVERGED,
            zorder=5,
            clip_on=False,  # a run that diverged at once sits on the axes' corner
        )
    return c


def legend_entries(axes: Sequence[Axes] | np.ndarray) -> tuple[list[Any], list[str]]:
    """The legend handles and labels of all ``axes``, each label once, in order of
    appearance (a :data:`DIVERGED` marker drawn on any panel joins the legend)."""
    handles: list[Any] = []
    labels: list[str] = []
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(h)
                labels.append(label)
    return handles, labels


def histogram(
    ax: Axes,
    counts: Sequence[float] | np.ndarray,
    edges: Sequence[float] | np.ndarray,
    *,
    cut_above: float | None = None,
) -> None:
    """A filled histogram; with ``cut_above``, the y axis stops there and a first bin
    that rises beyond it is labelled with its count."""
    counts = _curve("counts", counts, ndim=1)
    edges = _curve("edges", edges, ndim=1)
    if len(edges) != len(counts) + 1:
        raise ValueError(
            f"edges must be one longer than counts, got {len(edges)} and {len(counts)}"
        )
    if cut_above is not None:
        cut_above = _checks.real("cut_above", cut_above, low=0, low_open=True)
    ax.stairs(counts, edges, fill=True, color="tab:blue", alpha=0.85)
    ax.set_xlim(edges[0], edges[-1])
    top = cut_above if cut_above is not None else (counts.max() if counts.size else 1.0)
    cut = bool(counts.size) and counts[0] > top * 1.05
    ax.set_ylim(0, (top * (1.3 if cut else 1.08)) if top > 0 else 1)
    ax.set_yticks([])
    ax.tick_params(labelsize=7)
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


_SHORT_NAMES = {"learning_rate": "lr", "weight_decay": "wd"}


def _hyperparameters(result: Mapping[str, Any]) -> list[tuple[str, float]]:
    """A result's numeric hyperparameters, under short names."""
    return [
        (_SHORT_NAMES.get(k, k), float(result[k]))
        for k in hyperparameter_names(result)
        if isinstance(result[k], int | float) and not isinstance(result[k], bool)
    ]


def _distinct_decimals(values: Sequence[float], least: int = 3, most: int = 20) -> int:
    """The fewest decimals, at least ``least``, at which different ``values`` print
    differently (so two panels never read the same for different accuracies).

    >>> _distinct_decimals([0.934, 0.927]), _distinct_decimals([0.9341, 0.9344])
    (3, 4)
    """
    distinct = {float(v) for v in values if math.isfinite(float(v))}
    for decimals in range(least, most + 1):
        if len({f"{v:.{decimals}f}" for v in distinct}) == len(distinct):
            return decimals
    return most


_LABEL_FONTSIZE = 7
_LABEL_GAP = 2.0  # points between the axes and its label, and the label and the title
_PARAMS_PER_LINE = 2
_LINESPACING = 1.15


def _title_and_label(ax: Axes, title: str, lines: Sequence[str]) -> None:
    """``title`` over ``ax``, and ``lines`` as one text artist between the two: outside
    the axes, so the label never covers a curve, whatever the curves do."""
    from matplotlib.transforms import ScaledTranslation

    if lines:
        up = ScaledTranslation(0, _LABEL_GAP / 72, ax.figure.dpi_scale_trans)
        ax.text(
            0.5,
            1.0,
            "\n".join(lines),
            transform=ax.transAxes + up,
            ha="center",
            va="bottom",
            fontsize=_LABEL_FONTSIZE,
            linespacing=_LINESPACING,
            clip_on=False,
        )
    # The label's height in points: a line is about 1.2 font sizes from the top of
    # its ascent to the bottom of its descent, and lines are _LINESPACING apart.
    height = _LABEL_FONTSIZE * (1.2 + _LINESPACING * (len(lines) - 1)) if lines else 0.0
    ax.set_title(title, fontsize=8, pad=2 * _LABEL_GAP + height)


def search_figure(
    results: Sequence[Mapping[str, Any]],
    k: int = 20,
    spread: Sequence[Mapping[str, Sequence[Sequence[float]]]] | None = None,
) -> Figure:
    """The textbook's Figure 6-24 for any search: one panel per trial, best first.

    Each panel draws the trial's per-epoch validation (solid) and training
    (dashed) accuracy. Its title gives the rank and the validation accuracy, with
    as many decimals (at least 3) as it takes for different accuracies to read
    differently; the hyperparameters are listed just above the panel, outside
    the curves.

    Args:
      results: the list :func:`~purelearn.tuning.random_search` (or
        ``grid_search``, ``bayes_search``) returns, best first.
      k: how many of the best trials to draw.
      spread: optionally, for the best trials in order, the same trial re-run over
        several seeds: ``{"val_acc_curve": [[per epoch] per seed],
        "train_acc_curve": [...]}``; each curve is then drawn as a band (the
        panel's line is the mean over those seeds).
    """
    given: object = k  # checked as any object: callers without a type checker pass anything
    if isinstance(given, bool) or not isinstance(given, numbers.Integral) or given < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    trials = result_rows(results)[: _checks.positive_int("k", k)]
    if not trials:
        raise ValueError("results must hold at least one trial, got none")
    spread = list(spread or [])
    n = max(1, len(trials))
    rows, cols = grid(n, 5)
    fig = new_figure(2.15 * cols + 0.4, 2.1 * rows + 0.9)
    axes = panels(fig, n, 5, sharex=True, sharey=True)
    decimals = _distinct_decimals([float(t["val_acc"]) for t in trials])
    for i, (ax, t) in enumerate(zip(axes, trials, strict=False)):
        if i < len(spread):
            val, train = spread[i]["val_acc_curve"], spread[i]["train_acc_curve"]
            seeds = len(np.atleast_2d(val))
            note = f", {seeds} seeds"
        else:
            val, train, note = t["val_acc_curve"], t["train_acc_curve"], ""
        band(ax, val, color="tab:blue", linestyle="-", label="validation")
        band(ax, train, color="tab:orange", linestyle="--", label="train")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        params = [f"{name} {value:.1e}" for name, value in _hyperparameters(t)]
        _title_and_label(
            ax,
            f"Best-{i + 1} (val {float(t['val_acc']):.{decimals}f}{note})",
            [
                "  ".join(params[j : j + _PARAMS_PER_LINE])
                for j in range(0, len(params), _PARAMS_PER_LINE)
            ],
        )
    label_outer(axes, "epochs", "accuracy", fontsize=8)
    if trials:
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside upper center", ncols=2, fontsize=9)
    return fig


def save(fig: Figure, path: str | os.PathLike[str], *, dpi: int = 110) -> pathlib.Path:
    """Write ``fig`` to ``path`` (PNG unless the suffix names another format), creating
    the parent directory; the figure is cleared afterwards. Returns the path."""
    if not hasattr(fig, "savefig"):
        raise ValueError(f"fig must be a matplotlib Figure, got {fig!r}")
    path = pathlib.Path(_checks.file_path("path", path))
    dpi = _checks.positive_int("dpi", dpi)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, dpi=dpi, format=None if path.suffix else "png")
    finally:
        fig.clear()
    return path
