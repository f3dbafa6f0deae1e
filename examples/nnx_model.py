"""Train a flax NNX MLP on the embedded MNIST sample, two ways.

1. ``pl.from_flax(lambda rngs: MLP(rngs=rngs), x[:1])`` turns the NNX module
   into a purelearn Model: ``pl.fit`` trains its ``nnx.Param`` variables with a
   purelearn optimizer, carries BatchNorm's statistics as the model state, and
   reseeds every Dropout from the step's key (train/eval modes are
   ``module.train()``/``module.eval()``). The trained values go back into a
   module with ``nnx.update``.
2. The plain NNX loop: ``nnx.Optimizer(model, pl.adam(...), wrt=nnx.Param)``
   with ``pl.he_normal()`` as the layers' ``kernel_init``; purelearn's
   optimizers are optax transformations, so NNX takes them as they are.

Run: ``python examples/nnx_model.py`` (under a minute on two CPU cores).
"""

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import purelearn as pl


class MLP(nnx.Module):
    """784 -> 100 -> 100 -> 10 with He-initialized weights, BatchNorm and Dropout."""

    def __init__(self, *, dropout_rate: float = 0.2, rngs: nnx.Rngs):
        init = pl.he_normal()  # std sqrt(2 / fan_in), for ReLU
        self.layers = nnx.List(
            [
                nnx.Linear(784, 100, use_bias=False, kernel_init=init, rngs=rngs),
                nnx.Linear(100, 100, use_bias=False, kernel_init=init, rngs=rngs),
            ]
        )
        self.norms = nnx.List([nnx.BatchNorm(100, momentum=0.9, rngs=rngs) for _ in range(2)])
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
        self.out = nnx.Linear(100, 10, kernel_init=init, rngs=rngs)

    def __call__(self, x):
        for layer, norm in zip(self.layers, self.norms, strict=True):
            x = self.dropout(nnx.relu(norm(layer(x))))
        return self.out(x)


def with_pl_fit(train, test):
    """Part 1: the NNX module as a purelearn Model, trained by pl.fit."""
    (x, y), (xt, yt) = train, test
    model = pl.from_flax(lambda rngs: MLP(rngs=rngs), x[:1])
    state, history = pl.fit(
        model,
        pl.adam(1e-3),
        (x, y),
        epochs=5,
        batch_size=100,
        key=0,
        eval_data=(xt, yt),
        progress=False,
    )
    for epoch, (tr, te) in enumerate(
        zip(history["train_accuracy"], history["eval_accuracy"], strict=True), 1
    ):
        print(f"  epoch {epoch}: train {tr:.3f}  test {te:.3f}")
    # write the trained values back into a module and use it the NNX way
    net = MLP(rngs=nnx.Rngs(0))
    nnx.update(net, state.params, state.model_state)
    net.eval()
    print(f"  the updated module in eval mode: test accuracy {accuracy(net, xt, yt):.3f}")


def accuracy(net, x, y):
    return float(jnp.mean(jnp.argmax(net(x), axis=-1) == y))


@nnx.jit
def train_step(net, optimizer, x, y):
    def loss_fn(net):
        return optax.softmax_cross_entropy_with_integer_labels(net(x), y).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(net)
    optimizer.update(net, grads)
    return loss


def with_nnx_optimizer(train, test, *, epochs=5, batch_size=100):
    """Part 2: a hand-written NNX loop with nnx.Optimizer and pl.adam."""
    (x, y), (xt, yt) = train, test
    net = MLP(rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(net, pl.adam(1e-3), wrt=nnx.Param)
    key = jax.random.key(1)
    for epoch in range(1, epochs + 1):
        key, shuffle = jax.random.split(key)
        order = jax.random.permutation(shuffle, len(x))
        net.train()
        for start in range(0, len(x) - batch_size + 1, batch_size):
            idx = order[start : start + batch_size]
            loss = train_step(net, optimizer, x[idx], y[idx])
        net.eval()
        print(f"  epoch {epoch}: last loss {float(loss):.3f}  test {accuracy(net, xt, yt):.3f}")


def main():
    train, test = pl.load_mnist("embedded")
    print("1. pl.from_flax + pl.fit")
    with_pl_fit(train, test)
    print("2. nnx.Optimizer(net, pl.adam(1e-3), wrt=nnx.Param)")
    with_nnx_optimizer(train, test)


if __name__ == "__main__":
    main()
