"""The textbook's hyperparameter search: vmapped vs a sequential loop; Bayes vs random.

The problem is the textbook's (Figure 6-24): 500 MNIST training images split
400 / 100 into training and validation, the 784-100x6-10 net, SGD, batches of
100, 50 epochs; learning rate log-uniform in [1e-6, 1e-2], weight decay
log-uniform in [1e-8, 1e-4].

1. Vmapped vs sequential. The search's vmapped program with all trials at
   once (compile and run timed apart), and ``pl.random_search`` end to end
   with its default chunking; the baseline runs the very same trials (same
   hyperparameters, same keys) one at a time through one jitted
   ``pl.train_run`` compiled once. Both walls include their compilation; the
   steady-state time of the sequential loop (without its compile) is shown
   too. Their curves must agree to float tolerance: the worst relative
   deviation of a vmapped trial's loss curve from the same trial run alone,
   and by how many images its accuracy curves differ (batched and unbatched
   matmuls round differently; over 50 epochs of SGD that can flip a
   prediction). Then the same trials at several chunk widths
   (``max_parallel``), which shows where vmapping pays on this machine.
2. Bayes vs random at the same budget. For several seeds: the best validation
   accuracy of ``random_search`` and of ``bayes_search`` (Optuna TPE, batches
   of ``--batch`` trials) with ``--budget`` trials each, and how many trials
   Bayes needed to reach the best that random search found with
   ``--trials`` trials.

Run::

    python benchmarks/bench_search.py [--trials 100] [--epochs 50] [--seeds 3] [--budget 40]
"""

from __future__ import annotations

import argparse
import functools
import itertools
import time

import jax
import numpy as np
import optax

import purelearn as pl
from purelearn import tuning
from purelearn.experiments._common import mnist, subset
from purelearn.experiments.search import SPACE
from purelearn.experiments.weight_decay import SIZES
from purelearn.training import trials as trials_lib

BATCH_SIZE = 100


def problem(data: str):
    (x, y), _, described = mnist(data)
    x, y = subset(x, y, 500, 0)
    return (x[:400], y[:400]), (x[400:], y[400:]), described


def space():
    return {name: pl.log_uniform(lo, hi) for name, (lo, hi) in SPACE.items()}


def flops_per_trial(epochs: int) -> float:
    """Matmul FLOPs of one trial: per step forward (2) and backward (4) passes over
    a batch, per epoch the inference passes over the 400 + 100 evaluated images."""
    weights = sum(a * b for a, b in itertools.pairwise(SIZES))
    steps = 400 // BATCH_SIZE
    return epochs * (steps * 6 * BATCH_SIZE * weights + 2 * 500 * weights)


def vmapped_vs_sequential(train, val, *, trials: int, epochs: int, max_parallel: int | None):
    model, key = pl.mlp(SIZES), jax.random.key(0)
    kw = {"epochs": epochs, "batch_size": BATCH_SIZE}
    timings = {}
    # warm-up: the process's first jitted programs (key splits, gathers) are not the search's
    pl.random_search(
        model, pl.sgd, train, val, space=space(), num_trials=1, key=key, epochs=1,
        batch_size=BATCH_SIZE,
    )  # fmt: skip
    start = time.perf_counter()
    results = pl.random_search(
        model, pl.sgd, train, val, space=space(), num_trials=trials, key=key,
        max_parallel=max_parallel, **kw,
    )  # fmt: skip
    timings["vmapped"] = time.perf_counter() - start
    # the same program split into compile and run (random_search's own runner)
    by_trial = sorted(results, key=lambda r: r["trial"])
    hparams = {
        name: np.array([r[name] for r in by_trial], np.float32)
        for name in ("learning_rate", "weight_decay")
    }
    keys = jax.random.split(key, trials)
    run = functools.partial(
        trials_lib.run_trials, model, pl.sgd, train, val, keys=keys,
        settings=trials_lib.Settings(**kw), weight_decay=hparams["weight_decay"],
        hparams={"learning_rate": hparams["learning_rate"]}, chunk=trials,
    )  # fmt: skip
    start = time.perf_counter()
    run()  # compiles the all-trials-at-once program, then runs it
    first = time.perf_counter() - start
    start = time.perf_counter()
    run()
    timings["vmapped run"] = time.perf_counter() - start
    timings["vmapped compile"] = first - timings["vmapped run"]

    @jax.jit
    def alone(lr, wd, trial_key):
        opt = optax.inject_hyperparams(pl.sgd)(learning_rate=lr)
        _, curves = pl.train_run(
            model, opt, train, key=trial_key, eval_data=val, weight_decay=wd, **kw
        )
        return curves["eval_accuracy"], curves["train_accuracy"], curves["loss"]

    start = time.perf_counter()
    compiled = alone.lower(np.float32(0), np.float32(0), keys[0]).compile()
    timings["sequential compile"] = time.perf_counter() - start
    alone_curves = []
    start = time.perf_counter()
    for r in by_trial:
        lr, wd = np.float32(r["learning_rate"]), np.float32(r["weight_decay"])
        alone_curves.append(jax.block_until_ready(compiled(lr, wd, keys[r["trial"]])))
    timings["sequential run"] = time.perf_counter() - start
    timings["sequential"] = timings["sequential compile"] + timings["sequential run"]
    deviation = {"loss": 0.0, "loss, first 10 epochs": 0.0, "val images": 0, "train images": 0}
    for r, (val_curve, train_curve, loss) in zip(by_trial, alone_curves, strict=True):
        rel = np.abs(np.asarray(loss) - r["loss_curve"]) / np.abs(np.asarray(loss))
        deviation["loss"] = max(deviation["loss"], float(rel.max()))
        deviation["loss, first 10 epochs"] = max(
            deviation["loss, first 10 epochs"], float(rel[:10].max())
        )
        flips = np.abs(np.asarray(val_curve) - r["val_acc_curve"]).max() * len(val[0])
        deviation["val images"] = max(deviation["val images"], round(float(flips)))
        flips = np.abs(np.asarray(train_curve) - r["train_acc_curve"]).max() * len(train[0])
        deviation["train images"] = max(deviation["train images"], round(float(flips)))
    return results, timings, deviation


def chunk_sweep(train, val, *, trials: int, epochs: int, widths: list[int]) -> dict[int, float]:
    """Run time (compile excluded) of the same trials at several ``max_parallel``."""
    model = pl.mlp(SIZES)
    keys = jax.random.split(jax.random.key(0), trials)
    seconds = {}
    for width in widths:
        run = functools.partial(
            trials_lib.run_trials, model, pl.sgd, train, val, keys=keys,
            settings=trials_lib.Settings(epochs=epochs, batch_size=BATCH_SIZE),
            weight_decay=np.full(trials, 1e-6, np.float32),
            hparams={"learning_rate": np.full(trials, 1e-3, np.float32)}, chunk=width,
        )  # fmt: skip
        run()  # compiles this width
        start = time.perf_counter()
        run()
        seconds[width] = time.perf_counter() - start
    return seconds


def matmul_gflops() -> float:
    """This machine's float32 matmul rate on a 1024-square product (the roofline)."""
    a = jax.random.normal(jax.random.key(0), (1024, 1024))
    f = jax.jit(lambda a: a @ a)
    jax.block_until_ready(f(a))
    start = time.perf_counter()
    for _ in range(20):
        out = f(a)
    jax.block_until_ready(out)
    return 20 * 2 * 1024**3 / (time.perf_counter() - start) / 1e9


def best_by(results, budget: int | None = None) -> float:
    """Best validation accuracy among the first ``budget`` trials (in trial order)."""
    return max(r["val_acc"] for r in results if budget is None or r["trial"] < budget)


def trials_to_reach(results, target: float) -> int | None:
    """How many trials (in the order asked) until one reached ``target``."""
    hits = [r["trial"] for r in results if r["val_acc"] >= target - 1e-9]
    return min(hits) + 1 if hits else None


def bayes_vs_random(train, val, *, seeds: int, trials: int, budget: int, batch: int, epochs: int):
    model = pl.mlp(SIZES)
    kw = {"space": space(), "epochs": epochs, "batch_size": BATCH_SIZE}
    rows = []
    for seed in range(seeds):
        key = jax.random.key(1000 + seed)
        start = time.perf_counter()
        rand = pl.random_search(model, pl.sgd, train, val, num_trials=trials, key=key, **kw)
        rand_s = time.perf_counter() - start
        start = time.perf_counter()
        bayes = pl.bayes_search(
            model, pl.sgd, train, val, num_trials=budget, trials_per_batch=batch, key=key, **kw
        )
        bayes_s = time.perf_counter() - start
        target = best_by(rand)
        rows.append(
            (seed, best_by(rand, budget), best_by(bayes), target, trials_to_reach(bayes, target),
             rand_s, bayes_s)
        )  # fmt: skip
        print(
            f"  seed {seed}: random@{budget} {rows[-1][1]:.2f}  bayes@{budget} {rows[-1][2]:.2f}  "
            f"random@{trials} {target:.2f}  bayes reached it after {rows[-1][4]} trials  "
            f"({rand_s:.0f} s / {bayes_s:.0f} s)",
            flush=True,
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="auto")
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--max-parallel", type=int, default=None)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget", type=int, default=40)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--sweep-epochs", type=int, default=10)
    parser.add_argument("--skip-bayes", action="store_true")
    args = parser.parse_args()

    train, val, described = problem(args.data)
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; {described}")
    print(
        f"textbook search: {args.trials} trials, {args.epochs} epochs, 400/100 images, "
        f"784-100x6-10 net, SGD, batch {BATCH_SIZE}"
    )
    results, t, deviation = vmapped_vs_sequential(
        train, val, trials=args.trials, epochs=args.epochs, max_parallel=args.max_parallel
    )
    work = args.trials * flops_per_trial(args.epochs) / 1e9
    rate = matmul_gflops()
    print(f"\nmatmul work: {work:.0f} GFLOP; this machine's matmul rate: {rate:.0f} GFLOP/s")
    print("\n| run | compile (s) | run (s) | total (s) | run GFLOP/s |\n|---|---|---|---|---|")
    labels = {"vmapped": f"vmapped, all {args.trials} in one program", "sequential": "sequential"}
    for name, label in labels.items():
        compile_s, run_s = t[f"{name} compile"], t[f"{name} run"]
        total = compile_s + run_s
        print(f"| {label} | {compile_s:.1f} | {run_s:.1f} | {total:.1f} | {work / run_s:.0f} |")
    chunks = tuning._chunk(args.max_parallel, args.trials)
    print(
        f"| `pl.random_search` end to end ({chunks} trials per chunk) | | | {t['vmapped']:.1f} | |"
    )
    total = (t["sequential"]) / (t["vmapped compile"] + t["vmapped run"])
    print(f"\nsequential / vmapped (all at once): total {total:.2f}x, run only "
          f"{t['sequential run'] / t['vmapped run']:.2f}x; sequential / random_search end to "
          f"end {t['sequential'] / t['vmapped']:.2f}x")  # fmt: skip
    print(
        "vmapped trial vs the same trial alone, worst over all trials: loss curve relative "
        f"{deviation['loss']:.1e} (first 10 epochs {deviation['loss, first 10 epochs']:.1e}); "
        f"accuracy curves differ by at most {deviation['val images']} validation and "
        f"{deviation['train images']} training images"
    )
    print(f"best: val {results[0]['val_acc']:.2f} at lr {results[0]['learning_rate']:.2e}, "
          f"wd {results[0]['weight_decay']:.2e}")  # fmt: skip
    print(pl.top_k_table(results, k=5))

    widths = [w for w in (1, 4, 8, 16, 32, args.trials) if w <= args.trials]
    widths = sorted(set(widths))
    sweep = chunk_sweep(train, val, trials=args.trials, epochs=args.sweep_epochs, widths=widths)
    print(
        f"\nrun time by trials per vmapped chunk (`max_parallel`; {args.trials} trials, "
        f"{args.sweep_epochs} epochs, compile excluded):\n"
        "| max_parallel | run (s) | vs max_parallel=1 |\n|---|---|---|"
    )
    for width, sec in sweep.items():
        print(f"| {width} | {sec:.2f} | {sweep[1] / sec:.2f}x |")

    if args.skip_bayes:
        return
    print(
        f"\nBayes (Optuna TPE, batches of {args.batch}) vs random, {args.budget} trials each; "
        f"random also with {args.trials}:"
    )
    rows = bayes_vs_random(
        train, val, seeds=args.seeds, trials=args.trials, budget=args.budget, batch=args.batch,
        epochs=args.epochs,
    )  # fmt: skip
    print(f"\n| seed | random@{args.budget} | bayes@{args.budget} | random@{args.trials} "
          f"| bayes trials to reach it |\n|---|---|---|---|---|")  # fmt: skip
    for seed, r_budget, b_budget, target, reached, _, _ in rows:
        print(f"| {seed} | {r_budget:.2f} | {b_budget:.2f} | {target:.2f} | {reached} |")
    mean = np.mean([[r[1], r[2], r[3]] for r in rows], axis=0)
    print(f"| mean | {mean[0]:.3f} | {mean[1]:.3f} | {mean[2]:.3f} | |")


if __name__ == "__main__":
    main()
