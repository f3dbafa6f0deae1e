"""Figure 6-19: batch normalization across initial weight scales.

1,000 training images, a 784-100x5-10 ReLU net with weights N(0, w**2) for
16 scales w from 1 down to 1e-4 (log-spaced), with and without batch
normalization, SGD lr 0.01, batches of 100, 20 epochs. Batch norm learns
faster and learns at scales where the plain net does not learn at all.
All 16 scales train as one vmapped program per variant.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from purelearn import optimizers
from purelearn.experiments._common import mnist, subset
from purelearn.models import mlp
from purelearn.training import train_run

SIZES = [784, 100, 100, 100, 100, 100, 10]


def train_accuracy_curves(x, y, scales, *, use_bn: bool, epochs: int, key) -> np.ndarray:
    """``(len(scales), epochs)`` training accuracies, all scales in one program."""

    def one(scale):
        def init(k, shape, dtype=jnp.float32):
            return scale * jax.random.normal(k, shape, dtype)

        model = mlp(SIZES, batch_norm=use_bn, init=init)
        _, curves = train_run(
            model, optimizers.sgd(0.01), (x, y), epochs=epochs, batch_size=100, key=key
        )
        return curves["train_accuracy"]

    return np.asarray(jax.jit(jax.vmap(one))(jnp.asarray(scales, jnp.float32)))


def run(*, seed: int = 0, data: str = "auto", quick: bool = False) -> dict:
    start = time.perf_counter()
    (x, y), _, described = mnist(data)
    x, y = subset(x, y, 1000, seed)
    scales = np.logspace(0, -4, num=4 if quick else 16)
    epochs = 10 if quick else 20
    key = jax.random.key(seed)
    with_bn = train_accuracy_curves(x, y, scales, use_bn=True, epochs=epochs, key=key)
    plain = train_accuracy_curves(x, y, scales, use_bn=False, epochs=epochs, key=key)
    return {
        "weight_scales": [float(s) for s in scales],
        "train_acc_bn": np.round(with_bn, 4).tolist(),
        "train_acc_plain": np.round(plain, 4).tolist(),
        "epochs": epochs,
        "data": f"1000 images of the {described}",
        "quick": quick,
        "seconds": round(time.perf_counter() - start, 2),
    }
