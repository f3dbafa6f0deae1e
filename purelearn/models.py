"""Models as pairs of pure functions: ``init(key)`` and ``apply(...)``.

A :class:`Model` is what the training loop needs and nothing more::

    params, model_state = model.init(key)
    logits, new_model_state = model.apply(params, model_state, x, train=True, key=key)

``params`` are what the optimizer updates; ``model_state`` is what the forward
pass updates (batch-norm running statistics). :func:`mlp` builds the textbook's
multi-layer net from the layer functions; :func:`from_flax` wraps any
``flax.linen`` module.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from purelearn.initializers import he_normal, normal, xavier_normal
from purelearn.normalization import BatchNormStats
from purelearn.normalization import batch_norm as _batch_norm
from purelearn.regularization import dropout

__all__ = ["Model", "mlp", "from_flax"]

Initializer = Callable[..., jax.Array]

_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,
    "elu": jax.nn.elu,
    "leaky_relu": jax.nn.leaky_relu,
    "identity": lambda x: x,
}


class Model(NamedTuple):
    """A model as two pure functions.

    Attributes:
      init: ``init(key) -> (params, model_state)``.
      apply: ``apply(params, model_state, x, *, train, key=None) ->
        (logits, new_model_state)``; ``key`` drives Dropout when ``train``.
    """

    init: Callable[[jax.Array], tuple[Any, Any]]
    apply: Callable[..., tuple[jax.Array, Any]]


def _initializer(init: str | float | Initializer) -> Initializer:
    if callable(init):
        return init
    if isinstance(init, str):
        named = {"he": he_normal, "relu": he_normal, "xavier": xavier_normal}
        named["sigmoid"] = named["tanh"] = xavier_normal
        if init.lower() not in named:
            raise ValueError(
                f"init must be 'he', 'xavier', a standard deviation or an "
                f"initializer function, got {init!r}"
            )
        return named[init.lower()]()
    if isinstance(init, numbers.Real) and not isinstance(init, bool) and init > 0:
        return normal(float(init))
    raise ValueError(f"init as a number is the weight standard deviation (> 0), got {init!r}")


def mlp(
    sizes: Sequence[int],
    *,
    activation: str | Callable[[jax.Array], jax.Array] = "relu",
    init: str | float | Initializer = "he",
    batch_norm: bool = False,
    dropout_rate: float = 0.0,
) -> Model:
    """The textbook's fully connected net (``MultiLayerNetExtend``).

    Each hidden layer is ``Affine -> BatchNorm (optional) -> activation ->
    Dropout (optional)``; the last layer is a plain ``Affine`` giving logits.
    Weights come from ``init``; biases (and batch-norm shifts) start at 0,
    batch-norm scales at 1.

    Args:
      sizes: layer widths including input and output, e.g.
        ``(784, 100, 100, 100, 100, 10)`` for the 5-layer net.
      activation: "relu", "sigmoid", "tanh" (or "gelu", "elu", "leaky_relu",
        "identity"), or a function.
      init: "he" (std sqrt(2/fan_in)), "xavier" (std sqrt(1/fan_in)), a
        number (the textbook's ``weight_init_std``), or an initializer
        ``init(key, shape, dtype)``.
      batch_norm: insert batch normalization after each hidden affine layer.
      dropout_rate: drop probability after each hidden activation.

    Returns:
      A :class:`Model`. ``params`` is a list with one dict per layer
      (``w``, ``b``, and ``scale``/``bias`` with batch norm); ``model_state``
      is a list of :class:`~purelearn.normalization.BatchNormStats`, one per
      hidden layer (empty without batch norm).

    Example:
      >>> import jax, purelearn as pl
      >>> model = pl.mlp([4, 8, 3], batch_norm=True)
      >>> params, state = model.init(jax.random.key(0))
      >>> logits, state = model.apply(params, state, jax.numpy.ones((2, 4)), train=True)
      >>> logits.shape, [sorted(p) for p in params]
      ((2, 3), [['b', 'bias', 'scale', 'w'], ['b', 'w']])
    """
    sizes = list(sizes)
    if len(sizes) < 2 or not all(
        isinstance(s, numbers.Integral) and not isinstance(s, bool) and s > 0 for s in sizes
    ):
        raise ValueError(
            f"sizes must be at least two positive integers (input ... output), got {sizes!r}"
        )
    if isinstance(activation, str):
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(_ACTIVATIONS)} or a function, "
                f"got {activation!r}"
            )
        act = _ACTIVATIONS[activation]
    else:
        act = activation
    if not isinstance(dropout_rate, numbers.Real) or not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate!r}")
    weight_init = _initializer(init)
    use_bn = bool(batch_norm)
    num_hidden = len(sizes) - 2

    def init_fn(key: jax.Array) -> tuple[list[dict[str, jax.Array]], list[BatchNormStats]]:
        keys = jax.random.split(key, len(sizes) - 1)
        params = []
        for i, (k, fan_in, fan_out) in enumerate(zip(keys, sizes[:-1], sizes[1:], strict=True)):
            layer = {"w": weight_init(k, (fan_in, fan_out), jnp.float32), "b": jnp.zeros(fan_out)}
            if use_bn and i < num_hidden:
                layer["scale"] = jnp.ones(fan_out)
                layer["bias"] = jnp.zeros(fan_out)
            params.append(layer)
        stats = [BatchNormStats.init(n) for n in sizes[1:-1]] if use_bn else []
        return params, stats

    def apply_fn(params, model_state, x, *, train: bool, key: jax.Array | None = None):
        if train and dropout_rate > 0 and key is None:
            raise ValueError("this model uses dropout: apply(..., train=True) needs a key")
        new_stats = []
        for i, layer in enumerate(params[:-1]):
            x = x @ layer["w"] + layer["b"]
            if use_bn:
                x, s = _batch_norm(x, layer["scale"], layer["bias"], model_state[i], train=train)
                new_stats.append(s)
            x = act(x)
            if dropout_rate > 0:
                layer_key = jax.random.fold_in(key, i) if train else None
                x = dropout(layer_key, x, dropout_rate, deterministic=not train)
        return x @ params[-1]["w"] + params[-1]["b"], new_stats

    return Model(init_fn, apply_fn)


def from_flax(module: Any, sample_input: jax.Array) -> Model:
    """Wrap a ``flax.linen`` module as a :class:`Model`.

    ``params`` is the module's ``"params"`` collection; ``model_state`` is a
    dict of every other collection (``{"batch_stats": ...}``), updated in
    training. If ``__call__`` takes ``train`` it is passed through; if it
    takes ``deterministic``, ``not train`` is. The key feeds the ``"dropout"``
    rng stream.

    Args:
      module: a ``flax.linen.Module``.
      sample_input: an input batch of the right shape, used by ``init``.

    Example:
      >>> import flax.linen as nn, jax, jax.numpy as jnp, purelearn as pl
      >>> model = pl.from_flax(nn.Dense(3), jnp.ones((1, 4)))
      >>> params, state = model.init(jax.random.key(0))
      >>> model.apply(params, state, jnp.ones((2, 4)), train=False)[0].shape
      (2, 3)
    """
    call_args = inspect.signature(module.__call__).parameters
    sample_input = jnp.asarray(sample_input)

    def mode(train: bool) -> dict[str, bool]:
        if "train" in call_args:
            return {"train": train}
        if "deterministic" in call_args:
            return {"deterministic": not train}
        return {}

    def init_fn(key: jax.Array):
        params_key, dropout_key = jax.random.split(key)
        variables = module.init(
            {"params": params_key, "dropout": dropout_key}, sample_input, **mode(False)
        )
        variables = dict(variables)
        params = variables.pop("params", {})
        return params, variables

    def apply_fn(params, model_state, x, *, train: bool, key: jax.Array | None = None):
        variables = {"params": params, **model_state}
        rngs = {"dropout": key} if key is not None else {}
        if train and model_state:
            logits, updated = module.apply(
                variables, x, rngs=rngs, mutable=list(model_state), **mode(True)
            )
            return logits, {**model_state, **updated}
        return module.apply(variables, x, rngs=rngs, **mode(train)), model_state

    return Model(init_fn, apply_fn)
