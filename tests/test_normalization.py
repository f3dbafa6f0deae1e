"""Normalizations: parity with flax.linen and a NumPy reference of the textbook
formulas, numerical stability, dtypes, gradients and argument checks."""

import functools
import os
import re
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

import purelearn as pl
from purelearn.normalization import (
    _Reduction,
    _standardize,
    _standardize_affine,
    _standardize_plain,
)

EPS = 1e-5
FLAX_TOL = 1e-5


# -- the textbook's formulas in float64 NumPy -----------------------------------


def np_standardize(x, axes, eps):
    """mu = mean(x); var = mean((x - mu)**2); (x - mu) / sqrt(var + eps)."""
    x = np.asarray(x, np.float64)
    mu = x.mean(axis=axes, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=axes, keepdims=True)
    return (x - mu) / np.sqrt(var + eps), mu, var


def np_affine(x_hat, scale, bias, channel_axis):
    shape = [1] * x_hat.ndim
    shape[channel_axis] = -1
    y = x_hat
    if scale is not None:
        y = y * np.asarray(scale, np.float64).reshape(shape)
    if bias is not None:
        y = y + np.asarray(bias, np.float64).reshape(shape)
    return y


def np_batch_norm(x, scale, bias, eps=EPS):
    x_hat, mu, var = np_standardize(x, tuple(range(x.ndim - 1)), eps)
    return np_affine(x_hat, scale, bias, -1), mu.reshape(-1), var.reshape(-1)


def np_layer_norm(x, scale, bias, axes=(-1,), eps=EPS):
    x_hat, _, _ = np_standardize(x, axes, eps)
    y = x_hat
    if scale is not None:
        y = y * np.asarray(scale, np.float64)
    if bias is not None:
        y = y + np.asarray(bias, np.float64)
    return y


def np_instance_norm(x, scale, bias, channel_axis=-1, eps=EPS):
    ch = channel_axis % x.ndim
    axes = tuple(i for i in range(1, x.ndim) if i != ch)
    return np_affine(np_standardize(x, axes, eps)[0], scale, bias, ch)


def np_group_norm(x, groups, scale, bias, channel_axis=-1, eps=EPS):
    """Channels split into G groups of C/G; each (example, group) standardized."""
    x = np.asarray(x, np.float64)
    ch = channel_axis % x.ndim
    xt = np.moveaxis(x, ch, -1)  # channels last
    n, c = xt.shape[0], xt.shape[-1]
    g = xt.reshape(n, -1, groups, c // groups)  # (N, spatial, G, C/G)
    g_hat, _, _ = np_standardize(g, (1, 3), eps)
    x_hat = np.moveaxis(g_hat.reshape(xt.shape), -1, ch)
    return np_affine(x_hat, scale, bias, ch)


def data(shape, seed=0, offset=2.0, spread=3.0):
    """Test inputs, drawn in NumPy (eager JAX would compile every op)."""
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.normal(offset, spread, size=shape), jnp.float32)


def affine_params(c, seed=1):
    rng = np.random.default_rng(seed)
    scale = jnp.asarray(1 + 0.5 * rng.normal(size=c), jnp.float32)
    return scale, jnp.asarray(rng.normal(size=c), jnp.float32)


def flax_apply(module, **kwargs):
    """A module's apply, jitted: one compile instead of one per eager op."""
    return jax.jit(lambda variables, x: module.apply(variables, x, **kwargs))


def max_dev(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


# -- parity with flax.linen ---------------------------------------------------------


@pytest.mark.parametrize("shape", [(16, 10), (8, 5, 5, 12)])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_matches_flax_over_several_steps(shape, affine):
    c = shape[-1]
    scale, bias = affine_params(c) if affine else (None, None)
    module = nn.BatchNorm(
        momentum=0.9, epsilon=EPS, use_fast_variance=False, use_scale=affine, use_bias=affine
    )
    train_flax = flax_apply(module, use_running_average=False, mutable=["batch_stats"])
    params = {"scale": scale, "bias": bias} if affine else {}
    flax_stats = pl.BatchNormStats.init(c)._asdict()  # flax's own init: mean 0, var 1
    stats = pl.BatchNormStats.init(c)
    for step in range(4):
        x = data(shape, seed=step, offset=step - 2.0, spread=1.0 + step)
        y_flax, mutated = train_flax({"params": params, "batch_stats": flax_stats}, x)
        flax_stats = mutated["batch_stats"]
        y, stats = pl.batch_norm(x, scale, bias, stats, train=True)
        assert max_dev(y, y_flax) < FLAX_TOL
        np.testing.assert_allclose(stats.mean, flax_stats["mean"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(stats.var, flax_stats["var"], rtol=1e-5, atol=1e-6)
    # Evaluation uses the running statistics.
    x = data(shape, seed=9)
    eval_flax = flax_apply(module, use_running_average=True)
    y_flax = eval_flax({"params": params, "batch_stats": flax_stats}, x)
    y, same = pl.batch_norm(x, scale, bias, stats, train=False)
    assert max_dev(y, y_flax) < FLAX_TOL
    assert same is stats


def test_batch_norm_feature_axis_1_matches_flax():
    x = data((6, 4, 3, 5))  # NCHW
    scale, bias = affine_params(4)
    module = nn.BatchNorm(axis=1, momentum=0.8, epsilon=1e-3, use_fast_variance=False)
    variables = {
        "params": {"scale": scale, "bias": bias},
        "batch_stats": pl.BatchNormStats.init(4)._asdict(),
    }
    y_flax, mutated = flax_apply(module, use_running_average=False, mutable=["batch_stats"])(
        variables, x
    )
    y, stats = pl.batch_norm(
        x, scale, bias, pl.BatchNormStats.init(4), train=True, axis=1, momentum=0.8, eps=1e-3
    )
    assert max_dev(y, y_flax) < FLAX_TOL
    np.testing.assert_allclose(stats.mean, mutated["batch_stats"]["mean"], rtol=1e-5)
    np.testing.assert_allclose(stats.var, mutated["batch_stats"]["var"], rtol=1e-5)


@pytest.mark.parametrize("shape, axes", [((16, 10), -1), ((4, 6, 6, 8), (1, 2, 3))])
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_matches_flax(shape, axes, affine):
    scale, bias = affine_params(shape[-1]) if affine else (None, None)
    x = data(shape)
    module = nn.LayerNorm(
        epsilon=EPS,
        reduction_axes=axes,
        use_fast_variance=False,
        use_scale=affine,
        use_bias=affine,
    )
    params = {"scale": scale, "bias": bias} if affine else {}
    y_flax = flax_apply(module)({"params": params}, x)
    assert max_dev(pl.layer_norm(x, scale, bias, axis=axes), y_flax) < FLAX_TOL


@pytest.mark.parametrize("shape, groups", [((4, 6, 6, 12), 3), ((4, 6, 6, 12), 12), ((8, 16), 4)])
def test_group_norm_matches_flax(shape, groups):
    scale, bias = affine_params(shape[-1])
    x = data(shape)
    module = nn.GroupNorm(num_groups=groups, epsilon=EPS, use_fast_variance=False)
    y_flax = flax_apply(module)({"params": {"scale": scale, "bias": bias}}, x)
    assert max_dev(pl.group_norm(x, groups, scale, bias), y_flax) < FLAX_TOL


@pytest.mark.parametrize("shape", [(4, 6, 6, 8), (4, 10, 8)])
def test_instance_norm_matches_flax(shape):
    scale, bias = affine_params(shape[-1])
    x = data(shape)
    module = nn.InstanceNorm(epsilon=EPS, use_fast_variance=False)
    y_flax = flax_apply(module)({"params": {"scale": scale, "bias": bias}}, x)
    assert max_dev(pl.instance_norm(x, scale, bias), y_flax) < FLAX_TOL


def test_nchw_group_and_instance_norm_match_flax_on_transposed_input():
    x_nchw = data((4, 12, 5, 5))
    x_nhwc = jnp.asarray(np.transpose(x_nchw, (0, 2, 3, 1)))
    scale, bias = affine_params(12)
    p = {"params": {"scale": scale, "bias": bias}}
    for module, ours in [
        (
            nn.GroupNorm(num_groups=4, epsilon=EPS, use_fast_variance=False),
            pl.group_norm(x_nchw, 4, scale, bias, channel_axis=1),
        ),
        (
            nn.InstanceNorm(epsilon=EPS, use_fast_variance=False),
            pl.instance_norm(x_nchw, scale, bias, channel_axis=1),
        ),
    ]:
        theirs = np.transpose(flax_apply(module)(p, x_nhwc), (0, 3, 1, 2))
        assert max_dev(ours, theirs) < FLAX_TOL


# -- the NumPy reference --------------------------------------------------------------


def test_every_normalization_matches_the_numpy_formulas():
    x = data((6, 5, 4, 8), offset=-1.5, spread=2.5)
    scale, bias = affine_params(8)
    y, stats = pl.batch_norm(x, scale, bias, pl.BatchNormStats.init(8), train=True, momentum=0.5)
    ref, mu, var = np_batch_norm(x, scale, bias)
    np.testing.assert_allclose(y, ref, atol=2e-5)
    np.testing.assert_allclose(stats.mean, 0.5 * 0 + 0.5 * mu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.var, 0.5 * 1 + 0.5 * var, rtol=1e-5)
    np.testing.assert_allclose(
        pl.layer_norm(x, scale, bias), np_layer_norm(x, scale, bias), atol=2e-5
    )
    np.testing.assert_allclose(
        pl.layer_norm(x, scale, bias, axis=(1, 2, 3)),
        np_layer_norm(x, scale, bias, axes=(1, 2, 3)),
        atol=2e-5,
    )
    np.testing.assert_allclose(
        pl.instance_norm(x, scale, bias), np_instance_norm(x, scale, bias), atol=2e-5
    )
    for groups in (1, 2, 4, 8):
        np.testing.assert_allclose(
            pl.group_norm(x, groups, scale, bias), np_group_norm(x, groups, scale, bias), atol=2e-5
        )
    x_nchw = jnp.moveaxis(x, -1, 1)
    np.testing.assert_allclose(
        pl.instance_norm(x_nchw, scale, bias, channel_axis=1),
        np_instance_norm(x_nchw, scale, bias, channel_axis=1),
        atol=2e-5,
    )
    np.testing.assert_allclose(
        pl.group_norm(x_nchw, 2, scale, bias, channel_axis=1),
        np_group_norm(x_nchw, 2, scale, bias, channel_axis=1),
        atol=2e-5,
    )


def test_float64_inputs_match_the_numpy_formulas_to_double_precision():
    with jax.enable_x64(True):
        x = np.random.default_rng(0).normal(3.0, 2.0, size=(5, 4, 3, 6))
        scale = np.linspace(0.5, 2.0, 6)
        bias = np.linspace(-1.0, 1.0, 6)
        y, stats = pl.batch_norm(
            jnp.asarray(x), scale, bias, pl.BatchNormStats.init(6, jnp.float64), train=True
        )
        assert y.dtype == jnp.float64 and stats.var.dtype == jnp.float64
        np.testing.assert_allclose(y, np_batch_norm(x, scale, bias)[0], rtol=0, atol=1e-12)
        np.testing.assert_allclose(
            pl.group_norm(jnp.asarray(x), 3, scale, bias),
            np_group_norm(x, 3, scale, bias),
            rtol=0,
            atol=1e-12,
        )


def test_eval_mode_uses_running_statistics_and_returns_stats_unchanged():
    stats = pl.BatchNormStats(jnp.array([1.0, -2.0]), jnp.array([4.0, 0.25]))
    x = jnp.array([[3.0, -2.0], [1.0, -1.5]])
    y, out = pl.batch_norm(x, jnp.array([2.0, 1.0]), jnp.array([0.0, 1.0]), stats, train=False)
    ref = (np.asarray(x) - [1.0, -2.0]) / np.sqrt(np.array([4.0, 0.25]) + EPS) * [2, 1] + [0, 1]
    np.testing.assert_allclose(y, ref, rtol=1e-6)
    assert out is stats


def test_batch_norm_tuple_axis_keeps_a_statistic_per_feature_pair():
    x = data((10, 3, 4))
    y, stats = pl.batch_norm(x, None, None, pl.BatchNormStats.init((3, 4)), train=True, axis=(1, 2))
    assert stats.mean.shape == (3, 4)
    ref, _, _ = np_standardize(x, (0,), EPS)
    np.testing.assert_allclose(y, ref, atol=2e-5)


def test_group_norm_special_cases_are_layer_and_instance_norm():
    x = data((3, 4, 4, 6))
    np.testing.assert_allclose(
        pl.group_norm(x, 1), pl.layer_norm(x, axis=(1, 2, 3)), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(pl.group_norm(x, 6), pl.instance_norm(x), rtol=1e-5, atol=1e-5)


# -- numerical stability ----------------------------------------------------------------


def test_large_offset_is_stable_where_fast_variance_fails():
    """1e4 + N(0, 1) in float32: E[x^2] - E[x]^2 cancels catastrophically."""
    x = jnp.asarray(1e4 + np.random.default_rng(0).normal(size=(256, 64)), jnp.float32)
    x64 = np.asarray(x, np.float64)
    true_var = x64.var(axis=0)
    y, stats = pl.batch_norm(x, None, None, pl.BatchNormStats.init(64), train=True, momentum=0.0)
    np.testing.assert_allclose(stats.var, true_var, rtol=1e-5)
    ref = (x64 - x64.mean(0)) / np.sqrt(true_var + EPS)
    assert max_dev(y, ref) < 1e-5
    # flax's default (fast) variance on the same input is far off: the test input is hard.
    fast = nn.BatchNorm(momentum=0.0, epsilon=EPS, use_scale=False, use_bias=False)
    y_fast, mutated = flax_apply(fast, use_running_average=False, mutable=["batch_stats"])(
        {"params": {}, "batch_stats": pl.BatchNormStats.init(64)._asdict()}, x
    )
    assert np.max(np.abs(mutated["batch_stats"]["var"] - true_var) / true_var) > 0.1
    assert max_dev(y_fast, ref) > 0.1
    # The same holds for the per-example normalizations.
    xt = x.T  # 64 examples of 256 features
    ref_t = (x64.T - x64.T.mean(1, keepdims=True)) / np.sqrt(x64.T.var(1, keepdims=True) + EPS)
    assert max_dev(pl.layer_norm(xt), ref_t) < 1e-5
    assert max_dev(pl.group_norm(xt, 1), ref_t) < 1e-5
    assert max_dev(pl.instance_norm(xt.reshape(64, 256, 1)), ref_t.reshape(64, 256, 1)) < 1e-5


@settings(max_examples=25, deadline=None, database=None)
@given(
    offset=st.floats(-1e5, 1e5),
    log_spread=st.floats(-3, 3),
    seed=st.integers(0, 2**16),
)
def test_layer_norm_is_accurate_for_any_offset_and_spread(offset, log_spread, seed):
    """Relative to the data's own spread, the output is accurate whenever the
    float32 inputs still resolve that spread (|offset| / spread < 2**23 / 100)."""
    spread = 10.0**log_spread
    x = jnp.asarray(
        offset + spread * np.random.default_rng(seed).normal(size=(8, 128)), jnp.float32
    )
    x64 = np.asarray(x, np.float64)
    std = x64.std(axis=1).min()
    # Otherwise the float32 input itself has under 100 distinct levels per std.
    assume(std > 0 and np.abs(x64).max() / std < 2**23 / 100)
    ref = np_standardize(x64, (1,), 0.0)[0]
    assert max_dev(pl.layer_norm(x, eps=0.0), ref) < 2e-5


# -- dtypes ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_inputs_use_float32_statistics(dtype):
    # float16 overflows at 65504: squares of ~300 summed over 4096 values would be inf.
    x = jnp.asarray(np.random.default_rng(0).normal(300, 20, size=(4096, 4)), dtype)
    scale, bias = np.ones(4, dtype), np.zeros(4, dtype)
    y, stats = pl.batch_norm(x, scale, bias, pl.BatchNormStats.init(4), train=True, momentum=0.0)
    assert y.dtype == dtype and stats.mean.dtype == jnp.float32
    x64 = np.asarray(x.astype(jnp.float32), np.float64)
    np.testing.assert_allclose(stats.var, x64.var(0), rtol=1e-5)
    np.testing.assert_allclose(stats.mean, x64.mean(0), rtol=1e-6)
    tol = 4 * float(jnp.finfo(dtype).eps) * 4  # a few ulps of outputs up to ~4
    ref = np_batch_norm(x64, None, None)[0]
    assert max_dev(y, ref) < tol
    for got, want in [
        (pl.layer_norm(x.T), np_layer_norm(x64.T, None, None)),
        (pl.group_norm(x, 2), np_group_norm(x64, 2, None, None)),
        (
            pl.instance_norm(x.reshape(64, 64, 4)),
            np_instance_norm(x64.reshape(64, 64, 4), None, None),
        ),
    ]:
        assert got.dtype == dtype
        assert max_dev(got, want) < tol


# -- gradients ---------------------------------------------------------------------------


def _bn_train(x, s, b):
    stats = pl.BatchNormStats.init(x.shape[-1], x.dtype)
    y, new = pl.batch_norm(x, s, b, stats, train=True, eps=1e-3)
    # Through the running statistics too (the custom rule's mean/var tangents).
    return y, new.mean, new.var


def _bn_eval(x, s, b):
    stats = pl.BatchNormStats(np.linspace(-1, 1, x.shape[-1]), np.linspace(0.5, 2, x.shape[-1]))
    return pl.batch_norm(x, s, b, stats, train=False, eps=1e-3)[0]


# Every case takes x of shape (2, 4, 4) (a batch of 2) and 4 scales and biases;
# together they cover each derivative rule: the per-channel fused rule (batch,
# instance NCHW), the x_hat rule with scales along the reduced axis (layer) and
# with channel groups (group), and plain autodiff (batch norm in eval mode).
GRAD_CASES = {
    "batch": _bn_train,
    "batch_eval": _bn_eval,
    "layer": lambda x, s, b: pl.layer_norm(x, s, b, eps=1e-3),
    "instance_nchw": lambda x, s, b: pl.instance_norm(x, s, b, channel_axis=1, eps=1e-3),
    "group": lambda x, s, b: pl.group_norm(x, 2, s, b, eps=1e-3),
}


@pytest.mark.slow
def test_gradients_match_finite_differences_to_second_order():
    """Every case at once (one function of x, scale, bias returning all their
    outputs): check_grads compiles each derivative program once, not per case."""

    @jax.jit
    def every_case(x, s, b):
        return {name: fn(x, s, b) for name, fn in GRAD_CASES.items()}

    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.normal(1.0, 2.0, size=(2, 4, 4)))
        s = jnp.asarray(rng.normal(1.0, 0.3, size=4))
        b = jnp.asarray(rng.normal(size=4))
        check_grads(every_case, (x, s, b), order=2, modes=("fwd", "rev"), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    "red",
    [_Reduction((0,)), _Reduction((1, 2)), _Reduction((1, 3), groups=(2, 2))],
    ids=["batch", "layer", "group"],
)
def test_custom_jvp_equals_autodiff_of_the_plain_formula(red):
    """The hand-written derivative against JAX's derivative of the plain
    two-pass formula: gradients (input and eps, through x_hat, mean and var),
    forward-mode JVPs and Hessians, in float64."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        x = jnp.asarray(rng.normal(5.0, 3.0, size=(3, 2, 4)))
        cot = jnp.asarray(rng.normal(size=(3, 2, 4)))

        def loss(x, eps, std):
            x_hat, mean, var = std(x, eps, red)
            return jnp.sum(x_hat * cot) + jnp.sum(mean**2) + jnp.sum(jnp.sin(var))

        @jax.jit
        def derivatives(x, eps):
            out = {}
            for name, std in [("ours", _standardize), ("plain", _standardize_plain)]:
                f = functools.partial(loss, std=std)
                out[name] = (
                    jax.grad(f, argnums=(0, 1))(x, eps),
                    jax.jvp(lambda x, f=f: f(x, eps), (x,), (cot,))[1],
                    jax.hessian(f)(x, eps),
                )
            return out

        out = derivatives(x, 0.01)
        for a, b in zip(jax.tree.leaves(out["ours"]), jax.tree.leaves(out["plain"]), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("affine", ["scale_and_bias", "none"])
def test_fused_affine_jvp_equals_autodiff_of_the_plain_formula(affine):
    """The batch/instance-norm rule (per-channel scale folded into the
    derivative) against autodiff of ``scale * x_hat + bias``, in float64:
    gradients in x, scale, bias and eps, a full JVP, and the Hessian in x."""
    red = _Reduction((0, 1))
    with jax.enable_x64(True):
        rng = np.random.default_rng(2)
        x = jnp.asarray(rng.normal(-3.0, 2.0, size=(3, 2, 4)))
        scale = jnp.asarray(rng.normal(1.0, 0.5, size=(1, 1, 4))) if "scale" in affine else None
        bias = jnp.asarray(rng.normal(size=(1, 1, 4))) if "bias" in affine else None
        cot = jnp.asarray(rng.normal(size=(3, 2, 4)))

        def ours(x, scale, bias, eps):
            return _standardize_affine(x, scale, bias, eps, red)

        def plain(x, scale, bias, eps):
            x_hat, mean, var = _standardize_plain(x, eps, red)
            y = x_hat if scale is None else x_hat * scale
            return (y if bias is None else y + bias), mean, var

        def loss(fn, x, scale, bias, eps):
            y, mean, var = fn(x, scale, bias, eps)
            return jnp.sum(y * cot) + jnp.sum(jnp.cos(mean)) + jnp.sum(var**2)

        @jax.jit
        def derivatives(x, scale, bias, eps):
            out = {}
            for name, fn in [("ours", ours), ("plain", plain)]:
                f = functools.partial(loss, fn)
                tangents = jax.tree.map(lambda a: 0.5 * jnp.ones_like(a), (scale, bias, eps))
                out[name] = (
                    jax.grad(f, argnums=(0, 1, 2, 3))(x, scale, bias, eps),
                    jax.jvp(f, (x, scale, bias, eps), (cot, *tangents))[1],
                    jax.hessian(f)(x, scale, bias, eps),
                )
            return out

        out = derivatives(x, scale, bias, 0.01)
        for a, b in zip(jax.tree.leaves(out["ours"]), jax.tree.leaves(out["plain"]), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-10)


def test_gradient_with_respect_to_the_running_statistics_in_eval_mode():
    x = data((5, 3))

    def loss(mean, var):
        return jnp.sum(pl.batch_norm(x, None, None, pl.BatchNormStats(mean, var), train=False)[0])

    g_mean, g_var = jax.grad(loss, argnums=(0, 1))(np.zeros(3), np.ones(3))
    np.testing.assert_allclose(g_mean, -5 / np.sqrt(1 + EPS) * np.ones(3), rtol=1e-6)
    np.testing.assert_allclose(
        g_var, -0.5 * np.asarray(x).sum(0) * (1 + EPS) ** -1.5, rtol=1e-5, atol=1e-6
    )


# -- distribution: axis_name, jit, sharding ------------------------------------------


def test_axis_name_gives_global_statistics_and_gradients_under_vmap():
    x = data((8, 3, 5))
    scale, bias = affine_params(5)
    cot = data((8, 3, 5), seed=3)
    stats = pl.BatchNormStats.init(5)

    def loss(x, scale, bias, cot, axis_name):
        y, new = pl.batch_norm(x, scale, bias, stats, train=True, axis_name=axis_name)
        return jnp.sum(y * cot), (y, new)

    grad_fn = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)
    (_, (y, new)), grads = grad_fn(x, scale, bias, cot, None)
    # The same batch split over 4 "devices" (a named vmap axis) of 2 examples each.
    (_, (y_d, new_d)), grads_d = jax.vmap(
        lambda xs, cs: grad_fn(xs, scale, bias, cs, "d"), axis_name="d"
    )(x.reshape(4, 2, 3, 5), cot.reshape(4, 2, 3, 5))
    np.testing.assert_allclose(y_d.reshape(x.shape), y, rtol=1e-5, atol=1e-5)
    for s_d, s in zip(new_d, new, strict=True):
        np.testing.assert_allclose(s_d, jnp.broadcast_to(s, s_d.shape), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grads_d[0].reshape(x.shape), grads[0], rtol=1e-4, atol=1e-5)
    # Parameter gradients are per-device partial sums, to be summed (psum) by the caller.
    np.testing.assert_allclose(grads_d[1].sum(0), grads[1], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grads_d[2].sum(0), grads[2], rtol=1e-4, atol=1e-5)


def test_train_flag_is_static_under_jit():
    x = data((6, 4))
    f = jax.jit(pl.batch_norm, static_argnames=("train",))
    y_jit, s_jit = f(x, None, None, pl.BatchNormStats.init(4), train=True)
    y, s = pl.batch_norm(x, None, None, pl.BatchNormStats.init(4), train=True)
    np.testing.assert_allclose(y_jit, y, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(s_jit.var, s.var, rtol=1e-6)
    with pytest.raises(TypeError, match="static"):
        jax.jit(pl.batch_norm)(x, None, None, pl.BatchNormStats.init(4), train=True)


_SHARDED = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import purelearn as pl

    mesh = Mesh(np.array(jax.devices()), ("batch",))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(16, 5)) * 3 + np.arange(16.0)[:, None], jnp.float32)
    cot = jnp.asarray(rng.normal(size=(16, 5)), jnp.float32)
    scale, bias = jnp.linspace(0.5, 1.5, 5), jnp.linspace(-1.0, 1.0, 5)
    stats = pl.BatchNormStats.init(5)

    def loss(x, scale, bias, cot, axis_name=None):
        y, new = pl.batch_norm(x, scale, bias, stats, train=True, axis_name=axis_name)
        return jnp.sum(y * cot), (y, new)

    grad = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)
    grads, (y, new) = grad(x, scale, bias, cot)

    # jit over a batch sharded on the mesh: plain means are already global.
    xs = jax.device_put(x, NamedSharding(mesh, P("batch")))
    grads_jit, (y_jit, new_jit) = jax.jit(grad)(xs, scale, bias, cot)
    assert len(xs.sharding.device_set) == 4
    np.testing.assert_allclose(y_jit, y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(new_jit.var, new.var, rtol=1e-5)
    for a, b in zip(grads_jit, grads):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)

    # shard_map: each device sees 4 examples; axis_name makes the statistics global.
    def local(x, scale, bias, cot):
        return grad(x, scale, bias, cot, "batch")

    spec = (P("batch"), P(), P(), P("batch"))
    out = (P("batch"), P(), P()), (P("batch"), P())
    sm = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=spec, out_specs=out))
    grads_sm, (y_sm, new_sm) = sm(xs, scale, bias, cot)
    np.testing.assert_allclose(y_sm, y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(new_sm.mean, new.mean, rtol=1e-5)
    np.testing.assert_allclose(new_sm.var, new.var, rtol=1e-5)
    for a, b in zip(grads_sm, grads):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    print("ok", len(jax.devices()))
    """
)


def test_statistics_are_global_with_a_sharded_batch():
    """jit over a batch sharded on 4 (host) devices, and shard_map with axis_name:
    outputs, running statistics and gradients equal the single-device ones."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run(
        [sys.executable, "-c", _SHARDED], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["ok", "4"]


# -- argument checks ----------------------------------------------------------------


def test_group_norm_rejects_channels_not_divisible_naming_both_numbers():
    with pytest.raises(ValueError, match=r"10 channels.*num_groups=4"):
        pl.group_norm(np.ones((2, 3, 10)), 4)
    with pytest.raises(ValueError, match="12 channels"):
        pl.group_norm(np.ones((2, 12, 3)), 5, channel_axis=1)
    for bad in (0, -2, 2.0, True):
        with pytest.raises(ValueError, match="num_groups"):
            pl.group_norm(np.ones((2, 4)), bad)


@pytest.mark.parametrize("eps", [-1e-5, float("nan"), float("inf"), "1e-5", None])
def test_bad_eps_is_a_value_error_naming_it(eps):
    x = np.ones((4, 3))
    calls = [
        lambda: pl.batch_norm(x, None, None, pl.BatchNormStats.init(3), train=True, eps=eps),
        lambda: pl.layer_norm(x, eps=eps),
        lambda: pl.instance_norm(x[None], eps=eps),
        lambda: pl.group_norm(x, 1, eps=eps),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="eps"):
            call()


@pytest.mark.parametrize("momentum", [-0.1, 1.5, float("nan")])
def test_bad_momentum_is_a_value_error_naming_it(momentum):
    with pytest.raises(ValueError, match=rf"momentum.*{momentum}"):
        pl.batch_norm(
            np.ones((4, 3)), None, None, pl.BatchNormStats.init(3), train=True, momentum=momentum
        )


def test_momentum_bounds_are_allowed():
    x = data((4, 3))
    stats = pl.BatchNormStats(np.full(3, 7.0), np.full(3, 7.0))
    _, frozen = pl.batch_norm(x, None, None, stats, train=True, momentum=1.0)
    np.testing.assert_array_equal(frozen.mean, stats.mean)
    _, batch = pl.batch_norm(x, None, None, stats, train=True, momentum=0.0)
    np.testing.assert_allclose(batch.mean, np.asarray(x).mean(0), rtol=1e-6)


def test_momentum_may_be_an_array_and_stats_may_be_flax_batch_stats():
    x = data((4, 3))
    batch_mean = np.asarray(x, np.float64).mean(0)
    stats = pl.BatchNormStats(np.full(3, 2.0, np.float32), np.ones(3, np.float32))
    means = jax.vmap(lambda m: pl.batch_norm(x, None, None, stats, train=True, momentum=m)[1].mean)(
        jnp.array([0.0, 0.25, 1.0])
    )
    for m, got in zip([0.0, 0.25, 1.0], np.asarray(means), strict=True):
        np.testing.assert_allclose(got, m * 2.0 + (1 - m) * batch_mean, rtol=1e-5)
    y_dict, new = pl.batch_norm(x, None, None, stats._asdict(), train=True)
    y_tuple, _ = pl.batch_norm(x, None, None, tuple(stats), train=True)
    assert isinstance(new, pl.BatchNormStats)
    np.testing.assert_array_equal(y_dict, y_tuple)


def test_other_bad_arguments():
    x = np.ones((4, 3))
    stats = pl.BatchNormStats.init(3)
    with pytest.raises(ValueError, match="train must be True or False, got None"):
        pl.batch_norm(x, None, None, stats, train=None)
    with pytest.raises(TypeError, match="train must be a Python bool"):
        pl.batch_norm(x, None, None, stats, train=jnp.array(True))
    with pytest.raises(TypeError):
        pl.batch_norm(x, None, None, stats)  # train is required
    with pytest.raises(ValueError, match=r"stats.mean has shape \(4,\)"):
        pl.batch_norm(x, None, None, pl.BatchNormStats.init(4), train=True)
    with pytest.raises(ValueError, match="out of range"):
        pl.batch_norm(x, None, None, stats, train=True, axis=2)
    with pytest.raises(ValueError, match="nothing to average"):
        pl.batch_norm(x, None, None, pl.BatchNormStats.init((4, 3)), train=True, axis=(0, 1))
    with pytest.raises(ValueError, match="scale of shape"):
        pl.layer_norm(x, np.ones(4))
    with pytest.raises(ValueError, match="batch axis"):
        pl.instance_norm(np.ones((2, 3, 4)), channel_axis=0)
    with pytest.raises(ValueError, match="rank >= 3"):
        pl.instance_norm(x)
    with pytest.raises(ValueError, match="twice"):
        pl.layer_norm(x, axis=(1, -1))
    with pytest.raises(ValueError, match="dtype bool"):
        pl.layer_norm(np.ones((2, 3), bool))


def test_batch_norm_stats_init():
    stats = pl.BatchNormStats.init(5)
    np.testing.assert_array_equal(stats.mean, np.zeros(5))
    np.testing.assert_array_equal(stats.var, np.ones(5))
    assert stats.mean.dtype == jnp.float32
    assert pl.BatchNormStats.init((2, 3), jnp.bfloat16).var.dtype == jnp.bfloat16
    # A pytree: it goes through jit, tree.map and optax-style state handling.
    doubled = jax.tree.map(lambda a: 2 * a, stats)
    assert isinstance(doubled, pl.BatchNormStats)


# -- hardening: each argument checked at the call (issue 12) ------------------------------

STATS3 = pl.BatchNormStats.init(3)


@pytest.mark.parametrize("shape", [(0, 3), (2, 0, 3), (0, 0, 3)])
def test_empty_batch_in_training_is_a_value_error_not_nan_statistics(shape):
    """Regression: the mean of an empty batch was NaN and went into the running statistics."""
    x = np.ones(shape, np.float32)
    with pytest.raises(ValueError, match=rf"non-empty batch.*{re_shape(shape)}"):
        pl.batch_norm(x, None, None, STATS3, train=True)
    # Evaluation reads the running statistics only: an empty batch is fine there.
    y, stats = pl.batch_norm(x, None, None, STATS3, train=False)
    assert y.shape == shape and stats is STATS3


def re_shape(shape):
    return str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")


@pytest.mark.parametrize("axis", [1.0, "1", None, True, (1.0,), [0.5], np.float64(1)])
def test_non_int_axes_are_value_errors_naming_the_value(axis):
    """Regression: axis=1.0 was a TypeError ('float' object is not iterable)."""
    x = data((4, 3, 5))
    calls = [
        lambda: pl.batch_norm(x, None, None, pl.BatchNormStats.init(5), train=True, axis=axis),
        lambda: pl.layer_norm(x, axis=axis),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=rf"axis must be an int.*got {re.escape(repr(axis))}"):
            call()
    for call in (
        lambda: pl.instance_norm(x, channel_axis=axis),
        lambda: pl.group_norm(x, 1, channel_axis=axis),
    ):
        with pytest.raises(
            ValueError, match=rf"channel_axis must be one int.*{re.escape(repr(axis))}"
        ):
            call()


def test_out_of_range_and_duplicate_axes_name_the_value():
    x = data((4, 3, 5))
    with pytest.raises(ValueError, match=r"axis=\(0, 3\) is out of range .* rank 3"):
        pl.layer_norm(x, axis=(0, 3))
    with pytest.raises(ValueError, match=r"axis=-4 is out of range"):
        pl.batch_norm(x, None, None, STATS3, train=True, axis=-4)
    with pytest.raises(ValueError, match=r"axis=\[2, -1\] names an axis twice"):
        pl.layer_norm(x, axis=[2, -1])
    with pytest.raises(ValueError, match=r"channel_axis=3 is out of range"):
        pl.group_norm(x, 1, channel_axis=3)
    with pytest.raises(ValueError, match=r"channel_axis must be one int, got \(1, 2\)"):
        pl.instance_norm(x, channel_axis=(1, 2))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(-5, 4), min_size=1, max_size=3))
def test_layer_norm_axes_either_match_numpy_or_are_refused(axis):
    """Any list of ints: in range and distinct -> the NumPy formula over them; else a
    ValueError naming the list."""
    x = data((3, 2, 4))
    normalized = [a % 3 for a in axis]
    valid = all(-3 <= a < 3 for a in axis) and len(set(normalized)) == len(normalized)
    if not valid:
        with pytest.raises(ValueError, match=re.escape(repr(axis))):
            pl.layer_norm(x, axis=axis)
        return
    want = np_layer_norm(x, None, None, axes=tuple(normalized))
    np.testing.assert_allclose(pl.layer_norm(x, axis=axis), want, atol=2e-5)
    # NumPy integers and 0-d arrays name the same axes.
    np.testing.assert_array_equal(
        pl.layer_norm(x, axis=[np.int64(a) for a in axis]), pl.layer_norm(x, axis=axis)
    )


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("momentum", np.array(2.0), r"momentum must be in \[0, 1\], got array\(2\.\)"),
        ("momentum", np.array(-0.1), r"momentum must be in \[0, 1\]"),
        ("momentum", np.float32("nan"), "momentum must be a finite number"),
        ("momentum", jnp.ones(3), r"momentum must be a scalar, got an array of shape \(3,\)"),
        ("momentum", lambda step: 0.9, "momentum must be a number or a 0-d array"),
        ("eps", np.array(-1.0), r"eps must be >= 0, got array\(-1\.\)"),
        ("eps", np.array(np.inf), "eps must be a finite number"),
        ("eps", np.ones(3), r"eps must be a real number, got array\(\[1\., 1\., 1\.\]\)"),
    ],
)
def test_numpy_hyperparameters_are_checked_like_numbers(name, value, message):
    """Regression: 0-d NumPy arrays went through unchecked (a negative eps gave NaN)."""
    x = np.ones((4, 3), np.float32)
    calls = [lambda: pl.batch_norm(x, None, None, STATS3, train=True, **{name: value})]
    if name == "eps":
        calls += [lambda: pl.layer_norm(x, eps=value), lambda: pl.group_norm(x, 1, eps=value)]
        calls += [lambda: pl.instance_norm(x[None], eps=value)]
    for call in calls:
        with pytest.raises(ValueError, match=message):
            call()


def test_valid_numpy_hyperparameters_give_the_python_number_results():
    x = data((6, 3))
    stats = pl.BatchNormStats(np.full(3, 2.0, np.float32), np.full(3, 3.0, np.float32))
    want_y, want = pl.batch_norm(x, None, None, stats, train=True, momentum=0.25, eps=0.5)
    for m, e in [(np.array(0.25), np.array(0.5)), (np.float32(0.25), np.float64(0.5))]:
        y, got = pl.batch_norm(x, None, None, stats, train=True, momentum=m, eps=e)
        np.testing.assert_allclose(y, want_y, rtol=1e-6)
        np.testing.assert_allclose(got.mean, want.mean, rtol=1e-6)
        np.testing.assert_allclose(got.var, want.var, rtol=1e-6)
    # A NumPy integer number of groups is a number of groups.
    np.testing.assert_array_equal(
        pl.group_norm(data((2, 4)), np.int64(2)), pl.group_norm(data((2, 4)), 2)
    )


@pytest.mark.parametrize("dtype", [np.uint8, np.int32])
def test_integer_inputs_are_standardized_in_float32(dtype):
    """Decision: integer x (uint8 images) is promoted to float32, as jnp.mean promotes it."""
    x_int = np.random.default_rng(0).integers(0, 200, size=(6, 2, 2, 4)).astype(dtype)
    x = x_int.astype(np.float64)
    y, stats = pl.batch_norm(x_int, None, None, pl.BatchNormStats.init(4), train=True)
    assert y.dtype == jnp.float32 and stats.mean.dtype == jnp.float32
    ref, mu, _ = np_batch_norm(x, None, None)
    np.testing.assert_allclose(y, ref, atol=2e-5)
    np.testing.assert_allclose(stats.mean, 0.1 * mu, rtol=1e-5)
    for got, want in [
        (pl.layer_norm(x_int), np_layer_norm(x, None, None)),
        (pl.instance_norm(x_int), np_instance_norm(x, None, None)),
        (pl.group_norm(x_int, 2), np_group_norm(x, 2, None, None)),
    ]:
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(got, want, atol=2e-5)


@pytest.mark.parametrize(
    "x, message",
    [
        (np.ones((2, 3), bool), "dtype bool"),
        (np.ones((2, 3), np.complex64), "dtype complex64"),
        ("abc", "x must be an array of real numbers, got 'abc'"),
        (None, "x must be an array of real numbers, got None"),
    ],
)
def test_non_real_inputs_are_value_errors_naming_them(x, message):
    for call in (
        lambda: pl.batch_norm(x, None, None, STATS3, train=True),
        lambda: pl.layer_norm(x),
        lambda: pl.instance_norm(x),
        lambda: pl.group_norm(x, 1),
    ):
        with pytest.raises(ValueError, match=re.escape(message)):
            call()


def test_wrong_scale_or_bias_shapes_name_both_shapes_at_the_call():
    x = np.ones((4, 2, 2, 3), np.float32)
    calls = {
        "batch_norm train": lambda p: pl.batch_norm(x, p, None, STATS3, train=True),
        "batch_norm eval": lambda p: pl.batch_norm(x, None, p, STATS3, train=False),
        "layer_norm": lambda p: pl.layer_norm(x, p),
        "instance_norm": lambda p: pl.instance_norm(x, None, p),
        "group_norm": lambda p: pl.group_norm(x, 3, p),
    }
    for name, call in calls.items():
        with pytest.raises(
            ValueError, match=r"of shape \(4,\) fits neither .*\(3,\).*\(4, 2, 2, 3\)"
        ):
            call(np.ones(4))
        with pytest.raises(ValueError, match="must be an array of real numbers, got 'abc'"):
            call("abc")
        with pytest.raises(ValueError, match=r"real .*array, got dtype bool"):
            call(np.ones(3, bool))
        # A list of the right length is a parameter like an array (an oracle: the array).
        np.testing.assert_array_equal(
            jax.tree.leaves(call([1.0, 2.0, 3.0]))[0],
            jax.tree.leaves(call(np.array([1.0, 2.0, 3.0], np.float32)))[0],
            err_msg=name,
        )


@pytest.mark.parametrize(
    "stats, message",
    [
        (
            pl.BatchNormStats(np.zeros(3, np.int32), np.ones(3, np.int32)),
            "stats.mean must be a floating",
        ),
        ((np.zeros(3, np.float32), [1, 1, 1]), "stats.var must be a floating"),
        (None, "stats must be BatchNormStats"),
        ((1, 2, 3), "stats must be BatchNormStats"),
        (
            {"mean": np.zeros(3)},
            "stats as a dict must have keys 'mean' and 'var', got \\['mean'\\]",
        ),
        ((np.zeros(3), "abc"), "stats.var must be a floating"),
    ],
)
def test_bad_running_statistics_are_value_errors(stats, message):
    """Regression: integer statistics were silently rounded at every update."""
    with pytest.raises(ValueError, match=message):
        pl.batch_norm(np.ones((4, 3), np.float32), None, None, stats, train=True)


@pytest.mark.parametrize(
    "args, message",
    [
        ((-1,), "num_features must be an integer >= 0, got -1"),
        ((2.5,), "num_features must be an integer >= 0, got 2.5"),
        (("3",), "num_features must be an integer >= 0, got '3'"),
        (((2, -1),), "num_features must be an integer >= 0, got -1"),
        ((3, jnp.int32), "dtype must be a floating-point dtype"),
        ((3, "nonsense"), "dtype must be a floating-point dtype, got 'nonsense'"),
    ],
)
def test_batch_norm_stats_init_checks_its_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        pl.BatchNormStats.init(*args)


@pytest.mark.parametrize("train", [1, 0, "yes", None, 2.0])
def test_train_must_be_a_real_bool(train):
    with pytest.raises(
        ValueError, match=rf"train must be True or False, got {re.escape(repr(train))}"
    ):
        pl.batch_norm(np.ones((4, 3), np.float32), None, None, STATS3, train=train)
    # NumPy bools are bools.
    pl.batch_norm(np.ones((4, 3), np.float32), None, None, STATS3, train=np.True_)
