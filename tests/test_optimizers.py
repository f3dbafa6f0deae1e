"""Tests for ``purelearn.optimizers``.

The optimizers are held against three things:

* a NumPy reference written from the textbook's in-place classes (dicts of arrays
  mutated by ``update(params, grads)``), with the module's documented rules
  where a note's code and its equations disagree (Nesterov's form, eps outside
  the root, Adam's bias-corrected paper form);
* optax's own ``sgd``, ``sgd(momentum=)``, ``sgd(nesterov=True)``,
  ``rmsprop(eps_in_sqrt=False)``, ``adam`` and ``adamw``, in mixed precision and
  on complex parameters too;
* the optax wrappers they must compose with (``chain``, ``inject_hyperparams``,
  ``MultiSteps``, ``masked``, ``apply_if_finite``), under ``jit`` and without.

Measured deviations are printed as ``[deviation] ...`` lines (run with ``-s``).
XLA compilation dominates the run time on CPU, so trajectories feed NumPy-computed
gradients to a jitted ``update`` (one compilation per optimizer), and tests where
jit is not the point run eagerly.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable
from functools import partial
from typing import Any

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import purelearn as pl

NAMES = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw")
ALL = pytest.mark.parametrize("name", NAMES)
JIT = pytest.mark.parametrize("jit", [True, False], ids=["jit", "nojit"])
# Every optimizer under jit, and without jit adamw (two buffers and the params
# path): eagerly, optax's MultiSteps and apply_if_finite re-trace and re-compile
# their lax.cond branches on every call, which costs about a second each.
NAME_JIT_SUBSET = pytest.mark.parametrize(
    ("name", "jit"),
    [(n, True) for n in NAMES] + [("adamw", False)],
    ids=[f"jit-{n}" for n in NAMES] + ["nojit-adamw"],
)


def _maybe_jit(fn: Callable, jit: bool) -> Callable:
    return jax.jit(fn) if jit else fn


# =============================================================================
# The NumPy reference: the textbook's classes, mutating dicts of arrays in place
# =============================================================================
#
# Every scalar hyperparameter may also be a function of the number of updates
# already made (0 on the first update): that is how an optax schedule is read.


def _at(value: Any, count: int) -> float:
    return float(value(count)) if callable(value) else value


def _abs2(g: np.ndarray) -> np.ndarray:
    """|g|**2: g*g for real arrays (bit for bit), g*conj(g) for complex ones."""
    return (g * np.conj(g)).real


class SGD:
    def __init__(self, lr=0.01):
        self.lr = lr
        self.iter = 0

    def update(self, params, grads):
        lr = _at(self.lr, self.iter)
        for key in params.keys():
            params[key] -= lr * grads[key]
        self.iter += 1


class Momentum:
    def __init__(self, lr=0.01, momentum=0.9):
        self.lr = lr
        self.momentum = momentum
        self.v = None
        self.iter = 0

    def update(self, params, grads):
        if self.v is None:
            self.v = {key: np.zeros_like(val) for key, val in params.items()}
        lr, a = _at(self.lr, self.iter), _at(self.momentum, self.iter)
        for key in params.keys():
            self.v[key] = a * self.v[key] - lr * grads[key]
            params[key] += self.v[key]
        self.iter += 1


class Nesterov:
    # DESIGN.md's form, where the step uses the *old* velocity:
    #   w += a*a*v - (1+a)*lr*g ; v = a*v - lr*g
    def __init__(self, lr=0.01, momentum=0.9):
        self.lr = lr
        self.momentum = momentum
        self.v = None
        self.iter = 0

    def update(self, params, grads):
        if self.v is None:
            self.v = {key: np.zeros_like(val) for key, val in params.items()}
        lr, a = _at(self.lr, self.iter), _at(self.momentum, self.iter)
        for key in params.keys():
            params[key] += a * a * self.v[key]
            params[key] -= (1 + a) * lr * grads[key]
            self.v[key] *= a
            self.v[key] -= lr * grads[key]
        self.iter += 1


class AdaGrad:
    def __init__(self, lr=0.01, eps=1e-7):
        self.lr = lr
        self.eps = eps
        self.h = None
        self.iter = 0

    def update(self, params, grads):
        if self.h is None:
            self.h = {key: np.zeros_like(val) for key, val in params.items()}
        lr, eps = _at(self.lr, self.iter), _at(self.eps, self.iter)
        for key in params.keys():
            self.h[key] += _abs2(grads[key])
            params[key] -= lr * grads[key] / (np.sqrt(self.h[key]) + eps)
        self.iter += 1


class RMSprop:
    def __init__(self, lr=0.01, decay_rate=0.99, eps=1e-7):
        self.lr = lr
        self.decay_rate = decay_rate
        self.eps = eps
        self.h = None
        self.iter = 0

    def update(self, params, grads):
        if self.h is None:
            self.h = {key: np.zeros_like(val) for key, val in params.items()}
        lr, d = _at(self.lr, self.iter), _at(self.decay_rate, self.iter)
        eps = _at(self.eps, self.iter)
        for key in params.keys():
            self.h[key] *= d
            self.h[key] += (1 - d) * _abs2(grads[key])
            params[key] -= lr * grads[key] / (np.sqrt(self.h[key]) + eps)
        self.iter += 1


class Adam:
    # The paper's form: bias-corrected m and v, eps outside the root.
    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999, eps=1e-8):
        self.lr = lr
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
        self.iter = 0
        self.m = None
        self.v = None

    def _start(self, params):
        if self.m is None:
            self.m = {key: np.zeros_like(val) for key, val in params.items()}
            self.v = {key: np.zeros_like(val) for key, val in params.items()}
        hp = [_at(h, self.iter) for h in (self.lr, self.beta1, self.beta2, self.eps)]
        self.iter += 1
        return (*hp, self.iter)

    def _direction(self, key, grad, b1, b2, eps, t):
        self.m[key] += (1 - b1) * (grad - self.m[key])
        self.v[key] += (1 - b2) * (_abs2(grad) - self.v[key])
        m_hat = self.m[key] / (1 - b1**t)
        v_hat = self.v[key] / (1 - b2**t)
        return m_hat / (np.sqrt(v_hat) + eps)

    def update(self, params, grads):
        lr, b1, b2, eps, t = self._start(params)
        for key in params.keys():
            params[key] -= lr * self._direction(key, grads[key], b1, b2, eps, t)


class AdamW(Adam):
    # optax.adamw: w -= lr * (m_hat / (sqrt(v_hat) + eps) + wd * w), the decay on
    # every leaf unless ``mask`` ({key: bool}) says otherwise.
    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=1e-4, mask=None):
        super().__init__(lr, beta1, beta2, eps)
        self.weight_decay = weight_decay
        self.mask = mask

    def update(self, params, grads):
        wd = _at(self.weight_decay, self.iter)
        lr, b1, b2, eps, t = self._start(params)
        for key in params.keys():
            step = self._direction(key, grads[key], b1, b2, eps, t)
            if self.mask is None or self.mask[key]:
                step = step + wd * params[key]
            params[key] -= lr * step


REFERENCE = {
    "sgd": SGD,
    "momentum": Momentum,
    "nesterov": Nesterov,
    "adagrad": AdaGrad,
    "rmsprop": RMSprop,
    "adam": Adam,
    "adamw": AdamW,
}
# purelearn's argument names -> the textbook's
_TEXTBOOK_NAMES = {"learning_rate": "lr", "b1": "beta1", "b2": "beta2", "decay": "decay_rate"}


def reference(name: str, **pl_kwargs):
    """The NumPy reference optimizer ``name``, built from purelearn's keyword names."""
    return REFERENCE[name](**{_TEXTBOOK_NAMES.get(k, k): v for k, v in pl_kwargs.items()})


def numpy_clip_by_global_norm(grads: dict, max_norm: float) -> dict:
    norm = math.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))
    if norm < max_norm:
        return dict(grads)
    return {k: g / norm * max_norm for k, g in grads.items()}


# =============================================================================
# Pytrees <-> flat dicts, the problem, and comparisons
# =============================================================================


def flatten(tree: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """A nested dict/list/tuple of arrays as a flat ``{path: float64 ndarray}`` dict,
    in ``jax.tree.leaves`` order. An already flat dict is returned as is."""
    if not prefix and isinstance(tree, dict) and tree and all(k[:1] in "/[" for k in tree):
        return {k: np.array(v, dtype=np.float64) for k, v in tree.items()}
    if isinstance(tree, dict):
        out = {}
        for k in sorted(tree):
            out.update(flatten(tree[k], f"{prefix}/{k}"))
        return out
    if isinstance(tree, (list, tuple)):
        out = {}
        for i, sub in enumerate(tree):
            out.update(flatten(sub, f"{prefix}[{i}]"))
        return out
    return {prefix: np.array(tree, dtype=np.float64)}


def unflatten_like(tree: Any, flat: dict[str, np.ndarray]) -> Any:
    """The inverse of :func:`flatten`, with ``tree``'s structure and dtypes."""
    leaves, treedef = jax.tree.flatten(tree)
    values = list(flat.values())
    assert [np.shape(v) for v in values] == [np.shape(x) for x in leaves]
    return treedef.unflatten([jnp.asarray(v, x.dtype) for v, x in zip(values, leaves, strict=True)])


def make_params(dtype=np.float32) -> dict:
    """Dicts, lists and tuples of arrays of various shapes, including a scalar."""
    rng = np.random.default_rng(0)

    def arr(*shape):
        return jnp.asarray(rng.normal(size=shape), dtype)

    return {
        "layers": [{"w": arr(3, 4), "b": arr(4)}, {"w": arr(3, 4)}],
        "scale": arr(),
        "extra": (arr(2, 2, 2),),
    }


def wrap_params() -> dict:
    """A smaller nested tree (dict, list, scalar) for the many wrapper tests."""
    # (the same leaf shapes as make_params': eager ops compile once per shape)
    return {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "rest": [jnp.ones(4), jnp.float32(0.5)]}


def _like_params(seed: int, low: float, high: float) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = {**flatten(make_params()), **flatten(wrap_params())}  # distinct paths
    return {k: rng.uniform(low, high, size=v.shape) for k, v in shapes.items()}


# The loss  sum(s * (log cosh(w - c) + 0.025 * w**4)): smooth, convex, not quadratic,
# with a per-element minimum position c and curvature scale s (for both trees).
TARGET = _like_params(1, -2.0, 2.0)
SCALE = _like_params(2, 0.2, 3.0)


def numpy_grad(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The loss's gradient, derived by hand, in NumPy."""
    return {k: SCALE[k] * (np.tanh(w - TARGET[k]) + 0.1 * w**3) for k, w in flat.items()}


def jax_grad(params: Any) -> Any:
    """The same gradient in JAX (for runs that live inside ``jit``/``vmap``)."""
    keys = flatten(params).keys()
    target = unflatten_like(params, {k: TARGET[k] for k in keys})
    scale = unflatten_like(params, {k: SCALE[k] for k in keys})
    return jax.tree.map(lambda w, c, s: s * (jnp.tanh(w - c) + 0.1 * w**3), params, target, scale)


def run_reference(ref, params: Any, steps: int) -> dict[str, np.ndarray]:
    flat = flatten(params)
    for _ in range(steps):
        ref.update(flat, numpy_grad(flat))
    return flat


def run_purelearn(opt, params: Any, steps: int, *, jit: bool = True) -> Any:
    """``steps`` updates of ``opt`` on the loss, gradients computed in NumPy."""
    update = _maybe_jit(opt.update, jit)
    state = opt.init(params)
    for _ in range(steps):
        grads = unflatten_like(params, numpy_grad(flatten(params)))
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params


def random_grads(params: Any, steps: int, seed: int = 0, scales=None) -> list:
    """A fixed sequence of random gradients shaped like ``params``."""
    rng = np.random.default_rng(seed)
    out = []
    for t in range(steps):
        s = 1.0 if scales is None else scales[t % len(scales)]
        out.append(
            jax.tree.map(lambda p, s=s: jnp.asarray(s * rng.normal(size=p.shape), p.dtype), params)
        )
    return out


def apply_sequence(opt, params, grads_seq, *, jit: bool):
    """Run ``opt`` on a fixed gradient sequence: (final params, state, all updates)."""
    update = _maybe_jit(opt.update, jit)
    state, updates_seen = opt.init(params), []
    for g in grads_seq:
        updates, state = update(g, state, params)
        updates_seen.append(updates)
        params = optax.apply_updates(params, updates)
    return params, state, updates_seen


def deviation(actual: Any, expected: Any) -> tuple[float, float]:
    """(relative, absolute) deviation of two pytrees (or flat dicts) of arrays.

    relative: the largest over leaves of ``max|a - e| / max|e|`` (normwise, so an
    element passing near zero cannot blow it up); absolute: ``max|a - e|``.
    """
    a, e = flatten(actual), flatten(expected)
    assert a.keys() == e.keys()
    rel = max(
        float(np.max(np.abs(a[k] - e[k]))) / max(float(np.max(np.abs(e[k]))), 1e-300) for k in a
    )
    return rel, max(float(np.max(np.abs(a[k] - e[k]))) for k in a)


def assert_normwise_close(actual: Any, expected: Any, *, rtol: float) -> None:
    """Per leaf, ``max|a - e| <= rtol * max|e|``."""
    a, e = flatten(actual), flatten(expected)
    assert a.keys() == e.keys()
    for k in a:
        err, scale = float(np.max(np.abs(a[k] - e[k]))), float(np.max(np.abs(e[k])))
        assert err <= rtol * scale, f"{k}: max|a - e| = {err:.3e} > {rtol:g} * {scale:.3e}"


def assert_tree_close(actual: Any, expected: Any, *, rtol: float, atol: float = 0.0) -> None:
    """Element by element, ``|a - e| <= atol + rtol * |e|``."""
    a, e = flatten(actual), flatten(expected)
    assert a.keys() == e.keys()
    for k in a:
        np.testing.assert_allclose(a[k], e[k], rtol=rtol, atol=atol, err_msg=k)


def assert_tree_equal(actual: Any, expected: Any) -> None:
    """Same structure, dtypes and bits."""
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for x, y in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def is_zero(tree: Any) -> bool:
    return all(not np.any(np.asarray(x)) for x in jax.tree.leaves(tree))


def record(kind: str, name: str, dev: tuple[float, float]) -> None:
    print(f"\n[deviation] {kind:<30} {name:<9} rel={dev[0]:.3e} abs={dev[1]:.3e}")


def test_helpers_flatten_in_jax_leaf_order():
    params = make_params()
    flat = flatten(params)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    assert len(paths) == len(flat) == 5
    assert [k.replace("/", "").replace("[", "").replace("]", "") for k in flat] == [
        re.sub(r"[\[\]'/]", "", p) for p in paths
    ]
    assert_tree_equal(unflatten_like(params, flat), params)

    # the hand-derived NumPy gradient is the loss's gradient (central differences)
    def loss(flat):
        return sum(
            np.sum(SCALE[k] * (np.log(np.cosh(w - TARGET[k])) + 0.025 * w**4))
            for k, w in flat.items()
        )

    grad, h = numpy_grad(flat), 1e-6
    for k in flat:
        for i in np.ndindex(flat[k].shape):
            up, down = copy.deepcopy(flat), copy.deepcopy(flat)
            up[k][i] += h
            down[k][i] -= h
            assert (loss(up) - loss(down)) / (2 * h) == pytest.approx(grad[k][i], abs=1e-6)
    # and the JAX version agrees with the NumPy one
    assert_tree_close(jax_grad(params), grad, rtol=1e-5, atol=1e-6)


# =============================================================================
# 1. Default hyperparameters against the NumPy reference, float64, 60 steps
# =============================================================================

STEPS = 60


@ALL
def test_defaults_match_numpy_reference_float64(name):
    with jax.enable_x64(True):
        params = make_params(np.float64)
        ours = run_purelearn(getattr(pl, name)(), params, STEPS)
        assert all(x.dtype == jnp.float64 for x in jax.tree.leaves(ours))
    ref = run_reference(REFERENCE[name](), params, STEPS)
    record("numpy-reference/float64/jit", name, deviation(ours, ref))
    assert_tree_close(ours, ref, rtol=1e-6, atol=1e-12)
    assert_normwise_close(ours, ref, rtol=1e-12)
    # The run really moved the parameters: a wrong rule could not pass by accident.
    assert deviation(ref, params)[1] > 1e-2


def test_reference_nesterov_uses_the_old_velocity():
    # Pin the reference itself on a hand-computed case: two steps with g = 1.
    ref, w = Nesterov(lr=0.1, momentum=0.5), {"w": np.array(0.0)}
    ref.update(w, {"w": np.array(1.0)})  # v = 0: w = -(1.5)(0.1); v = -0.1
    assert w["w"] == pytest.approx(-0.15)
    ref.update(w, {"w": np.array(1.0)})  # w += 0.25 * -0.1 - 0.15; v = -0.15
    assert w["w"] == pytest.approx(-0.15 - 0.025 - 0.15)
    assert ref.v["w"] == pytest.approx(-0.15)


def test_first_steps_by_hand():
    # One update from w = 1 with g = 2, every optimizer, by hand.
    w, g = jnp.array([1.0]), jnp.array([2.0])
    expected = {
        "sgd": -0.01 * 2,
        "momentum": -0.01 * 2,
        "nesterov": -(1 + 0.9) * 0.01 * 2,
        "adagrad": -0.01 * 2 / (2 + 1e-7),
        "rmsprop": -0.01 * 2 / (math.sqrt(0.01 * 4) + 1e-7),
        "adam": -0.001 * 2 / (2 + 1e-8),
        "adamw": -0.001 * (2 / (2 + 1e-8) + 1e-4 * 1.0),
    }
    for name, value in expected.items():
        opt = getattr(pl, name)()
        u, _ = opt.update(g, opt.init(w), w)
        # float32 adam: 1 - b2**1 = 1 - float32(0.999) = 0.00099998713 while the
        # moment used (1 - b2) = 0.001, so the first step is off by 6.4e-6 (as optax's)
        rtol = 1e-5 if name.startswith("adam") else 1e-6
        np.testing.assert_allclose(u, [value], rtol=rtol, err_msg=name)


# =============================================================================
# 2. The textbook's comparison on f(x, y) = x**2/20 + y**2 from (-7, 2)
# =============================================================================

SEED_CASES = [("sgd", 0.95), ("momentum", 0.1), ("adagrad", 1.5), ("adam", 0.3)]
_ADAM_F32_REASON = (
    "decide: in float32, 1 - b2**t with b2 = 0.999 loses ~3 digits (b2 rounds to 0.99900001 "
    "in the bias correction while (1 - b2) = 0.001 in the moment update), so pl.adam(0.3) ends "
    "~3e-5 (jit, bitwise optax.adam) from the exact reference after 30 steps; optax.adam does "
    "the same. Meeting 1e-5 means leaving optax's exact op order."
)


def textbook_function(p):
    return p["x"] ** 2 / 20 + p["y"] ** 2


def textbook_path(opt, dtype, steps=30):
    start = {"x": jnp.asarray(-7.0, dtype), "y": jnp.asarray(2.0, dtype)}

    @jax.jit
    def run(params):
        def step(carry, _):
            params, state = carry
            updates, state = opt.update(jax.grad(textbook_function)(params), state, params)
            return (optax.apply_updates(params, updates), state), None

        return jax.lax.scan(step, (params, opt.init(params)), None, length=steps)[0][0]

    return run(start)


def numpy_textbook_path(ref, steps=30):
    pos = {"x": np.array(-7.0), "y": np.array(2.0)}
    for _ in range(steps):
        ref.update(pos, {"x": pos["x"] / 10, "y": 2 * pos["y"]})
    return pos


@pytest.mark.parametrize(
    ("name", "lr", "dtype"),
    [(n, lr, dtype) for n, lr in SEED_CASES for dtype in ("float64", "float32")],
)
def test_textbook_function_final_position(name, lr, dtype):
    with jax.enable_x64(dtype == "float64"):
        got = textbook_path(getattr(pl, name)(lr), jnp.dtype(dtype))
        assert got["x"].dtype == jnp.dtype(dtype)
        got = {k: np.float64(v) for k, v in got.items()}
    expected = numpy_textbook_path(reference(name, learning_rate=lr))
    record(f"f(x,y) 30 steps/{dtype}", name, deviation(got, expected))
    assert textbook_function(got) < textbook_function({"x": -7.0, "y": 2.0}) / 10  # descends
    # float32 Adam carries optax's own rounding of b2 (see _ADAM_F32_REASON):
    # 3e-5 off the exact math, so it gets 1e-4; everything else meets 1e-5.
    tol = 1e-4 if (name, dtype) == ("adam", "float32") else 1e-5
    assert_tree_close(got, expected, rtol=tol, atol=tol)


def test_textbook_function_reference_values():
    # The reference on hand-checkable facts: SGD's y <- y - 0.95 * 2y = -0.9 y and
    # x <- 0.905 x; AdaGrad's first step has length lr along each axis.
    sgd = numpy_textbook_path(SGD(lr=0.95))
    assert sgd["y"] == pytest.approx(2.0 * 0.9**30)
    assert sgd["x"] == pytest.approx(-7.0 * 0.905**30)
    one = numpy_textbook_path(AdaGrad(lr=1.5), steps=1)
    assert one["x"] == pytest.approx(-7.0 + 1.5, abs=1e-6)
    assert one["y"] == pytest.approx(2.0 - 1.5, abs=1e-6)


# =============================================================================
# 3. Equal to optax's trajectories
# =============================================================================

OPTAX_CASES = {
    "sgd": (dict(learning_rate=0.05), lambda: optax.sgd(0.05)),
    "momentum": (dict(learning_rate=0.02, momentum=0.8), lambda: optax.sgd(0.02, momentum=0.8)),
    "nesterov": (
        dict(learning_rate=0.02, momentum=0.8),
        lambda: optax.sgd(0.02, momentum=0.8, nesterov=True),
    ),
    "rmsprop": (
        dict(learning_rate=0.01, decay=0.9, eps=1e-6),
        lambda: optax.rmsprop(0.01, decay=0.9, eps=1e-6, eps_in_sqrt=False),
    ),
    "adam": (
        dict(learning_rate=0.01, b1=0.8, b2=0.99, eps=1e-6),
        lambda: optax.adam(0.01, b1=0.8, b2=0.99, eps=1e-6),
    ),
    "adamw": (
        dict(learning_rate=0.01, weight_decay=0.05),
        lambda: optax.adamw(0.01, weight_decay=0.05),
    ),
}
OPTAX_DEFAULTS = {
    "sgd": lambda: optax.sgd(0.01),
    "momentum": lambda: optax.sgd(0.01, momentum=0.9),
    "nesterov": lambda: optax.sgd(0.01, momentum=0.9, nesterov=True),
    "rmsprop": lambda: optax.rmsprop(0.01, decay=0.99, eps=1e-7, eps_in_sqrt=False),
    "adam": lambda: optax.adam(0.001),
    "adamw": lambda: optax.adamw(0.001, weight_decay=1e-4),
}
# Normwise float32 tolerances. sgd/rmsprop/adam/adamw use optax's operations in
# optax's order (equal to a few ulp under jit: XLA may fuse pow differently in
# the two programs); momentum/nesterov keep v = -lr * optax's trace, which rounds
# differently, and a velocity can cancel to near zero.
F32_TRAJECTORY_RTOL = {
    "sgd": 1e-7,
    "rmsprop": 1e-6,
    "adam": 1e-6,
    "adamw": 1e-6,
    "momentum": 1e-5,
    "nesterov": 1e-5,
}
F32_UPDATE_RTOL = {
    "sgd": 1e-7,
    "rmsprop": 5e-7,
    "adam": 5e-7,
    "adamw": 5e-7,
    "momentum": 1e-5,
    "nesterov": 1e-5,
}


def _updates_deviation(ours, theirs, params, *, jit: bool, steps: int = 12) -> float:
    """The worst update-by-update deviation on one fixed random gradient sequence,
    so that no drift can hide a difference."""
    s1, s2 = ours.init(params), theirs.init(params)
    up1, up2 = _maybe_jit(ours.update, jit), _maybe_jit(theirs.update, jit)
    worst = 0.0
    for g in random_grads(params, steps, seed=3):
        u1, s1 = up1(g, s1, params)
        u2, s2 = up2(g, s2, params)
        worst = max(worst, deviation(u1, u2)[0])
    return worst


@pytest.mark.parametrize("name", sorted(OPTAX_CASES))
@pytest.mark.parametrize(
    ("dtype", "jit"),
    [("float32", True), ("float64", False)],
    ids=["float32-jit-defaults", "float64-nojit-custom"],
)
def test_matches_optax(name, dtype, jit):
    if dtype == "float32":
        kwargs, make_optax = {}, OPTAX_DEFAULTS[name]
    else:
        kwargs, make_optax = OPTAX_CASES[name]
    steps = STEPS if jit else 20
    with jax.enable_x64(dtype == "float64"):
        params = make_params(np.dtype(dtype))
        ours, theirs = getattr(pl, name)(**kwargs), make_optax()
        # the trajectories on the loss (the same NumPy gradients feed both) ...
        ours_path = run_purelearn(ours, params, steps, jit=jit)
        theirs_path = run_purelearn(theirs, params, steps, jit=jit)
        # ... and update by update on random gradients
        worst_update = _updates_deviation(ours, theirs, params, jit=jit)
    ref = run_reference(reference(name, **kwargs), params, steps)
    mode = f"{dtype}/{'jit' if jit else 'nojit'}"
    record(f"optax/{mode}", name, deviation(ours_path, theirs_path))
    record(f"optax/{mode}/per-update", name, (worst_update, float("nan")))
    record(f"numpy-reference/{mode}", name, deviation(ours_path, ref))
    if dtype == "float64":
        assert_normwise_close(ours_path, theirs_path, rtol=1e-12)
        assert worst_update <= 1e-12
    else:
        assert_normwise_close(ours_path, theirs_path, rtol=F32_TRAJECTORY_RTOL[name])
        assert worst_update <= F32_UPDATE_RTOL[name]
    # optax agrees with the reference too: the comparison is about the right thing
    assert_normwise_close(theirs_path, ref, rtol=1e-10 if dtype == "float64" else 1e-5)
    assert deviation(ref, params)[1] > 1e-2


@pytest.mark.parametrize("name", sorted(OPTAX_DEFAULTS))
def test_matches_optax_update_by_update_eagerly_float32(name):
    # Without jit, adam/adamw differ from optax by up to ~1e-5 relative per update:
    # purelearn computes the bias correction 1 - b**t eagerly, while optax's
    # optax.tree.bias_correction is always jitted, and XLA rounds the fused pow
    # differently from the eager one.
    worst = _updates_deviation(
        getattr(pl, name)(), OPTAX_DEFAULTS[name](), wrap_params(), jit=False
    )
    record("optax/float32/nojit/per-update", name, (worst, float("nan")))
    assert worst <= F32_UPDATE_RTOL[name]


# --- property test: random gradients, pl.adam equals optax.adam ---------------

_ADAM_PAIR = (pl.adam(0.02, b1=0.85, b2=0.995), optax.adam(0.02, b1=0.85, b2=0.995))


@jax.jit
def _adam_both(grads):
    out = []
    for opt in _ADAM_PAIR:
        state = opt.init(grads[0])
        for g in grads:
            u, state = opt.update(g, state)
        out.append(u)
    return out


@settings(max_examples=15, deadline=None, database=None)
@given(
    hnp.arrays(
        np.float32,
        st.sampled_from([(3, 7), (3, 2, 2)]),
        elements=st.floats(-1e3, 1e3, width=32, allow_subnormal=False),
    )
)
def test_property_adam_equals_optax_adam(grads):
    # grads[i] is the gradient of step i: three steps on random gradients.
    ours, theirs = _adam_both(jnp.asarray(grads))
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-6, atol=1e-9)


# =============================================================================
# 4. The optax wrappers, each under jit and without
# =============================================================================

KWARGS = {
    "sgd": dict(learning_rate=0.1),
    "momentum": dict(learning_rate=0.05, momentum=0.8),
    "nesterov": dict(learning_rate=0.05, momentum=0.8),
    "adagrad": dict(learning_rate=0.1, eps=1e-6),
    "rmsprop": dict(learning_rate=0.05, decay=0.9, eps=1e-6),
    "adam": dict(learning_rate=0.05, b1=0.8, b2=0.99),
    "adamw": dict(learning_rate=0.05, weight_decay=0.1),
}
ALL_ARGS = {
    "sgd": ("learning_rate",),
    "momentum": ("learning_rate", "momentum"),
    "nesterov": ("learning_rate", "momentum"),
    "adagrad": ("learning_rate", "eps"),
    "rmsprop": ("learning_rate", "decay", "eps"),
    "adam": ("learning_rate", "b1", "b2", "eps"),
    "adamw": ("learning_rate", "b1", "b2", "eps", "weight_decay"),
}


def make(name: str, **override):
    return getattr(pl, name)(**{**KWARGS[name], **override})


@ALL
@JIT
def test_chain_with_clip_by_global_norm(name, jit):
    params = wrap_params()
    grads_seq = random_grads(params, 8, seed=4, scales=[0.05, 1.0, 0.2, 2.0])
    opt = optax.chain(optax.clip_by_global_norm(2.0), make(name))
    ours, _, _ = apply_sequence(opt, params, grads_seq, jit=jit)

    ref, flat = reference(name, **KWARGS[name]), flatten(params)
    clipped_some = unclipped_some = False
    for g in grads_seq:
        g = flatten(g)
        clipped = numpy_clip_by_global_norm(g, 2.0)
        same = all(np.array_equal(g[k], clipped[k]) for k in g)
        clipped_some, unclipped_some = clipped_some or not same, unclipped_some or same
        ref.update(flat, clipped)
    assert clipped_some and unclipped_some
    assert_normwise_close(ours, flat, rtol=1e-5)


SECOND_SCALAR = {
    "momentum": "momentum",
    "nesterov": "momentum",
    "adagrad": "eps",
    "rmsprop": "decay",
    "adam": "b1",
    "adamw": "weight_decay",
}


@ALL
@JIT
def test_inject_hyperparams(name, jit):
    params = wrap_params()
    grads_seq = random_grads(params, 6, seed=5)
    injected = optax.inject_hyperparams(getattr(pl, name))(**KWARGS[name])
    update = _maybe_jit(injected.update, jit)

    # Same trajectory as the plain optimizer (up to float32 rounding: the
    # hyperparameters are float32 arrays instead of Python floats).
    state, p = injected.init(params), params
    for g in grads_seq[:-1]:
        u, state = update(g, state, p)
        p = optax.apply_updates(p, u)
    plain, _, _ = apply_sequence(make(name), params, grads_seq[:-1], jit=False)
    assert_normwise_close(p, plain, rtol=1e-5)

    # Every scalar hyperparameter sits in the state, as an array, and can be changed.
    assert set(state.hyperparams) == set(ALL_ARGS[name])
    assert float(state.hyperparams["learning_rate"]) == pytest.approx(KWARGS[name]["learning_rate"])
    new = {"learning_rate": 0.3}
    if name in SECOND_SCALAR:
        new[SECOND_SCALAR[name]] = 0.5
    changed = state._replace(
        hyperparams={**state.hyperparams, **{k: jnp.asarray(v) for k, v in new.items()}}
    )
    g = grads_seq[-1]
    got, after = update(g, changed, p)
    expected, _ = make(name, **new).update(g, changed.inner_state, p)
    assert_normwise_close(got, expected, rtol=1e-4)
    for k, v in new.items():
        assert float(after.hyperparams[k]) == pytest.approx(v)
    # ... and the change mattered
    unchanged, _ = update(g, state, p)
    assert deviation(got, unchanged)[1] > 1e-4


def test_inject_hyperparams_adamw_callable_mask_as_static_arg():
    params = make_params()
    injected = optax.inject_hyperparams(pl.adamw, static_args=("mask",))(
        learning_rate=0.05, weight_decay=0.5, mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)
    )
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = jax.jit(injected.update)(zero, injected.init(params), params)
    for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params), strict=True):
        expected = -0.05 * 0.5 * p if p.ndim >= 2 else jnp.zeros_like(p)
        np.testing.assert_allclose(u, expected, rtol=1e-6)


@NAME_JIT_SUBSET
def test_multisteps_accumulates_to_one_step_on_the_mean(name, jit):
    params = wrap_params()
    cycles = 2 if jit else 1  # (each eager call compiles a lax.cond)
    grads_seq = random_grads(params, 3 * cycles, seed=7)
    multi = optax.MultiSteps(make(name), every_k_schedule=3)
    got, state, updates = apply_sequence(multi, params, grads_seq, jit=jit)
    for i, u in enumerate(updates):  # no update while accumulating, then one
        assert is_zero(u) == (i % 3 != 2)
    assert int(state.inner_opt_state.count) == cycles

    # one step of the NumPy reference per mean of three gradients
    ref, flat = reference(name, **KWARGS[name]), flatten(params)
    for chunk in (grads_seq[i : i + 3] for i in range(0, 3 * cycles, 3)):
        flats = [flatten(g) for g in chunk]
        ref.update(flat, {k: sum(f[k] for f in flats) / 3 for k in flat})
    assert_normwise_close(got, flat, rtol=1e-5)


WRAP_MASK = {"w": True, "rest": [False, True]}
MASK_TREE = {
    "layers": [{"w": True, "b": False}, {"w": True}],
    "scale": False,
    "extra": (True,),
}


@ALL
@JIT
def test_masked(name, jit):
    params = wrap_params()
    grads_seq = random_grads(params, 5, seed=8)
    opt = optax.masked(make(name), WRAP_MASK)
    _, _, updates = apply_sequence(opt, params, grads_seq, jit=jit)

    # The selected leaves follow the NumPy reference; the others pass through.
    selected = [k for k, m in flatten(jax.tree.map(float, WRAP_MASK)).items() if m]
    ref, flat = reference(name, **KWARGS[name]), flatten(params)
    for g, u in zip(grads_seq, updates, strict=True):
        g, u = flatten(g), flatten(u)
        sub = {k: flat[k].copy() for k in selected}
        ref.update(sub, {k: g[k] for k in selected})
        for k in flat:
            expected = sub[k] - flat[k] if k in selected else g[k]
            np.testing.assert_allclose(u[k], expected, rtol=1e-4, atol=1e-6, err_msg=k)
            flat[k] = flat[k] + u[k]


@NAME_JIT_SUBSET
def test_apply_if_finite_skips_a_nan_step(name, jit):
    params = wrap_params()
    g1, g2, g3 = random_grads(params, 3, seed=9)
    bad = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan) if x.ndim == 0 else x, g2)
    opt = optax.apply_if_finite(make(name), max_consecutive_errors=5)
    update = _maybe_jit(opt.update, jit)

    u1, state = update(g1, opt.init(params), params)
    p = optax.apply_updates(params, u1)
    u_bad, state_bad = update(bad, state, p)
    assert is_zero(u_bad)
    assert_tree_equal(state_bad.inner_state, state.inner_state)  # unchanged, bit for bit
    assert int(state_bad.notfinite_count) == 1 and not bool(state_bad.last_finite)
    u3, state3 = update(g3, state_bad, p)
    assert int(state3.notfinite_count) == 0 and bool(state3.last_finite)

    # ... as if the NaN step had never happened
    _, _, plain = apply_sequence(make(name), params, [g1, g3], jit=False)
    assert_normwise_close(u3, plain[1], rtol=1e-6)
    assert not is_zero(u3)


# =============================================================================
# 5. Schedules (float64, eagerly; the reference reads lr_t = schedule(t - 1))
# =============================================================================

SCHEDULE_STEPS = 16
# Each schedule as an optax object and the same schedule written in NumPy.
LR_SCHEDULES = {
    "exponential": (
        lambda lr: optax.exponential_decay(lr, transition_steps=10, decay_rate=0.3),
        lambda lr: lambda c: lr * 0.3 ** (c / 10),
    ),
    "piecewise": (
        lambda lr: optax.piecewise_constant_schedule(lr, {1: 2.0, 8: 0.25}),
        lambda lr: lambda c: lr * (1.0 if c < 1 else 2.0 if c < 8 else 0.5),
    ),
}


@ALL
@pytest.mark.parametrize("schedule", sorted(LR_SCHEDULES))
def test_learning_rate_schedule_matches_reference(name, schedule):
    make_optax_schedule, make_numpy_schedule = LR_SCHEDULES[schedule]
    lr = KWARGS[name]["learning_rate"]
    with jax.enable_x64(True):
        params = jax.tree.map(lambda x: x.astype(jnp.float64), wrap_params())
        ours = run_purelearn(
            make(name, learning_rate=make_optax_schedule(lr)), params, SCHEDULE_STEPS, jit=False
        )
    scheduled = reference(name, **{**KWARGS[name], "learning_rate": make_numpy_schedule(lr)})
    ref = run_reference(scheduled, params, SCHEDULE_STEPS)
    record(f"schedule {schedule}/float64", name, deviation(ours, ref))
    assert_normwise_close(ours, ref, rtol=1e-6)  # optax schedules compute in float32
    # a constant learning rate gives another trajectory: the schedule was used
    constant = run_reference(reference(name, **KWARGS[name]), params, SCHEDULE_STEPS)
    assert deviation(constant, ref)[1] > 1e-3


SECOND_SCHEDULES = {
    # name: (argument, optax schedule, the same in NumPy)
    "momentum": (
        "momentum",
        optax.linear_schedule(0.5, 0.95, transition_steps=12),
        lambda c: 0.5 + 0.45 * min(c, 12) / 12,
    ),
    "nesterov": (
        "momentum",
        optax.linear_schedule(0.5, 0.95, transition_steps=12),
        lambda c: 0.5 + 0.45 * min(c, 12) / 12,
    ),
    "adagrad": (
        "eps",
        optax.piecewise_constant_schedule(1.0, {3: 1e-3}),
        lambda c: 1.0 if c < 3 else 1e-3,
    ),
    "rmsprop": (
        "decay",
        optax.piecewise_constant_schedule(0.5, {5: 1.8}),
        lambda c: 0.5 if c < 5 else 0.9,
    ),
    "adam": (
        "b1",
        optax.linear_schedule(0.0, 0.9, transition_steps=10),
        lambda c: 0.09 * min(c, 10),
    ),
    "adamw": (
        "weight_decay",
        optax.exponential_decay(0.5, transition_steps=10, decay_rate=0.1),
        lambda c: 0.5 * 0.1 ** (c / 10),
    ),
}


@pytest.mark.parametrize("name", sorted(SECOND_SCHEDULES))
def test_other_scalar_as_schedule_matches_reference(name):
    arg, optax_schedule, numpy_schedule = SECOND_SCHEDULES[name]
    with jax.enable_x64(True):
        params = jax.tree.map(lambda x: x.astype(jnp.float64), wrap_params())
        ours = run_purelearn(make(name, **{arg: optax_schedule}), params, SCHEDULE_STEPS, jit=False)
    ref = run_reference(
        reference(name, **{**KWARGS[name], arg: numpy_schedule}), params, SCHEDULE_STEPS
    )
    record(f"schedule {arg}/float64", name, deviation(ours, ref))
    assert_normwise_close(ours, ref, rtol=1e-6)
    constant = run_reference(
        reference(name, **{**KWARGS[name], arg: numpy_schedule(0)}), params, SCHEDULE_STEPS
    )
    assert deviation(constant, ref)[1] > 1e-4


def test_schedule_is_read_with_count_zero_on_the_first_update():
    opt = pl.sgd(optax.piecewise_constant_schedule(0.1, {1: 0.0}))  # 0.1 at count 0, then 0
    g = jnp.array([1.0, -2.0])
    u1, state = opt.update(g, opt.init(g))
    u2, state = jax.jit(opt.update)(g, state)
    np.testing.assert_allclose(u1, [-0.1, 0.2], rtol=1e-6)
    np.testing.assert_array_equal(u2, [0.0, 0.0])
    assert int(state.count) == 2


def test_momentum_schedule_scales_gradients_as_they_enter_the_velocity():
    # Textbook semantics (v = a*v - lr*g): with lr 1 then 0, the second step is
    # a*v = 0.9 * -1 = -0.9 (optax.sgd would give 0: its lr scales the whole trace).
    opt = pl.momentum(optax.piecewise_constant_schedule(1.0, {1: 0.0}), momentum=0.9)
    g = jnp.ones(1)
    _, state = opt.update(g, opt.init(g))
    u, _ = opt.update(g, state)
    np.testing.assert_allclose(u, [-0.9], rtol=1e-6)


# =============================================================================
# 6. Learning rates as arrays, and vmap over the learning rate
# =============================================================================


@ALL
def test_learning_rate_as_jax_array(name):
    params = wrap_params()
    grads_seq = random_grads(params, 4, seed=10)
    lr = KWARGS[name]["learning_rate"]
    expected, _, _ = apply_sequence(make(name), params, grads_seq, jit=False)
    as_array, _, _ = apply_sequence(
        make(name, learning_rate=jnp.asarray(lr)), params, grads_seq, jit=False
    )
    assert_normwise_close(as_array, expected, rtol=1e-5)

    # ... and traced, as the argument of a jitted function
    @jax.jit
    def traced(lr):
        return apply_sequence(make(name, learning_rate=lr), params, grads_seq, jit=False)[0]

    assert_normwise_close(traced(jnp.float32(lr)), expected, rtol=1e-5)
    assert deviation(traced(jnp.float32(lr / 2)), expected)[1] > 1e-4


def _train(lr, name, steps=12):
    """A whole training run on a quadratic-plus-quartic loss; returns the params."""
    opt = optax.inject_hyperparams(getattr(pl, name))(**{**KWARGS[name], "learning_rate": lr})

    def body(carry, _):
        params, state = carry
        grads = jax.tree.map(lambda w: (w - 0.3) + 0.1 * w**3, params)
        updates, state = opt.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), None

    params = wrap_params()
    return jax.lax.scan(body, (params, opt.init(params)), None, length=steps)[0][0]


@ALL
def test_vmap_over_learning_rate(name):
    lrs = jnp.array([0.001, 0.01, 0.1], jnp.float32)
    batched = jax.jit(jax.vmap(partial(_train, name=name)))(lrs)
    single = jax.jit(partial(_train, name=name))
    lanes = [jax.tree.map(lambda x, i=i: x[i], batched) for i in range(len(lrs))]
    for lane, lr in zip(lanes, lrs, strict=True):
        assert_normwise_close(lane, single(lr), rtol=1e-6)
    assert deviation(lanes[0], lanes[-1])[1] > 1e-3  # the learning rates were used


def test_vmap_over_learning_rate_without_inject_hyperparams():
    params = wrap_params()
    g = random_grads(params, 1, seed=11)[0]

    def first_update(lr):
        opt = pl.momentum(lr)
        return opt.update(g, opt.init(params))[0]

    lrs = jnp.array([0.1, 0.5])
    out = jax.vmap(first_update)(lrs)
    for i in range(2):
        expected = jax.tree.map(lambda x, lr=lrs[i]: -lr * x, g)
        assert_tree_close(jax.tree.map(lambda x, i=i: x[i], out), expected, rtol=1e-6)


# =============================================================================
# 7. State and dtypes
# =============================================================================

STATE_TYPES = {
    "sgd": (pl.SgdState, 0),
    "momentum": (pl.MomentumState, 1),
    "nesterov": (pl.MomentumState, 1),
    "adagrad": (pl.AdaGradState, 1),
    "rmsprop": (pl.RMSPropState, 1),
    "adam": (pl.AdamState, 2),
    "adamw": (pl.AdamState, 2),
}


def _check_state(name, state, params, dtype):
    state_type, buffers = STATE_TYPES[name]
    assert type(state) is state_type
    assert isinstance(state, tuple) and hasattr(state_type, "_fields")  # a NamedTuple
    assert state.count.dtype == jnp.int32 and state.count.shape == ()
    assert len(state) == 1 + buffers
    for buffer in state[1:]:
        assert jax.tree.structure(buffer) == jax.tree.structure(params)
        for b, p in zip(jax.tree.leaves(buffer), jax.tree.leaves(params), strict=True):
            assert b.dtype == dtype and b.shape == p.shape


@ALL
@pytest.mark.parametrize("dtype", ["bfloat16", "float32", "float64"])
def test_dtypes_preserved(name, dtype):
    with jax.enable_x64(dtype == "float64"):
        dtype = jnp.dtype(dtype)
        params = jax.tree.map(lambda x: x.astype(dtype), wrap_params())
        opt = make(name)
        state = opt.init(params)
        _check_state(name, state, params, dtype)
        # traced (as under jit) ...
        g = jax.tree.map(jnp.ones_like, params)
        shapes = jax.eval_shape(opt.update, g, state, params)
        assert all(u.dtype == dtype for u in jax.tree.leaves(shapes[0]))
        _check_state(name, shapes[1], params, dtype)
        # ... and run
        for g in random_grads(params, 3, seed=12):
            updates, state = opt.update(g, state, params)
            assert all(u.dtype == dtype for u in jax.tree.leaves(updates))
            assert all(bool(jnp.isfinite(u).all()) for u in jax.tree.leaves(updates))
            _check_state(name, state, params, dtype)
            params = optax.apply_updates(params, updates)
        assert int(state.count) == 3
        assert all(x.dtype == dtype for x in jax.tree.leaves(params))


@ALL
@pytest.mark.parametrize(
    ("dtype", "hp_dtype"), [("bfloat16", "float32"), ("float32", "float64")], ids=str
)
def test_dtypes_follow_params_not_array_hyperparameters(name, dtype, hp_dtype):
    # Strongly typed array hyperparameters (e.g. from inject_hyperparams with
    # hyperparam_dtype=float32) promote the arithmetic; the updates and the state
    # must still follow the params.
    with jax.enable_x64(hp_dtype == "float64"):
        dtype = jnp.dtype(dtype)
        params = jax.tree.map(lambda x: x.astype(dtype), wrap_params())
        opt = make(name, **{k: jnp.asarray(v, hp_dtype) for k, v in KWARGS[name].items()})
        state = opt.init(params)
        g = jax.tree.map(jnp.ones_like, params)
        for _ in range(2):
            updates, state = jax.eval_shape(opt.update, g, state, params)  # traced
            assert all(u.dtype == dtype for u in jax.tree.leaves(updates))
            _check_state(name, state, params, dtype)
        injected = optax.inject_hyperparams(getattr(pl, name), hyperparam_dtype=hp_dtype)(
            **KWARGS[name]
        )
        updates, state = jax.eval_shape(injected.update, g, injected.init(params), params)
        assert all(u.dtype == dtype for u in jax.tree.leaves(updates))
        _check_state(name, state.inner_state, params, dtype)


@ALL
def test_state_shapes_fixed_across_steps(name):
    params = wrap_params()
    opt = make(name)
    init_shape = jax.eval_shape(opt.init, params)
    g = random_grads(params, 1, seed=13)[0]
    _, step_shape = jax.eval_shape(opt.update, g, opt.init(params), params)
    assert jax.tree.structure(init_shape) == jax.tree.structure(step_shape)
    assert jax.tree.leaves(init_shape) == jax.tree.leaves(step_shape)
    # and for real, across a few steps (what lax.scan and while_loop require)
    state = opt.init(params)
    for _ in range(3):
        _, state = opt.update(g, state, params)
        assert jax.tree.structure(state) == jax.tree.structure(init_shape)
        got = [(x.shape, x.dtype) for x in jax.tree.leaves(state)]
        assert got == [(x.shape, x.dtype) for x in jax.tree.leaves(init_shape)]


# =============================================================================
# 8. Bad input
# =============================================================================

BELOW_ONE = {"momentum", "decay", "b1", "b2"}
NAME_ARG = [(n, a) for n in NAMES for a in ALL_ARGS[n]]


@pytest.mark.parametrize(("name", "arg"), NAME_ARG)
@pytest.mark.parametrize(
    "bad",
    [-0.1, -1, float("nan"), float("inf"), float("-inf"), np.float32(-2.0), "0.1", "lr"],
    ids=["neg", "neg-int", "nan", "inf", "-inf", "np-neg", "str-number", "str"],
)
def test_bad_number_raises_naming_the_argument(name, arg, bad):
    with pytest.raises(ValueError, match=rf"\b{re.escape(arg)}\b"):
        getattr(pl, name)(**{arg: bad})


@pytest.mark.parametrize(("name", "arg"), [(n, a) for n, a in NAME_ARG if a in BELOW_ONE])
@pytest.mark.parametrize("bad", [1, 1.0, 1.5, np.float64(1.0)])
def test_decay_rates_at_or_above_one_raise(name, arg, bad):
    with pytest.raises(ValueError, match=rf"\b{re.escape(arg)}\b"):
        getattr(pl, name)(**{arg: bad})


@pytest.mark.parametrize(("name", "arg"), NAME_ARG)
def test_arrays_and_schedules_are_not_validated(name, arg):
    factory = getattr(pl, name)
    for value in (jnp.asarray(-1.0), jnp.asarray(jnp.nan), jnp.asarray(1.5), lambda count: -1.0):
        assert isinstance(factory(**{arg: value}), optax.GradientTransformation)

    if arg != "learning_rate":
        return

    # ... nor when traced (vmap over a hyperparameter)
    def first_update(v):
        opt = factory(**{arg: v})
        return opt.update(jnp.ones(2), opt.init(jnp.ones(2)), jnp.ones(2))[0]

    assert jax.vmap(first_update)(jnp.array([-1.0, 2.0])).shape == (2, 2)


@pytest.mark.parametrize(("name", "arg"), NAME_ARG)
def test_edge_values_are_accepted(name, arg):
    factory = getattr(pl, name)
    for good in (0, 0.0, np.float32(0.5), 0.999 if arg in BELOW_ONE else 5.0):
        assert isinstance(factory(**{arg: good}), optax.GradientTransformation)


def test_adamw_update_without_params_raises():
    opt = pl.adamw()
    params = make_params()
    g = jax.tree.map(jnp.ones_like, params)
    with pytest.raises(ValueError, match="params"):
        opt.update(g, opt.init(params))
    with pytest.raises(ValueError, match="params"):
        jax.jit(opt.update)(g, opt.init(params))


def test_adamw_without_weight_decay_needs_no_params():
    opt, adam = pl.adamw(weight_decay=0.0), pl.adam()
    g = jnp.ones(3)
    np.testing.assert_array_equal(opt.update(g, opt.init(g))[0], adam.update(g, adam.init(g))[0])


def test_numpy_array_learning_rate_accepted():
    opt = pl.sgd(np.array(0.1))
    u, _ = opt.update(jnp.ones(2), opt.init(jnp.zeros(2)))
    np.testing.assert_allclose(u, [-0.1, -0.1], rtol=1e-6)
    with pytest.raises(ValueError, match="learning_rate"):
        pl.sgd(np.array(-0.1))
    with pytest.raises(ValueError, match="momentum"):
        pl.momentum(momentum=np.float32("nan"))


# =============================================================================
# 9. AdamW's mask
# =============================================================================

MASKS = {
    "pytree": (MASK_TREE, MASK_TREE),
    "callable": (lambda p: jax.tree.map(lambda x: x.ndim >= 2, p), MASK_TREE),
    # a prefix of the parameters' tree: one flag per subtree
    "prefix": (
        {"layers": [True, False], "scale": True, "extra": False},
        {"layers": [{"w": True, "b": True}, {"w": False}], "scale": True, "extra": (False,)},
    ),
}


@pytest.mark.parametrize("kind", sorted(MASKS))
def test_adamw_mask(kind):
    mask, expanded = MASKS[kind]
    flags = {k: bool(v) for k, v in flatten(jax.tree.map(float, expanded)).items()}
    params = make_params()
    opt = pl.adamw(0.1, weight_decay=0.5, mask=mask)
    update = jax.jit(opt.update)

    # zero gradients: adam's part is 0, leaving -lr*wd*w on the decayed leaves only
    zero = jax.tree.map(jnp.zeros_like, params)
    decay = flatten(update(zero, opt.init(params), params)[0])
    for k, p in flatten(params).items():
        np.testing.assert_allclose(decay[k], -0.05 * p if flags[k] else 0 * p, rtol=1e-6)

    # a trajectory: the NumPy reference with the same mask, and optax.adamw
    grads_seq = random_grads(params, 8, seed=14)
    state, p = opt.init(params), params
    for g in grads_seq:
        u, state = update(g, state, p)
        p = optax.apply_updates(p, u)
    theirs, _, _ = apply_sequence(
        optax.adamw(0.1, weight_decay=0.5, mask=mask), params, grads_seq, jit=False
    )
    assert_normwise_close(p, theirs, rtol=1e-6)
    ref, flat = AdamW(lr=0.1, weight_decay=0.5, mask=flags), flatten(params)
    for g in grads_seq:
        ref.update(flat, flatten(g))
    assert_normwise_close(p, flat, rtol=1e-5)


def test_adamw_default_decays_every_leaf():
    params = make_params()
    opt = pl.adamw(0.1, weight_decay=0.5)
    decay, _ = opt.update(jax.tree.map(jnp.zeros_like, params), opt.init(params), params)
    assert_tree_close(decay, jax.tree.map(lambda p: -0.05 * p, params), rtol=1e-6)


# =============================================================================
# 10. Purity
# =============================================================================


@ALL
@JIT
def test_update_is_deterministic(name, jit):
    # (JAX arrays are immutable, so "inputs untouched" cannot fail and is not asserted.)
    params = wrap_params()
    opt = make(name)
    update = _maybe_jit(opt.update, jit)
    g0, g1 = random_grads(params, 2, seed=15)
    _, state = update(g0, opt.init(params), params)
    inputs = (g1, state, params)
    out1 = update(*inputs)
    out2 = update(*inputs)
    assert_tree_equal(out1, out2)  # bit-identical
    # a second, independent instance agrees too
    if not jit:
        assert_tree_equal(out1, make(name).update(*inputs))


@ALL
def test_init_is_pure(name):
    params = wrap_params()
    snapshot = jax.tree.map(np.asarray, params)
    opt = make(name)
    assert_tree_equal(opt.init(params), opt.init(params))
    assert_tree_equal(params, snapshot)
    assert is_zero(opt.init(params))


# =============================================================================
# 11. Extra update arguments (value=loss for reduce_on_plateau, nnx.Optimizer)
# =============================================================================


@ALL
def test_update_accepts_and_ignores_extra_arguments(name):
    params = wrap_params()
    opt = make(name)
    assert isinstance(opt, optax.GradientTransformationExtraArgs)
    g = random_grads(params, 1, seed=16)[0]
    state = opt.init(params)
    plain = opt.update(g, state, params)
    assert_tree_equal(opt.update(g, state, params, value=jnp.float32(3.0), other="x"), plain)
    update = jax.jit(opt.update)
    assert_tree_equal(update(g, state, params, value=jnp.float32(3.0)), update(g, state, params))


def test_chain_with_reduce_on_plateau_equals_optax():
    # Adam at lr 0.3 on sum(w**2) soon rattles around 0: the loss plateaus and
    # reduce_on_plateau halves the scale. The chain needs value= in update.
    def loss(w):
        return jnp.sum(w**2)

    def run(adam):
        opt = optax.chain(
            adam(0.3),
            optax.contrib.reduce_on_plateau(factor=0.5, patience=2, cooldown=0, rtol=0.1),
        )

        @jax.jit
        def step(w, state):
            value, g = jax.value_and_grad(loss)(w)
            u, state = opt.update(g, state, w, value=value)
            return optax.apply_updates(w, u), state

        w = jnp.array([1.0, -2.0, 0.5])
        state = opt.init(w)
        for _ in range(40):
            w, state = step(w, state)
        return w, state

    ours, ours_state = run(pl.adam)
    theirs, theirs_state = run(optax.adam)
    assert float(ours_state[1].scale) < 0.1  # the plateau was detected, several times
    assert float(ours_state[1].scale) == float(theirs_state[1].scale)
    assert_normwise_close(ours, theirs, rtol=1e-6)


def test_flax_nnx_optimizer_passes_value():
    nnx = pytest.importorskip("flax.nnx")
    x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 3)), jnp.float32)
    y = x @ jnp.array([[1.0], [-2.0], [0.5]])

    def loss_fn(model):
        return jnp.mean((model(x) - y) ** 2)

    def train(tx):
        model = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
        optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
        for _ in range(5):
            loss, grads = nnx.value_and_grad(loss_fn)(model)
            optimizer.update(model, grads, value=loss)
        return model.kernel[...], model.bias[...], float(loss_fn(model))

    ours, theirs = train(pl.adam(1e-2)), train(optax.adam(1e-2))
    start = float(loss_fn(nnx.Linear(3, 1, rngs=nnx.Rngs(0))))
    assert ours[2] < start
    for a, b in zip(ours[:2], theirs[:2], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", ["adam", "rmsprop"])
def test_wrappers_forward_extra_arguments(name):
    params = wrap_params()
    g = random_grads(params, 1, seed=17)[0]
    wrapped = [
        optax.MultiSteps(make(name), every_k_schedule=1),
        optax.apply_if_finite(make(name), max_consecutive_errors=2),
        optax.masked(make(name), WRAP_MASK),
        optax.inject_hyperparams(getattr(pl, name))(**KWARGS[name]),
        optax.chain(optax.clip(1.0), make(name)),
    ]
    for opt in wrapped:
        state = opt.init(params)
        with_value, _ = jax.jit(opt.update)(g, state, params, value=jnp.float32(1.0))
        assert_normwise_close(with_value, opt.update(g, state, params)[0], rtol=1e-6)
        assert not is_zero(with_value)


# =============================================================================
# 12. Mixed precision: optax's dtype rules, float32 arithmetic for float16
# =============================================================================

OPTAX_TWINS = {
    "sgd": lambda: optax.sgd(0.1),
    "momentum": lambda: optax.sgd(0.1, momentum=0.9),
    "nesterov": lambda: optax.sgd(0.1, momentum=0.9, nesterov=True),
    "adagrad": lambda: optax.adagrad(0.1, initial_accumulator_value=0.0, eps=1e-7),
    "rmsprop": lambda: optax.rmsprop(0.1, decay=0.9, eps=1e-6, eps_in_sqrt=False),
    "adam": lambda: optax.adam(0.05, b1=0.8, b2=0.99),
    "adamw": lambda: optax.adamw(0.05, weight_decay=0.1),
}
DTYPE_PAIRS = [  # (params, grads)
    ("float32", "bfloat16"),
    ("bfloat16", "float32"),
    ("float32", "float16"),
    ("float16", "float32"),
    ("float16", "float16"),
    ("bfloat16", "bfloat16"),
]


@ALL
@pytest.mark.parametrize(("param_dtype", "grad_dtype"), DTYPE_PAIRS, ids=str)
def test_update_dtype_is_optaxs_and_state_dtype_is_fixed(name, param_dtype, grad_dtype):
    params = jax.tree.map(lambda x: x.astype(param_dtype), wrap_params())
    grads = jax.tree.map(lambda x: jnp.ones(x.shape, grad_dtype), params)
    ours, theirs = make(name), OPTAX_TWINS[name]()
    state = ours.init(params)
    u, new_state = jax.eval_shape(ours.update, grads, state, params)
    u_theirs, _ = jax.eval_shape(theirs.update, grads, theirs.init(params), params)
    assert [x.dtype for x in jax.tree.leaves(u)] == [x.dtype for x in jax.tree.leaves(u_theirs)]
    _check_state(name, new_state, params, jnp.dtype(param_dtype))


@pytest.mark.parametrize("mu_dtype", [None, "bfloat16"])
@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_bfloat16_grads_float32_params_equal_optax_over_50_steps(name, mu_dtype):
    rng = np.random.default_rng(18)
    params = {"w": jnp.asarray(rng.normal(size=(4, 5)), jnp.float32), "b": jnp.zeros(5)}
    grads_seq = [
        jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.bfloat16), params)
        for _ in range(50)
    ]
    kwargs = {"learning_rate": 0.01, "mu_dtype": mu_dtype}
    if name == "adamw":
        kwargs["weight_decay"] = 0.1
    out = []
    for opt in (getattr(pl, name)(**kwargs), getattr(optax, name)(**kwargs)):
        p, state, updates = apply_sequence(opt, params, grads_seq, jit=True)
        assert all(u.dtype == jnp.float32 for u in jax.tree.leaves(updates))
        out.append((p, updates, state))
    (ours, ours_updates, state), (theirs, theirs_updates, _) = out
    for a, b in zip(ours_updates, theirs_updates, strict=True):
        assert_normwise_close(a, b, rtol=1e-6)
    assert_normwise_close(ours, theirs, rtol=1e-6)
    mu = jnp.dtype(mu_dtype or "float32")
    assert all(x.dtype == mu for x in jax.tree.leaves(state.mu))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.nu))
    # the bfloat16 rounding of the gradient terms is optax's: exact float32
    # arithmetic on the same gradients would differ from both by ~1e-3
    exact, _, _ = apply_sequence(
        getattr(pl, name)(**kwargs),
        params,
        [jax.tree.map(lambda g: g.astype(jnp.float32), g) for g in grads_seq],
        jit=True,
    )
    assert 1e-4 < deviation(exact, theirs)[0] < 1e-2


def test_mu_dtype_is_validated_and_used():
    for bad in ("int8", jnp.int32, bool, "nonsense", 3):
        with pytest.raises(ValueError, match="mu_dtype"):
            pl.adam(mu_dtype=bad)
        with pytest.raises(ValueError, match="mu_dtype"):
            pl.adamw(mu_dtype=bad)
    opt = pl.adam(mu_dtype=jnp.bfloat16)
    state = opt.init({"w": jnp.ones(3)})
    assert state.mu["w"].dtype == jnp.bfloat16 and state.nu["w"].dtype == jnp.float32
    injected = optax.inject_hyperparams(pl.adam, static_args=("mu_dtype",))(
        learning_rate=0.1, mu_dtype=jnp.bfloat16
    )
    assert injected.init(jnp.ones(2)).inner_state.mu.dtype == jnp.bfloat16


# float16 parameters and gradients: the arithmetic runs in float32, so the
# update stays finite and within float16 rounding of a float32 computation,
# where optax's float16 arithmetic gives NaN (eps = 1e-8 rounds to 0, 0/0) or
# inf (a square past 256 overflows).
F16_CASES = {
    # name: (purelearn optimizer, optax's, largest |g|)
    "adam": (lambda: pl.adam(), lambda: optax.adam(1e-3), 1000.0),
    "rmsprop": (
        lambda: pl.rmsprop(),
        lambda: optax.rmsprop(0.01, decay=0.99, eps=1e-7, eps_in_sqrt=False),
        1000.0,
    ),
    # the float16 accumulator itself overflows once the squares sum past 65504
    "adagrad": (lambda: pl.adagrad(), lambda: optax.adagrad(0.01, 0.0, 1e-7), 60.0),
}


def _float32_reference_updates(name: str, grads: np.ndarray) -> np.ndarray:
    """Default hyperparameters, one float32 NumPy array of parameters, per step."""
    f32 = np.float32
    m, h, out = np.zeros_like(grads[0]), np.zeros_like(grads[0]), []
    for t, g in enumerate(grads, start=1):
        if name == "adam":
            b1, b2, eps, lr = f32(0.9), f32(0.999), f32(1e-8), f32(1e-3)
            m = b1 * m + (1 - b1) * g
            h = b2 * h + (1 - b2) * g * g
            out.append(-lr * (m / (1 - b1**t)) / (np.sqrt(h / (1 - b2**t)) + eps))
        elif name == "rmsprop":
            h = f32(0.99) * h + f32(0.01) * g * g
            out.append(-f32(0.01) * g / (np.sqrt(h) + f32(1e-7)))
        else:
            h = h + g * g
            out.append(-f32(0.01) * g / (np.sqrt(h) + f32(1e-7)))
    return np.stack(out)


def _float16_gradients(largest: float, steps: int = 12, size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(19)
    magnitude = np.exp(rng.uniform(np.log(0.5), np.log(largest), size=(steps, size)))
    grads = rng.choice([-1.0, 1.0], size=(steps, size)) * magnitude
    grads[:, :8] = 0.0  # leaves whose gradient is always zero ...
    grads[rng.random((steps, size)) < 0.2] = 0.0  # ... and zeros now and then
    return grads.astype(np.float16)


@pytest.mark.parametrize("name", sorted(F16_CASES))
def test_float16_params_stay_finite_and_match_a_float32_reference(name):
    ours_factory, optax_factory, largest = F16_CASES[name]
    grads = _float16_gradients(largest)
    assert np.abs(grads).max() > 256 or name == "adagrad"  # some squares overflow float16
    expected = _float32_reference_updates(name, grads.astype(np.float32))

    def updates_of(opt):
        params = jnp.zeros(grads.shape[1], jnp.float16)
        _, state, updates = apply_sequence(opt, params, list(jnp.asarray(grads)), jit=True)
        return np.stack([np.asarray(u, np.float32) for u in updates]), updates, state

    ours, raw, state = updates_of(ours_factory())
    assert all(u.dtype == jnp.float16 for u in raw)
    assert all(x.dtype == jnp.float16 for x in jax.tree.leaves(state[1:]))
    assert np.isfinite(ours).all()
    for t in range(len(grads)):  # update by update, normwise: a few float16 ulps
        err = np.abs(ours[t] - expected[t]).max()
        assert err <= 3e-3 * np.abs(expected[t]).max(), (t, err)
    theirs, _, _ = updates_of(optax_factory())
    if name != "adagrad":  # (optax.adagrad guards 0/0 with a where)
        assert not np.isfinite(theirs).all()  # the failure this guards against


@pytest.mark.parametrize("name", ["adam", "adamw", "rmsprop", "adagrad"])
def test_float16_tiny_and_zero_gradients_first_step(name):
    # g = 1e-5: g*g underflows float16 (and optax's eps 1e-8 is 0), so a float16
    # computation divides by zero: -inf, and 0/0 = NaN for g = 0.
    g = jnp.array([1e-5, 0.0, -3e-4, 2.0], jnp.float16)
    params = jnp.ones(4, jnp.float16)
    opt = getattr(pl, name)()
    u, _ = jax.jit(opt.update)(g, opt.init(params), params)
    assert u.dtype == jnp.float16
    wide = getattr(pl, name)()
    expected, _ = wide.update(
        g.astype(jnp.float32), wide.init(params.astype(jnp.float32)), params.astype(jnp.float32)
    )
    np.testing.assert_allclose(np.asarray(u, np.float32), expected, rtol=2e-3, atol=1e-7)


_F16_FIRST_STEPS = {
    name: (jax.jit(getattr(pl, name)().update), getattr(pl, name)().init)
    for name in ("adam", "rmsprop", "adagrad")
}


@settings(max_examples=25, deadline=None, database=None)
@given(
    hnp.arrays(
        np.float16,
        (16,),
        elements=st.floats(-1000, 1000, width=16, allow_nan=False, allow_infinity=False),
    ),
    st.sampled_from(sorted(_F16_FIRST_STEPS)),
)
def test_property_float16_first_step_is_the_float32_one_rounded(g, name):
    # Any float16 gradient, zeros and subnormals included: the float16 update is
    # the float32 computation rounded to float16 (never NaN or inf), up to one
    # float16 ulp (the two programs may round their float32 steps differently).
    update, init = _F16_FIRST_STEPS[name]
    g16 = jnp.asarray(g)
    u16, _ = update(g16, init(jnp.zeros(16, jnp.float16)))
    u32, _ = update(g16.astype(jnp.float32), init(jnp.zeros(16, jnp.float32)))
    assert u16.dtype == jnp.float16 and bool(jnp.isfinite(u16).all())
    expected = np.asarray(u32.astype(jnp.float16), np.float32)
    np.testing.assert_allclose(np.asarray(u16, np.float32), expected, rtol=2e-3, atol=6e-8)


# =============================================================================
# 13. Complex parameters: second moments of |g|**2
# =============================================================================

TARGET_Z = 0.3 - 0.7j
Z0 = np.array([1.0 + 1.0j, -2.0 + 0.5j, 0.0 - 1.5j, 0.25 + 0.0j])


def _complex_grad(z):
    """The descent direction of |z - c|**2 for complex z: conj of jax.grad, 2 (z - c)."""
    return 2 * (z - TARGET_Z)


def test_complex_gradient_convention():
    z = jnp.asarray(Z0, jnp.complex64)
    jax_grad_z = jax.grad(lambda z: jnp.sum(jnp.abs(z - TARGET_Z) ** 2))(z)
    np.testing.assert_allclose(jnp.conj(jax_grad_z), _complex_grad(z), rtol=1e-6)


def _complex_path(opt, z0, steps: int = 40):
    update = jax.jit(opt.update)
    z, state = z0, opt.init(z0)
    for _ in range(steps):
        u, state = update(_complex_grad(z), state, z)
        z = optax.apply_updates(z, u)
    return z, state


COMPLEX_TWINS = {
    "sgd": (dict(learning_rate=0.1), lambda: optax.sgd(0.1)),
    "momentum": (dict(learning_rate=0.05), lambda: optax.sgd(0.05, momentum=0.9)),
    "nesterov": (dict(learning_rate=0.05), lambda: optax.sgd(0.05, momentum=0.9, nesterov=True)),
    "rmsprop": (
        dict(learning_rate=0.05, decay=0.9, eps=1e-6),
        lambda: optax.rmsprop(0.05, decay=0.9, eps=1e-6, eps_in_sqrt=False),
    ),
    "adam": (dict(learning_rate=0.1), lambda: optax.adam(0.1)),
    "adamw": (dict(learning_rate=0.1), lambda: optax.adamw(0.1, weight_decay=1e-4)),
}


@pytest.mark.parametrize("name", sorted(COMPLEX_TWINS))
def test_complex_trajectories_equal_optax(name):
    kwargs, optax_factory = COMPLEX_TWINS[name]
    z0 = jnp.asarray(Z0, jnp.complex64)
    ours, state = _complex_path(getattr(pl, name)(**kwargs), z0)
    theirs, _ = _complex_path(optax_factory(), z0)
    assert ours.dtype == jnp.complex64
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)
    # a real descent towards the target (the comparison is about something)
    assert np.abs(np.asarray(ours) - TARGET_Z).max() < 0.5 * np.abs(Z0 - TARGET_Z).max()
    for buffer in jax.tree.leaves(state[1:]):
        assert buffer.dtype == jnp.complex64
    if name in ("rmsprop", "adam", "adamw"):  # second moments: real, >= 0
        nu = state[-1]
        assert np.all(np.asarray(nu).imag == 0) and np.all(np.asarray(nu).real > 0)


@pytest.mark.parametrize("name", ["adagrad", "rmsprop", "adam"])
def test_complex_trajectories_equal_the_numpy_reference(name):
    kwargs = {"adagrad": dict(learning_rate=0.3), "rmsprop": dict(learning_rate=0.05)}.get(
        name, dict(learning_rate=0.1)
    )
    with jax.enable_x64(True):
        z0 = jnp.asarray(Z0, jnp.complex128)
        ours, _ = _complex_path(getattr(pl, name)(**kwargs), z0)
        opt = getattr(pl, name)(**kwargs)
        first, _ = opt.update(_complex_grad(z0), opt.init(z0), z0)
    ref, z = reference(name, **kwargs), {"z": Z0.copy()}
    for _ in range(40):
        ref.update(z, {"z": _complex_grad(z["z"])})
    np.testing.assert_allclose(np.asarray(ours), z["z"], rtol=1e-10, atol=1e-12)
    assert np.abs(z["z"] - TARGET_Z).max() < 0.5 * np.abs(Z0 - TARGET_Z).max()
    # By hand: the first step is -lr * g / |g| (over sqrt(1 - decay) for
    # RMSProp), a step of length lr along each g. With g*g in place of |g|**2,
    # sqrt(g*g) = +-g and the step would be real: -+lr.
    g = _complex_grad(Z0)
    gain = 1 / math.sqrt(1 - 0.99) if name == "rmsprop" else 1.0
    expected = -kwargs["learning_rate"] * gain * g / np.abs(g)
    np.testing.assert_allclose(np.asarray(first), expected, rtol=1e-6)


# =============================================================================
# 14. Integer and bool parameters are refused, naming the leaf
# =============================================================================


@ALL
@pytest.mark.parametrize("dtype", ["int32", "int8", "uint8", "bool"])
def test_integer_params_raise_naming_the_leaf(name, dtype):
    params = {"w": jnp.ones(3), "layers": [jnp.ones(2), jnp.zeros(2, dtype)]}
    opt = make(name)
    pattern = rf"floating-point.*leaf \['layers'\]\[1\] of the parameters is {dtype}"
    with pytest.raises(ValueError, match=pattern):
        opt.init(params)
    with pytest.raises(ValueError, match=pattern):
        jax.jit(opt.init)(params)


@ALL
def test_integer_gradients_raise_naming_the_leaf(name):
    params = {"w": jnp.ones(3), "n": jnp.ones(2)}
    opt = make(name)
    grads = {"w": jnp.ones(3), "n": jnp.ones(2, jnp.int32)}
    with pytest.raises(ValueError, match=r"leaf \['n'\] of the updates.* is int32"):
        opt.update(grads, opt.init(params), params)
    with pytest.raises(ValueError, match=r"leaf \['n'\]"):
        jax.jit(opt.update)(grads, opt.init(params), params)


def test_integer_leaf_messages_for_python_scalars_and_the_root():
    with pytest.raises(ValueError, match=r"leaf \['a'\]\[1\] of the parameters is int32"):
        pl.sgd(0.1).init({"a": [1.0, 2]})  # a Python int
    with pytest.raises(ValueError, match=r"leaf \(the root\) of the parameters is bool"):
        pl.adam().init(jnp.zeros(3, bool))
    with pytest.raises(ValueError, match=r"leaf \['s'\] of the parameters is not an array"):
        pl.adam().init({"s": "text"})
    # before the fix, this was silently a no-op: int updates of 0.01 * g round to 0
    with pytest.raises(ValueError, match="int32"):
        pl.sgd(0.01).init(jnp.array([5, 7], jnp.int32))


def test_python_number_leaves_still_work():
    opt = pl.adamw(0.1, weight_decay=0.5)
    params = {"a": 0.5, "b": [1.0]}
    u, _ = opt.update({"a": 0.0, "b": [0.0]}, opt.init(params), params)
    np.testing.assert_allclose(u["a"], -0.1 * 0.5 * 0.5, rtol=1e-6)


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_masked_out_integer_leaves_are_fine(name):
    # optax.masked swaps the masked-out leaves for MaskedNode (no leaves): an
    # integer step counter can ride along in the params tree.
    params = {"w": jnp.array([1.0, -2.0]), "step": jnp.array(3, jnp.int32)}
    mask = {"w": True, "step": False}
    opt = optax.masked(make(name), mask)
    grads = {"w": jnp.array([0.5, 0.5]), "step": jnp.array(0, jnp.int32)}
    u, _ = jax.jit(opt.update)(grads, opt.init(params), params)
    assert u["step"].dtype == jnp.int32 and int(u["step"]) == 0
    plain = make(name)
    expected, _ = plain.update(grads["w"], plain.init(params["w"]), params["w"])
    np.testing.assert_allclose(u["w"], expected, rtol=1e-6)
    with pytest.raises(ValueError, match=r"\['step'\]"):
        optax.masked(make(name), {"w": True, "step": True}).init(params)


# =============================================================================
# 15. Hyperparameter validation (purelearn._checks)
# =============================================================================


@pytest.mark.parametrize(("name", "arg"), NAME_ARG)
@pytest.mark.parametrize(
    "bad",
    [True, False, np.bool_(True), 10**400, -(10**400), np.array(-1.0), np.array(np.nan), None],
    ids=["True", "False", "np-bool", "10**400", "-10**400", "0d-neg", "0d-nan", "None"],
)
def test_more_bad_numbers_raise_value_errors_naming_the_argument(name, arg, bad):
    with pytest.raises(ValueError, match=rf"\b{re.escape(arg)}\b") as err:
        getattr(pl, name)(**{arg: bad})
    assert type(err.value) is ValueError  # not an OverflowError or TypeError


@pytest.mark.parametrize(("name", "arg"), [(n, a) for n, a in NAME_ARG if a in BELOW_ONE])
def test_zero_d_numpy_decay_rates_are_checked_like_numbers(name, arg):
    assert isinstance(getattr(pl, name)(**{arg: np.array(0.5)}), optax.GradientTransformation)
    with pytest.raises(ValueError, match=rf"{arg} must be in \[0, 1\), got array\(1\.5\)"):
        getattr(pl, name)(**{arg: np.array(1.5)})


def test_sgd_huge_learning_rate_is_a_value_error():
    with pytest.raises(ValueError, match="learning_rate must be a finite number"):
        pl.sgd(10**400)


# =============================================================================
# 16. Memoized constructors
# =============================================================================


@ALL
def test_same_arguments_give_the_same_object(name):
    assert make(name) is make(name)
    assert getattr(pl, name)() is getattr(pl, name)()
    assert make(name) is not make(name, learning_rate=0.125)


def test_memo_keeps_types_apart_and_still_validates():
    assert pl.adam(1e-3) is pl.adam(1e-3)
    pl.sgd(1)
    with pytest.raises(ValueError, match="learning_rate"):
        pl.sgd(True)  # equal to 1 and hashes like it, but refused
    assert pl.sgd(1) is not pl.sgd(1.0)  # 1 and 1.0 are kept apart
    with pytest.raises(ValueError, match="learning_rate"):
        pl.sgd(np.float64("nan"))


def test_unhashable_arguments_give_fresh_working_objects():
    a, b = pl.sgd(jnp.asarray(0.5)), pl.sgd(jnp.asarray(0.5))
    assert a is not b
    u, _ = a.update(jnp.ones(2), a.init(jnp.ones(2)))
    np.testing.assert_allclose(u, [-0.5, -0.5])
    params = {"w": jnp.ones(2), "b": jnp.ones(2)}
    opt = pl.adamw(0.1, weight_decay=0.5, mask={"w": True, "b": False})  # a dict: no memo
    u, _ = opt.update(jax.tree.map(jnp.zeros_like, params), opt.init(params), params)
    np.testing.assert_allclose(u["w"], [-0.05, -0.05], rtol=1e-6)
    np.testing.assert_array_equal(u["b"], [0.0, 0.0])


def test_a_second_identical_optimizer_hits_the_compile_cache():
    traces = []

    @partial(jax.jit, static_argnums=0)
    def first_update(opt, params):
        traces.append(1)
        return opt.update(params, opt.init(params), params)[0]

    params = jnp.ones(3)
    first_update(pl.adam(2.5e-3), params)
    first_update(pl.adam(2.5e-3), params)
    assert len(traces) == 1
    first_update(optax.adam(2.5e-3), params)
    first_update(optax.adam(2.5e-3), params)
    assert len(traces) == 3  # without a memo every new object re-traces


# =============================================================================
# 13. Bit for bit with optax over trees of leaves, mixed precision included
# =============================================================================

# Regression: purelearn corrected Adam's bias leaf by leaf while optax corrects a
# whole tree in one jitted call; XLA rounds 1/(1 - b**t) differently in the two
# programs, so with more than one leaf the updates drifted apart (1e-6 at step 38
# with bfloat16 gradients and float32 parameters).
BIT_TWINS = {
    "adam": (lambda: pl.adam(0.01), lambda: optax.adam(0.01)),
    "adamw": (
        lambda: pl.adamw(0.01, weight_decay=0.1),
        lambda: optax.adamw(0.01, weight_decay=0.1),
    ),
    "adamw-masked": (
        lambda: pl.adamw(0.01, weight_decay=0.1, mask={"b": False, "w": True}),
        lambda: optax.adamw(0.01, weight_decay=0.1, mask={"b": False, "w": True}),
    ),
    "sgd": (lambda: pl.sgd(0.1), lambda: optax.sgd(0.1)),
    "rmsprop": (
        lambda: pl.rmsprop(0.01, decay=0.9, eps=1e-6),
        lambda: optax.rmsprop(0.01, decay=0.9, eps=1e-6, eps_in_sqrt=False),
    ),
}


def _bit_run(opt, params, grads_seq, *, jit: bool):
    update = jax.jit(opt.update) if jit else opt.update
    state, seen = opt.init(params), []
    for g in grads_seq:
        u, state = update(g, state, params)
        seen.append(u)
        params = optax.apply_updates(params, u)
    return seen, params, state


def _assert_bitwise(ours, theirs):
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("name", sorted(BIT_TWINS))
@pytest.mark.parametrize("grad_dtype", ["bfloat16", "float32"])
def test_bit_identical_to_optax_over_120_steps_float32_params(name, grad_dtype):
    rng = np.random.default_rng(38)
    params = {"b": jnp.zeros(8), "w": jnp.asarray(rng.normal(size=(16, 8)), jnp.float32)}
    grads_seq = [
        jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), grad_dtype), params)
        for _ in range(120)
    ]
    ours_factory, optax_factory = BIT_TWINS[name]
    for jit in (True, False) if name.startswith("adam") else (True,):
        steps = grads_seq if jit else grads_seq[:40]
        ours, p_ours, _ = _bit_run(ours_factory(), params, steps, jit=jit)
        theirs, p_theirs, _ = _bit_run(optax_factory(), params, steps, jit=jit)
        _assert_bitwise(ours, theirs)
        _assert_bitwise(p_ours, p_theirs)


@pytest.mark.parametrize("name", ["adam", "adamw", "rmsprop"])
def test_float16_grads_float32_params_are_optax_on_the_float32_gradients(name):
    # Decision: optax squares float16 gradients in float16, where (1-b2)*g*g
    # underflows (Adam then steps by g/eps: the contrast below); purelearn widens
    # them to float32 first, which is optax's update on g.astype(float32), bit for
    # bit (un-jitted: jitted, XLA may fuse the conversion and round a product apart).
    rng = np.random.default_rng(16)
    params = {"b": jnp.zeros(8), "w": jnp.asarray(rng.normal(size=(16, 8)), jnp.float32)}
    grads_seq = [
        jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float16), params)
        for _ in range(100)
    ]
    ours_factory, optax_factory = BIT_TWINS[name]
    ours, _, state = _bit_run(ours_factory(), params, grads_seq, jit=False)
    wide = [jax.tree.map(lambda g: g.astype(jnp.float32), g) for g in grads_seq]
    theirs, _, _ = _bit_run(optax_factory(), params, wide, jit=False)
    _assert_bitwise(ours, theirs)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state[1:]))


def test_optax_adam_on_small_float16_gradients_steps_by_g_over_eps():
    # Why float16 gradients are widened: the contrast with optax's float16 squares.
    g, p = jnp.array([1e-3, 3e-3], jnp.float16), jnp.ones(2)
    theirs, _ = optax.adam(1e-3).update(g, optax.adam(1e-3).init(p), p)
    ours, _ = pl.adam(1e-3).update(g, pl.adam(1e-3).init(p), p)
    assert np.all(np.abs(np.asarray(theirs)) > 10)  # 1e4 times the learning rate
    np.testing.assert_allclose(ours, [-1e-3, -1e-3], rtol=1e-4)


# =============================================================================
# 14. Overflow: a finite huge gradient saturates the state instead of freezing it
# =============================================================================

SATURATING = ["adam", "adamw", "adagrad", "rmsprop"]
HUGE_CASES = [  # (params dtype, gradient dtype, a gradient whose square overflows)
    ("float32", "float32", 1e30),
    ("float32", "bfloat16", 1e30),
    ("bfloat16", "bfloat16", 1e30),
    ("float16", "float16", 60000.0),
    ("float64", "float64", 1e200),
]


@pytest.mark.parametrize("name", SATURATING)
@pytest.mark.parametrize(("param_dtype", "grad_dtype", "huge"), HUGE_CASES, ids=str)
def test_huge_gradient_keeps_the_state_finite_and_the_parameters_moving(
    name, param_dtype, grad_dtype, huge
):
    with jax.enable_x64(param_dtype == "float64"):
        opt = getattr(pl, name)(0.01)
        params = jnp.zeros(3, param_dtype)
        update = jax.jit(opt.update)
        u, state = update(jnp.array([huge, 1.0, -huge], grad_dtype), opt.init(params), params)
        params = optax.apply_updates(params, u)
        assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(state))
        for _ in range(3):
            before = params
            u, state = update(jnp.array([0.5, 0.5, 0.5], grad_dtype), state, params)
            params = optax.apply_updates(params, u)
            assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(state))
            assert bool(jnp.isfinite(u).all()) and bool((u != 0).all()), u
        # Adam's first moment carries the spike and moves the parameter; AdaGrad
        # and RMSProp take steps too small for the parameter's float, as exact
        # arithmetic would (sqrt(h) >= 1e30), but steps all the same
        if name.startswith("adam"):
            assert bool((params != before).all())
        # optax, for contrast, is stuck at g / inf = 0 (only where it overflows)
        twin = {"adam": optax.adam(0.01), "adamw": optax.adamw(0.01), "adagrad": None}
        if twin.get(name) is not None and grad_dtype != "float16":
            t_opt = twin[name]
            p = jnp.zeros(3, param_dtype)
            _, s = t_opt.update(jnp.array([huge, 1.0, -huge], grad_dtype), t_opt.init(p), p)
            u_t, _ = t_opt.update(jnp.array([0.5, 0.5, 0.5], grad_dtype), s, p)
            assert float(u_t[0]) == 0.0


@pytest.mark.parametrize("name", SATURATING)
def test_the_step_a_huge_gradient_causes_is_the_exact_arithmetic_one(name):
    # Oracle: the same optimizer in float64, where 1e30 squares without overflow.
    # Saturating only the square left 1e30 / sqrt(float32 max): Adam stepped by 2.6e9.
    grads = [[1e30, 1.0, -1e30], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5]]

    def steps(dtype):
        opt, p = getattr(pl, name)(0.1), jnp.zeros(3, dtype)
        state, out = opt.init(p), []
        for g in grads:
            u, state = opt.update(jnp.array(g, dtype), state, p)
            p = optax.apply_updates(p, u)
            out.append(np.asarray(u, np.float64))
        return out

    ours = steps(jnp.float32)
    with jax.enable_x64(True):
        exact = steps(jnp.float64)
    # the spike's own step is exact arithmetic's; the elements without a spike too
    np.testing.assert_allclose(ours[0], exact[0], rtol=1e-5)
    for u, e in zip(ours, exact, strict=True):
        np.testing.assert_allclose(u[1], e[1], rtol=1e-4)  # float32 against float64
    # later steps of a spiked element: the saturated moments lose exact arithmetic's
    # ratio (Adam's 0.47 where it is 0.067 at lr 0.1), but stay of lr's order
    # (unsaturated they were 0, saturated without the spike rule 2.6e9)
    for u in ours[1:]:
        assert np.all((np.abs(u) > 0) & (np.abs(u) <= 10 * 0.1 / np.sqrt(1 - 0.99))), u


def test_saturation_changes_nothing_below_the_overflow():
    # The first step at a gradient just below sqrt(float32 max) is optax's, bit for bit.
    g = jnp.array([1.8e19, -1.8e19, 3.0], jnp.float32)
    for ours, theirs in [
        (pl.adam(0.01), optax.adam(0.01)),
        (pl.rmsprop(0.01), optax.rmsprop(0.01, decay=0.99, eps=1e-7, eps_in_sqrt=False)),
    ]:
        p = jnp.zeros(3)
        u1, s1 = ours.update(g, ours.init(p), p)
        u2, s2 = theirs.update(g, theirs.init(p), p)
        _assert_bitwise(u1, u2)
        floats = [x for x in jax.tree.leaves(s2) if jnp.issubdtype(x.dtype, jnp.floating)]
        _assert_bitwise(s1[1:], floats)


@settings(max_examples=25, deadline=None, database=None)
@given(
    huge=st.floats(1.9e19, 3.4e38).map(np.float32).map(float),
    name=st.sampled_from(SATURATING),
)
@example(huge=1e30, name="adam")
@example(huge=3.4e38, name="adagrad")
@example(huge=3.4e38, name="rmsprop")
def test_property_any_finite_gradient_leaves_the_state_finite(huge, name):
    opt = getattr(pl, name)(0.01)
    p = jnp.zeros(2)
    state = opt.init(p)
    for g in ([huge, -huge], [huge, huge], [1.0, -1.0]):
        u, state = opt.update(jnp.array(g, jnp.float32), state, p)
        assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(state))
        assert bool(jnp.isfinite(u).all())


@pytest.mark.parametrize("name", SATURATING)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_gradients_are_not_hidden(name, bad):
    # Decision: NaN and inf gradients propagate as in optax (apply_if_finite skips them).
    opt = getattr(pl, name)(0.01)
    p = jnp.zeros(2)
    u, state = opt.update(jnp.array([bad, 1.0]), opt.init(p), p)
    assert not np.isfinite(float(u[0])) and np.isfinite(float(u[1]))
    assert any(not np.isfinite(float(x[0])) for x in jax.tree.leaves(state[1:]))
    # the poisoned state stays poisoned: a later finite gradient does not clip it back
    _, state = opt.update(jnp.array([1.0, 1.0]), state, p)
    assert any(not np.isfinite(float(x[0])) for x in jax.tree.leaves(state[1:]))
