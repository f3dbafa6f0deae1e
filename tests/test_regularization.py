"""Dropout and the L2 penalty."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purelearn as pl

# Dropout passes its key through to jax.random. Tests use the "rbg"
# implementation because its programs compile ~10x faster on CPU than threefry's
# (the doctests cover the default implementation).
KEY = jax.random.key(7, impl="rbg")


def normal(*shape):
    return np.random.default_rng(0).normal(size=shape).astype(np.float32)


# -- dropout ---------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.8])
def test_dropout_drops_at_the_rate_and_preserves_the_mean(rate):
    x = np.full((1000, 1000), 3.0)
    y = np.asarray(pl.dropout(KEY, x, rate), np.float64)
    dropped = np.mean(y == 0)
    # 1e6 Bernoulli draws: the drop share's standard error is below 5e-4.
    assert abs(dropped - rate) < 0.003
    # Survivors are scaled by exactly 1 / (1 - rate) (inverted dropout) ...
    np.testing.assert_allclose(np.unique(y[y != 0]), [3.0 / (1 - rate)], rtol=1e-6)
    # ... so the expectation is x.
    assert abs(y.mean() / 3.0 - 1) < 0.01


def test_dropout_expectation_over_keys_is_the_input():
    x = np.linspace(-2.0, 2.0, 50)
    keys = jax.random.split(KEY, 4000)
    ys = jax.vmap(lambda k: pl.dropout(k, x, 0.3))(keys)
    # Per element: the mean of 4000 draws, std of one draw |x| * sqrt(0.3 / 0.7).
    se = np.abs(np.asarray(x)) * np.sqrt(0.3 / 0.7) / np.sqrt(4000)
    assert np.all(np.abs(np.asarray(ys.mean(0)) - np.asarray(x)) <= 5 * se + 1e-6)


def test_dropout_is_deterministic_per_key_and_varies_across_keys():
    x = np.ones((64, 64))
    k1, k2 = jax.random.split(KEY)
    np.testing.assert_array_equal(pl.dropout(k1, x, 0.5), pl.dropout(k1, x, 0.5))
    assert not np.array_equal(pl.dropout(k1, x, 0.5), pl.dropout(k2, x, 0.5))
    # The mask depends on the key and shape only, not on the values of x.
    np.testing.assert_array_equal(pl.dropout(k1, x, 0.5) == 0, pl.dropout(k1, 5 * x, 0.5) == 0)


def test_dropout_equals_flax_dropout_given_the_same_key():
    x = normal(8, 6, 5)
    for rate, dims in [(0.3, ()), (0.7, ()), (0.5, (1,))]:
        theirs = nn.Dropout(rate, broadcast_dims=dims).apply(
            {}, x, deterministic=False, rng=jax.random.key(3, impl="rbg")
        )
        ours = pl.dropout(jax.random.key(3, impl="rbg"), x, rate, broadcast_dims=dims)
        np.testing.assert_allclose(ours, theirs, rtol=1e-6)


def test_dropout_edge_rates_and_deterministic_mode():
    x = normal(10, 7)
    np.testing.assert_array_equal(pl.dropout(KEY, x, 0.0), x)
    np.testing.assert_array_equal(pl.dropout(None, x, 0.0), x)  # no key needed
    np.testing.assert_array_equal(pl.dropout(None, x, 0.9, deterministic=True), x)
    np.testing.assert_array_equal(pl.dropout(KEY, x, 1.0), np.zeros((10, 7)))
    np.testing.assert_array_equal(pl.dropout(None, x, 1.0), np.zeros((10, 7)))
    g = jax.grad(lambda x: jnp.sum(pl.dropout(KEY, x, 1.0) ** 2 + x))(x)
    np.testing.assert_array_equal(g, np.ones((10, 7)))  # finite: only the "+ x" term


def test_dropout_gradient_is_the_scaled_mask():
    x = normal(20, 30)
    k = jax.random.key(1, impl="rbg")
    g = jax.grad(lambda x: jnp.sum(pl.dropout(k, x, 0.25)))(x)
    mask = np.asarray(pl.dropout(k, np.ones_like(x), 0.25)) != 0
    np.testing.assert_allclose(g, mask / 0.75, rtol=1e-6)


def test_dropout_with_a_traced_rate_under_jit_and_vmap():
    x = np.ones((200, 200))
    f = jax.jit(lambda rate: pl.dropout(KEY, x, rate))
    np.testing.assert_allclose(f(jnp.float32(0.4)), pl.dropout(KEY, x, 0.4), rtol=1e-6)
    rates = jnp.array([0.0, 0.2, 0.5, 1.0])
    ys = jax.vmap(lambda r: pl.dropout(KEY, x, r))(rates)
    np.testing.assert_allclose(np.mean(np.asarray(ys) == 0, axis=(1, 2)), rates, atol=0.01)
    np.testing.assert_array_equal(ys[0], x)
    np.testing.assert_array_equal(ys[-1], np.zeros_like(x))
    # rate == 1 reached while traced: zeros, and finite zero gradients.
    g = jax.grad(lambda x, r: jnp.sum(pl.dropout(KEY, x, r)))(x, jnp.float32(1.0))
    assert np.all(np.asarray(g) == 0)


def test_dropout_keeps_dtype_and_broadcast_dims_share_the_mask():
    x = np.ones((4, 6, 6, 8), jnp.bfloat16)
    y = pl.dropout(KEY, x, 0.5, broadcast_dims=(1, 2))
    assert y.dtype == jnp.bfloat16
    kept = np.asarray(y.astype(jnp.float32)) != 0
    assert np.all(kept == kept[:, :1, :1, :])  # whole channels dropped
    assert 0 < kept.mean() < 1


@pytest.mark.parametrize("rate", [-0.1, 1.1, float("nan"), float("inf"), "0.5", None, True])
def test_dropout_bad_rate_is_a_value_error_naming_it(rate):
    with pytest.raises(ValueError, match="rate"):
        pl.dropout(KEY, np.ones(3), rate)


def test_dropout_other_errors():
    with pytest.raises(ValueError, match="needs a PRNG key"):
        pl.dropout(None, np.ones(3), 0.5)
    with pytest.raises(TypeError):
        pl.dropout(np.ones(3), 0.5)  # no default key: the key is the first argument
    with pytest.raises(TypeError, match="deterministic"):
        pl.dropout(KEY, np.ones(3), 0.5, deterministic=jnp.array(True))
    with pytest.raises(TypeError, match="floating"):
        pl.dropout(KEY, np.ones(3, jnp.int32), 0.5)


# -- l2_penalty ---------------------------------------------------------------------


def _params():
    rng = np.random.default_rng(0)
    return {
        "dense": {"w": rng.normal(size=(4, 3)), "b": rng.normal(size=3)},
        "conv": {"kernel": rng.normal(size=(3, 3, 2, 4)), "bias": rng.normal(size=4)},
        "bn": {"scale": rng.normal(size=4), "bias": rng.normal(size=4)},
    }


def _np_sum_sq(*arrays):
    return sum(float(np.sum(np.asarray(a, np.float64) ** 2)) for a in arrays)


def test_l2_penalty_defaults_to_the_weight_matrices():
    p = _params()
    want = 0.5 * 0.1 * _np_sum_sq(p["dense"]["w"], p["conv"]["kernel"])
    got = pl.l2_penalty(jax.tree.map(jnp.asarray, p), 0.1)
    assert got.shape == () and got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_l2_penalty_gradient_is_weight_decay_times_w_on_the_selected_leaves():
    p = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), _params())
    g = jax.grad(pl.l2_penalty)(p, 0.3)
    np.testing.assert_allclose(g["dense"]["w"], 0.3 * p["dense"]["w"], rtol=1e-6)
    np.testing.assert_allclose(g["conv"]["kernel"], 0.3 * p["conv"]["kernel"], rtol=1e-6)
    for leaf in (g["dense"]["b"], g["conv"]["bias"], g["bn"]["scale"], g["bn"]["bias"]):
        np.testing.assert_array_equal(leaf, np.zeros_like(leaf))


def test_l2_penalty_masks_as_pytrees_prefixes_and_callables():
    p = jax.tree.map(jnp.asarray, _params())
    everything = _np_sum_sq(*jax.tree.leaves(p))
    full_mask = jax.tree.map(lambda _: True, p)
    np.testing.assert_allclose(pl.l2_penalty(p, 2.0, mask=full_mask), everything, rtol=1e-5)
    # A prefix: one bool for a whole subtree.
    prefix = {"dense": True, "conv": False, "bn": {"scale": True, "bias": False}}
    want = _np_sum_sq(p["dense"]["w"], p["dense"]["b"], p["bn"]["scale"])
    np.testing.assert_allclose(pl.l2_penalty(p, 2.0, mask=prefix), want, rtol=1e-5)
    # A function of the params (e.g. select by name).
    by_name = lambda params: {  # noqa: E731
        layer: {name: name in ("w", "kernel", "bias") for name in leaves}
        for layer, leaves in params.items()
    }
    want = _np_sum_sq(p["dense"]["w"], p["conv"]["kernel"], p["conv"]["bias"], p["bn"]["bias"])
    np.testing.assert_allclose(pl.l2_penalty(p, 2.0, mask=by_name), want, rtol=1e-5)
    nothing = jax.tree.map(lambda _: False, p)
    assert float(pl.l2_penalty(p, 2.0, mask=nothing)) == 0.0


def test_l2_penalty_on_flax_params_and_lists():
    model = nn.Sequential([nn.Conv(4, (3, 3)), nn.Dense(2)])
    params = model.init(KEY, np.ones((1, 5, 5, 3)))["params"]
    kernels = [params[layer]["kernel"] for layer in params]
    want = 0.5 * 1e-3 * _np_sum_sq(*kernels)
    np.testing.assert_allclose(pl.l2_penalty(params, 1e-3), want, rtol=1e-5)
    layers = [{"w": np.ones((2, 2)), "b": np.ones(2)}, {"w": 2 * np.ones((2, 1))}]
    np.testing.assert_allclose(pl.l2_penalty(layers, 1.0), 0.5 * (4 + 8), rtol=1e-6)


def test_l2_penalty_edge_cases_and_dtypes():
    p = {"w": np.ones((3, 3)), "b": np.ones(3)}
    assert float(pl.l2_penalty(p, 0.0)) == 0.0
    assert float(pl.l2_penalty({}, 0.5)) == 0.0
    assert float(pl.l2_penalty({"b": np.ones(3)}, 0.5)) == 0.0
    # bfloat16 weights are summed in float32: 4096 ones would stall at 256 in bfloat16.
    big = {"w": np.ones((64, 64), jnp.bfloat16)}
    out = pl.l2_penalty(big, 2.0)
    assert out.dtype == jnp.float32 and float(out) == 4096.0
    with jax.enable_x64(True):
        assert pl.l2_penalty({"w": np.ones((2, 2), jnp.float64)}, 1.0).dtype == jnp.float64


def test_l2_penalty_with_a_traced_weight_decay():
    p = {"w": np.full((2, 3), 2.0)}
    lams = jnp.array([0.0, 0.1, 1.0])
    np.testing.assert_allclose(jax.vmap(lambda lam: pl.l2_penalty(p, lam))(lams), 12 * lams)
    np.testing.assert_allclose(jax.jit(pl.l2_penalty)(p, 0.5), 6.0)


@pytest.mark.parametrize("bad", [-1e-4, float("nan"), float("inf"), "0.1", None])
def test_l2_penalty_bad_weight_decay_is_a_value_error(bad):
    with pytest.raises(ValueError, match="weight_decay"):
        pl.l2_penalty({"w": np.ones((2, 2))}, bad)


def test_l2_penalty_mismatched_mask_is_a_value_error():
    with pytest.raises(ValueError, match="mask"):
        pl.l2_penalty({"w": np.ones((2, 2)), "b": np.ones(2)}, 0.1, mask={"w": True})
