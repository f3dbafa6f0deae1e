"""Registry entries: optimizers, initializers, normalization, regularization."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from hypothesis import strategies as st

import purelearn as pl
from fuzz import strategies as S
from fuzz.registry import MISSING, Call, bad, c, entry, f64

P = "purelearn."

# -- optimizers: optax is the oracle (NumPy in float64 for AdaGrad and RMSProp) ---------

_SHAPES = S.shapes(min_dims=0, max_dims=2, min_side=0, max_side=3)


@st.composite
def _params_grads(draw, *, bound: float = 1e3):
    """A params dict of float32 leaves (scalars and 0-size included) and three
    steps of gradients."""
    shp = draw(st.lists(_SHAPES, min_size=1, max_size=2))
    params = {f"w{i}": draw(S.float_arrays(s, bound=bound)) for i, s in enumerate(shp)}
    grads = [
        {k: draw(S.float_arrays(v.shape, bound=bound)) for k, v in params.items()} for _ in range(3)
    ]
    return params, grads


def _run(opt: optax.GradientTransformation, params: Any, grads: list) -> tuple[list, Any]:
    state = opt.init(params)
    outs = []
    for g in grads:
        updates, state = opt.update(g, state, params)
        params = optax.apply_updates(params, updates)
        outs.append(updates)
    return outs, state


def _optax_oracle(reference):
    def check(call: Call, opt: Any) -> None:
        assert isinstance(opt, optax.GradientTransformation)
        params, grads = call.extra["params"], call.extra["grads"]
        got, state = _run(opt, params, grads)
        want, _ = _run(reference(**call.kwargs), params, grads)
        n = len(jax.tree.leaves(params))
        for i, (u, v) in enumerate(zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True)):
            # updates keep the params' dtype (optax may promote to a hyperparameter's)
            assert u.dtype == jax.tree.leaves(params)[i % n].dtype
            np.testing.assert_allclose(f64(u), f64(v), rtol=2e-5, atol=1e-6)
        assert all(np.isfinite(f64(a)).all() for a in jax.tree.leaves(state))

    return check


def _numpy_oracle(rule):
    """``rule(h, g, **hp) -> (h, update)`` in float64, from the textbook's equations."""

    def check(call: Call, opt: Any) -> None:
        params, grads = call.extra["params"], call.extra["grads"]
        got, _ = _run(opt, params, grads)
        hp = {k: float(v) for k, v in call.kwargs.items()}
        for name in params:
            h = np.zeros(params[name].shape)
            for step, g in enumerate(grads):
                h, u = rule(h, f64(g[name]), **hp)
                np.testing.assert_allclose(f64(got[step][name]), u, rtol=2e-4, atol=1e-6)

    return check


def _adagrad(h, g, learning_rate=0.01, eps=1e-7):
    h = h + g * g
    return h, -learning_rate * g / (np.sqrt(h) + eps)


def _rmsprop(h, g, learning_rate=0.01, decay=0.99, eps=1e-7):
    h = decay * h + (1 - decay) * g * g
    return h, -learning_rate * g / (np.sqrt(h) + eps)


def _opt_strategy(hps: dict[str, st.SearchStrategy]) -> st.SearchStrategy[Call]:
    @st.composite
    def draw(d):
        params, grads = d(_params_grads())
        return Call({k: d(v) for k, v in hps.items()}, extra={"params": params, "grads": grads})

    return draw()


LR = S.hyperparameters(0.0, 1.0)
LR_PLAIN = st.floats(0.0, 1.0)
LR_CONST = LR_PLAIN | LR_PLAIN.map(np.float32) | LR_PLAIN.map(lambda v: jnp.asarray(v))
DECAY = st.floats(0.0, 0.999)
EPS = st.floats(1e-8, 1e-2)
BAD_RATE = S.bad_numbers()
BAD_DECAY = [-0.1, 1.0, 1.5, math.nan, math.inf, True, "0.9", None, np.array([0.9, 0.9])]

OPTIMIZERS = {
    "sgd": ({"learning_rate": LR}, lambda learning_rate: optax.sgd(learning_rate)),
    # optax's momentum scales the whole trace by the current rate, the textbook's each
    # step's gradient by its own rate: equal for constant rates, not for schedules
    "momentum": (
        {"learning_rate": LR_CONST, "momentum": DECAY},
        lambda learning_rate, momentum: optax.sgd(learning_rate, momentum),
    ),
    "nesterov": (
        {"learning_rate": LR_CONST, "momentum": DECAY},
        lambda learning_rate, momentum: optax.sgd(learning_rate, momentum, nesterov=True),
    ),
    "adam": (
        {"learning_rate": LR, "b1": DECAY, "b2": DECAY, "eps": EPS},
        lambda **kw: optax.adam(**kw),
    ),
    "adamw": (
        {"learning_rate": LR, "b1": DECAY, "b2": DECAY, "eps": EPS, "weight_decay": LR_PLAIN},
        lambda **kw: optax.adamw(**kw),
    ),
}
for _name, (_hps, _ref) in OPTIMIZERS.items():
    _base = _opt_strategy(_hps)
    _bads = {k: (BAD_DECAY if k in ("momentum", "b1", "b2") else BAD_RATE) for k in _hps}
    entry(
        f"{P}optimizers.{_name}",
        valid=_base,
        invalid=bad(_base, **_bads),
        oracle=_optax_oracle(_ref),
    )

for _name, _hps, _rule in [
    ("adagrad", {"learning_rate": LR_PLAIN, "eps": EPS}, _adagrad),
    ("rmsprop", {"learning_rate": LR_PLAIN, "decay": DECAY, "eps": EPS}, _rmsprop),
]:
    _base = _opt_strategy(_hps)
    _bads = {k: (BAD_DECAY if k == "decay" else BAD_RATE) for k in _hps}
    entry(
        f"{P}optimizers.{_name}",
        valid=_base,
        invalid=bad(_base, **_bads),
        oracle=_numpy_oracle(_rule),
    )


# The optimizers' state records: NamedTuples of arrays; a missing field is a TypeError
# naming it (Python's own), and the record round-trips through a pytree.
def _record(cls, **fields: st.SearchStrategy) -> None:
    base = st.fixed_dictionaries(fields).map(lambda kw: Call(kw))

    def oracle(call: Call, rec: Any) -> None:
        assert type(rec) is cls
        back = jax.tree.unflatten(jax.tree.structure(rec), jax.tree.leaves(rec))
        assert type(back) is cls and jax.tree.structure(back) == jax.tree.structure(rec)
        for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(rec), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    entry(
        f"{cls.__module__}.{cls.__qualname__}",
        valid=base,
        invalid=bad(base, **{f: [MISSING] for f in fields}),
        oracle=oracle,
        finite=False,
        weight=0.5,
    )


_COUNT = st.integers(0, 100).map(lambda n: jnp.asarray(n, jnp.int32))
_TREE = S.pytrees(max_leaves=3)
_record(pl.optimizers.SgdState, count=_COUNT)
_record(pl.optimizers.MomentumState, count=_COUNT, velocity=_TREE)
_record(pl.optimizers.AdaGradState, count=_COUNT, sum_of_squares=_TREE)
_record(pl.optimizers.RMSPropState, count=_COUNT, mean_square=_TREE)
_record(pl.optimizers.AdamState, count=_COUNT, mu=_TREE, nu=_TREE)


# -- initializers: jax.nn.initializers with the same key is the oracle -----------------

_KERNEL = S.shapes(min_dims=2, max_dims=3, min_side=1, max_side=3)
_INIT_DTYPES = st.sampled_from([jnp.float32, jnp.bfloat16, jnp.float16])


def _init_oracle(reference):
    def check(call: Call, init: Any) -> None:
        key, shape, dtype = call.extra["key"], call.extra["shape"], call.extra["dtype"]
        got = init(key, shape, dtype)
        assert got.shape == shape and got.dtype == dtype
        want = reference(**call.kwargs)(key, shape, dtype)
        np.testing.assert_allclose(f64(got), f64(want), rtol=1e-2, atol=1e-3)
        assert np.isfinite(f64(got)).all()

    return check


def _init_calls(**kw: st.SearchStrategy) -> st.SearchStrategy[Call]:
    return st.builds(
        lambda kwargs, seed, shape, dtype: Call(
            kwargs, extra={"key": jax.random.key(seed), "shape": shape, "dtype": dtype}
        ),
        st.fixed_dictionaries(kw),
        st.integers(0, 2**32 - 1),
        _KERNEL,
        _INIT_DTYPES,
    )


_FAN = st.sampled_from(["in", "avg"])
_MODES = {"in": "fan_in", "avg": "fan_avg"}
_BAD_FAN = ["out", "IN", "", None, 1, True]
_BAD_AXIS = ["x", 1.5, True, None, (0, "a")]
for _name, _kw, _ref, _bads in [
    (
        "normal",
        {"stddev": st.floats(0.0, 10.0)},
        lambda stddev: jax.nn.initializers.normal(stddev),
        {"stddev": S.bad_numbers()},
    ),
    (
        "xavier_normal",
        {"fan": _FAN},
        lambda fan: jax.nn.initializers.variance_scaling(1.0, _MODES[fan], "normal"),
        {"fan": _BAD_FAN, "in_axis": _BAD_AXIS},
    ),
    (
        "xavier_uniform",
        {"fan": _FAN},
        lambda fan: jax.nn.initializers.variance_scaling(1.0, _MODES[fan], "uniform"),
        {"fan": _BAD_FAN, "out_axis": _BAD_AXIS},
    ),
    (
        "he_normal",
        {},
        lambda: jax.nn.initializers.variance_scaling(2.0, "fan_in", "normal"),
        {"in_axis": _BAD_AXIS, "batch_axis": _BAD_AXIS},
    ),
    ("he_uniform", {}, lambda: jax.nn.initializers.he_uniform(), {"out_axis": _BAD_AXIS}),
    (
        "variance_scaling",
        {
            "scale": st.floats(1e-3, 10.0),
            "mode": st.sampled_from(["fan_in", "fan_out", "fan_avg"]),
            "distribution": st.sampled_from(["normal", "uniform", "truncated_normal"]),
        },
        lambda **kw: jax.nn.initializers.variance_scaling(**kw),
        {
            "scale": S.bad_numbers(allow_zero=False),
            "mode": ["fan", "in", None, 0],
            "distribution": ["gauss", None, 1],
        },
    ),
]:
    _base = _init_calls(**_kw)
    entry(
        f"{P}initializers.{_name}",
        valid=_base,
        invalid=bad(_base, **_bads),
        oracle=_init_oracle(_ref),
        weight=0.5,  # every kernel shape and dtype is a compile
    )


def _fans_oracle(call: Call, got: Any) -> None:
    shape = call.kwargs["shape"]
    receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    assert got == (shape[-2] * receptive, shape[-1] * receptive)


_fans = st.builds(lambda s: c(shape=s), _KERNEL)
entry(
    f"{P}initializers.compute_fans",
    valid=_fans,
    oracle=_fans_oracle,
    invalid=bad(
        _fans,
        shape=[(), (3,), "ab", None, (2, -1), (2.5, 3)],
        in_axis=[*_BAD_AXIS, 7],
    ),
)
entry(f"{P}initializers.Initializer", alias=True)


# -- normalization: float64 NumPy references of the textbook's equations ------------------

_X = S.float_arrays(
    S.shapes(min_dims=2, max_dims=4, min_side=1, max_side=4),
    dtypes=(np.float32, np.float64, jnp.bfloat16, np.float16),
    bound=1e2,
)
_NOT_ARRAY = ["x", None, [[1.0, "a"]], {"x": 1}]
_BAD_EPS = [-1e-5, math.nan, math.inf, "1e-5", None, True, np.array([1e-5, 1e-5])]


def _np_norm(x: np.ndarray, axes: tuple[int, ...], eps: float) -> np.ndarray:
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(var + eps)


def _tol(x: Any) -> float:
    return {2: 2e-2}.get(np.dtype(x.dtype).itemsize, 2e-3)


def _close_to(got: Any, want: np.ndarray, x: Any) -> None:
    got64 = f64(got)
    dtype = jnp.asarray(x).dtype
    # integer inputs normalize in float32 (the statistics of integers are not integers)
    want_dtype = dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.float32
    assert got.dtype == want_dtype, (got.dtype, x.dtype)
    assert np.isfinite(got64).all()
    # a low-precision input's rounding moves the result by its own ulp over the spread
    np.testing.assert_allclose(got64, want, rtol=_tol(x), atol=_tol(x) * 4)


def _layer_oracle(call: Call, y: Any) -> None:
    x, eps = f64(call.kwargs["x"]), call.kwargs["eps"]
    _close_to(y, _np_norm(x, (x.ndim - 1,), eps), call.kwargs["x"])


_layer = st.builds(lambda x, eps: c(x=x, eps=eps), _X, st.floats(1e-3, 1.0))
entry(
    f"{P}normalization.layer_norm",
    valid=_layer,
    oracle=_layer_oracle,
    invalid=bad(
        _layer,
        x=_NOT_ARRAY,
        eps=_BAD_EPS,
        axis=[5, -9, 1.0, "a", (1, 1), True],
        scale=[np.ones(99, np.float32), "s"],
    ),
    traced=("x",),
)


def _instance_oracle(call: Call, y: Any) -> None:
    x, eps = f64(call.kwargs["x"]), call.kwargs["eps"]
    want = _np_norm(x, tuple(range(1, x.ndim - 1)), eps)
    _close_to(y, want, call.kwargs["x"])


_X3 = S.float_arrays(
    S.shapes(min_dims=3, max_dims=4, min_side=1, max_side=3),
    dtypes=(np.float32, np.float64, jnp.bfloat16, np.float16),
    bound=1e2,
)
_inst = st.builds(lambda x, eps: c(x=x, eps=eps), _X3, st.floats(1e-3, 1.0))
entry(
    f"{P}normalization.instance_norm",
    valid=_inst,
    oracle=_instance_oracle,
    invalid=bad(_inst, x=_NOT_ARRAY, eps=_BAD_EPS, channel_axis=[9, "c", 1.5, None, True]),
    traced=("x",),
)


@st.composite
def _group_calls(d):
    groups = d(st.integers(1, 3))
    per = d(st.integers(1, 2))
    spatial = d(st.lists(st.integers(1, 3), max_size=2))
    x = d(S.float_arrays((2, *spatial, groups * per), bound=1e2))
    return c(x=x, num_groups=groups, eps=d(st.floats(1e-3, 1.0)))


def _group_oracle(call: Call, y: Any) -> None:
    x, g, eps = f64(call.kwargs["x"]), call.kwargs["num_groups"], call.kwargs["eps"]
    xs = x.reshape(*x.shape[:-1], g, x.shape[-1] // g)
    axes = (*range(1, xs.ndim - 2), xs.ndim - 1)
    _close_to(y, _np_norm(xs, axes, eps).reshape(x.shape), call.kwargs["x"])


_group = _group_calls()
entry(
    f"{P}normalization.group_norm",
    valid=_group,
    oracle=_group_oracle,
    invalid=bad(
        _group,
        num_groups=[0, -2, 1.5, "2", None, True, 7],
        eps=_BAD_EPS,
        x=_NOT_ARRAY,
    ),
    traced=("x",),
)


@st.composite
def _bn_calls(d):
    x = d(S.float_arrays(S.shapes(min_dims=2, max_dims=3, min_side=1, max_side=4), bound=1e2))
    f = x.shape[-1]
    stats = pl.BatchNormStats(
        d(S.float_arrays((f,), bound=10)), d(S.float_arrays((f,), bound=10)).__abs__() + 0.5
    )
    return c(
        x=x,
        scale=None,
        bias=None,
        stats=stats,
        train=d(st.booleans()),
        momentum=d(st.floats(0.0, 1.0)),
        eps=d(st.floats(1e-3, 1.0)),
    )


def _bn_oracle(call: Call, out: Any) -> None:
    y, new = out
    kw = call.kwargs
    x, eps, m = f64(kw["x"]), kw["eps"], kw["momentum"]
    axes = tuple(range(x.ndim - 1))
    if kw["train"]:
        want = _np_norm(x, axes, eps)
        mean, var = x.mean(axis=axes), x.var(axis=axes)
        np.testing.assert_allclose(
            f64(new.mean), m * f64(kw["stats"].mean) + (1 - m) * mean, rtol=1e-4, atol=1e-4
        )
        assert np.isfinite(f64(new.var)).all() and (f64(new.var) >= 0).all()
        del var
    else:
        want = (x - f64(kw["stats"].mean)) / np.sqrt(f64(kw["stats"].var) + eps)
    _close_to(y, want, kw["x"])


_bn = _bn_calls()
entry(
    f"{P}normalization.batch_norm",
    valid=_bn,
    oracle=_bn_oracle,
    invalid=bad(
        _bn,
        train=["yes", 1, None, np.array([True, False])],
        momentum=[-0.1, 1.5, math.nan, "0.9", None],
        eps=_BAD_EPS,
        stats=[None, (np.zeros(3),), "stats"],
        x=_NOT_ARRAY,
        axis=[7, "a", 1.5],
    ),
    traced=("x",),
    # fixed beside this suite: an integer x normalizes in float32 (it failed inside jax)
    regressions=(
        c(
            x=np.arange(6, dtype=np.int32).reshape(2, 3),
            scale=None,
            bias=None,
            stats=pl.BatchNormStats.init(3),
            train=True,
            momentum=0.9,
            eps=1e-5,
        ),
    ),
)


def _stats_oracle(call: Call, s: Any) -> None:
    assert isinstance(s, pl.BatchNormStats)


_stats = st.builds(
    lambda m, v: c(mean=m, var=v), S.float_arrays((3,)), S.float_arrays((3,)).map(np.abs)
)
entry(
    f"{P}normalization.BatchNormStats",
    valid=_stats,
    oracle=_stats_oracle,
    invalid=bad(_stats, mean=[MISSING], var=[MISSING]),
)


# -- regularization ------------------------------------------------------------------


@st.composite
def _dropout_calls(d):
    x = d(S.float_arrays(S.shapes(max_dims=3), dtypes=S.FLOAT_DTYPES, bound=1e3))
    rate = d(st.floats(0.0, 1.0) | st.sampled_from([0.0, 1.0, 0.5]))
    call = c(key=d(S.keys()), x=x, rate=rate, deterministic=d(st.booleans()))
    if x.ndim and d(st.booleans()):
        call = call.replace("broadcast_dims", (d(st.integers(0, x.ndim - 1)),))
        call = Call(call.kwargs)
    if d(st.booleans()):
        call = Call({**call.kwargs, "scale": d(st.sampled_from(["inverted", "textbook"]))})
    return call


def _dropout_oracle(call: Call, y: Any) -> None:
    kw = call.kwargs
    x, rate = jnp.asarray(kw["x"]), kw["rate"]
    x64, y64 = f64(x), f64(y)
    assert y.shape == x.shape and y.dtype == x.dtype
    scale = kw.get("scale", "inverted")
    if kw["deterministic"]:
        want = x64 if scale == "inverted" else f64(x * jnp.asarray(1 - rate, x.dtype))
        np.testing.assert_allclose(y64, want, rtol=1e-2)
        return
    if rate == 1.0:
        assert (y64 == 0).all()
        return
    kept = f64(x / jnp.asarray(1 - rate, x.dtype)) if scale == "inverted" else x64
    # every unit is dropped (0) or kept (scaled): never anything else
    ok = (y64 == 0) | np.isclose(y64, kept, rtol=1e-2, atol=0)
    assert ok.all()


_drop = _dropout_calls()
entry(
    f"{P}regularization.dropout",
    valid=_drop,
    oracle=_dropout_oracle,
    finite=False,  # x / (1 - rate) overflows float16 near rate 1: documented scaling
    invalid=bad(
        _drop,
        key=S.bad_keys().filter(lambda k: k is not None),  # None: fine at rate 0
        rate=[-0.1, 1.5, math.nan, math.inf, "0.5", None, True, np.array([0.5, 0.5])],
        deterministic=["no", 1, None],
        scale=["book", None, 1],
        x=_NOT_ARRAY,
        broadcast_dims=[1.5, "0", (0, 0), 9],
    ),
    # fixed beside this suite: broadcast_dims=1 (an int, not a tuple of axes)
    regressions=(
        c(key=0, x=np.ones((2, 3), np.float32), rate=0.5, deterministic=False).replace(
            "broadcast_dims", 1
        ),
    ),
    traced=("x",),
)


@st.composite
def _l2_calls(d):
    params = d(S.pytrees(max_leaves=4))
    return c(params=params, weight_decay=d(st.floats(0.0, 10.0)))


def _l2_oracle(call: Call, got: Any) -> None:
    leaves = [f64(leaf) for leaf in jax.tree.leaves(call.kwargs["params"]) if np.ndim(leaf) >= 2]
    want = 0.5 * call.kwargs["weight_decay"] * sum(float((w**2).sum()) for w in leaves)
    np.testing.assert_allclose(f64(got), want, rtol=1e-3, atol=1e-5)


_l2 = _l2_calls()
entry(
    f"{P}regularization.l2_penalty",
    valid=_l2,
    oracle=_l2_oracle,
    finite=False,  # squares of 1e3-sized leaves stay finite; the oracle checks the value
    invalid=bad(
        _l2,
        weight_decay=[-1.0, math.nan, math.inf, "0.1", None, True],
        mask=[("a",), 3, "mask"],
    ),
)
