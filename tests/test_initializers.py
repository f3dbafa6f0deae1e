"""Initializers: variances on large samples, fan computation, agreement with
jax.nn.initializers, flax interop, dtypes and argument checks."""

import importlib.util
import math
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purelearn as pl

# The initializers pass any key through to jax.random. Tests use the "rbg"
# implementation because its programs compile ~10x faster on CPU than threefry's
# (the doctests cover the default implementation).
KEY = jax.random.key(42, impl="rbg")

# (factory, fan_in -> variance given (fan_in, fan_out), distribution)
CASES = {
    "xavier_normal": (lambda: pl.xavier_normal(), lambda i, o: 1 / i, "normal"),
    "xavier_normal_avg": (lambda: pl.xavier_normal(fan="avg"), lambda i, o: 2 / (i + o), "normal"),
    "xavier_uniform": (lambda: pl.xavier_uniform(), lambda i, o: 1 / i, "uniform"),
    "xavier_uniform_avg": (
        lambda: pl.xavier_uniform(fan="avg"),
        lambda i, o: 2 / (i + o),
        "uniform",
    ),
    "he_normal": (pl.he_normal, lambda i, o: 2 / i, "normal"),
    "he_uniform": (pl.he_uniform, lambda i, o: 2 / i, "uniform"),
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize(
    "shape, fans",
    [((1000, 500), (1000, 500)), ((3, 3, 256, 192), (2304, 1728))],
    ids=["dense", "conv"],
)
def test_variance_matches_the_formula_to_two_percent(name, shape, fans):
    factory, variance, distribution = CASES[name]
    w = np.asarray(factory()(KEY, shape), np.float64)
    assert w.shape == shape and w.dtype == np.float64
    want = variance(*fans)
    assert abs(w.var() / want - 1) < 0.02
    assert abs(w.mean()) < 0.01 * math.sqrt(want)
    if distribution == "uniform":
        limit = math.sqrt(3 * want)
        assert np.abs(w).max() <= limit * (1 + 1e-6)
        assert np.abs(w).max() > 0.999 * limit  # fills the whole interval
        # Uniform: a quarter of the mass in each quarter of [-a, a].
        counts = np.histogram(w, bins=4, range=(-limit, limit))[0] / w.size
        np.testing.assert_allclose(counts, 0.25, atol=0.005)
    else:
        # Gaussian, not truncated: 4.55% of draws lie beyond 2 standard deviations.
        tail = np.mean(np.abs(w) > 2 * math.sqrt(want))
        assert abs(tail - 0.0455) < 0.003


@pytest.mark.parametrize("stddev", [1.0, 0.01, 0.3])
def test_normal_has_the_given_standard_deviation(stddev):
    w = np.asarray(pl.normal(stddev)(KEY, (1000, 1000)), np.float64)
    assert abs(w.std() / stddev - 1) < 0.01  # variance to 2%
    assert abs(w.mean()) < 0.01 * stddev


def test_normal_default_is_the_textbooks_0_01_and_takes_any_shape():
    w = pl.normal()(KEY, (500, 400))
    assert abs(float(w.std()) / 0.01 - 1) < 0.01
    assert pl.normal(0.5)(KEY, ()).shape == ()
    assert pl.normal(0.5)(KEY, (7,)).shape == (7,)
    assert not np.any(np.asarray(pl.normal(0.0)(KEY, (3, 3))))


def test_compute_fans_for_dense_and_conv_kernels():
    assert pl.compute_fans((784, 100)) == (784, 100)
    assert pl.compute_fans((3, 3, 16, 32)) == (144, 288)
    assert pl.compute_fans((5, 7, 2, 4)) == (70, 140)
    assert pl.compute_fans((3, 8, 16)) == (24, 48)  # 1-D conv
    for bad in [(), (5,)]:
        with pytest.raises(ValueError, match="rank >= 2"):
            pl.compute_fans(bad)


def test_receptive_field_sets_the_scale_of_conv_kernels():
    # fan_in of (3, 3, 16, 32) is 144, not 16: He's std is sqrt(2 / 144).
    init = pl.he_normal()
    w = np.stack([np.asarray(init(k, (3, 3, 16, 32))) for k in jax.random.split(KEY, 64)])
    assert abs(w.var() / (2 / 144) - 1) < 0.02


def test_the_same_draws_as_jax_variance_scaling():
    """Normals are jax.random.normal * std: jax's ``distribution="normal"`` to rounding."""
    vs = jax.nn.initializers.variance_scaling
    pairs = [
        (pl.xavier_normal(), vs(1.0, "fan_in", "normal")),
        (pl.xavier_normal(fan="avg"), vs(1.0, "fan_avg", "normal")),
        (pl.he_normal(), vs(2.0, "fan_in", "normal")),
        # Uniforms: the same uniform draws on [-a, a] (affine maps that differ by rounding).
        (pl.xavier_uniform(), vs(1.0, "fan_in", "uniform")),
        (pl.xavier_uniform(fan="avg"), vs(1.0, "fan_avg", "uniform")),
        (pl.he_uniform(), vs(2.0, "fan_in", "uniform")),
    ]

    shape = (3, 3, 4, 5)  # fan_in 36, fan_out 45
    for ours, theirs in pairs:
        np.testing.assert_allclose(ours(KEY, shape), theirs(KEY, shape), rtol=1e-6, atol=1e-7)


def test_flax_modules_take_them_as_kernel_init():
    x = np.ones((2, 8, 8, 16))
    conv = nn.Conv(64, (3, 3), kernel_init=pl.he_normal())
    kernel = jax.jit(conv.init)(KEY, x)["params"]["kernel"]
    assert kernel.shape == (3, 3, 16, 64)
    assert abs(np.var(kernel) / (2 / 144) - 1) < 0.1  # 9216 draws
    dense = nn.Dense(300, kernel_init=pl.xavier_uniform(), param_dtype=jnp.bfloat16)
    kernel = jax.jit(dense.init)(KEY, np.ones((1, 400)))["params"]["kernel"]
    assert kernel.shape == (400, 300) and kernel.dtype == jnp.bfloat16
    kernel = np.asarray(kernel, np.float64)
    assert np.abs(kernel).max() <= math.sqrt(3 / 400) * 1.01
    assert abs(kernel.var() * 400 - 1) < 0.02
    # The init passes through jit (shape static), like any jax initializer.
    init = jax.jit(pl.xavier_normal(), static_argnums=(1, 2))
    np.testing.assert_array_equal(
        init(KEY, (4, 3), jnp.float32), pl.xavier_normal()(KEY, (4, 3), jnp.float32)
    )


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_dtype_is_respected(dtype):
    for init in [pl.normal(), pl.xavier_normal(), pl.xavier_uniform(), pl.he_normal()]:
        w = init(KEY, (64, 32), dtype)
        assert w.dtype == dtype
    with jax.enable_x64(True):
        assert pl.he_uniform()(KEY, (4, 4), jnp.float64).dtype == jnp.float64
    assert pl.he_normal()(KEY, (4, 4), None).dtype == jnp.float32  # as jax's default


def test_same_key_same_weights_different_key_different_weights():
    init = pl.he_normal()
    k1, k2 = jax.random.split(KEY)
    np.testing.assert_array_equal(init(k1, (20, 10)), init(k1, (20, 10)))
    assert not np.allclose(init(k1, (20, 10)), init(k2, (20, 10)))


def test_bad_fan_is_a_value_error_at_construction():
    for factory in (pl.xavier_normal, pl.xavier_uniform):
        for bad in ("out", "AVG", "fan_in", None, 1):
            with pytest.raises(ValueError, match=r"fan must be one of \('in', 'avg'\)"):
                factory(fan=bad)


@pytest.mark.parametrize(
    "factory", [pl.xavier_normal, pl.xavier_uniform, pl.he_normal, pl.he_uniform]
)
def test_shapes_without_fans_are_a_value_error_at_call(factory):
    init = factory()
    for shape in [(10,), (), 10]:
        with pytest.raises(ValueError, match=rf"{factory.__name__}.*rank >= 2.*got shape"):
            init(KEY, shape)
    assert init(KEY, (0, 5)).shape == (0, 5)  # empty kernels are fine


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), "0.01", None, True])
def test_bad_stddev_is_a_value_error_naming_it(bad):
    with pytest.raises(ValueError, match="stddev"):
        pl.normal(bad)


def _load_example():
    path = pathlib.Path(__file__).parent.parent / "examples" / "init_histograms.py"
    spec = importlib.util.spec_from_file_location("init_histograms", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_init_histograms_example_shows_the_textbooks_findings():
    example = _load_example()
    stats = example.activation_statistics(jax.random.key(0, impl="rbg"), num_examples=500)
    sig = stats["sigmoid"]
    # std 1: sigmoid outputs pile up at 0 and 1 (vanishing gradients).
    assert all(layer["saturated"] > 0.5 for layer in sig["std=1"])
    # std 0.01: every output collapses near 0.5 (no expressive power).
    assert all(layer["std"] < 0.03 for layer in sig["std=0.01"])
    # Xavier keeps a spread through all five sigmoid layers.
    assert all(0.07 < layer["std"] < 0.3 for layer in sig["xavier"])
    # ReLU: with Xavier the activations shrink layer by layer; He keeps their scale.
    relu = stats["relu"]
    xavier_std = [layer["std"] for layer in relu["xavier"]]
    he_std = [layer["std"] for layer in relu["he"]]
    assert xavier_std[-1] < 0.35 * xavier_std[0]
    assert 0.6 < he_std[-1] / he_std[0] < 1.6
    text = example.render(stats)
    assert "sigmoid" in text and "tanh" in text and "relu" in text
    assert text.count("layer 5") == 12  # 3 activations x 4 initializations
