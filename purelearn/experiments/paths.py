"""Figure 6-8: four optimizers on f(x, y) = x**2/20 + y**2 from (-7, 2).

The textbook's learning rates: SGD 0.95, Momentum 0.1, AdaGrad 1.5, Adam 0.3,
30 updates each. SGD zig-zags along the steep y direction; the others head
for the minimum more directly. Nothing here is random, so every seed gives
the same paths: the experiment runs once whatever ``seeds`` says.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypedDict

import jax
import jax.numpy as jnp
import numpy as np
import optax

from purelearn import optimizers
from purelearn._types import Figure
from purelearn.experiments._common import (
    Experiment,
    SeedCheck,
    Table,
    Verdict,
    fmt,
    seed_list,
    verdict_over,
)

SETTINGS: dict[str, tuple[Callable[..., optax.GradientTransformation], float]] = {
    "SGD": (optimizers.sgd, 0.95),
    "Momentum": (optimizers.momentum, 0.1),
    "AdaGrad": (optimizers.adagrad, 1.5),
    "Adam": (optimizers.adam, 0.3),
}
START = (-7.0, 2.0)
STEPS = 30


class PathsResult(TypedDict):
    """Each optimizer's 31 visited points; deterministic, so one run for all seeds."""

    final: dict[str, list[float]]  # optimizer -> [x, y] after the last update
    paths: dict[str, list[list[float]]]  # optimizer -> [[x, y]] from the start
    lr: dict[str, float]
    steps: int
    seeds: list[int]
    data: str
    quick: bool
    seconds: float


def f(p: dict[str, jax.Array]) -> jax.Array:
    return p["x"] ** 2 / 20.0 + p["y"] ** 2


def trajectory(
    optimizer: optax.GradientTransformation, steps: int, start: tuple[float, float] = START
) -> np.ndarray:
    """The ``steps + 1`` positions visited, as a ``(steps + 1, 2)`` array."""

    @jax.jit
    def run() -> jax.Array:
        params = {"x": jnp.float32(start[0]), "y": jnp.float32(start[1])}

        def step(carry: tuple[Any, Any], _: None) -> tuple[tuple[Any, Any], jax.Array]:
            params, state = carry
            updates, state = optimizer.update(jax.grad(f)(params), state, params)
            params = jax.tree.map(jnp.add, params, updates)
            return (params, state), jnp.stack([params["x"], params["y"]])

        _, visited = jax.lax.scan(step, (params, optimizer.init(params)), length=steps)
        return visited

    return np.concatenate([np.array([start]), np.asarray(run())])


def run(*, seed: int = 0, seeds: int = 1, data: str = "auto", quick: bool = False) -> PathsResult:
    """Trajectories of the four optimizers (``data`` and ``quick`` do not change this
    small deterministic problem; ``seeds`` are recorded, and all give these paths)."""
    del data
    start = time.perf_counter()
    seed_values = seed_list(seed, seeds)
    paths = {name: trajectory(make(lr), STEPS) for name, (make, lr) in SETTINGS.items()}
    return PathsResult(
        final={name: p[-1].tolist() for name, p in paths.items()},
        paths={name: p.tolist() for name, p in paths.items()},
        lr={name: lr for name, (_, lr) in SETTINGS.items()},
        steps=STEPS,
        seeds=seed_values,
        data="f(x, y) = x^2/20 + y^2 from (-7, 2)",
        quick=quick,
        seconds=round(time.perf_counter() - start, 2),
    )


def path_stats(path: Sequence[Sequence[float]]) -> dict[str, float]:
    """Length, final distance to the minimum, and the number of y reversals."""
    p = np.asarray(path, dtype=float).reshape(-1, 2)
    steps = np.diff(p, axis=0)
    dy = np.sign(steps[:, 1])
    return {
        "length": float(np.linalg.norm(steps, axis=1).sum()),
        "distance": float(np.linalg.norm(p[-1])) if len(p) else float("nan"),
        "reversals": int(np.sum(dy[1:] * dy[:-1] < 0)),
    }


def check(result: Mapping[str, Any]) -> SeedCheck:
    """Agrees when SGD's path is the longest and reverses its y direction most often."""
    stats = {k: path_stats(v) for k, v in result["paths"].items()}
    numbers = {f"{k} {m}": v for k, s in stats.items() for m, v in s.items()}
    if "SGD" not in stats or len(stats) < 2:
        return SeedCheck(None, numbers)
    sgd = stats["SGD"]
    others = [s for k, s in stats.items() if k != "SGD"]
    agrees = sgd["length"] > max(s["length"] for s in others) and sgd["reversals"] > max(
        s["reversals"] for s in others
    )
    return SeedCheck(agrees, numbers)


def verdict(result: Mapping[str, Any]) -> Verdict:
    c = check(result)
    stats = {k: path_stats(v) for k, v in result["paths"].items()}
    if c.agrees is None:
        return verdict_over([c], "", "the run has no SGD path to compare with the others")
    sgd = stats.pop("SGD")
    longest = max(stats, key=lambda k: stats[k]["length"])
    straight = float(np.linalg.norm(result["paths"]["SGD"][0])) or float("nan")
    v = verdict_over(
        [c],
        "SGD's path is the longest and zig-zags the most",
        f"SGD travels {sgd['length']:.1f} ({sgd['length'] / straight:.1f} times the "
        f"{straight:.1f} straight-line distance) and reverses its y direction "
        f"{sgd['reversals']} times, while {', '.join(stats)} travel at most "
        f"{stats[longest]['length']:.1f} ({longest}) with at most "
        f"{max(s['reversals'] for s in stats.values())} reversals",
    )
    n = len(result["seeds"])
    note = (
        f" Deterministic: all {n} seeds give these paths, so one run stands for them."
        if n > 1
        else " Deterministic: no seed changes these paths."
    )
    return v._replace(reason=v.reason + note)


def table(result: Mapping[str, Any]) -> Table:
    lrs = result.get("lr", {})
    rows = []
    for name, path in result["paths"].items():
        s = path_stats(path)
        final = result.get("final", {}).get(name, path[-1])
        rows.append(
            [
                name,
                f"{lrs[name]:g}" if name in lrs else "",
                f"({float(final[0]):.3f}, {float(final[1]):.3f})",
                fmt(s["distance"]),
                f"{s['length']:.2f}",
                str(s["reversals"]),
            ]
        )
    head = ["optimizer", "lr", "final (x, y)", "distance to minimum", "path length", "y reversals"]
    return head, rows


def figure(result: Mapping[str, Any]) -> Figure:
    from purelearn.plotting import grid, new_figure, panels

    paths = {k: np.asarray(v, dtype=float).reshape(-1, 2) for k, v in result["paths"].items()}
    lrs = result.get("lr", {})
    rows, cols = grid(len(paths), 2)
    fig = new_figure(5.6 * cols, 3.4 * rows + 0.4)
    axes = panels(fig, len(paths), 2)
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
    steps = result.get("steps")
    fig.suptitle(
        "f(x, y) = x²/20 + y², from (-7, 2)"
        + (f", {steps} updates" if steps else "")
        + " (deterministic: the same for every seed)",
        fontsize=11,
    )
    return fig


EXPERIMENT = Experiment(
    name="paths",
    title="Update paths on f(x, y) = x²/20 + y² (Figure 6-8)",
    conclusion=(
        "SGD moves along the gradient, which on this elongated bowl points mostly along the "
        "steep y axis, so its path zig-zags and wastes most of its steps. Momentum rolls "
        "towards the minimum like a ball, AdaGrad damps the large y steps and moves straight, "
        "and Adam combines both: all three reach the minimum region far more directly."
    ),
    order=8,
    run=run,
    figure=figure,
    verdict=verdict,
    table=table,
    schema=PathsResult,
    seeded=False,
)

__all__ = ["EXPERIMENT"]
