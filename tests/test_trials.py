"""The one trial runner (``purelearn.training.trials``) behind the searches and the
experiments, and how a search ranks trials with ``EarlyStopping(restore_best=True)``.

Tolerances: a vmapped run is the same computation as the run alone, but XLA compiles
the batched program differently (a batched matmul may sum in another order), so the
float32 numbers agree to rounding, not bit for bit: losses to ``rtol=1e-5`` (a few
ulps per operation, grown over a few dozen steps), accuracies to ``atol=1e-6`` (a
count over a few dozen examples: equal unless a prediction flipped, which these tiny
runs never come near).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import CompileCounter, toy_data
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import purelearn as pl
from purelearn.training import trials
from purelearn.training.trials import Settings, run_trials

MODEL = pl.mlp([4, 8, 3])
EPOCHS, BATCH, N = 2, 16, 5
TRAIN, VAL = toy_data(n=48, d=4), toy_data(n=24, d=4, seed=1)
KEYS = jax.random.split(jax.random.key(0), N)
LR = np.array([0.05, 0.1, 0.3, 0.5, 1.0])
WD = np.array([0.0, 1e-3, 1e-2, 0.1, 0.0])
SETTINGS = Settings(epochs=EPOCHS, batch_size=BATCH)


def runner(**kwargs):
    """Five trials of pl.sgd with injected learning rates and weight decays."""
    kwargs = {
        "keys": KEYS,
        "settings": SETTINGS,
        "weight_decay": WD,
        "hparams": {"learning_rate": LR},
        "chunk": 2,
        **kwargs,
    }
    return run_trials(MODEL, pl.sgd, TRAIN, VAL, **kwargs)


@pytest.fixture(scope="module")
def curves():
    return runner(step_loss=True)


@jax.jit
def alone(lr, wd, key, x, y):
    """One trial as train_run alone (jitted once: the rate is traced, not a new optimizer)."""
    opt = optax.inject_hyperparams(pl.sgd)(learning_rate=lr)
    return pl.train_run(
        MODEL, opt, (x, y), epochs=EPOCHS, batch_size=BATCH, key=key, eval_data=VAL,
        weight_decay=wd,
    )[1]  # fmt: skip


def assert_same_run(got, want, i):
    """Trial ``i`` of ``got`` is the run ``want`` (see the module's tolerances)."""
    np.testing.assert_allclose(got["loss"][i], want["loss"], rtol=1e-5)
    for name in ("train_accuracy", "eval_accuracy"):
        np.testing.assert_allclose(got[name][i], want[name], atol=1e-6)


# -- the runner equals train_run per trial ------------------------------------------


def test_every_trial_is_train_run_alone(curves):
    assert set(curves) == {"loss", "train_accuracy", "eval_accuracy", "step_loss"}
    assert curves["loss"].shape == (N, EPOCHS) and isinstance(curves["loss"], np.ndarray)
    assert curves["step_loss"].shape == (N, EPOCHS, 48 // BATCH)
    for i in range(N):
        want = alone(jnp.float32(LR[i]), jnp.float32(WD[i]), KEYS[i], *TRAIN)
        assert_same_run(curves, want, i)
        np.testing.assert_allclose(curves["step_loss"][i], want["step_loss"], rtol=1e-5)
    # the trials differ: keys, rates and decays reached the runs
    assert len({tuple(c) for c in curves["loss"].tolist()}) == N


def test_step_loss_is_an_option_and_no_decay_is_none(curves):
    out = runner()
    assert "step_loss" not in out
    for name in ("loss", "train_accuracy", "eval_accuracy"):
        np.testing.assert_array_equal(out[name], curves[name])  # the same program's numbers
    plain = runner(weight_decay=None)
    want = alone(jnp.float32(LR[0]), jnp.float32(0.0), KEYS[0], *TRAIN)
    assert_same_run(plain, want, 0)


@pytest.mark.slow
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, N), chunk=st.integers(1, 3))
@example(n=N, chunk=2)  # 2 + 2 + 1: the last chunk padded
def test_chunked_with_padding_equals_unchunked(n, chunk):
    whole = runner(keys=KEYS[:n], weight_decay=WD[:n], hparams={"learning_rate": LR[:n]},
                   chunk=n)  # fmt: skip
    chunked = runner(keys=KEYS[:n], weight_decay=WD[:n], hparams={"learning_rate": LR[:n]},
                     chunk=chunk)  # fmt: skip
    assert chunked["loss"].shape == (n, EPOCHS)  # the padding is dropped
    for i in range(n):
        assert_same_run(chunked, {k: v[i] for k, v in whole.items()}, i)


def test_the_default_width_pads_to_one_program(monkeypatch):
    assert trials.chunk_width(7, 3) == 3
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    assert trials.chunk_width(1) == trials.CPU_CHUNK == trials.chunk_width(100)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert trials.chunk_width(100) == 100


def test_in_chunks_pads_with_the_last_run_and_drops_it():
    seen = []

    def call(batch):
        seen.append(batch.tolist())
        return {"double": 2 * batch}

    out = trials.in_chunks(call, 5, np.arange(5), 3)
    assert seen == [[0, 1, 2], [3, 4, 4]]
    np.testing.assert_array_equal(out["double"], [0, 2, 4, 6, 8])


# -- static settings, per-trial data ------------------------------------------------


def test_static_settings_go_to_the_factory_as_they_are():
    calls = []

    def factory(learning_rate, momentum, nesterov=False):
        calls.append(nesterov)
        return optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov)

    out = run_trials(
        MODEL, factory, TRAIN, VAL, keys=KEYS[:2], settings=SETTINGS,
        hparams={"learning_rate": LR[:2], "momentum": np.full(2, 0.9)},
        static={"nesterov": True}, chunk=2,
    )  # fmt: skip
    assert calls and all(c is True for c in calls)  # a Python bool, never traced
    _, want = pl.train_run(
        MODEL, optax.sgd(float(np.float32(LR[1])), momentum=0.9, nesterov=True), TRAIN,
        epochs=EPOCHS, batch_size=BATCH, key=KEYS[1], eval_data=VAL,
    )  # fmt: skip
    assert_same_run(out, want, 1)


def test_per_trial_data():
    xs = jnp.stack([toy_data(n=48, d=4, seed=10 + i)[0] for i in range(3)])
    ys = jnp.stack([toy_data(n=48, d=4, seed=10 + i)[1] for i in range(3)])
    out = run_trials(
        MODEL, pl.sgd, (xs, ys), VAL, keys=KEYS[:3], settings=SETTINGS, weight_decay=WD[:3],
        hparams={"learning_rate": LR[:3]}, shared_data=False, chunk=2,
    )  # fmt: skip
    for i in range(3):
        want = alone(jnp.float32(LR[i]), jnp.float32(WD[i]), KEYS[i], xs[i], ys[i])
        assert_same_run(out, want, i)
    # the trials' own sets reached them: trial 0 on the shared set is another run
    assert not np.allclose(
        out["loss"][0], alone(jnp.float32(LR[0]), jnp.float32(WD[0]), KEYS[0], *TRAIN)["loss"]
    )
    with pytest.raises(ValueError, match="one training set per key"):
        run_trials(MODEL, pl.sgd, (xs, ys), VAL, keys=KEYS, settings=SETTINGS,
                   hparams={"learning_rate": LR}, shared_data=False)  # fmt: skip


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="one number per key"):
        runner(weight_decay=WD[:2])
    with pytest.raises(ValueError, match=r"hparams\['learning_rate'\]"):
        runner(hparams={"learning_rate": LR[:2]})
    with pytest.raises(ValueError, match="Settings"):
        runner(settings=(EPOCHS, BATCH))
    with pytest.raises(ValueError, match="keys is empty"):
        runner(keys=KEYS[:0])


# -- compile once ----------------------------------------------------------------------


def test_a_second_identical_call_compiles_nothing(curves):
    compiles = CompileCounter()
    call = lambda: runner(step_loss=True)  # noqa: E731  (the fixture's call, compiled)
    assert compiles.count(call) == 0
    # other keys, rates and decays of the same shapes: still nothing new
    other = lambda: runner(  # noqa: E731
        keys=jax.random.split(jax.random.key(9), N), weight_decay=WD[::-1],
        hparams={"learning_rate": LR[::-1]}, step_loss=True,
    )  # fmt: skip
    assert compiles.count(other) == 0


# -- restore_best: the restored epoch and the ranking ---------------------------------


def python_best_epoch(values, trained, es: pl.EarlyStopping):
    """EarlyStopping's rule, written plainly over one run's curve: the last trained
    epoch whose value beat the best so far by more than min_delta (float32, as the
    program compares), or None."""
    sign = 1.0 if es.direction == "max" else -1.0
    best, best_epoch = np.float32(-np.inf), None
    for epoch, (value, was_trained) in enumerate(zip(values, trained, strict=True)):
        if not was_trained:
            break
        value = np.float32(sign * value)
        if value - best > np.float32(es.min_delta):
            best, best_epoch = value, epoch
    return best_epoch


STOPPERS = [
    pl.EarlyStopping(patience=3, restore_best=True),
    pl.EarlyStopping(patience=1, min_delta=0.05, restore_best=True),
    pl.EarlyStopping(patience=2, monitor="loss", min_delta=0.01, restore_best=True),
    pl.EarlyStopping(patience=1, monitor="train_accuracy", restore_best=True),
]
WILD = np.array([0.3, 1.0, 2.0, 4.0, 8.0, 16.0])  # large steps: accuracies wander


@pytest.mark.parametrize("es", STOPPERS)
def test_the_restored_epoch_follows_early_stoppings_rule(es):
    out = run_trials(
        MODEL, pl.sgd, TRAIN, VAL, keys=jax.random.split(jax.random.key(0), len(WILD)),
        settings=Settings(3, BATCH, early_stopping=es), hparams={"learning_rate": WILD}, chunk=2,
    )  # fmt: skip
    monitor = es.watched(has_eval=True)
    for i in range(len(WILD)):
        want = python_best_epoch(out[monitor][i], out["trained"][i], es)
        assert out["best_epoch"][i] == (-1 if want is None else want)


def test_restored_epoch_of_a_non_finite_first_epoch_is_none():
    es = pl.EarlyStopping(patience=1, monitor="loss", restore_best=True)
    curves = {"loss": jnp.array([jnp.nan, 1.0, 0.5]), "trained": jnp.array([True, False, False])}
    assert int(trials.restored_epoch(curves, es, has_eval=False)) == -1
    curves = {"loss": jnp.array([2.0, 1.0, 0.995, 3.0]), "trained": jnp.ones(4, bool)}
    # min_delta: 0.995 is not better than 1.0 by more than 0.01
    es = pl.EarlyStopping(patience=5, monitor="loss", min_delta=0.01, restore_best=True)
    assert python_best_epoch(curves["loss"], curves["trained"], es) == 1
    assert int(trials.restored_epoch(curves, es, has_eval=False)) == 1


def test_a_search_with_restore_best_ranks_by_the_restored_epoch():
    es = pl.EarlyStopping(patience=3, restore_best=True)
    grid = {"learning_rate": WILD.tolist()}
    out = pl.grid_search(MODEL, pl.sgd, TRAIN, VAL, grid=grid, epochs=3, batch_size=BATCH,
                         key=0, early_stopping=es)  # fmt: skip
    worse_last = 0
    for row in out:
        curve = row["history"]["eval_accuracy"]
        best = python_best_epoch(curve, row["history"]["trained"], es)
        assert row["best_epoch"] == best
        assert row["val_acc"] == curve[best]
        assert row["train_acc"] == row["history"]["train_accuracy"][best]
        assert row["epochs_run"] == 3 and row["diverged"] is False
        worse_last += curve[best] > curve[-1]
    assert worse_last >= 1  # a trial whose last epoch is worse than its best
    # best first by the restored epoch's accuracy, ties in trial order
    assert [(-r["val_acc"], r["trial"]) for r in out] == sorted(
        (-r["val_acc"], r["trial"]) for r in out
    )
    # the accuracy a row reports is the state the trial returns
    row = next(r for r in out if r["val_acc"] > r["val_acc_curve"][-1])
    state, _ = pl.train_run(
        MODEL, pl.sgd(float(np.float32(row["learning_rate"]))), TRAIN, epochs=3,
        batch_size=BATCH, key=jax.random.split(jax.random.key(0), len(WILD))[row["trial"]],
        eval_data=VAL, early_stopping=es,
    )  # fmt: skip
    assert pl.evaluate(MODEL, state, *VAL) == pytest.approx(row["val_acc"], abs=1e-6)


def test_restore_best_ranks_synthetic_curves_by_the_restored_epoch():
    from purelearn import tuning

    nan = float("nan")
    curves = {
        "loss": np.array([[1.0, 0.5, nan], [1.0, 0.8, 0.7], [nan, nan, nan]], np.float32),
        "train_accuracy": np.array([[0.5, 0.9, 0.1], [0.6, 0.7, 0.8], [0.3] * 3], np.float32),
        "eval_accuracy": np.array([[0.6, 0.9, 0.1], [0.5, 0.6, 0.7], [0.3] * 3], np.float32),
        "trained": np.ones((3, 3), bool),
        "best_epoch": np.array([1, 2, -1], np.int32),
    }
    rows = tuning._rows({"learning_rate": [1.0, 0.1, 1e6]}, curves, stopping=True)
    assert [r["trial"] for r in rows] == [0, 1, 2]
    # trial 0 diverged after its best epoch: the state it returns is the best epoch's
    assert rows[0]["best_epoch"] == 1 and rows[0]["diverged"] is False
    assert rows[0]["val_acc"] == pytest.approx(0.9) and rows[0]["train_acc"] == pytest.approx(0.9)
    # no epoch improved: the untrained state, judged by the whole (diverged) run
    assert rows[2]["best_epoch"] is None and rows[2]["diverged"] is True
    # without restore_best, trial 0 is judged by its last epoch: diverged, and last of
    # all (the diverged go last, by their accuracy)
    del curves["best_epoch"]
    rows = tuning._rows({"learning_rate": [1.0, 0.1, 1e6]}, curves, stopping=True)
    assert [r["trial"] for r in rows] == [1, 2, 0] and rows[2]["diverged"] is True
    assert rows[2]["val_acc"] == pytest.approx(0.1)
    assert all("best_epoch" not in r for r in rows)
