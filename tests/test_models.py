"""Models: the textbook MLP and flax modules wrapped as Models."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purelearn as pl


def numpy_mlp(params, x, activation):
    """The textbook forward pass without batch norm or dropout, in NumPy."""
    for layer in params[:-1]:
        x = activation(x @ np.asarray(layer["w"]) + np.asarray(layer["b"]))
    return x @ np.asarray(params[-1]["w"]) + np.asarray(params[-1]["b"])


@pytest.mark.parametrize(
    "activation, np_fn",
    [
        ("relu", lambda a: np.maximum(a, 0)),
        ("sigmoid", lambda a: 1 / (1 + np.exp(-a))),
        ("tanh", np.tanh),
    ],
)
def test_mlp_forward_matches_numpy(activation, np_fn):
    model = pl.mlp([6, 5, 4, 3], activation=activation)
    params, state = model.init(jax.random.key(0))
    x = np.random.default_rng(0).normal(size=(7, 6)).astype(np.float32)
    logits, new_state = model.apply(params, state, x, train=True)
    np.testing.assert_allclose(logits, numpy_mlp(params, x, np_fn), rtol=1e-5, atol=1e-6)
    assert new_state == [] and state == []


def test_mlp_param_shapes_and_init_scales():
    sizes = [784, 100, 100, 10]
    for init, std in [
        ("he", lambda n: np.sqrt(2 / n)),
        ("xavier", lambda n: np.sqrt(1 / n)),
        (0.01, lambda n: 0.01),
    ]:
        params, _ = pl.mlp(sizes, init=init).init(jax.random.key(1))
        assert [p["w"].shape for p in params] == [(784, 100), (100, 100), (100, 10)]
        for p, n in zip(params[:2], sizes, strict=False):
            assert abs(float(jnp.std(p["w"])) / std(n) - 1) < 0.05
            assert not np.any(np.asarray(p["b"]))


def test_mlp_custom_initializer_and_activation_function():
    model = pl.mlp(
        [3, 2], init=lambda k, s, d=jnp.float32: jnp.full(s, 0.5, d), activation=jax.nn.softplus
    )
    params, _ = model.init(jax.random.key(0))
    np.testing.assert_array_equal(params[0]["w"], 0.5)


def test_mlp_batch_norm_layers_and_running_stats():
    model = pl.mlp([4, 8, 8, 3], batch_norm=True)
    params, state = model.init(jax.random.key(0))
    assert len(state) == 2 and all(isinstance(s, pl.BatchNormStats) for s in state)
    x = jax.random.normal(jax.random.key(2), (16, 4)) * 3 + 1
    _, new_state = model.apply(params, state, x, train=True)
    assert not np.allclose(new_state[0].mean, state[0].mean)
    # In inference mode the running statistics are used and returned unchanged.
    _logits_eval, same = model.apply(params, new_state, x, train=False)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), same, new_state))
    # The hidden pre-activations are normalized over the batch in training.
    h = x @ params[0]["w"] + params[0]["b"]
    y, _ = pl.batch_norm(h, params[0]["scale"], params[0]["bias"], state[0], train=True)
    np.testing.assert_allclose(jnp.mean(y, 0), 0, atol=1e-5)


def test_mlp_dropout_needs_key_and_varies_with_key():
    model = pl.mlp([4, 64, 3], dropout_rate=0.5)
    params, state = model.init(jax.random.key(0))
    x = jnp.ones((2, 4))
    with pytest.raises(ValueError, match="key"):
        model.apply(params, state, x, train=True)
    a, _ = model.apply(params, state, x, train=True, key=jax.random.key(1))
    b, _ = model.apply(params, state, x, train=True, key=jax.random.key(2))
    c, _ = model.apply(params, state, x, train=True, key=jax.random.key(1))
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(a, c)
    e1, _ = model.apply(params, state, x, train=False)
    e2, _ = model.apply(params, state, x, train=False)
    np.testing.assert_array_equal(e1, e2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"sizes": [784]}, "sizes"),
        ({"sizes": [784, 0, 10]}, "sizes"),
        ({"sizes": [4, 3], "activation": "swishy"}, "swishy"),
        ({"sizes": [4, 3], "init": "lecun"}, "lecun"),
        ({"sizes": [4, 3], "init": -0.1}, "-0.1"),
        ({"sizes": [4, 3], "dropout_rate": 1.0}, "dropout_rate"),
        ({"sizes": [4, 3], "dropout_rate": -0.2}, "dropout_rate"),
    ],
)
def test_mlp_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pl.mlp(**kwargs)


class FlaxNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Dense(32)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        x = nn.relu(x)
        x = nn.Dropout(0.3, deterministic=not train)(x)
        return nn.Dense(2)(x)


def test_from_flax_wraps_batch_stats_and_dropout():
    model = pl.from_flax(FlaxNet(), jnp.ones((1, 3)))
    params, state = model.init(jax.random.key(0))
    assert set(state) == {"batch_stats"}
    x = jax.random.normal(jax.random.key(1), (8, 3)) + 2
    a, new_state = model.apply(params, state, x, train=True, key=jax.random.key(1))
    b, _ = model.apply(params, state, x, train=True, key=jax.random.key(2))
    assert not np.allclose(a, b)  # the key reaches Dropout
    mean = new_state["batch_stats"]["BatchNorm_0"]["mean"]
    assert not np.allclose(mean, 0)
    e, same = model.apply(params, new_state, x, train=False)
    assert same is new_state
    direct = FlaxNet().apply({"params": params, **new_state}, x, train=False)
    np.testing.assert_allclose(e, direct)


def test_from_flax_deterministic_flag_and_stateless_module():
    class Det(nn.Module):
        @nn.compact
        def __call__(self, x, deterministic: bool = True):
            return nn.Dropout(0.5)(nn.Dense(4)(x), deterministic=deterministic)

    model = pl.from_flax(Det(), jnp.ones((1, 3)))
    params, state = model.init(jax.random.key(0))
    assert state == {}
    x = jnp.ones((2, 3))
    train_out, _ = model.apply(params, state, x, train=True, key=jax.random.key(0))
    eval_out, _ = model.apply(params, state, x, train=False)
    assert np.any(np.asarray(train_out) == 0) and not np.any(np.asarray(eval_out) == 0)
