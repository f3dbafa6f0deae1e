"""Compile once: what a second identical call costs.

For ``fit``, ``train_run``, ``evaluate``, ``make_train_step`` and
``random_search`` on the textbook's 5-layer net and a slice of the embedded
MNIST sample, each call is made twice with freshly constructed (but equal)
models and optimizers, as a user re-running a notebook cell would. Printed:
wall time of each call, and the number of jaxpr traces and XLA backend
compiles it caused (counted through ``jax.monitoring``'s public events).
The persistent compilation cache is off here, so the first call is a true
cold compile.

    python benchmarks/bench_compile.py
"""

from __future__ import annotations

import collections
import time

import jax

import purelearn as pl

EVENTS = {
    "/jax/core/compile/jaxpr_trace_duration": "traces",
    "/jax/core/compile/backend_compile_duration": "compiles",
}


def main() -> None:
    counts: collections.Counter[str] = collections.Counter()

    def listen(name: str, _secs: float, **_kw) -> None:
        if name in EVENTS:
            counts[EVENTS[name]] += 1

    jax.monitoring.register_event_duration_secs_listener(listen)
    (x, y), (xt, yt) = pl.load_mnist("embedded")
    train, held_out = (x[:1000], y[:1000]), (xt[:500], yt[:500])
    sizes = [784, 100, 100, 100, 100, 10]

    def state():
        return pl.TrainState.create(pl.mlp(sizes), pl.sgd(0.01), 0)

    calls = {
        "fit (3 epochs)": lambda: pl.fit(
            pl.mlp(sizes, batch_norm=True), pl.adam(1e-3), train, epochs=3, batch_size=100,
            key=0, eval_data=held_out, progress=False,
        ),
        "train_run (3 epochs)": lambda: jax.block_until_ready(pl.train_run(
            pl.mlp(sizes), pl.momentum(0.01), train, epochs=3, batch_size=100, key=0,
            eval_data=held_out, weight_decay=1e-4,
        )),
        "evaluate": lambda: pl.evaluate(pl.mlp(sizes), state(), *held_out),
        "make_train_step + 1 step": lambda: jax.block_until_ready(
            pl.make_train_step(pl.mlp(sizes), pl.sgd(0.01))(state(), x[:100], y[:100])
        ),
        "random_search (8 trials)": lambda: pl.random_search(
            pl.mlp(sizes), pl.sgd, train, held_out,
            space={"learning_rate": pl.log_uniform(1e-3, 1e-1),
                   "weight_decay": pl.log_uniform(1e-8, 1e-4)},
            num_trials=8, epochs=3, batch_size=100, key=0,
        ),
    }  # fmt: skip
    print(f"jax {jax.__version__} on {jax.default_backend()}")
    print(f"{'call':<28} {'first s':>8} {'traces':>7} {'compiles':>9}   "
          f"{'second s':>8} {'traces':>7} {'compiles':>9}")  # fmt: skip
    for name, call in calls.items():
        row = []
        for _ in range(2):
            counts.clear()
            start = time.perf_counter()
            call()
            row.append((time.perf_counter() - start, counts["traces"], counts["compiles"]))
        (t1, tr1, c1), (t2, tr2, c2) = row
        print(f"{name:<28} {t1:8.2f} {tr1:7d} {c1:9d}   {t2:8.2f} {tr2:7d} {c2:9d}")


if __name__ == "__main__":
    main()
