"""The chapter's optimizer comparison on f(x, y) = x**2/20 + y**2.

Every optimizer starts at (-7, 2) and takes 30 steps; the whole path runs as one
jitted ``lax.scan``. SGD zig-zags along the steep y axis and crawls along x;
Momentum and Nesterov roll along the valley; AdaGrad, RMSProp and Adam rescale
each axis. Needs only jax, optax and numpy.

    python examples/optimizer_paths.py
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import purelearn as pl

START = (-7.0, 2.0)
STEPS = 30

# (name, learning rate, factory): the textbook's rates for the first four.
OPTIMIZERS = [
    ("SGD", 0.95, pl.sgd),
    ("Momentum", 0.1, pl.momentum),
    ("Nesterov", 0.1, pl.nesterov),
    ("AdaGrad", 1.5, pl.adagrad),
    ("RMSProp", 0.3, pl.rmsprop),
    ("Adam", 0.3, pl.adam),
]


def f(params: dict) -> jax.Array:
    """The textbook's elongated bowl, minimum at (0, 0)."""
    return params["x"] ** 2 / 20 + params["y"] ** 2


def path(opt: optax.GradientTransformation, start=START, steps: int = STEPS) -> np.ndarray:
    """The positions visited by ``opt``, start included: an array of shape (steps + 1, 2)."""

    @jax.jit
    def run(params):
        def step(carry, _):
            params, state = carry
            updates, state = opt.update(jax.grad(f)(params), state, params)
            params = optax.apply_updates(params, updates)
            return (params, state), jnp.stack([params["x"], params["y"]])

        _, trail = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
        return trail

    params = {"x": jnp.float32(start[0]), "y": jnp.float32(start[1])}
    return np.concatenate([np.array([start]), np.asarray(run(params))])


def main() -> None:
    print(f"f(x, y) = x^2/20 + y^2 from {START}, {STEPS} steps\n")
    print(f"{'optimizer':<10} {'lr':>5} {'x':>12} {'y':>12} {'f(x, y)':>12}")
    print("-" * 55)
    for name, lr, factory in OPTIMIZERS:
        x, y = path(factory(lr))[-1]
        value = float(f({"x": x, "y": y}))
        print(f"{name:<10} {lr:>5g} {x:>12.6f} {y:>12.6f} {value:>12.3e}")


if __name__ == "__main__":
    main()
