"""Train a flax.linen CNN with BatchNorm and Dropout through purelearn.

``pl.from_flax`` turns the module into a Model; ``pl.fit`` trains it with a
purelearn optimizer, keeping its ``batch_stats`` as the model state and
feeding Dropout a fresh key every step. Run: ``python examples/flax_model.py``.
For a flax NNX module see ``examples/nnx_model.py``.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

import purelearn as pl


class SmallCNN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        x = x.reshape(-1, 28, 28, 1)
        x = nn.Conv(16, (3, 3), strides=2, kernel_init=pl.he_normal())(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        x = nn.relu(x)
        x = nn.Conv(32, (3, 3), strides=2, kernel_init=pl.he_normal())(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        x = nn.relu(x).reshape(x.shape[0], -1)
        x = nn.Dropout(0.3, deterministic=not train)(x)
        return nn.Dense(10)(x)


def main():
    (x, y), (xt, yt) = pl.load_mnist("embedded")
    model = pl.from_flax(SmallCNN(), jnp.zeros((1, 784)))
    state, history = pl.fit(
        model,
        pl.adam(0.002),
        (x, y),
        epochs=8,
        batch_size=64,
        key=jax.random.key(0),
        eval_data=(xt, yt),
    )
    print("batch_stats collections:", list(state.model_state))
    for epoch, acc in enumerate(history["eval_accuracy"], 1):
        print(f"epoch {epoch}: test accuracy {acc:.4f}")


if __name__ == "__main__":
    main()
