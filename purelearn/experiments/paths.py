"""Figure 6-8: four optimizers on f(x, y) = x**2/20 + y**2 from (-7, 2).

The textbook's learning rates: SGD 0.95, Momentum 0.1, AdaGrad 1.5, Adam 0.3,
30 updates each. SGD zig-zags along the steep y direction; the others head
for the minimum more directly.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from purelearn import optimizers

SETTINGS = {
    "SGD": (optimizers.sgd, 0.95),
    "Momentum": (optimizers.momentum, 0.1),
    "AdaGrad": (optimizers.adagrad, 1.5),
    "Adam": (optimizers.adam, 0.3),
}
START = (-7.0, 2.0)


def f(p: dict[str, jax.Array]) -> jax.Array:
    return p["x"] ** 2 / 20.0 + p["y"] ** 2


def trajectory(optimizer, steps: int, start=START) -> np.ndarray:
    """The ``steps + 1`` positions visited, as a ``(steps + 1, 2)`` array."""

    @jax.jit
    def run():
        params = {"x": jnp.float32(start[0]), "y": jnp.float32(start[1])}

        def step(carry, _):
            params, state = carry
            updates, state = optimizer.update(jax.grad(f)(params), state, params)
            params = jax.tree.map(jnp.add, params, updates)
            return (params, state), jnp.stack([params["x"], params["y"]])

        _, visited = jax.lax.scan(step, (params, optimizer.init(params)), length=steps)
        return visited

    return np.concatenate([np.array([start]), np.asarray(run())])


def run(*, seed: int = 0, data: str = "auto", quick: bool = False) -> dict:
    """Trajectories of the four optimizers (``seed``, ``data`` and ``quick`` do
    not change this small deterministic problem)."""
    del seed, data
    start = time.perf_counter()
    paths = {name: trajectory(make(lr), 30) for name, (make, lr) in SETTINGS.items()}
    return {
        "final": {name: p[-1].tolist() for name, p in paths.items()},
        "paths": {name: p.tolist() for name, p in paths.items()},
        "lr": {name: lr for name, (_, lr) in SETTINGS.items()},
        "steps": 30,
        "data": "f(x, y) = x^2/20 + y^2 from (-7, 2)",
        "quick": quick,
        "seconds": round(time.perf_counter() - start, 2),
    }
