"""The textbook's hyperparameter search (Figure 6-24), then the best trial re-run alone.

    python examples/hyperparameter_search.py [--method random|grid|bayes] [--trials N]
        [--epochs N] [--patience N] [--out search.png]

400 training and 100 validation images, the 784-100x6-10 net, SGD, batches of
100; the learning rate and the weight decay (L2 penalty) are searched on a log
scale. Every trial of a search trains inside one vmapped, jitted program. The
best trial is then trained again alone from its key, to keep its parameters.
"""

import argparse
import time

import jax
import numpy as np
import optax

import purelearn as pl
from purelearn.plotting import search_figure

SIZES = [784, 100, 100, 100, 100, 100, 100, 10]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=("random", "grid", "bayes"), default="random")
    parser.add_argument("--trials", type=int, default=100, help="random and bayes")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--patience", type=int, default=0, help="early stopping (0: off)")
    parser.add_argument("--data", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="search.png")
    args = parser.parse_args()

    (x, y), _ = pl.load_mnist(args.data)
    train, val = (x[:400], y[:400]), (x[400:500], y[400:500])
    model, key = pl.mlp(SIZES), jax.random.key(args.seed)
    common = {"epochs": args.epochs, "batch_size": 100, "key": key}
    if args.patience:
        common["early_stopping"] = pl.EarlyStopping(patience=args.patience)
    space = {
        "learning_rate": pl.log_uniform(1e-6, 1e-2),
        "weight_decay": pl.log_uniform(1e-8, 1e-4),
    }

    start = time.perf_counter()
    if args.method == "grid":
        grid = {"learning_rate": np.logspace(-5, -2, 7), "weight_decay": np.logspace(-8, -4, 3)}
        results = pl.grid_search(model, pl.sgd, train, val, grid=grid, **common)
    elif args.method == "bayes":
        results = pl.bayes_search(
            model, pl.sgd, train, val, space=space, num_trials=args.trials, **common
        )
    else:
        results = pl.random_search(
            model, pl.sgd, train, val, space=space, num_trials=args.trials, **common
        )
    seconds = time.perf_counter() - start
    print(f"{len(results)} trials ({args.method}) in {seconds:.1f} s")
    print(pl.top_k_table(results, k=5))
    search_figure(results).savefig(args.out)
    print(f"wrote {args.out}")

    # Trial i trained with split(key, num_trials)[i]: the same run alone gives its parameters.
    best = results[0]
    trial_key = jax.random.split(key, len(results))[best["trial"]]
    opt = optax.inject_hyperparams(pl.sgd)(learning_rate=best["learning_rate"])
    state, curves = jax.jit(
        lambda: pl.train_run(
            model,
            opt,
            train,
            epochs=args.epochs,
            batch_size=100,
            key=trial_key,
            eval_data=val,
            weight_decay=best["weight_decay"],
            early_stopping=common.get("early_stopping"),
        )
    )()
    print(
        f"best trial re-run alone: val {float(curves['eval_accuracy'][-1]):.2f} "
        f"(in the search: {best['val_acc']:.2f}), {int(state.step)} steps"
    )


if __name__ == "__main__":
    main()
