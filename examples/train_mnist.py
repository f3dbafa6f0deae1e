"""Train the textbook's 5-layer net on MNIST with purelearn.fit.

    python examples/train_mnist.py [--data auto|embedded|DIR] [--epochs N]
        [--batch-norm] [--dropout RATE] [--weight-decay L] [--checkpoint PATH]

Uses the embedded 5,000-image sample unless the full MNIST IDX files are in
the cache directory (or ``--data DIR`` names them).
"""

import argparse
import time

import jax

import purelearn as pl


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="auto")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.001)
    parser.add_argument("--batch-norm", action="store_true")
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--patience", type=int, default=0, help="early stopping (0: off)")
    parser.add_argument("--checkpoint", default=None, help="save the final state here")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    (x, y), (xt, yt) = pl.load_mnist(args.data)
    model = pl.mlp(
        [784, 100, 100, 100, 100, 10], batch_norm=args.batch_norm, dropout_rate=args.dropout
    )
    optimizer = pl.adam(args.lr)
    start = time.perf_counter()
    state, history = pl.fit(
        model,
        optimizer,
        (x, y),
        epochs=args.epochs,
        batch_size=args.batch_size,
        key=jax.random.key(args.seed),
        eval_data=(xt, yt),
        weight_decay=args.weight_decay,
        early_stopping=pl.EarlyStopping(args.patience) if args.patience else None,
    )
    seconds = time.perf_counter() - start
    steps = int(state.step)
    print(f"{len(x)} training / {len(xt)} test images, {steps} steps in {seconds:.1f} s")
    for epoch, (tr, te) in enumerate(
        zip(history["train_accuracy"], history["eval_accuracy"], strict=True), 1
    ):
        print(f"epoch {epoch:3d}  train acc {tr:.4f}  test acc {te:.4f}")
    if args.checkpoint:
        pl.save_checkpoint(args.checkpoint, state)
        print("saved", args.checkpoint)


if __name__ == "__main__":
    main()
