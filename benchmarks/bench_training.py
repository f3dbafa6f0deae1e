"""Training throughput of the textbook's 5-layer net: purelearn, flax + optax, NumPy.

The net is 784-100-100-100-100-10 (ReLU, He init), trained with Adam
(lr 0.001) on batches of 128 from MNIST (``pl.load_mnist("embedded")``: the
4,000-image training split; random data of the same shape if it cannot be
loaded). Four ways to run the same 2,000 steps:

* ``pl.make_train_step``: the jitted, donated step, called from a Python loop
  on batches already on the device;
* ``pl.fit`` epoch program: fit's compiled epoch (a ``lax.scan`` of the step
  over one shuffled epoch, batches gathered on the device), one call per epoch;
* ``flax + optax``: the same net as a ``flax.linen`` module, a flax
  ``TrainState`` and ``optax.adam``, one jitted donated step (loss and
  accuracy returned, like purelearn's) in the same Python loop;
* ``NumPy``: the textbook's layers with hand-written backward passes and its
  Adam (``benchmarks/textbook_numpy.py``), float32, with the faster of its
  default BLAS threads and one BLAS thread (picked in the warm-up: on a
  loaded machine OpenBLAS's spinning threads can be 10x slower).

The runs are interleaved: each round runs a chunk of ~200 steps of every
variant, the table gives each variant's median chunk rate and the ratios
(median of per-round ratios); a second copy of the flax run (``A/A``) shows
the noise floor. Then: the matmul floor (the step's 14 matmuls alone, in XLA
and in NumPy: the step is compute-bound, so this bounds any speed-up),
compile times (trace + lower, XLA compile; fresh jits, interleaved), the
memory of each program from ``jax.jit(...).lower(...).compile()
.memory_analysis()``, ``pl.fit`` end to end (compilation and per-epoch
evaluation included), and the test accuracy each variant reached. Run::

    python benchmarks/bench_training.py [--quick] [--steps 2000]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

import purelearn as pl

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import textbook_numpy

SIZES = (784, 100, 100, 100, 100, 10)
BATCH = 128
LR = 1e-3


# -- data --------------------------------------------------------------------------


def load_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    try:
        (x, y), (xt, yt) = pl.load_mnist("embedded")
        source = f"MNIST sample (pl.load_mnist('embedded'), {len(x)} train / {len(xt)} test)"
    except Exception as err:  # noqa: BLE001 -- whatever stops it, time on random data of the same shape
        rng = np.random.default_rng(0)
        x, xt = rng.random((4000, 784), np.float32), rng.random((1000, 784), np.float32)
        y, yt = rng.integers(0, 10, 4000), rng.integers(0, 10, 1000)
        source = f"random data of MNIST's shape ({err.__class__.__name__}: {err})"
    return (
        np.asarray(x, np.float32),
        np.asarray(y, np.int32),
        np.asarray(xt, np.float32),
        np.asarray(yt, np.int32),
        source,
    )


def batch_indices(n: int, steps: int, seed: int = 0) -> list[np.ndarray]:
    """``steps`` batches of shuffled epochs (the remainder of each epoch dropped)."""
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    while len(out) < steps:
        order = rng.permutation(n)
        out.extend(order[i : i + BATCH] for i in range(0, n - BATCH + 1, BATCH))
    return out[:steps]


def make_epoch_fn(model: pl.Model, opt: optax.GradientTransformation, n: int) -> Callable:
    """The training half of ``pl.fit``'s epoch (private API), jitted afresh: the
    engine's shuffled batches scanned through its step, ``(state, x, y) -> (state,
    losses)``. ``fit`` then evaluates the training set on the device in the same
    program; that is left out here so the work equals the flax loop's."""
    # the engine's private modules, imported here: bench_state's baseline worker imports
    # this file against an older purelearn that lacks them
    from purelearn.training import epoch as engine_epoch
    from purelearn.training import step as engine_step

    plan = engine_epoch.plan(
        n, batch_size=BATCH, steps_per_epoch=None, sampling="epoch", weight_decay=0.0,
        has_eval=False, early_stopping=None,
    )  # fmt: skip
    step = engine_step.step_fn(model, opt, False)

    def epoch(state, x, y):
        batches = engine_epoch.batches(state, x.shape[0], plan)
        return jax.lax.scan(lambda s, idx: step(s, x[idx], y[idx], 0.0), state, batches)

    return jax.jit(epoch, donate_argnums=0)


def make_step_fn(model: pl.Model, opt: optax.GradientTransformation) -> Callable:
    """``pl.make_train_step``'s program (private API) jitted afresh, to lower and compile."""
    from purelearn.training import step as engine_step

    step = engine_step.step_fn(model, opt, False)
    return jax.jit(lambda state, x, y: step(state, x, y, 0.0), donate_argnums=0)


# -- the flax + optax version ------------------------------------------------------


class FlaxMLP(nn.Module):
    sizes: tuple[int, ...] = SIZES

    @nn.compact
    def __call__(self, x):
        init = nn.initializers.he_normal()
        for width in self.sizes[1:-1]:
            x = nn.relu(nn.Dense(width, kernel_init=init)(x))
        return nn.Dense(self.sizes[-1], kernel_init=init)(x)


def flax_setup(
    key: jax.Array, sizes: tuple[int, ...] = SIZES
) -> tuple[train_state.TrainState, Callable]:
    module = FlaxMLP(sizes=sizes)
    params = module.init(key, jnp.zeros((1, sizes[0])))["params"]
    state = train_state.TrainState.create(apply_fn=module.apply, params=params, tx=optax.adam(LR))

    def step(state, x, y):
        def loss_fn(params):
            logits = state.apply_fn({"params": params}, x)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, jnp.mean(jnp.argmax(logits, -1) == y)

        (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        return state.apply_gradients(grads=grads), {"loss": loss, "accuracy": acc}

    return state, step


def flax_accuracy(state: train_state.TrainState, x: np.ndarray, y: np.ndarray) -> float:
    logits = state.apply_fn({"params": state.params}, x)
    return float(jnp.mean(jnp.argmax(logits, -1) == y))


# -- the matmul floor ----------------------------------------------------------------


def step_flops(sizes: tuple[int, ...] = SIZES, batch: int = BATCH) -> int:
    """Matmul FLOPs of one training step: forward, weight gradients, input gradients
    (none for the first layer)."""
    pairs = list(itertools.pairwise(sizes))
    forward = sum(2 * batch * a * b for a, b in pairs)
    return 2 * forward + sum(2 * batch * a * b for a, b in pairs[1:])


def matmul_operands(seed: int = 0) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    x = rng.random((BATCH, SIZES[0]), np.float32)
    ws = [rng.standard_normal((a, b), np.float32) * 0.05 for a, b in itertools.pairwise(SIZES)]
    ds = [rng.standard_normal((BATCH, b), np.float32) for b in SIZES[1:]]
    return x, ws, ds


def step_matmuls(mm: Callable, x, ws, ds) -> list:
    """The step's 14 matmuls (5 forward, 5 weight gradients, 4 input gradients)."""
    hs = [x]
    for w in ws:
        hs.append(mm(hs[-1], w))
    dws = [mm(h.T, d) for h, d in zip(hs[:-1], ds, strict=True)]
    dxs = [mm(d, w.T) for d, w in zip(ds[1:], ws[1:], strict=True)]
    return [hs[-1], *dws, *dxs]


# -- timing --------------------------------------------------------------------------


class Variant:
    """A resumable training run: ``chunk()`` runs some steps and returns how many."""

    def __init__(self, name: str, chunk: Callable[[], int], finish: Callable[[], None]):
        self.name = name
        self.chunk = chunk
        self.finish = finish  # blocks until the device work is done
        self.rates: list[float] = []
        self.steps = 0

    def run_chunk(self) -> None:
        t0 = time.perf_counter()
        n = self.chunk()
        self.finish()
        dt = time.perf_counter() - t0
        self.rates.append(n / dt)
        self.steps += n

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)


def paired(a: Variant, b: Variant) -> float:
    """Median over rounds of a's rate over b's rate in the same round."""
    return statistics.median(x / y for x, y in zip(a.rates, b.rates, strict=True))


def blas_threads(n: int | None):
    """Limit NumPy's BLAS threads (threadpoolctl), or do nothing without it."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(n, user_api="blas") if n else contextlib.nullcontext()


def fmt_bytes(n: int) -> str:
    return f"{n / 2**20:8.2f} MiB" if n >= 2**20 else f"{n / 2**10:8.1f} KiB"


def median_time(fn: Callable[[], Any], reps: int, inner: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t0) / inner)
    return statistics.median(times)


# -- main --------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 200 steps, 2 rounds")
    parser.add_argument("--steps", type=int, default=None, help="steps per variant (2000)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (10)")
    args = parser.parse_args()
    total = args.steps or (200 if args.quick else 2000)
    rounds = args.rounds or (2 if args.quick else 10)
    chunk = max(1, total // rounds)

    x, y, xt, yt, source = load_data()
    print(
        f"jax {jax.__version__}, optax {optax.__version__}, flax {_flax_version()}, "
        f"numpy {np.__version__}, {os.cpu_count()} CPUs; data: {source}"
    )
    steps_per_epoch = len(x) // BATCH
    idx = batch_indices(len(x), chunk)
    host_batches = [(x[i], y[i]) for i in idx]
    dev_batches = [(jax.device_put(a), jax.device_put(b)) for a, b in host_batches]
    x_dev, y_dev = jax.device_put(x), jax.device_put(y)
    key = jax.random.key(0)
    model, opt = pl.mlp(SIZES), pl.adam(LR)

    def loop(step: Callable, box: list) -> Callable[[], int]:
        def run() -> int:
            state = box[0]
            for xb, yb in dev_batches:
                state, _ = step(state, xb, yb)
            box[0] = state
            return len(dev_batches)

        return run

    # purelearn: make_train_step in a Python loop
    pl_step = pl.make_train_step(model, opt)
    pl_box = [pl.TrainState.create(model, opt, key)]

    # purelearn: fit's epoch program (one call = one shuffled epoch)
    epoch_fn = make_epoch_fn(model, opt, x_dev.shape[0])
    fit_box = [pl.TrainState.create(model, opt, key)]
    epochs_per_chunk = max(1, round(chunk / steps_per_epoch))

    def fit_chunk() -> int:
        state = fit_box[0]
        for _ in range(epochs_per_chunk):
            state, _ = epoch_fn(state, x_dev, y_dev)
        fit_box[0] = state
        return epochs_per_chunk * steps_per_epoch

    # flax + optax, and a second copy of it (same program, own state): the noise floor
    flax_state, flax_step_fn = flax_setup(key)
    flax_step = jax.jit(flax_step_fn, donate_argnums=0)
    flax_box = [flax_state]
    twin_box = [flax_setup(key)[0]]

    # NumPy, the textbook's layers
    net = textbook_numpy.MultiLayerNet(SIZES)
    np_opt = textbook_numpy.Adam(LR)

    def numpy_chunk(threads: int | None, batches: list) -> Callable[[], int]:
        def run() -> int:
            with blas_threads(threads):
                for xb, yb in batches:
                    textbook_numpy.train_step(net, np_opt, xb, yb)
            return len(batches)

        return run

    def ready(box: list) -> Callable[[], None]:
        return lambda: jax.block_until_ready(box[0])

    variants = [
        Variant("pl.make_train_step loop", loop(pl_step, pl_box), ready(pl_box)),
        Variant("pl.fit epoch program", fit_chunk, ready(fit_box)),
        Variant("flax + optax loop", loop(flax_step, flax_box), ready(flax_box)),
        Variant("flax + optax loop (A/A)", loop(flax_step, twin_box), ready(twin_box)),
    ]

    # warm-up: compile everything; pick NumPy's faster BLAS setting (default threads
    # or one thread: on a loaded machine, OpenBLAS's threads can be 10x slower)
    t0 = time.perf_counter()
    for v in variants:
        v.chunk()
        v.finish()
    few = host_batches[: max(1, min(10, len(host_batches)))]
    default_threads = Variant("default", numpy_chunk(None, few), lambda: None)
    one_thread = Variant("1", numpy_chunk(1, few), lambda: None)
    for _ in range(3):
        default_threads.run_chunk()
        one_thread.run_chunk()
    np_threads = 1 if paired(one_thread, default_threads) >= 1 else None
    np_label = "1 BLAS thread" if np_threads == 1 else "default BLAS threads"
    variants.append(
        Variant(f"NumPy ({np_label})", numpy_chunk(np_threads, host_batches), lambda: None)
    )
    by_name = {v.name: v for v in variants}
    print(
        f"[warm-up {time.perf_counter() - t0:.1f}s; a chunk is {chunk} steps "
        f"({epochs_per_chunk} epochs of {steps_per_epoch} for fit)]"
    )

    # interleaved rounds
    t0 = time.perf_counter()
    for r in range(rounds):
        shift = r % len(variants)
        for v in variants[shift:] + variants[:shift]:
            v.run_chunk()
    print(f"[{rounds} interleaved rounds: {time.perf_counter() - t0:.1f}s]")

    numpy_v, flax_v = variants[-1], by_name["flax + optax loop"]
    flops = step_flops()
    print()
    print(
        f"{'variant':<28} {'steps':>6} {'steps/s':>8} {'us/step':>8} {'GFLOP/s':>8}"
        f" {'vs NumPy':>9} {'time/flax':>9}"
    )
    for v in variants:
        print(
            f"{v.name:<28} {v.steps:>6} {v.rate:>8.0f} {1e6 / v.rate:>8.0f}"
            f" {flops * v.rate / 1e9:>8.1f} {paired(v, numpy_v):>8.2f}x"
            f" {1 / paired(v, flax_v):>9.3f}"
        )
    print(
        f"NumPy BLAS setting (warm-up, {len(few)}-step runs): default threads "
        f"{default_threads.rate:.0f} steps/s, 1 thread {one_thread.rate:.0f} steps/s; "
        f"the faster ({np_label}) is used"
    )
    print(
        "('vs NumPy': speed ratio; 'time/flax': time ratio, < 1 = faster than flax; both "
        "medians of per-round ratios. 'A/A' is flax timed against itself: the noise floor)"
    )

    # the matmul floor, interleaved with short runs of pl's and NumPy's steps
    xm, ws, ds = matmul_operands()
    jx, jws, jds = jnp.asarray(xm), [jnp.asarray(w) for w in ws], [jnp.asarray(d) for d in ds]
    xla_mm = jax.jit(lambda x, ws, ds: step_matmuls(jnp.matmul, x, ws, ds))
    jax.block_until_ready(xla_mm(jx, jws, jds))
    mm_reps, inner = (3, 10) if args.quick else (9, 30)
    few_dev, few_host = dev_batches[:inner], host_batches[:inner]

    def pl_steps() -> None:
        state = pl_box[0]
        for xb, yb in few_dev:
            state, _ = pl_step(state, xb, yb)
        pl_box[0] = jax.block_until_ready(state)

    def np_steps() -> None:
        for xb, yb in few_host:
            textbook_numpy.train_step(net, np_opt, xb, yb)

    rows = []
    with blas_threads(np_threads):
        for _ in range(mm_reps):
            rows.append(
                (
                    median_time(lambda: jax.block_until_ready(xla_mm(jx, jws, jds)), 1, inner),
                    median_time(lambda: step_matmuls(np.matmul, xm, ws, ds), 1, inner),
                    median_time(pl_steps, 1, 1) / len(few_dev),
                    median_time(np_steps, 1, 1) / len(few_host),
                )
            )
    t_xla_mm, t_np_mm, t_pl, t_np = (statistics.median(c) for c in zip(*rows, strict=True))
    print()
    print(
        f"matmul floor: the step's 14 matmuls ({flops / 1e6:.1f} MFLOP) alone, timed in "
        f"turn with {inner}-step runs of the whole steps ({mm_reps} rounds, medians)"
    )
    print(
        f"  XLA (one jit)          {t_xla_mm * 1e6:7.0f} us  {flops / t_xla_mm / 1e9:6.1f} GFLOP/s"
        f"  = {statistics.median(r[0] / r[2] for r in rows):.0%} of pl's step"
        f" ({t_pl * 1e6:.0f} us)"
    )
    print(
        f"  NumPy                  {t_np_mm * 1e6:7.0f} us  {flops / t_np_mm / 1e9:6.1f} GFLOP/s"
        f"  = {statistics.median(r[1] / r[3] for r in rows):.0%} of NumPy's step"
        f" ({t_np * 1e6:.0f} us)"
    )
    print(
        "  best possible JAX speed-up over NumPy with XLA's matmuls (NumPy step / XLA "
        f"matmuls): {statistics.median(r[3] / r[0] for r in rows):.2f}x"
    )

    # compile times, interleaved
    reps = 1 if args.quick else 3
    state0 = pl.TrainState.create(model, opt, key)
    xb, yb = dev_batches[0]
    makers = {
        "pl.make_train_step": lambda: (make_step_fn(model, opt), (state0, xb, yb)),
        "pl.fit epoch program": lambda: (
            make_epoch_fn(model, opt, x_dev.shape[0]),
            (state0, x_dev, y_dev),
        ),
        "flax + optax step": lambda: (
            jax.jit(flax_setup(key)[1], donate_argnums=0),
            (flax_setup(key)[0], xb, yb),
        ),
    }
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in makers}
    for _ in range(reps):
        for name, make in makers.items():
            fn, fargs = make()
            t0 = time.perf_counter()
            lowered = fn.lower(*fargs)
            t1 = time.perf_counter()
            lowered.compile()
            times[name].append((t1 - t0, time.perf_counter() - t1))
    print()
    print(f"compile time (median of {reps} fresh jits)  trace+lower  XLA compile    total")
    for name, ts in times.items():
        lo = statistics.median(t[0] for t in ts)
        co = statistics.median(t[1] for t in ts)
        print(f"  {name:<36} {lo:>8.3f}s {co:>11.3f}s {lo + co:>8.3f}s")

    # memory
    print()
    print("memory_analysis()        argument      output       alias        temp       peak*")
    for name, make in makers.items():
        fn, fargs = make()
        m = fn.lower(*fargs).compile().memory_analysis()
        if m is None:
            print(f"  {name:<20} (not available)")
            continue
        peak = (
            m.argument_size_in_bytes
            + m.output_size_in_bytes
            - m.alias_size_in_bytes
            + m.temp_size_in_bytes
        )
        print(
            f"  {name:<20} {fmt_bytes(m.argument_size_in_bytes)}"
            f" {fmt_bytes(m.output_size_in_bytes)} {fmt_bytes(m.alias_size_in_bytes)}"
            f" {fmt_bytes(m.temp_size_in_bytes)} {fmt_bytes(peak)}"
        )
    print(
        "  (*peak = argument + output - alias + temp; the fit epoch's arguments include "
        "the whole training set)"
    )

    # fit end to end
    epochs = max(1, round(total / steps_per_epoch))
    t0 = time.perf_counter()
    fit_state, _ = pl.fit(
        model, opt, (x_dev, y_dev), epochs=epochs, batch_size=BATCH, key=key, progress=False
    )
    jax.block_until_ready(fit_state)
    dt = time.perf_counter() - t0
    print()
    print(
        f"pl.fit end to end, {epochs} epochs = {epochs * steps_per_epoch} steps, compilation "
        f"and per-epoch train-set evaluation included: {dt:.2f}s "
        f"({epochs * steps_per_epoch / dt:.0f} steps/s)"
    )

    # every variant trained
    print()
    print("test accuracy after training (timed steps plus warm-up):")
    print(f"  pl.make_train_step loop  {pl.evaluate(model, pl_box[0], xt, yt):.3f}")
    print(f"  pl.fit epoch program     {pl.evaluate(model, fit_box[0], xt, yt):.3f}")
    print(f"  pl.fit end to end        {pl.evaluate(model, fit_state, xt, yt):.3f}")
    print(f"  flax + optax loop        {flax_accuracy(flax_box[0], xt, yt):.3f}")
    print(f"  NumPy                    {net.accuracy(xt, yt):.3f}")

    # targets
    print()
    print("targets:")
    for name in ("pl.make_train_step loop", "pl.fit epoch program"):
        s = paired(by_name[name], numpy_v)
        print(f"  {name} >= 3x NumPy: {s:.2f}x -> {'met' if s >= 3 else 'MISSED'}")
    for name in ("pl.make_train_step loop", "pl.fit epoch program"):
        t = 1 / paired(by_name[name], flax_v)
        print(f"  {name} time / flax <= 1.0: {t:.3f} -> {'met' if t <= 1.0 else 'MISSED'}")


def _flax_version() -> str:
    import flax

    return flax.__version__


if __name__ == "__main__":
    main()
