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
from conftest import CompileCounter, toy_data, trees_equal
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.flatten_util import ravel_pytree

import purelearn as pl


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


@pytest.mark.parametrize("packed", [False, True])
def test_step_donates_its_input_state(packed):
    model, opt = pl.mlp([5, 4, 3]), pl.sgd(0.1)
    state = pl.TrainState.create(model, opt, 0)
    state = pl.PackedState.pack(state, opt) if packed else state
    x, y = toy_data()
    step = pl.make_train_step(model, opt)
    step(state, x, y)
    assert all(a.is_deleted() for a in jax.tree.leaves(state._replace(key=None)))
    with pytest.raises(RuntimeError, match="deleted"):
        jnp.sum(state.params.tree[0]["w"] if packed else state.params[0]["w"])


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
    assert set(history) == {"epoch", "loss", "train_accuracy", "eval_accuracy", "step_loss"}
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
    es = pl.EarlyStopping(patience=1, mode="min", monitor="loss")
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
    "kwargs",
    [
        {"patience": 0},
        {"patience": 1.5},
        {"min_delta": -1.0},
        {"mode": "up"},
        {"monitor": "val_acc"},
        {"restore_best": "yes"},
        {"patience": True},
    ],
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


# -- one engine: seeds, resuming, callbacks, textbook sampling ---------------------


def test_fit_leaves_the_callers_state_usable_and_resumes_without_a_key():
    # Regression: fit(state=s) used to donate s, deleting the caller's arrays.
    model, opt = pl.mlp([5, 8, 3]), pl.adam(0.01)
    data = toy_data(n=64)
    start, _ = pl.fit(model, opt, data, epochs=1, batch_size=16, key=3, progress=False)
    before = jax.tree.map(np.asarray, start.params)
    resumed, _ = pl.fit(model, opt, data, epochs=2, batch_size=16, state=start, progress=False)
    assert not start.params[0]["w"].is_deleted()
    assert trees_equal(start.params, before)
    assert int(resumed.step) == int(start.step) + 8
    again, _ = pl.fit(model, opt, data, epochs=2, batch_size=16, state=start, progress=False)
    assert trees_equal(again, resumed)


@pytest.mark.parametrize("key", [0, np.int64(0), jax.random.key(0), jax.random.PRNGKey(0)])
def test_every_key_argument_takes_an_int_seed(key):
    model, opt = pl.mlp([5, 3]), pl.sgd(0.1)
    data = toy_data(n=32)
    ref, _ = pl.fit(
        model, opt, data, epochs=1, batch_size=16, key=jax.random.key(0), progress=False
    )
    state, _ = pl.fit(model, opt, data, epochs=1, batch_size=16, key=key, progress=False)
    run_state, _ = pl.train_run(model, opt, data, epochs=1, batch_size=16, key=key)
    assert trees_equal(state.params, ref.params)
    assert trees_equal(pl.TrainState.create(model, opt, key), pl.TrainState.create(model, opt, 0))
    np.testing.assert_allclose(run_state.params[0]["w"], ref.params[0]["w"], rtol=1e-6)


@pytest.mark.parametrize("key", [True, 1.5, "0", None, jax.random.split(jax.random.key(0), 2)])
def test_a_bad_key_is_named(key):
    with pytest.raises(ValueError, match="key"):
        pl.fit(pl.mlp([5, 3]), pl.sgd(), toy_data(n=32), epochs=1, batch_size=8, key=key)


def test_fit_callback_sees_every_epoch_and_can_stop():
    seen = []

    def callback(epoch, state, history):
        seen.append((epoch, int(state.step), len(history["loss"])))
        return epoch == 2

    _, history = pl.fit(
        pl.mlp([5, 3]), pl.sgd(0.1), toy_data(n=32), epochs=10, batch_size=8, key=0,
        callback=callback, progress=False,
    )  # fmt: skip
    assert seen == [(0, 4, 1), (1, 8, 2), (2, 12, 3)]
    assert len(history["loss"]) == 3


def test_random_sampling_is_the_textbooks_iteration_loop():
    # sampling="random": every batch drawn with replacement from the shuffle stream
    # (the textbook's np.random.choice(train_size, batch_size)), steps_per_epoch of them.
    model, opt = pl.mlp([5, 8, 3]), pl.momentum(0.1)
    x, y = toy_data(n=40)
    _, curves = pl.train_run(
        model, opt, (x, y), epochs=2, batch_size=16, steps_per_epoch=7, sampling="random", key=1
    )
    assert curves["step_loss"].shape == (2, 7)
    step, state = pl.make_train_step(model, opt), pl.TrainState.create(model, opt, 1)
    losses = []
    for _ in range(2):
        key = jax.random.fold_in(jax.random.split(state.key)[1], state.step)
        idx = jax.random.randint(key, (7, 16), 0, 40)
        assert len({tuple(r) for r in np.sort(np.asarray(idx), axis=1)}) == 7
        for b in idx:
            state, m = step(state, x[b], y[b])
            losses.append(float(m["loss"]))
    np.testing.assert_allclose(np.ravel(curves["step_loss"]), losses, rtol=1e-5)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        pl.train_run(model, opt, (x, y), epochs=1, batch_size=8, steps_per_epoch=3, key=0)
    with pytest.raises(ValueError, match="sampling"):
        pl.train_run(model, opt, (x, y), epochs=1, batch_size=8, sampling="bootstrap", key=0)


# -- early stopping: monitor, mode, restore_best --------------------------------------


def test_min_mode_on_an_accuracy_is_refused():
    # Regression: EarlyStopping(mode="min") was accepted while fit watched an accuracy,
    # so it stopped runs that were improving.
    with pytest.raises(ValueError, match="mode='min' contradicts"):
        pl.EarlyStopping(mode="min")
    with pytest.raises(ValueError, match="mode='max' contradicts"):
        pl.EarlyStopping(mode="max", monitor="loss")
    assert pl.EarlyStopping(monitor="loss").direction == "min"
    assert pl.EarlyStopping().direction == "max"


def test_monitoring_eval_accuracy_needs_eval_data():
    es = pl.EarlyStopping(monitor="eval_accuracy")
    with pytest.raises(ValueError, match="needs eval_data"):
        pl.fit(pl.mlp([5, 3]), pl.sgd(), toy_data(n=32), epochs=2, batch_size=8, key=0,
               early_stopping=es, progress=False)  # fmt: skip


def test_early_stopping_on_the_loss_in_fit_and_train_run():
    # A too-large rate makes the loss rise: "loss"/min stops early, as a loss watcher should.
    model, opt = pl.mlp([5, 16, 3]), pl.sgd(0.05)
    data = toy_data(n=64)
    es = pl.EarlyStopping(patience=2, monitor="loss", min_delta=10.0)  # nothing improves by 10
    _, history = pl.fit(model, opt, data, epochs=8, batch_size=16, key=0, early_stopping=es,
                        progress=False)  # fmt: skip
    assert len(history["loss"]) == 3
    _, curves = pl.train_run(model, opt, data, epochs=8, batch_size=16, key=0, early_stopping=es)
    assert curves["trained"].tolist() == [True] * 3 + [False] * 5
    np.testing.assert_allclose(curves["loss"][:3], history["loss"], rtol=1e-5)


def test_restore_best_returns_the_best_epochs_state():
    model, opt = pl.mlp([5, 16, 3]), pl.sgd(2.0)  # large steps: the eval accuracy wanders
    data, held_out = toy_data(n=64), toy_data(n=64, seed=7)
    kw = {"epochs": 8, "batch_size": 16, "key": 0, "eval_data": held_out}
    es = pl.EarlyStopping(patience=8, restore_best=True)
    state, history = pl.fit(model, opt, data, early_stopping=es, progress=False, **kw)
    best = int(np.argmax(history["eval_accuracy"]))
    assert pl.evaluate(model, state, *held_out) == pytest.approx(max(history["eval_accuracy"]))
    assert int(state.step) == (best + 1) * 4
    run_state, _ = pl.train_run(model, opt, data, early_stopping=es, **kw)
    assert int(run_state.step) == (best + 1) * 4
    np.testing.assert_allclose(run_state.params[0]["w"], state.params[0]["w"], rtol=1e-5)
    last, _ = pl.fit(model, opt, data, progress=False, **kw)
    assert int(last.step) == 32


class PythonEarlyStopping:
    """The rule, written plainly: stop after `patience` epochs in a row without beating
    the best by more than `min_delta` in the metric's direction (NaN never improves)."""

    def __init__(self, patience, min_delta, sign):
        self.patience, self.min_delta, self.sign = patience, min_delta, sign
        self.best, self.wait, self.stop = -np.inf, 0, False

    def update(self, metric):
        value = self.sign * np.float32(metric)
        if value - self.best > self.min_delta:
            self.best, self.wait = value, 0
        else:
            self.wait += 1
        self.stop = self.stop or self.wait >= self.patience
        return self.stop


metric_lists = st.lists(
    st.one_of(st.floats(0, 1, width=32), st.just(float("nan"))), min_size=1, max_size=12
)


@settings(max_examples=40, deadline=None)
@given(
    metrics=metric_lists,
    patience=st.integers(1, 4),
    min_delta=st.sampled_from([0.0, 0.01, 0.2]),
    monitor=st.sampled_from([None, "loss"]),
)
def test_early_stopping_matches_a_python_state_machine_eagerly_in_scan_and_vmap(
    metrics, patience, min_delta, monitor
):
    es = pl.EarlyStopping(patience=patience, min_delta=min_delta, monitor=monitor)
    ref = PythonEarlyStopping(patience, min_delta, 1 if es.direction == "max" else -1)
    expected = [ref.update(m) for m in metrics]
    s, eager = es.init(), []
    for m in metrics:
        s = es.update(s, m)
        eager.append(bool(s.should_stop))
    assert eager == expected
    values = jnp.asarray(metrics, jnp.float32)
    scan = lambda v: jax.lax.scan(  # noqa: E731
        lambda c, m: (es.update(c, m), es.update(c, m).should_stop), es.init(), v
    )[1]
    assert jax.jit(scan)(values).tolist() == expected
    stacked = jnp.stack([values, values[::-1]])
    reverse = PythonEarlyStopping(patience, min_delta, ref.sign)
    assert jax.vmap(scan)(stacked).tolist() == [
        expected,
        [reverse.update(m) for m in metrics[::-1]],
    ]


# -- bad input, named early ----------------------------------------------------------


def test_labels_outside_the_classes_are_refused_before_training():
    # Regression: labels 3 (or -1) for a 3-class model trained to a NaN loss silently.
    model, opt = pl.mlp([5, 3]), pl.sgd()
    x, y = toy_data(n=32)
    for bad in (3, -1):
        with pytest.raises(ValueError, match=f"label {bad} is outside"):
            pl.fit(model, opt, (x, y.at[5].set(bad)), epochs=1, batch_size=8, key=0)
        with pytest.raises(ValueError, match=f"label {bad}"):
            pl.train_run(model, opt, (x, y), eval_data=(x, y.at[0].set(bad)), epochs=1,
                         batch_size=8, key=0)  # fmt: skip
        with pytest.raises(ValueError, match=f"label {bad}"):
            pl.evaluate(model, pl.TrainState.create(model, opt, 0), x, y.at[1].set(bad))
    with pytest.raises(ValueError, match="integers"):
        pl.fit(model, opt, (x, y.astype(jnp.float32)), epochs=1, batch_size=8, key=0)
    with pytest.raises(ValueError, match="one-hot"):
        pl.fit(model, opt, (x, jax.nn.one_hot(y, 4)), epochs=1, batch_size=8, key=0)
    with pytest.raises(ValueError, match="cannot be applied"):
        pl.fit(model, opt, (x[:, :4], y), epochs=1, batch_size=8, key=0)


def test_evaluate_scores_a_diverged_model_zero_not_the_majority_share():
    # Regression: argmax of NaN logits is class 0, so NaN params scored the class-0 share.
    model, opt = pl.mlp([5, 3]), pl.sgd()
    x, _ = toy_data(n=30)
    y = jnp.zeros(30, jnp.int32)
    state = pl.TrainState.create(model, opt, 0)
    nan_state = state._replace(params=jax.tree.map(lambda p: p * jnp.nan, state.params))
    assert pl.evaluate(model, nan_state, x, y) == 0.0
    with pytest.raises(ValueError, match="batch_size"):
        pl.evaluate(model, state, x, y, batch_size=-1)
    with pytest.raises(ValueError, match="empty"):
        pl.evaluate(model, state, x[:0], y[:0])


def test_step_names_bad_inputs_instead_of_failing_deep_in_jax():
    model, opt = pl.mlp([5, 3]), pl.sgd()
    step = pl.make_train_step(model, opt)
    x, y = toy_data(n=16)
    with pytest.raises(ValueError, match="same number of examples"):
        step(pl.TrainState.create(model, opt, 0), x, y[:-1])
    with pytest.raises(ValueError, match="different optimizer"):
        step(pl.TrainState.create(model, pl.adam(), 0), x, y)
    with pytest.raises(ValueError, match="does not match the optimizer"):
        pl.fit(model, opt, (x, y), epochs=1, batch_size=8,
               state=pl.TrainState.create(model, pl.adam(), 0), progress=False)  # fmt: skip
    for kwargs, match in (
        ({"weight_decay": "a"}, "weight_decay"),
        ({"weight_decay": 10**400}, "weight_decay"),
    ):
        with pytest.raises(ValueError, match=match):
            pl.make_train_step(model, opt, **kwargs)
    with pytest.raises(ValueError, match="optimizer"):
        pl.make_train_step(model, None)
    with pytest.raises(ValueError, match="model"):
        pl.make_train_step(lambda x: x, opt)
    with pytest.raises(ValueError, match="early_stopping"):
        pl.fit(model, opt, (x, y), epochs=1, batch_size=8, key=0, early_stopping="yes")
    with pytest.raises(ValueError, match="fit needs a key"):
        pl.fit(model, opt, (x, y), epochs=1, batch_size=8)


def test_a_nan_batch_skipped_by_apply_if_finite_leaves_batch_norm_statistics_alone():
    # Regression: optax.apply_if_finite skipped the parameter update on a NaN batch, but
    # the running statistics still became NaN for good.
    model = pl.mlp([5, 8, 3], batch_norm=True)
    opt = optax.apply_if_finite(pl.sgd(0.1), max_consecutive_errors=5)
    step = pl.make_train_step(model, opt)
    x, y = toy_data(n=16)
    state, _ = step(pl.TrainState.create(model, opt, 0), x, y)
    before = jax.tree.map(np.asarray, (state.params, state.model_state))
    state, metrics = step(state, x.at[3, 2].set(jnp.nan), y)
    assert not np.isfinite(float(metrics["loss"]))
    assert trees_equal((state.params, state.model_state), before)
    state, _ = step(state, x, y)
    assert all(np.isfinite(a).all() for a in jax.tree.leaves(state.model_state))


# -- compile once ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def compiles():
    return CompileCounter()


def test_a_second_identical_call_compiles_nothing(compiles):
    model, data, held_out = pl.mlp([5, 8, 3], batch_norm=True), toy_data(n=64), toy_data(n=32)
    es = pl.EarlyStopping(patience=2)
    adam, momentum, sgd = pl.adam(0.01), pl.momentum(0.1), pl.sgd(0.1)
    calls = {
        "fit": lambda: pl.fit(model, adam, data, epochs=2, batch_size=16, key=0,
                              eval_data=held_out, early_stopping=es, progress=False),
        "train_run": lambda: pl.train_run(model, momentum, data, epochs=2, batch_size=16,
                                          key=1, weight_decay=0.01),
        "evaluate": lambda: pl.evaluate(model, pl.TrainState.create(model, sgd, 0), *data),
        "step": lambda: pl.make_train_step(model, sgd)(
            pl.TrainState.create(model, sgd, 0), *data),
        "random_search": lambda: pl.random_search(
            model, pl.sgd, data, held_out, space={"learning_rate": pl.log_uniform(1e-3, 1.0)},
            num_trials=3, epochs=2, batch_size=16, key=0),
    }  # fmt: skip
    for name, call in calls.items():
        compiles.count(call)
        assert compiles.count(call) == 0, name
    # another weight decay, key or data of the same shapes: still nothing new
    assert compiles.count(lambda: pl.train_run(model, momentum, toy_data(n=64, seed=5),
                          epochs=2, batch_size=16, key=9, weight_decay=0.5)) == 0  # fmt: skip
