"""Models: the textbook MLP and flax modules wrapped as Models."""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
        # issue 12 and the probes: each of these was accepted or failed late before
        ({"sizes": [4, 3], "batch_norm": "no"}, "batch_norm.*'no'"),
        ({"sizes": [4, 3], "batch_norm": 1}, "batch_norm"),
        ({"sizes": [4, 3], "activation": 3}, "activation.*got 3"),
        ({"sizes": [4, 3], "activation": lambda a, b: a}, "activation"),
        ({"sizes": [4, 3], "activation": lambda a: a[:1]}, r"activation.*shape \(2, 3\)"),
        ({"sizes": 5}, "sizes.*5"),
        ({"sizes": None}, "sizes.*None"),
        ({"sizes": "43"}, "sizes"),
        ({"sizes": [4, 2.5, 3]}, r"sizes\[1\].*2.5"),
        ({"sizes": [4, True, 3]}, r"sizes\[1\].*True"),
        ({"sizes": [4, 3], "init": float("inf")}, "init.*inf"),
        ({"sizes": [4, 3], "init": True}, "init.*True"),
        ({"sizes": [4, 3], "init": [0.1]}, r"init.*\[0.1\]"),
        ({"sizes": [4, 3], "init": lambda shape: jnp.zeros(shape)}, "init"),
        ({"sizes": [4, 3], "init": lambda k, s, d=None: jnp.zeros((2, 2))}, r"\(4, 3\).*\(2, 2\)"),
        ({"sizes": [4, 3], "dropout_rate": True}, "dropout_rate.*True"),
        ({"sizes": [4, 3], "dropout_rate": float("nan")}, "dropout_rate.*nan"),
        ({"sizes": [4, 3], "dropout_rate": "0.5"}, "dropout_rate"),
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


def test_mlp_takes_numpy_scalars_like_numbers():
    model = pl.mlp(
        [np.array(4), np.int64(8), 3],
        dropout_rate=np.array(0.5),
        init=np.array(0.01),
        batch_norm=np.bool_(False),
    )
    assert model is pl.mlp([4, 8, 3], dropout_rate=0.5, init=0.01)
    params, _ = model.init(jax.random.key(0))
    assert params[0]["w"].shape == (4, 8)
    assert (
        abs(float(jnp.std(pl.mlp([400, 300], init=np.float32(0.1)).init(0)[0][0]["w"])) - 0.1)
        < 0.01
    )
    assert pl.mlp(np.array([4, 8, 3])) is pl.mlp([4, 8, 3])


def test_mlp_is_memoized_on_its_settings():
    assert pl.mlp([4, 8, 3]) is pl.mlp([4, 8, 3]) is pl.mlp((4, 8, 3))
    assert pl.mlp([4, 8, 3], activation="ReLU", init="relu") is pl.mlp([4, 8, 3])
    assert pl.mlp([4, 8, 3], dropout_rate=0) is pl.mlp([4, 8, 3], dropout_rate=0.0)
    assert pl.mlp([4, 8, 3], batch_norm=True) is not pl.mlp([4, 8, 3])
    assert pl.mlp([4, 8, 3], init=0.01) is not pl.mlp([4, 8, 3], init=0.02)
    assert pl.mlp([4, 8, 3], activation=jax.nn.softplus) is pl.mlp(
        [4, 8, 3], activation=jax.nn.softplus
    )
    assert pl.mlp([4, 8, 3], activation=lambda a: a) is not pl.mlp(
        [4, 8, 3], activation=lambda a: a
    )


@pytest.mark.slow
def test_a_second_identical_fit_compiles_nothing():
    events = []

    def record(name, _duration, **_kwargs):
        if name in ("/jax/core/compile/jaxpr_trace_duration",
                    "/jax/core/compile/backend_compile_duration"):  # fmt: skip
            events.append(name)

    x = jax.random.normal(jax.random.key(1), (32, 4))
    y = (x[:, 0] > 0).astype(jnp.int32)

    def run():
        # a new list every time: the memo, not the caller, makes the model the same
        model = pl.mlp([4, 8, 2], batch_norm=True, dropout_rate=0.1)
        pl.fit(model, pl.sgd(0.1), (x, y), epochs=1, batch_size=16, key=0, progress=False)

    run()
    jax.monitoring.register_event_duration_secs_listener(record)
    try:
        run()
    finally:
        jax.monitoring.unregister_event_duration_listener(record)
    assert events == []


@pytest.mark.slow
@settings(max_examples=15, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 6), min_size=2, max_size=4),
    extra=st.integers(1, 3),
    seed=st.integers(0, 2**31),
)
def test_mlp_shapes_and_feature_check_for_any_sizes(sizes, extra, seed):
    model = pl.mlp(sizes)
    assert model is pl.mlp(tuple(sizes))
    params, _ = model.init(seed)
    assert [p["w"].shape for p in params] == list(itertools.pairwise(sizes))
    same, _ = model.init(jax.random.key(seed))  # an int seed is that key
    np.testing.assert_array_equal(params[0]["w"], same[0]["w"])
    logits, _ = model.apply(params, [], jnp.ones((2, sizes[0])), train=False)
    assert logits.shape == (2, sizes[-1])
    bad = sizes[0] + extra
    with pytest.raises(ValueError, match=f"x has {bad} features.*takes {sizes[0]}"):
        model.apply(params, [], jnp.ones((2, bad)), train=False)


def test_mlp_apply_checks_its_arguments():
    model = pl.mlp([4, 8, 3], batch_norm=True, dropout_rate=0.5)
    params, state = model.init(0)
    x = jnp.ones((2, 4))
    with pytest.raises(ValueError, match=r"expected weight shapes \[\(4, 8\), \(8, 3\)\]"):
        model.apply(pl.mlp([4, 5, 3]).init(0)[0], state, x, train=False)
    with pytest.raises(ValueError, match="model_state must hold 1 BatchNormStats"):
        model.apply(params, [], x, train=True, key=0)
    with pytest.raises(ValueError, match=r"train.*'yes'"):
        model.apply(params, state, x, train="yes", key=0)
    with pytest.raises(ValueError, match=r"key.*'a'"):
        model.apply(params, state, x, train=True, key="a")
    with pytest.raises(ValueError, match="batch axis"):
        model.apply(params, state, jnp.ones(()), train=False)
    with pytest.raises(ValueError, match="key"):
        model.init(None)
    # an int seed is the key it names; a list of inputs is an array
    a, _ = model.apply(params, state, x, train=True, key=3)
    b, _ = model.apply(params, state, x, train=True, key=jax.random.key(3))
    np.testing.assert_array_equal(a, b)
    c, _ = model.apply(params, state, [[1.0] * 4] * 2, train=False)
    np.testing.assert_array_equal(c, model.apply(params, state, x, train=False)[0])


class Lin(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        return nn.Dense(2)(nn.Dropout(0.5, deterministic=not train)(nn.Dense(8)(x)))


class NoCall(nn.Module):
    def setup(self):
        self.dense = nn.Dense(2)


@pytest.mark.parametrize(
    "module, sample, match",
    [
        (Lin, jnp.ones((1, 4)), "class Lin.*Lin\\(...\\)"),
        (NoCall(), jnp.ones((1, 4)), "NoCall has no __call__"),
        (nn.Sequential([lambda x: x.reshape(-1, 2, 2), nn.Dense(2)]), jnp.ones((1, 3)),
         r"sample_input of shape \(1, 3\)"),
        (Lin(), None, "sample_input.*None"),
        (Lin(), "abc", "sample_input.*'abc'"),
        (Lin(), 1.0, "batch axis"),
        (3, jnp.ones((1, 4)), "got int"),
        (lambda x: x, jnp.ones((1, 4)), "returned"),
    ],
)  # fmt: skip
def test_from_flax_refuses_bad_arguments_when_wrapping(module, sample, match):
    with pytest.raises(ValueError, match=match):
        pl.from_flax(module, sample)


def test_from_flax_linen_apply_errors_and_seeds():
    model = pl.from_flax(Lin(), jnp.ones((1, 4)))
    params, state = model.init(0)
    x = jnp.ones((3, 4))
    with pytest.raises(ValueError, match=r"x of shape \(3, 5\).*sample_input of shape \(1, 4\)"):
        model.apply(params, state, jnp.ones((3, 5)), train=False)
    with pytest.raises(ValueError, match="needs a key"):
        model.apply(params, state, x, train=True)
    with pytest.raises(ValueError, match="train"):
        model.apply(params, state, x, train="yes", key=0)
    a, _ = model.apply(params, state, x, train=True, key=7)
    b, _ = model.apply(params, state, x, train=True, key=jax.random.key(7))
    np.testing.assert_array_equal(a, b)
    p0, _ = model.init(jax.random.key(0))
    assert jax.tree.all(jax.tree.map(np.array_equal, params, p0))


# -- the book's forms: dropout_scale and batch_norm_eps ---------------------------------------


def test_textbook_dropout_net_equals_an_inverted_net_with_q_times_the_weights():
    """The identity behind "SGD at q**2 the learning rate": book(V) == inverted(q V) for the
    weights that read a dropout layer, in training (same key, same mask) and inference."""
    rate, q = 0.25, 0.75
    book = pl.mlp([6, 8, 8, 3], dropout_rate=rate, dropout_scale="textbook")
    inverted = pl.mlp([6, 8, 8, 3], dropout_rate=rate)
    params, state = book.init(jax.random.key(0))
    scaled = [params[0]] + [{**p, "w": q * p["w"]} for p in params[1:]]
    x = jax.random.normal(jax.random.key(1), (5, 6))
    for train in (True, False):
        key = jax.random.key(2) if train else None
        a, _ = book.apply(params, state, x, train=train, key=key)
        b, _ = inverted.apply(scaled, state, x, train=train, key=key)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_textbook_dropout_scales_by_q_at_inference_like_numpy():
    model = pl.mlp([4, 5, 2], dropout_rate=0.2, dropout_scale="textbook")
    params, state = model.init(jax.random.key(0))
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    hidden = np.maximum(x @ np.asarray(params[0]["w"]) + np.asarray(params[0]["b"]), 0) * 0.8
    expected = hidden @ np.asarray(params[1]["w"]) + np.asarray(params[1]["b"])
    out, _ = model.apply(params, state, x, train=False)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("eps", [1e-6, 1e-5, 1e-3])
def test_batch_norm_eps_reaches_the_layer_like_numpy(eps):
    model = pl.mlp([4, 3, 2], batch_norm=True, batch_norm_eps=eps, init=1e-3)
    params, state = model.init(jax.random.key(0))
    x = np.random.default_rng(1).normal(size=(8, 4)).astype(np.float32)
    h = x @ np.asarray(params[0]["w"], np.float64) + np.asarray(params[0]["b"])
    h = (h - h.mean(0)) / np.sqrt(h.var(0) + eps)  # tiny weights: variance ~1e-6, eps matters
    h = np.maximum(h, 0)
    expected = h @ np.asarray(params[1]["w"]) + np.asarray(params[1]["b"])
    out, _ = model.apply(params, state, x, train=True)
    np.testing.assert_allclose(out, expected, rtol=2e-4, atol=1e-6)


def test_book_forms_are_memoized_and_kept_apart():
    kw = {"dropout_rate": 0.2, "batch_norm": True}
    a = pl.mlp([4, 3, 2], **kw, dropout_scale="textbook", batch_norm_eps=1e-6)
    assert a is pl.mlp((4, 3, 2), **kw, dropout_scale="textbook", batch_norm_eps=1e-6)
    assert a is not pl.mlp([4, 3, 2], **kw, batch_norm_eps=1e-6)
    assert a is not pl.mlp([4, 3, 2], **kw, dropout_scale="textbook")
    assert pl.mlp([4, 3, 2]) is pl.mlp([4, 3, 2], dropout_scale="inverted", batch_norm_eps=1e-5)
    # settings without effect: no dropout layer, no batch norm
    assert pl.mlp([4, 3, 2]) is pl.mlp([4, 3, 2], dropout_scale="textbook", batch_norm_eps=1e-6)
    b = pl.mlp([4, 3, 2], batch_norm=True, batch_norm_eps=1e-6)
    assert b is not pl.mlp([4, 3, 2], batch_norm=True)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"dropout_scale": "book"}, "dropout_scale.*'book'"),
        ({"dropout_scale": None}, "dropout_scale.*None"),
        ({"batch_norm_eps": 0.0}, "batch_norm_eps.*0.0"),
        ({"batch_norm_eps": -1e-6}, "batch_norm_eps"),
        ({"batch_norm_eps": float("nan")}, "batch_norm_eps.*nan"),
        ({"batch_norm_eps": "1e-6"}, "batch_norm_eps"),
    ],
)
def test_book_form_arguments_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pl.mlp([4, 3, 2], **kwargs)
