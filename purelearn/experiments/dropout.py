"""Figure 6-23: overfitting and Dropout.

The weight-decay experiment's setting (300 training images, 784-100x6-10,
SGD lr 0.01, batches of 100, 200 epochs) with dropout rates 0, 0.15 (the
book's figure) and 0.2 (its code). Dropout narrows the train/test gap.
"""

from __future__ import annotations

import time

from tqdm.auto import tqdm

from purelearn.experiments._common import mnist, overfit_run, subset, train_test_curves
from purelearn.experiments.weight_decay import SIZES
from purelearn.models import mlp

RATES = (0.0, 0.15, 0.2)


def run(*, seed: int = 0, data: str = "auto", quick: bool = False) -> dict:
    start = time.perf_counter()
    (x, y), (xt, yt), described = mnist(data)
    x, y = subset(x, y, 300, seed)
    epochs = 60 if quick else 200
    runs = {}
    # The rate decides the model's structure, so each rate is its own program.
    for rate in tqdm(RATES, desc="dropout", leave=False):
        model = mlp(SIZES, dropout_rate=rate)
        curves = overfit_run(model, (x, y), (xt, yt), epochs=epochs, seed=seed)
        runs[f"{rate:g}"] = train_test_curves(curves)
    return {
        "runs": runs,
        "epochs": epochs,
        "data": f"300 training images of the {described}",
        "quick": quick,
        "seconds": round(time.perf_counter() - start, 2),
    }
