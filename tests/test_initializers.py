"""Initializers: variances on large samples, fan computation, agreement with
jax.nn.initializers (the same draws for the same key where the sampling is the
same), flax interop (linen and nnx), dtypes and argument checks."""

import importlib.util
import math
import pathlib

import flax.linen as nn
import jax
import jax.nn.initializers as jinit
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

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
            with pytest.raises(ValueError, match=r"fan must be one of \['in', 'avg'\]"):
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


# =============================================================================
# variance_scaling, and the kernel's axes
# =============================================================================

MODES = ["fan_in", "fan_out", "fan_avg", "fan_geo_avg"]
DISTRIBUTIONS = ["normal", "uniform", "truncated_normal"]


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize("mode", MODES)
def test_variance_scaling_draws_what_jax_draws(mode, distribution):
    # The same unit draws as jax's, times the same standard deviation (ours is
    # computed in float64 and rounded once, jax's in float32: a few ulps).
    shape = (3, 3, 4, 5)
    ours = pl.variance_scaling(1.7, mode, distribution)(KEY, shape)
    theirs = jinit.variance_scaling(1.7, mode, distribution)(KEY, shape)
    assert ours.dtype == theirs.dtype == jnp.float32
    np.testing.assert_allclose(ours, theirs, rtol=2e-6, atol=1e-7)


AXES_CASES = {
    # PyTorch's (out, in, kh, kw) conv layout
    "torch-conv": ((32, 16, 3, 3), dict(in_axis=1, out_axis=0)),
    # a stack of 2 dense kernels
    "batch": ((2, 6, 7), dict(batch_axis=0)),
    # several input axes (a DenseGeneral kernel)
    "in-axes": ((3, 4, 5), dict(in_axis=(0, 1), out_axis=2)),
    "neg-axes": ((4, 5, 6), dict(in_axis=-3, out_axis=(-2, -1))),
}


@pytest.mark.parametrize("case", sorted(AXES_CASES))
def test_named_initializers_take_the_kernels_axes(case):
    shape, axes = AXES_CASES[case]
    pairs = [
        (pl.he_normal(**axes), jinit.variance_scaling(2.0, "fan_in", "normal", **axes)),
        (pl.he_uniform(**axes), jinit.he_uniform(**axes)),
        (pl.xavier_normal(**axes), jinit.variance_scaling(1.0, "fan_in", "normal", **axes)),
        (
            pl.xavier_uniform(fan="avg", **axes),
            jinit.variance_scaling(1.0, "fan_avg", "uniform", **axes),
        ),
        (
            pl.variance_scaling(0.5, "fan_out", "truncated_normal", **axes),
            jinit.variance_scaling(0.5, "fan_out", "truncated_normal", **axes),
        ),
    ]
    for ours, theirs in pairs:
        np.testing.assert_allclose(ours(KEY, shape), theirs(KEY, shape), rtol=2e-6, atol=1e-7)


def test_compute_fans_with_axes():
    assert pl.compute_fans((32, 16, 3, 3), in_axis=1, out_axis=0) == (144, 288)
    assert pl.compute_fans((2, 6, 7), batch_axis=0) == (6, 7)
    assert pl.compute_fans((3, 4, 5), in_axis=(0, 1), out_axis=2) == (12, 5)
    assert pl.compute_fans((4, 5, 6), in_axis=-3, out_axis=(-2, -1)) == (4, 30)
    assert pl.compute_fans((7,), in_axis=(), out_axis=0) == (1, 7)  # a bias: fan_in 1
    assert pl.compute_fans((0, 5)) == (0, 5)
    assert pl.compute_fans((3, 3, 0, 4)) == (0, 36)  # jax divides by the zero here
    # the default layout equals in_axis=-2, out_axis=-1 spelled out
    assert pl.compute_fans((5, 7, 2, 4), in_axis=[2], out_axis=(3,)) == (70, 140)


@st.composite
def _shapes_and_axes(draw):
    rank = draw(st.integers(2, 4))
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=rank, max_size=rank)))
    roles = draw(st.permutations(["in", "out", "batch", "field"] * 2))[:rank]
    if "in" not in roles or "out" not in roles:
        roles = ["in", "out", *roles[2:]]
    pick = [[i for i, r in enumerate(roles) if r == role] for role in ("in", "out", "batch")]
    axes = {
        "in_axis": pick[0][0] if len(pick[0]) == 1 else pick[0],
        "out_axis": pick[1][0] - rank if len(pick[1]) == 1 else pick[1],  # negative too
        "batch_axis": tuple(pick[2]),
    }
    return shape, axes


@settings(max_examples=30, deadline=None, database=None)
@given(_shapes_and_axes())
def test_property_fans_are_jaxs_for_any_layout(case):
    # jax's definition (jax.nn.initializers' _compute_fans): the receptive field
    # is what is left after dividing the size by the in, out and batch sizes.
    # Draws for the shapes of AXES_CASES are compared with jax's above; here the
    # fans alone, for many layouts (no compilation per shape).
    shape, axes = case

    def size(axis):
        axis = [axis] if isinstance(axis, int) else axis
        return math.prod(shape[a] for a in axis)

    in_size, out_size = size(axes["in_axis"]), size(axes["out_axis"])
    receptive = math.prod(shape) / in_size / out_size / size(axes["batch_axis"])
    fans = pl.compute_fans(shape, **axes)
    assert fans == (in_size * receptive, out_size * receptive)
    assert all(isinstance(f, int) for f in fans)


def test_fans_of_a_random_layout_give_jaxs_draws():
    shape, axes = (3, 2, 4, 5), dict(in_axis=(3, 0), out_axis=-3, batch_axis=2)
    for mode in MODES:
        ours = pl.variance_scaling(1.0, mode, "normal", **axes)(KEY, shape)
        theirs = jinit.variance_scaling(1.0, mode, "normal", **axes)(KEY, shape)
        np.testing.assert_allclose(ours, theirs, rtol=2e-6, atol=1e-7)


def test_truncated_normal_has_the_variance_and_no_tail():
    w = np.asarray(pl.variance_scaling(2.0, "fan_in", "truncated_normal")(KEY, (1000, 800)))
    std = math.sqrt(2 / 1000)
    assert abs(w.var() / std**2 - 1) < 0.02
    assert np.abs(w).max() <= 2 * std / 0.87962566103423978 * (1 + 1e-6)
    # A plain normal with that std has 4.55% of its draws beyond 2 std; this one
    # is a unit normal cut at 2 and stretched by 1/0.8796, so 2 std sits at 1.759
    # unit std: (P(|z| > 1.759) - P(|z| > 2)) / P(|z| < 2) = 3.46%.
    assert abs(np.mean(np.abs(w) > 2 * std) - 0.0346) < 0.002


def test_the_module_docstrings_numbers_for_a_784_by_100_kernel():
    # Ours (textbook): std sqrt(1/784) = 0.0357, untruncated. jax's xavier_normal:
    # sqrt(2/884) = 0.0476, truncated at 2 std.
    key = jax.random.key(0)
    ours = np.asarray(pl.xavier_normal()(key, (784, 100)), np.float64)
    theirs = np.asarray(jinit.xavier_normal()(key, (784, 100)), np.float64)
    assert round(ours.std(), 4) == 0.0358 and round(theirs.std(), 4) == 0.0477
    assert abs(ours.std() / math.sqrt(1 / 784) - 1) < 0.01
    assert abs(theirs.std() / math.sqrt(2 / 884) - 1) < 0.01
    assert np.abs(theirs).max() < 2.28 * math.sqrt(2 / 884)
    assert np.abs(ours).max() > 3.5 * math.sqrt(1 / 784)
    # and the jax call that gives ours, bit for bit up to rounding
    np.testing.assert_allclose(
        ours, jinit.variance_scaling(1.0, "fan_in", "normal")(key, (784, 100)), rtol=1e-6
    )


# =============================================================================
# Bad arguments: ValueErrors naming the value, at the call, before jax
# =============================================================================

FACTORIES = {
    "normal": pl.normal,
    "xavier_normal": pl.xavier_normal,
    "xavier_uniform": pl.xavier_uniform,
    "he_normal": pl.he_normal,
    "he_uniform": pl.he_uniform,
    "variance_scaling": lambda: pl.variance_scaling(1.0),
}


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize(
    "shape",
    [(3.5, 2), (-1, 3), (True, 3), (2, None), "ab", None, 2.5, (np.float32(2), 3)],
    ids=["float", "negative", "bool", "None-dim", "str", "None", "scalar-float", "np-float"],
)
def test_bad_shapes_are_value_errors_naming_the_shape(name, shape):
    init = FACTORIES[name]()
    with pytest.raises(ValueError, match=r"shape must be a sequence of integers >= 0, got") as e:
        init(KEY, shape)
    assert repr(shape) in str(e.value)


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("dtype", [jnp.int32, "int8", bool, jnp.complex64, "nonsense", 3])
def test_bad_dtypes_are_value_errors_naming_the_dtype(name, dtype):
    with pytest.raises(ValueError, match=r"dtype must be a real floating-point dtype") as e:
        FACTORIES[name]()(KEY, (4, 3), dtype)
    assert repr(dtype) in str(e.value)


def test_numpy_integer_dims_and_default_float_dtype():
    w = pl.he_normal()(KEY, (np.int64(4), np.int32(3)))
    assert w.shape == (4, 3) and w.dtype == jnp.float32
    assert pl.normal()(KEY, np.int64(5)).shape == (5,)
    with jax.enable_x64(True):  # None is jax's default float dtype, as in jax
        assert pl.he_normal()(KEY, (4, 4), None).dtype == jnp.float64


@pytest.mark.parametrize("arg", ["in_axis", "out_axis", "batch_axis"])
@pytest.mark.parametrize("bad", [1.5, "a", True, [0, True], None])
def test_bad_axes_are_value_errors_at_construction(arg, bad):
    for factory in (pl.he_normal, pl.xavier_uniform, lambda **a: pl.variance_scaling(1.0, **a)):
        with pytest.raises(ValueError, match=rf"{arg} must be an axis or a sequence of axes"):
            factory(**{arg: bad})


def test_axes_that_do_not_fit_the_shape_are_value_errors_at_call():
    with pytest.raises(
        ValueError, match=r"he_normal: in_axis=2 is out of range for shape \(3, 4\)"
    ):
        pl.he_normal(in_axis=2)(KEY, (3, 4))
    with pytest.raises(ValueError, match=r"out_axis=-4 is out of range"):
        pl.variance_scaling(1.0, out_axis=-4)(KEY, (3, 4, 5))
    with pytest.raises(ValueError, match="distinct axes"):
        pl.variance_scaling(1.0, in_axis=0, out_axis=-2)(KEY, (3, 4))
    with pytest.raises(ValueError, match="distinct axes"):
        pl.xavier_normal(batch_axis=-1)(KEY, (3, 4))


@pytest.mark.parametrize(
    ("kwargs", "arg"),
    [
        (dict(scale=0.0), "scale"),
        (dict(scale=-1.0), "scale"),
        (dict(scale=float("nan")), "scale"),
        (dict(scale=float("inf")), "scale"),
        (dict(scale="1"), "scale"),
        (dict(scale=True), "scale"),
        (dict(scale=10**400), "scale"),
        (dict(scale=1.0, mode="fan"), "mode"),
        (dict(scale=1.0, mode="in"), "mode"),
        (dict(scale=1.0, mode=None), "mode"),
        (dict(scale=1.0, distribution="gaussian"), "distribution"),
        (dict(scale=1.0, distribution="Normal"), "distribution"),
    ],
)
def test_variance_scaling_bad_arguments(kwargs, arg):
    with pytest.raises(ValueError, match=rf"^{arg} must"):
        pl.variance_scaling(**kwargs)


def test_factories_are_memoized_and_unhashable_axes_still_work():
    assert pl.he_normal() is pl.he_normal()
    assert pl.variance_scaling(2.0, "fan_in") is pl.variance_scaling(2.0, "fan_in")
    assert pl.xavier_normal(fan="avg") is not pl.xavier_normal()
    init = pl.he_normal(in_axis=[1], out_axis=[0])  # lists: a fresh object
    assert init is not pl.he_normal(in_axis=[1], out_axis=[0])
    np.testing.assert_allclose(
        init(KEY, (32, 16, 3, 3)), pl.he_normal(in_axis=1, out_axis=0)(KEY, (32, 16, 3, 3))
    )


def test_flax_nnx_modules_take_them_as_kernel_init():
    rngs = nnx.Rngs(params=0)
    dense = nnx.Linear(784, 100, kernel_init=pl.xavier_normal(), rngs=rngs)
    kernel = np.asarray(dense.kernel[...], np.float64)
    assert kernel.shape == (784, 100)
    assert abs(kernel.std() / math.sqrt(1 / 784) - 1) < 0.02
    conv = nnx.Conv(
        16, 32, (3, 3), kernel_init=pl.he_uniform(), param_dtype=jnp.bfloat16, rngs=rngs
    )
    kernel = conv.kernel[...]
    assert kernel.shape == (3, 3, 16, 32) and kernel.dtype == jnp.bfloat16
    kernel = np.asarray(kernel, np.float64)
    assert np.abs(kernel).max() <= math.sqrt(6 / 144) * 1.01
    assert abs(kernel.var() / (2 / 144) - 1) < 0.1  # 4608 draws
