"""Dropout and the L2 penalty."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

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
    with pytest.raises(TypeError, match="deterministic must be a Python bool"):
        pl.dropout(KEY, np.ones(3), 0.5, deterministic=jnp.array(True))
    with pytest.raises(ValueError, match="deterministic must be True or False, got 1"):
        pl.dropout(KEY, np.ones(3), 0.5, deterministic=1)
    with pytest.raises(ValueError, match="floating-point x, got dtype int32"):
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


# -- the textbook's Dropout class, written from the book's math in NumPy ---------------


class BookDropout:
    """The textbook's ``Dropout``: ``mask = rand > rate``; training ``x * mask``;
    test ``x * (1 - rate)``. ``rand`` is passed in, so the draws are explicit."""

    def __init__(self, rate):
        self.rate = rate

    def forward(self, x, train, rand=None):
        x = np.asarray(x, np.float64)
        if train:
            self.mask = rand > self.rate
            return x * self.mask
        return x * (1.0 - self.rate)


@pytest.mark.parametrize("rate", [0.2, 0.5])
def test_textbook_dropout_matches_the_books_class_in_expectation_and_at_inference(rate):
    x = np.linspace(-2.0, 2.0, 50, dtype=np.float32)
    book = BookDropout(rate)
    # Inference: exactly the book's x * (1 - rate); inverted dropout's is x.
    np.testing.assert_allclose(
        pl.dropout(None, x, rate, deterministic=True, scale="textbook"),
        book.forward(x, train=False),
        rtol=1e-6,
    )
    np.testing.assert_array_equal(pl.dropout(None, x, rate, deterministic=True), x)
    # Training, over 4000 explicit keys: the mean of both forms and of the book's
    # class (on NumPy draws) each estimate their inference output.
    n = 4000
    keys = jax.random.split(KEY, n)
    ours = np.asarray(jax.vmap(lambda k: pl.dropout(k, x, rate, scale="textbook"))(keys))
    inverted = np.asarray(jax.vmap(lambda k: pl.dropout(k, x, rate))(keys))
    rng = np.random.default_rng(0)
    theirs = np.stack([book.forward(x, True, rng.random(x.shape)) for _ in range(n)])
    se = np.abs(x) * np.sqrt(rate * (1 - rate)) / np.sqrt(n)
    for draws, want in [
        (ours, book.forward(x, train=False)),
        (theirs, book.forward(x, train=False)),
        (inverted, x / 1.0),
    ]:
        assert np.all(np.abs(draws.mean(0) - want) <= 5 * se / (1 - rate) + 1e-6)
    # Each draw of the textbook form is the book's: x where kept, 0 where dropped.
    kept = ours != 0
    np.testing.assert_array_equal(ours[kept], np.broadcast_to(x, ours.shape)[kept])
    assert abs(1 - kept[:, x != 0].mean() - rate) < 0.01
    assert abs(1 - (theirs[:, x != 0] != 0).mean() - rate) < 0.01


@settings(max_examples=20, deadline=None)
@given(st.floats(0.05, 0.95), st.integers(0, 2**31 - 1))
def test_both_forms_draw_the_same_mask_for_the_same_key(rate, seed):
    """Inverted = textbook / (1 - rate), element by element, for one explicit key."""
    key = jax.random.key(seed, impl="rbg")
    x = normal(6, 7)
    textbook = np.asarray(pl.dropout(key, x, rate, scale="textbook"), np.float64)
    inverted = np.asarray(pl.dropout(key, x, rate), np.float64)
    np.testing.assert_allclose(inverted, textbook / (1 - rate), rtol=1e-5)
    assert np.all((textbook == 0) | (textbook == x))


def test_textbook_dropout_edges_gradients_and_traced_rates():
    x = normal(10, 7)
    for deterministic in (False, True):
        np.testing.assert_array_equal(
            pl.dropout(None, x, 0.0, deterministic=deterministic, scale="textbook"), x
        )
        np.testing.assert_array_equal(
            pl.dropout(None, x, 1.0, deterministic=deterministic, scale="textbook"), 0 * x
        )
    # Inverted inference is the identity whatever the rate, even 1.
    np.testing.assert_array_equal(pl.dropout(None, x, 1.0, deterministic=True), x)
    # The gradient is the unscaled mask.
    k = jax.random.key(1, impl="rbg")
    g = jax.grad(lambda x: jnp.sum(pl.dropout(k, x, 0.25, scale="textbook")))(x)
    mask = np.asarray(pl.dropout(k, np.ones_like(x), 0.25, scale="textbook"))
    assert set(np.unique(mask)) == {0.0, 1.0}
    np.testing.assert_array_equal(g, mask)
    # A traced rate gives the Python rate's result, in training and at inference.
    f = jax.jit(lambda r: pl.dropout(k, x, r, scale="textbook"))
    np.testing.assert_allclose(f(jnp.float32(0.25)), pl.dropout(k, x, 0.25, scale="textbook"))
    rates = jnp.array([0.0, 0.5, 1.0])
    inference = jax.vmap(lambda r: pl.dropout(None, x, r, deterministic=True, scale="textbook"))
    np.testing.assert_allclose(inference(rates), [x, 0.5 * x, 0 * x], rtol=1e-6)
    y = pl.dropout(None, x.astype(jnp.bfloat16), 0.5, deterministic=True, scale="textbook")
    assert y.dtype == jnp.bfloat16


def test_sgd_on_the_textbook_form_is_sgd_at_q_squared_the_rate_on_scaled_weights():
    """The book's net with weights V after dropout equals an inverted-dropout net with
    weights q V (q = 1 - rate); SGD at lr on V is SGD at lr * q**2 on q V."""
    rate, lr = 0.4, 0.1
    q = 1 - rate
    rng = np.random.default_rng(0)
    x, t = normal(16, 5), rng.normal(size=(16, 3)).astype(np.float32)
    w1 = jnp.asarray(rng.normal(size=(5, 8)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(8, 3)), jnp.float32)
    b = jnp.zeros(3)

    def loss(params, key, scale):
        w1, v, b = params
        h = pl.dropout(key, jax.nn.relu(x @ w1), rate, scale=scale)
        return jnp.mean((h @ v + b - t) ** 2)

    book = (w1, v, b)
    inverted = (w1, q * v, b)
    for key in jax.random.split(KEY, 3):
        g_book = jax.grad(loss)(book, key, "textbook")
        g_inv = jax.grad(loss)(inverted, key, "inverted")
        book = tuple(p - lr * g for p, g in zip(book, g_book, strict=True))
        lrs = (lr, lr * q**2, lr)  # the weights after the dropout layer move at q**2 the rate
        inverted = tuple(p - r * g for p, r, g in zip(inverted, lrs, g_inv, strict=True))
    np.testing.assert_allclose(book[0], inverted[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(q * book[1], inverted[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(book[2], inverted[2], rtol=1e-5, atol=1e-6)
    # At the same learning rate for every weight the two would have drifted apart.
    plain = (w1, q * v, b)
    for key in jax.random.split(KEY, 3):
        g = jax.grad(loss)(plain, key, "inverted")
        plain = tuple(p - lr * gi for p, gi in zip(plain, g, strict=True))
    assert not np.allclose(q * book[1], plain[1], rtol=1e-3)


@pytest.mark.parametrize("scale", ["book", "Inverted", None, 1])
def test_unknown_dropout_scale_is_a_value_error_naming_it(scale):
    with pytest.raises(ValueError, match=rf"scale must be one of .*got {re.escape(repr(scale))}"):
        pl.dropout(KEY, np.ones(3), 0.5, scale=scale)


# -- hardening (issue 12) -----------------------------------------------------------------


@pytest.mark.parametrize(
    "dims, message",
    [
        ((5,), r"broadcast_dims=\(5,\) is out of range for an input of rank 3"),
        ((-4,), r"broadcast_dims=\(-4,\) is out of range"),
        ((1.0,), r"broadcast_dims must be an int or a sequence of ints, got \(1\.0,\)"),
        ("1", "broadcast_dims must be an int or a sequence of ints, got '1'"),
        ((1, -2), r"broadcast_dims=\(1, -2\) names an axis twice"),
    ],
)
def test_bad_broadcast_dims_are_value_errors_naming_them(dims, message):
    """Regression: (5,) was an IndexError from deep inside."""
    with pytest.raises(ValueError, match=message):
        pl.dropout(KEY, np.ones((2, 3, 4), np.float32), 0.5, broadcast_dims=dims)


def test_broadcast_dims_may_be_negative_numpy_ints_in_a_sequence():
    x = np.ones((4, 6, 8), np.float32)
    want = pl.dropout(KEY, x, 0.5, broadcast_dims=(1,))
    np.testing.assert_array_equal(pl.dropout(KEY, x, 0.5, broadcast_dims=(-2,)), want)
    np.testing.assert_array_equal(pl.dropout(KEY, x, 0.5, broadcast_dims=[np.int64(1)]), want)
    kept = np.asarray(want) != 0
    assert np.all(kept == kept[:, :1, :])


@pytest.mark.parametrize(
    "rate, message",
    [
        (np.array(1.5), r"rate must be in \[0, 1\], got array\(1\.5\)"),
        (np.array(-0.5), r"rate must be in \[0, 1\], got array\(-0\.5\)"),
        (np.array(np.nan), r"rate must be a finite number, got array\(nan\)"),
        (np.float32(2.0), r"rate must be in \[0, 1\]"),
        (np.full(3, 0.5), r"rate must be a real number, got array\(\[0\.5, 0\.5, 0\.5\]\)"),
        (jnp.full(3, 0.5), r"rate must be a scalar, got an array of shape \(3,\)"),
        (lambda step: 0.5, "rate must be a number or a 0-d array, got the function"),
    ],
)
def test_numpy_rates_are_checked_like_numbers(rate, message):
    """Regression: a 0-d NumPy rate of 1.5 silently gave zeros."""
    with pytest.raises(ValueError, match=message):
        pl.dropout(KEY, np.ones(3, np.float32), rate)


def test_valid_numpy_rates_and_weight_decays_equal_python_numbers():
    x = normal(30, 30)
    want = pl.dropout(KEY, x, 0.3)
    for rate in (np.array(0.3), np.float64(0.3)):
        np.testing.assert_array_equal(pl.dropout(KEY, x, rate), want)
    p = {"w": np.full((2, 3), 2.0, np.float32)}
    for wd in (np.array(0.5), np.float32(0.5), np.int64(1)):
        np.testing.assert_allclose(pl.l2_penalty(p, wd), 12.0 * float(wd), rtol=1e-6)


@pytest.mark.parametrize(
    "wd, message",
    [
        (np.array(-1.0), r"weight_decay must be >= 0, got array\(-1\.\)"),
        (np.array(np.nan), r"weight_decay must be a finite number, got array\(nan\)"),
        (np.float32(-1e-3), "weight_decay must be >= 0"),
        (np.array(np.inf), "weight_decay must be a finite number"),
        (np.ones(2), r"weight_decay must be a real number, got array\(\[1\., 1\.\]\)"),
        (jnp.ones(2), r"weight_decay must be a scalar, got an array of shape \(2,\)"),
        (lambda step: 0.1, "weight_decay must be a number or a 0-d array"),
    ],
)
def test_numpy_weight_decays_are_checked_like_numbers(wd, message):
    """Regression: np.array(-1.0) gave a negative penalty, np.ones(2) a vector penalty."""
    with pytest.raises(ValueError, match=message):
        pl.l2_penalty({"w": np.ones((2, 2))}, wd)


@pytest.mark.parametrize(
    "mask, message",
    [
        ({"w": "no", "b": False}, r"mask leaf \['w'\] must be True or False, got 'no'"),
        ({"w": True, "b": 0}, r"mask leaf \['b'\] must be True or False, got 0"),
        ({"w": 1, "b": False}, r"mask leaf \['w'\] must be True or False, got 1"),
        (lambda p: {"w": "yes", "b": True}, r"mask leaf \['w'\] must be True or False"),
        ("no", r"mask leaf \(the root\) must be True or False, got 'no'"),
    ],
)
def test_mask_leaves_must_be_real_bools(mask, message):
    """Regression: mask={"w": "no"} counted the leaf (bool("no") is True)."""
    with pytest.raises(ValueError, match=message):
        pl.l2_penalty({"w": np.ones((2, 2)), "b": np.ones(2)}, 1.0, mask=mask)


def test_numpy_and_jax_bools_are_mask_leaves():
    p = {"w": np.ones((2, 2)), "b": np.ones(2)}
    for yes, no in [(np.True_, np.False_), (np.array(True), np.array(False))]:
        assert float(pl.l2_penalty(p, 1.0, mask={"w": no, "b": yes})) == 1.0
    assert float(pl.l2_penalty(p, 1.0, mask={"w": jnp.array(True), "b": jnp.array(False)})) == 2.0
    assert float(pl.l2_penalty(p, 1.0, mask=True)) == 3.0


def test_bad_params_leaves_and_keys_are_value_errors():
    with pytest.raises(ValueError, match=r"params leaf \['w'\] is not an array: 'abc'"):
        pl.l2_penalty({"w": "abc"}, 1.0, mask={"w": True})
    with pytest.raises(ValueError, match=r"params leaf \['w'\] must be real, got dtype complex64"):
        pl.l2_penalty({"w": np.ones((2, 2), np.complex64)}, 1.0)
    with pytest.raises(ValueError, match=r"key must be one PRNG key .* got 'k'"):
        pl.dropout("k", np.ones(3, np.float32), 0.5)
    with pytest.raises(ValueError, match="key must be one PRNG key"):
        pl.dropout(jax.random.split(KEY, 2), np.ones(3, np.float32), 0.5)
    with pytest.raises(ValueError, match="x must be an array of numbers, got 'abc'"):
        pl.dropout(KEY, "abc", 0.5)
    # An int seed is a key (jax.random.key(seed)).
    x = np.ones(50, np.float32)
    np.testing.assert_array_equal(pl.dropout(3, x, 0.5), pl.dropout(jax.random.key(3), x, 0.5))


@settings(max_examples=20, deadline=None)
@given(dim=st.integers(-5, 5), numpy=st.booleans())
@example(dim=1, numpy=False)
def test_one_int_broadcast_dims_is_a_type_error_as_in_flax(dim, numpy):
    # flax.linen.Dropout iterates over broadcast_dims: it takes a sequence only
    bad = np.int64(dim) if numpy else dim
    with pytest.raises(TypeError, match=rf"broadcast_dims must be a tuple.*got the int {dim}"):
        pl.dropout(KEY, np.ones((2, 3), np.float32), 0.5, broadcast_dims=bad)


@given(dim=st.integers(-20, 20).filter(lambda d: not -3 <= d < 3))
@example(dim=3)
@example(dim=-4)
@settings(max_examples=20, deadline=None)
def test_out_of_range_broadcast_dims_is_a_value_error_naming_it(dim):
    with pytest.raises(ValueError, match=rf"broadcast_dims=\({dim},\) is out of range"):
        pl.dropout(KEY, np.ones((2, 3, 4), np.float32), 0.5, broadcast_dims=(dim,))
