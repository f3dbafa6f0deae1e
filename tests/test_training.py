"""Training: the jitted step, fit, early stopping, checkpoints, multi-device."""

import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import purelearn as pl


def toy_data(n=96, d=5, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (np.argmax(x[:, :classes], axis=1)).astype(np.int32)
    return jnp.asarray(x), jnp.asarray(y)


def host_leaves(tree):
    """Leaves as NumPy arrays, typed PRNG keys as their data."""
    return [
        np.asarray(
            jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x
        )
        for x in jax.tree.leaves(tree)
    ]


def trees_equal(a, b):
    return all(np.array_equal(u, v) for u, v in zip(host_leaves(a), host_leaves(b), strict=True))


def fresh(model, opt, seed=0):
    return pl.TrainState.create(model, opt, jax.random.key(seed))


def test_train_state_is_a_pytree_with_the_contract_fields():
    state = fresh(pl.mlp([5, 4, 3], batch_norm=True), pl.adam())
    assert state._fields == ("step", "params", "model_state", "opt_state", "key")
    assert state.step.dtype == jnp.int32 and int(state.step) == 0
    leaves = jax.tree.leaves(state)
    assert len(leaves) > 5 and all(isinstance(x, jax.Array) for x in leaves)


# -- the step -------------------------------------------------------------------


def reference_loss(model, params, model_state, x, y, wd):
    """The textbook's loss, written here: mean cross-entropy + 0.5*wd*sum(W**2)."""
    logits, _ = model.apply(params, model_state, x, train=True)
    logp = jax.nn.log_softmax(logits)
    ce = -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))
    l2 = sum(jnp.sum(p["w"] ** 2) for p in params)
    return ce + 0.5 * wd * l2


def test_step_gradient_matches_float64_finite_differences():
    with jax.enable_x64(True):
        model = pl.mlp([4, 6, 5, 3], activation="tanh", batch_norm=True)
        state = fresh(model, pl.sgd(1.0))
        state = jax.tree.map(
            lambda a: a.astype(jnp.float64) if a.dtype == jnp.float32 else a, state
        )
        x, y = toy_data(n=8, d=4)
        x = x.astype(jnp.float64)
        wd = 0.3
        params = state.params
        step = pl.make_train_step(model, pl.sgd(1.0), weight_decay=wd)
        new_state, metrics = step(jax.tree.map(jnp.copy, state), x, y)
        grads = jax.tree.map(lambda p, q: p - q, params, new_state.params)  # sgd(1): w - g

        flat, unravel = ravel_pytree(params)
        f = jax.jit(lambda v: reference_loss(model, unravel(v), state.model_state, x, y, wd))
        np.testing.assert_allclose(metrics["loss"], f(flat), rtol=1e-12)
        h = 1e-6
        basis = np.eye(flat.size)
        fd = np.array([(f(flat + h * e) - f(flat - h * e)) / (2 * h) for e in basis])
        got = np.asarray(ravel_pytree(grads)[0])
        np.testing.assert_allclose(got, fd, rtol=1e-6, atol=1e-8)


def test_weight_decay_adds_exactly_lambda_w_on_weights_not_biases():
    with jax.enable_x64(True):
        model = pl.mlp([5, 7, 3])
        base = fresh(model, pl.sgd(1.0))
        base = jax.tree.map(lambda a: a.astype(jnp.float64) if a.dtype == jnp.float32 else a, base)
        x, y = toy_data(n=16)
        x = x.astype(jnp.float64)
        lam = 0.25
        plain, _ = pl.make_train_step(model, pl.sgd(1.0))(jax.tree.map(jnp.copy, base), x, y)
        decayed, _ = pl.make_train_step(model, pl.sgd(1.0), weight_decay=lam)(
            jax.tree.map(jnp.copy, base), x, y
        )
        for p0, a, b in zip(base.params, plain.params, decayed.params, strict=True):
            np.testing.assert_allclose(a["w"] - b["w"], lam * p0["w"], rtol=1e-10, atol=1e-15)
            np.testing.assert_array_equal(a["b"], b["b"])


def test_step_is_pure_and_deterministic():
    model = pl.mlp([5, 16, 3], batch_norm=True, dropout_rate=0.2)
    opt = pl.adam(0.01)
    x, y = toy_data()
    step = pl.make_train_step(model, opt)
    a, ma = step(fresh(model, opt), x, y)
    b, mb = step(fresh(model, opt), x, y)
    assert trees_equal(a, b) and trees_equal(ma, mb)


def test_step_donates_its_input_state():
    model, opt = pl.mlp([5, 3]), pl.sgd(0.1)
    state = fresh(model, opt)
    x, y = toy_data()
    step = pl.make_train_step(model, opt)
    step(state, x, y)
    assert state.params[0]["w"].is_deleted()


class KeyProbe(nn.Module):
    """Returns the dropout key it was given through its mutable state."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        seen = self.variable("probe", "key", lambda: jnp.zeros(2, jnp.uint32))
        if train:
            seen.value = jax.random.key_data(self.make_rng("dropout"))
        return nn.Dense(3)(x)


def test_dropout_key_differs_every_step_and_from_the_state_key():
    model = pl.from_flax(KeyProbe(), jnp.ones((1, 5)))
    opt = pl.sgd(0.1)
    step = pl.make_train_step(model, opt)
    state = fresh(model, opt)
    x, y = toy_data()
    seen = []
    for _ in range(5):
        state, _ = step(state, x, y)
        seen.append(tuple(np.asarray(state.model_state["probe"]["key"]).tolist()))
    assert len(set(seen)) == 5


def test_metrics_are_batch_loss_and_accuracy_and_one_hot_labels_agree():
    model, opt = pl.mlp([5, 3]), pl.sgd(0.1)
    x, y = toy_data()
    s1, m_int = pl.make_train_step(model, opt)(fresh(model, opt), x, y)
    s2, m_hot = pl.make_train_step(model, opt)(fresh(model, opt), x, jax.nn.one_hot(y, 3))
    params, _ = model.init(jax.random.split(jax.random.key(0))[0])
    logits, _ = model.apply(params, [], x, train=False)
    expected = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    np.testing.assert_allclose(m_int["loss"], expected, rtol=1e-6)
    np.testing.assert_allclose(m_int["accuracy"], jnp.mean(jnp.argmax(logits, 1) == y))
    np.testing.assert_allclose(m_hot["loss"], m_int["loss"], rtol=1e-6)
    assert trees_equal(s1.params, s2.params) or np.allclose(
        ravel_pytree(s1.params)[0], ravel_pytree(s2.params)[0]
    )


def test_bad_weight_decay_is_rejected():
    with pytest.raises(ValueError, match="weight_decay"):
        pl.make_train_step(pl.mlp([2, 2]), pl.sgd(), weight_decay=-1.0)
    with pytest.raises(ValueError, match="nan"):
        pl.make_train_step(pl.mlp([2, 2]), pl.sgd(), weight_decay=float("nan"))


# -- fit ------------------------------------------------------------------------


def test_fit_equals_the_same_steps_taken_one_by_one():
    model, opt = pl.mlp([5, 8, 3], dropout_rate=0.1), pl.momentum(0.1)
    x, y = toy_data(n=50)
    state, history = pl.fit(
        model, opt, (x, y), epochs=3, batch_size=16, key=jax.random.key(0), progress=False
    )
    assert int(state.step) == 9 and len(history["step_loss"]) == 9  # 50 // 16 = 3 per epoch
    # Replay: the epoch's order comes from the shuffle stream at the epoch's first step.
    step = pl.make_train_step(model, opt)
    replay = fresh(model, opt)
    shuffle_root = jax.random.split(replay.key)[1]
    losses = []
    for _ in range(3):
        order = jax.random.permutation(jax.random.fold_in(shuffle_root, replay.step), 50)
        for b in range(3):
            idx = order[b * 16 : (b + 1) * 16]
            replay, m = step(replay, x[idx], y[idx])
            losses.append(float(m["loss"]))
    np.testing.assert_allclose(history["step_loss"], losses, rtol=1e-5)
    np.testing.assert_allclose(
        ravel_pytree(state.params)[0],
        ravel_pytree(replay.params)[0],
        rtol=1e-5,
        atol=1e-6,
    )


def test_fit_history_and_evaluation():
    model, opt = pl.mlp([5, 16, 3]), pl.adam(0.02)
    x, y = toy_data(n=128)
    xe, ye = toy_data(n=64, seed=1)
    state, history = pl.fit(
        model,
        opt,
        (x, y),
        epochs=6,
        batch_size=32,
        key=jax.random.key(0),
        eval_data=(xe, ye),
        progress=False,
    )
    assert set(history) == {"loss", "train_accuracy", "eval_accuracy", "step_loss"}
    assert all(len(history[k]) == 6 for k in ("loss", "train_accuracy", "eval_accuracy"))
    assert history["loss"][-1] < history["loss"][0]
    assert history["eval_accuracy"][-1] == pl.evaluate(model, state, xe, ye)
    assert history["eval_accuracy"][-1] > 0.8


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 1000}, "1000"),
        ({"weight_decay": -0.1}, "weight_decay"),
    ],
)
def test_fit_bad_arguments(kwargs, match):
    args = {"epochs": 1, "batch_size": 8, "key": jax.random.key(0), "progress": False} | kwargs
    with pytest.raises(ValueError, match=match):
        pl.fit(pl.mlp([5, 3]), pl.sgd(), toy_data(n=32), **args)


@pytest.mark.slow
def test_textbook_five_layer_net_reaches_90_percent_on_the_embedded_sample():
    (x, y), (xt, yt) = pl.load_mnist("embedded")
    model = pl.mlp([784, 100, 100, 100, 100, 10])
    _state, history = pl.fit(
        model,
        pl.adam(),
        (x, y),
        epochs=20,
        batch_size=128,
        key=jax.random.key(0),
        eval_data=(xt, yt),
        progress=False,
    )
    assert history["eval_accuracy"][-1] >= 0.90, history["eval_accuracy"]


# -- early stopping ---------------------------------------------------------------


def test_early_stopping_state_machine():
    es = pl.EarlyStopping(patience=2, min_delta=0.01)
    s = es.init()
    stops = []
    for acc in [0.5, 0.6, 0.605, 0.7, 0.69, 0.705, 0.70]:
        s = es.update(s, acc)
        stops.append(bool(s.should_stop))
    # 0.605 and 0.705 are within min_delta: no improvement.
    assert stops == [False, False, False, False, False, True, True]
    np.testing.assert_allclose(es.best_metric(s), 0.7)


def test_early_stopping_min_mode_and_sticky_stop():
    es = pl.EarlyStopping(patience=1, mode="min")
    s = es.init()
    s = es.update(s, 1.0)
    s = es.update(s, 0.5)
    assert not bool(s.should_stop)
    s = es.update(s, 0.6)
    assert bool(s.should_stop)
    s = es.update(s, 0.1)  # once stopped, stays stopped
    assert bool(s.should_stop) and float(es.best_metric(s)) == pytest.approx(0.1)


def test_early_stopping_inside_a_while_loop():
    es = pl.EarlyStopping(patience=3)
    metrics = jnp.array([0.1, 0.2, 0.3, 0.3, 0.25, 0.29, 0.31, 0.4])

    def cond(c):
        i, s = c
        return (i < metrics.size) & ~s.should_stop

    def body(c):
        i, s = c
        return i + 1, es.update(s, metrics[i])

    i, s = jax.jit(lambda: jax.lax.while_loop(cond, body, (0, es.init())))()
    assert int(i) == 6 and bool(s.should_stop)


@pytest.mark.parametrize(
    "kwargs", [{"patience": 0}, {"patience": 1.5}, {"min_delta": -1.0}, {"mode": "up"}]
)
def test_early_stopping_bad_arguments(kwargs):
    with pytest.raises(ValueError, match=str(next(iter(kwargs.values())))):
        pl.EarlyStopping(**kwargs)


def test_fit_stops_early():
    model, opt = pl.mlp([5, 3]), pl.sgd(0.0)  # never improves after the first epoch
    _, history = pl.fit(
        model,
        opt,
        toy_data(),
        epochs=20,
        batch_size=16,
        key=jax.random.key(0),
        early_stopping=pl.EarlyStopping(patience=2),
        progress=False,
    )
    assert len(history["loss"]) == 3


# -- checkpoints --------------------------------------------------------------------


def test_checkpoint_round_trip_and_resume_is_bit_identical(tmp_path):
    model = pl.mlp([5, 12, 3], batch_norm=True, dropout_rate=0.2)
    opt = pl.adam(0.01)
    x, y = toy_data(n=64)
    step = pl.make_train_step(model, opt)
    state = fresh(model, opt)
    for _ in range(3):
        state, _ = step(state, x, y)
    path = tmp_path / "ckpt.msgpack"
    pl.save_checkpoint(path, state)
    loaded = pl.load_checkpoint(path, fresh(model, opt, seed=5))
    assert trees_equal(loaded, state)
    assert isinstance(loaded.opt_state, type(state.opt_state))
    for _ in range(3):
        state, m1 = step(state, x, y)
        loaded, m2 = step(loaded, x, y)
    assert trees_equal(loaded, state)
    assert trees_equal(m1, m2)


def test_fit_resumes_from_a_checkpoint_bit_identically(tmp_path):
    model, opt = pl.mlp([5, 8, 3], dropout_rate=0.2), pl.adam(0.01)
    data = toy_data(n=64)
    kw = {"batch_size": 16, "key": jax.random.key(3), "progress": False}
    full, h_full = pl.fit(model, opt, data, epochs=4, **kw)
    half, h_half = pl.fit(model, opt, data, epochs=2, **kw)
    pl.save_checkpoint(tmp_path / "c", half)
    resumed = pl.load_checkpoint(tmp_path / "c", fresh(model, opt))
    rest, h_rest = pl.fit(model, opt, data, epochs=2, state=resumed, **kw)
    assert trees_equal(rest.params, full.params)
    assert h_half["step_loss"] + h_rest["step_loss"] == h_full["step_loss"]


def test_checkpoint_corrupt_truncated_and_foreign_files(tmp_path):
    model, opt = pl.mlp([5, 3]), pl.sgd()
    state = fresh(model, opt)
    path = tmp_path / "c"
    pl.save_checkpoint(path, state)
    good = path.read_bytes()
    path.write_bytes(good[:-10])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        pl.load_checkpoint(path, state)
    flipped = bytearray(good)
    flipped[-5] ^= 0xFF
    path.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="corrupt"):
        pl.load_checkpoint(path, state)
    path.write_bytes(b"hello world")
    with pytest.raises(ValueError, match="not a purelearn checkpoint"):
        pl.load_checkpoint(path, state)


def test_checkpoint_structure_mismatch(tmp_path):
    opt = pl.adam()
    pl.save_checkpoint(tmp_path / "c", fresh(pl.mlp([5, 4, 3]), opt))
    with pytest.raises(ValueError, match=r"float32\[4\] in the checkpoint but float32\[6\]"):
        pl.load_checkpoint(tmp_path / "c", fresh(pl.mlp([5, 6, 3]), opt))
    with pytest.raises(ValueError, match="like_state"):
        pl.load_checkpoint(tmp_path / "c", fresh(pl.mlp([5, 4, 4, 3]), opt))


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    model, opt = pl.mlp([5, 3]), pl.sgd()
    old = fresh(model, opt)
    path = tmp_path / "c"
    pl.save_checkpoint(path, old)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        pl.save_checkpoint(path, fresh(model, opt, seed=1))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


# -- multi-device -------------------------------------------------------------------

EIGHT_DEVICES = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import purelearn as pl

    assert jax.device_count() == 8, jax.devices()
    model = pl.mlp([20, 32, 32, 10], batch_norm=True, dropout_rate=0.1)
    # Momentum, not Adam: with batch norm the pre-norm biases get gradients that
    # are zero up to rounding, and Adam would blow that rounding up to +-lr.
    opt = pl.momentum(0.05)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(64, 20)) * 2 + 1, jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, 64), jnp.int32)

    def run(x, y, put_state):
        step = pl.make_train_step(model, opt)
        state = put_state(pl.TrainState.create(model, opt, jax.random.key(0)))
        for _ in range(5):
            state, metrics = step(state, x, y)
        return state, metrics

    single, m1 = run(x, y, lambda s: s)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    batch = NamedSharding(mesh, P("data"))
    replicated = NamedSharding(mesh, P())
    sharded, m8 = run(jax.device_put(x, batch), jax.device_put(y, batch),
                      lambda s: jax.device_put(s, replicated))
    assert len(sharded.params[0]["w"].sharding.device_set) == 8
    dev = max(float(jnp.max(jnp.abs(a - b)))
              for a, b in zip(jax.tree.leaves((single.params, single.model_state, m1)),
                              jax.tree.leaves((sharded.params, sharded.model_state, m8))))
    print("MAX_DEVIATION", dev)
    """
)


def test_eight_device_data_parallel_step_equals_one_device():
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu"
    )
    out = subprocess.run(
        [sys.executable, "-c", EIGHT_DEVICES], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    deviation = float(out.stdout.split("MAX_DEVIATION")[1])
    assert deviation < 1e-5


# -- the pure whole-run function ---------------------------------------------------


def test_train_run_equals_fit():
    # Momentum, not Adam: see the eight-device test on pre-norm biases.
    model, opt = pl.mlp([5, 8, 3], batch_norm=True, dropout_rate=0.1), pl.momentum(0.05)
    data, held_out = toy_data(n=64), toy_data(n=32, seed=2)
    kw = {"epochs": 3, "batch_size": 16, "key": jax.random.key(4), "eval_data": held_out}
    state, history = pl.fit(model, opt, data, progress=False, **kw)
    run_state, curves = jax.jit(lambda: pl.train_run(model, opt, data, **kw))()
    np.testing.assert_allclose(
        ravel_pytree(run_state.params)[0], ravel_pytree(state.params)[0], rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(curves["loss"], history["loss"], rtol=1e-5)
    np.testing.assert_allclose(curves["train_accuracy"], history["train_accuracy"], atol=1e-6)
    np.testing.assert_allclose(curves["eval_accuracy"], history["eval_accuracy"], atol=1e-6)


def test_train_run_early_stopping_equals_fit():
    # min_delta 1.0: only the first epoch improves, so both stop after epoch 2
    model, opt = pl.mlp([5, 8, 3], batch_norm=True, dropout_rate=0.1), pl.momentum(0.05)
    data, held_out = toy_data(n=64), toy_data(n=32, seed=2)
    kw = {
        "epochs": 5,
        "batch_size": 16,
        "key": jax.random.key(4),
        "eval_data": held_out,
        "early_stopping": pl.EarlyStopping(patience=1, min_delta=1.0),
    }
    state, history = pl.fit(model, opt, data, progress=False, **kw)
    assert len(history["loss"]) == 2
    run_state, curves = jax.jit(lambda: pl.train_run(model, opt, data, **kw))()
    assert curves["trained"].tolist() == [True, True, False, False, False]
    assert int(run_state.step) == int(state.step) == 8
    np.testing.assert_allclose(
        ravel_pytree(run_state.params)[0], ravel_pytree(state.params)[0], rtol=1e-5, atol=1e-6
    )
    for name in ("loss", "train_accuracy", "eval_accuracy"):
        np.testing.assert_allclose(curves[name][:2], history[name], rtol=1e-5, atol=1e-6)
        assert curves[name][2:].tolist() == [curves[name][1]] * 3  # frozen after the stop


def test_train_run_takes_numpy_data_under_jit_and_checks_sizes():
    # load_mnist returns NumPy arrays; batches are gathered with traced indices
    x, y = (np.asarray(a) for a in toy_data(n=48))
    opt = optax.inject_hyperparams(pl.sgd)(learning_rate=0.1)
    kw = {"epochs": 2, "batch_size": 16, "key": jax.random.key(0)}
    _, curves = jax.jit(lambda: pl.train_run(pl.mlp([5, 3]), opt, (x, y), eval_data=(x, y), **kw))()
    _, ref = pl.train_run(pl.mlp([5, 3]), opt, (jnp.asarray(x), jnp.asarray(y)), **kw)
    np.testing.assert_allclose(curves["loss"], ref["loss"], rtol=1e-6)
    for bad, match in (({"epochs": 0}, "epochs"), ({"batch_size": 100}, "100")):
        with pytest.raises(ValueError, match=match):
            pl.train_run(pl.mlp([5, 3]), opt, (x, y), **{**kw, **bad})
    with pytest.raises(ValueError, match="eval_data"):
        pl.train_run(pl.mlp([5, 3]), opt, (x, y), eval_data=(x, y[:-1]), **kw)


def test_vmapped_runs_stop_on_their_own():
    # lr 0 never improves (stops after 1 + patience epochs); its lane must not
    # hold back or disturb the lane that keeps training
    model, data = pl.mlp([5, 8, 3]), toy_data(n=48)
    es = pl.EarlyStopping(patience=2)

    def run(lr):
        opt = optax.inject_hyperparams(pl.sgd)(learning_rate=lr)
        return pl.train_run(
            model, opt, data, epochs=6, batch_size=16, key=jax.random.key(0), early_stopping=es
        )

    lrs = jnp.array([0.0, 0.3])
    batched_state, batched = jax.jit(jax.vmap(run))(lrs)
    assert batched["trained"][0].tolist() == [True] * 3 + [False] * 3
    assert batched_state.step.tolist()[0] == 3 * 3
    for i in range(2):
        single_state, single = jax.jit(run)(lrs[i])
        assert batched["trained"][i].tolist() == single["trained"].tolist()
        np.testing.assert_allclose(batched["loss"][i], single["loss"], rtol=1e-5)
        np.testing.assert_allclose(
            ravel_pytree(jax.tree.map(lambda a, i=i: a[i], batched_state.params))[0],
            ravel_pytree(single_state.params)[0],
            rtol=1e-5,
            atol=1e-6,
        )


def test_vmapped_runs_equal_single_runs():
    model = pl.mlp([5, 8, 3])
    data = toy_data(n=48)
    lrs = jnp.array([0.01, 0.1, 0.5])
    wds = jnp.array([0.0, 0.01, 0.1])

    def run(lr, wd):
        opt = optax.inject_hyperparams(pl.momentum)(learning_rate=lr)
        return pl.train_run(
            model, opt, data, epochs=4, batch_size=16, key=jax.random.key(0), weight_decay=wd
        )

    batched_state, batched = jax.jit(jax.vmap(run))(lrs, wds)
    for i in range(3):
        single_state, single = jax.jit(run)(lrs[i], wds[i])
        np.testing.assert_allclose(batched["loss"][i], single["loss"], rtol=1e-5)
        np.testing.assert_allclose(
            ravel_pytree(jax.tree.map(lambda a, i=i: a[i], batched_state.params))[0],
            ravel_pytree(single_state.params)[0],
            rtol=1e-5,
            atol=1e-6,
        )
    assert not np.allclose(batched["loss"][0], batched["loss"][2])
