"""Hyperparameter search: distributions, random/grid/Bayesian search, chunking, early stopping."""

import json
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import purelearn as pl

MODEL = pl.mlp([20, 16, 3])
EPOCHS, BATCH = 4, 32


@pytest.fixture(scope="module")
def data():
    kx, kw = jax.random.split(jax.random.key(42))
    x = jax.random.normal(kx, (160, 20))
    y = jnp.argmax(x @ jax.random.normal(kw, (20, 3)), axis=-1).astype(jnp.int32)
    return (x[:128], y[:128]), (x[128:], y[128:])


SPACE = {"learning_rate": pl.log_uniform(1e-3, 1.0), "weight_decay": pl.log_uniform(1e-6, 1e-2)}


def search(data, **kwargs):
    train, val = data
    kwargs = {
        "space": SPACE,
        "num_trials": 6,
        "epochs": EPOCHS,
        "batch_size": BATCH,
        "key": jax.random.key(0),
        **kwargs,
    }
    return pl.random_search(MODEL, pl.sgd, train, val, **kwargs)


@pytest.fixture(scope="module")
def results(data):
    return search(data)


# -- distributions ---------------------------------------------------------------


def test_distributions_sample_inside_their_bounds():
    rng = np.random.default_rng(0)
    x = pl.uniform(-2.0, 3.0).sample(rng, 10_000)
    assert x.shape == (10_000,) and x.min() >= -2.0 and x.max() < 3.0
    assert abs(x.mean() - 0.5) < 0.1
    z = pl.log_uniform(1e-8, 1e-4).sample(rng, 10_000)
    assert z.min() >= 1e-8 and z.max() <= 1e-4
    assert abs(np.log10(z).mean() + 6.0) < 0.1  # uniform in log10 over [-8, -4]


@pytest.mark.parametrize(
    ("make", "low", "high", "match"),
    [
        (pl.uniform, 1.0, 1.0, "low must be < high"),
        (pl.uniform, 2.0, 1.0, "low=2.0"),
        (pl.uniform, -math.inf, 1.0, "inf"),
        (pl.uniform, 0.0, math.nan, "nan"),
        (pl.log_uniform, 0.0, 1.0, "> 0"),
        (pl.log_uniform, -1.0, 1.0, "-1.0"),
        (pl.log_uniform, 1e-3, math.inf, "inf"),
        (pl.log_uniform, 1e-2, 1e-3, "low=0.01"),
        (pl.uniform, "a", 1.0, "'a'"),
    ],
)
def test_distribution_errors_name_the_value(make, low, high, match):
    with pytest.raises(ValueError, match=match):
        make(low, high)


# -- random search ---------------------------------------------------------------


def test_random_search_ranks_best_first_and_reports_curves(results):
    assert len(results) == 6
    accs = [r["val_acc"] for r in results]
    assert accs == sorted(accs, reverse=True)
    for r in results:
        assert set(r) == {
            "trial",
            "learning_rate",
            "weight_decay",
            "val_acc",
            "train_acc",
            "val_acc_curve",
            "train_acc_curve",
            "loss_curve",
            "diverged",
            "history",
        }
        assert r["diverged"] is False
        # one vocabulary: the validation set is the eval set
        assert set(r["history"]) == {"loss", "train_accuracy", "eval_accuracy"}
        assert r["history"]["eval_accuracy"] == r["val_acc_curve"]
        assert r["history"]["train_accuracy"] == r["train_acc_curve"]
        assert r["history"]["loss"] == r["loss_curve"]
        assert type(r["learning_rate"]) is float and 1e-3 <= r["learning_rate"] <= 1.0
        assert 1e-6 <= r["weight_decay"] <= 1e-2
        assert r["val_acc"] == r["val_acc_curve"][-1]
        assert r["train_acc"] == r["train_acc_curve"][-1]
        assert len(r["val_acc_curve"]) == len(r["train_acc_curve"]) == len(r["loss_curve"])
        assert len(r["loss_curve"]) == EPOCHS
    assert results[0]["val_acc"] > results[-1]["val_acc"]  # the range spans bad to good
    assert sorted(r["trial"] for r in results) == list(range(6))


def test_random_search_is_reproducible_and_key_dependent(data, results):
    assert search(data) == results
    assert search(data, key=jax.random.key(1)) != results


@pytest.mark.parametrize("max_parallel", [2, 4])  # 4: the last chunk is padded
def test_chunked_equals_unchunked(data, results, max_parallel):
    chunked = search(data, max_parallel=max_parallel)
    assert [r["learning_rate"] for r in chunked] == [r["learning_rate"] for r in results]
    for a, b in zip(chunked, results, strict=True):
        np.testing.assert_allclose(a["val_acc_curve"], b["val_acc_curve"], atol=1e-6)
        np.testing.assert_allclose(a["train_acc_curve"], b["train_acc_curve"], atol=1e-6)
        np.testing.assert_allclose(a["loss_curve"], b["loss_curve"], rtol=1e-5)


def test_a_vmapped_trial_equals_the_same_trial_run_alone(data, results):
    (train, val), key = data, jax.random.key(0)
    # trial i trains with split(key, num_trials)[i] and the float32 of its reported values
    keys = jax.random.split(key, 6)
    for r in results[:: len(results) - 1]:  # the best and the worst
        i = r["trial"]

        @jax.jit
        def alone(lr, wd, k):
            opt = optax.inject_hyperparams(pl.sgd)(learning_rate=lr)
            return pl.train_run(
                MODEL,
                opt,
                train,
                epochs=EPOCHS,
                batch_size=BATCH,
                key=k,
                eval_data=val,
                weight_decay=wd,
            )[1]

        curves = alone(jnp.float32(r["learning_rate"]), jnp.float32(r["weight_decay"]), keys[i])
        np.testing.assert_allclose(curves["eval_accuracy"], r["val_acc_curve"], atol=1e-6)
        np.testing.assert_allclose(curves["train_accuracy"], r["train_acc_curve"], atol=1e-6)
        np.testing.assert_allclose(curves["loss"], r["loss_curve"], rtol=1e-5)


def test_a_longer_search_extends_a_shorter_one(data, results):
    by_trial = sorted(results, key=lambda r: r["trial"])
    shorter = sorted(search(data, num_trials=3), key=lambda r: r["trial"])
    for a, b in zip(shorter, by_trial[:3], strict=True):
        assert (a["learning_rate"], a["weight_decay"]) == (b["learning_rate"], b["weight_decay"])
        np.testing.assert_allclose(a["loss_curve"], b["loss_curve"], rtol=1e-5)


def test_one_trial_and_more_parallel_than_trials(data, results):
    (one,) = search(data, num_trials=1, max_parallel=8)
    first = next(r for r in results if r["trial"] == 0)
    assert one["learning_rate"] == first["learning_rate"]
    np.testing.assert_allclose(one["loss_curve"], first["loss_curve"], rtol=1e-5)


@pytest.mark.parametrize("key", [0, np.int64(0), jax.random.PRNGKey(0), jax.random.key(0)])
def test_every_form_of_key_gives_the_same_search(data, key):
    out = search(data, num_trials=2, key=key)
    ref = search(data, num_trials=2, key=jax.random.key(0))
    assert [r["learning_rate"] for r in out] == [r["learning_rate"] for r in ref]


@pytest.mark.parametrize("key", [True, 1.5, "0", jax.random.split(jax.random.key(0), 2)])
def test_a_bad_key_is_named(data, key):
    with pytest.raises(ValueError, match="key"):
        search(data, key=key)


def test_fixed_values_pass_through(data):
    out = pl.random_search(
        MODEL,
        pl.adam,
        *data,
        space={"learning_rate": pl.uniform(0.001, 0.05), "b1": 0.8, "weight_decay": 1e-4},
        num_trials=3,
        epochs=2,
        batch_size=BATCH,
        key=jax.random.key(3),
    )
    assert len(out) == 3
    for r in out:
        assert r["b1"] == 0.8 and r["weight_decay"] == 1e-4
        assert 0.001 <= r["learning_rate"] <= 0.05


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"space": {"learnign_rate": pl.uniform(0.1, 0.2)}}, "'learnign_rate'"),
        ({"space": {}}, "empty"),
        ({"space": {"learning_rate": "big"}}, "'big'"),
        ({"space": {"learning_rate": 0.1, "weight_decay": -1.0}}, "-1.0"),
        ({"space": {"weight_decay": pl.uniform(-1.0, 1.0)}}, "-1.0"),
        ({"num_trials": 0}, "num_trials"),
        ({"epochs": 0}, "epochs"),
        ({"max_parallel": 0}, "max_parallel"),
        ({"batch_size": 1000}, "1000"),
    ],
)
def test_random_search_errors(data, kwargs, match):
    with pytest.raises(ValueError, match=match):
        search(data, **kwargs)


# -- grid search ---------------------------------------------------------------------


def test_grid_search_covers_the_product(data):
    grid = {"learning_rate": [0.01, 0.1, 0.5], "weight_decay": [0.0, 1e-3]}
    out = pl.grid_search(
        MODEL, pl.sgd, *data, grid=grid, epochs=2, batch_size=BATCH, key=0, max_parallel=4
    )
    assert len(out) == 6
    points = {(r["learning_rate"], r["weight_decay"]) for r in out}
    assert points == {(a, b) for a in grid["learning_rate"] for b in grid["weight_decay"]}
    accs = [r["val_acc"] for r in out]
    assert accs == sorted(accs, reverse=True)
    # product order: the last name varies fastest
    by_trial = sorted(out, key=lambda r: r["trial"])
    assert [(r["learning_rate"], r["weight_decay"]) for r in by_trial[:2]] == [
        (0.01, 0.0),
        (0.01, 1e-3),
    ]
    # max_parallel=4 pads the second chunk; the same points unchunked agree
    whole = pl.grid_search(MODEL, pl.sgd, *data, grid=grid, epochs=2, batch_size=BATCH, key=0)
    for a, b in zip(sorted(whole, key=lambda r: r["trial"]), by_trial, strict=True):
        np.testing.assert_allclose(a["loss_curve"], b["loss_curve"], rtol=1e-5)


@pytest.mark.parametrize("make", [np.array, jnp.array, tuple])
def test_grid_values_may_be_arrays(data, make):
    out = pl.grid_search(
        MODEL,
        pl.sgd,
        *data,
        grid={"learning_rate": make([0.01, 0.1])},
        epochs=1,
        batch_size=BATCH,
        key=0,
    )
    assert sorted(r["learning_rate"] for r in out) == pytest.approx([0.01, 0.1])


@pytest.mark.parametrize(
    ("grid", "match"),
    [
        ({}, "empty"),
        ({"learning_rate": []}, "learning_rate"),
        ({"momentum": [0.9]}, "'momentum'"),
        ({"learning_rate": 0.1}, "1-D"),
        ({"learning_rate": [0.1, math.nan]}, "nan"),
        ({"learning_rate": np.float64(0.1)}, "1-D"),
        ({"learning_rate": [[0.1]]}, "1-D"),
        ({"learning_rate": ["fast"]}, "fast"),
        ({"learning_rate": [0.1, -0.1]}, "-0.1"),
        ({"weight_decay": [0.0, -1.0]}, "-1.0"),
    ],
)
def test_grid_search_errors(data, grid, match):
    with pytest.raises(ValueError, match=match):
        pl.grid_search(MODEL, pl.sgd, *data, grid=grid, epochs=1, batch_size=BATCH, key=0)


# -- Bayesian search -------------------------------------------------------------------


def test_bayes_search_returns_num_trials_ranked_results(data):
    kwargs = dict(space=SPACE, num_trials=7, trials_per_batch=3, epochs=2, batch_size=BATCH)
    out = pl.bayes_search(MODEL, pl.sgd, *data, key=jax.random.key(0), **kwargs)
    assert len(out) == 7
    accs = [r["val_acc"] for r in out]
    assert accs == sorted(accs, reverse=True)
    for r in out:
        assert 1e-3 <= r["learning_rate"] <= 1.0 and 1e-6 <= r["weight_decay"] <= 1e-2
        assert r["val_acc"] == r["val_acc_curve"][-1]
    again = pl.bayes_search(MODEL, pl.sgd, *data, key=jax.random.key(0), **kwargs)
    assert again == out  # seeded sampler, deterministic training


def test_bayes_search_errors(data):
    with pytest.raises(ValueError, match="'nope'"):
        pl.bayes_search(
            MODEL,
            pl.sgd,
            *data,
            space=SPACE,
            num_trials=2,
            epochs=1,
            batch_size=BATCH,
            key=0,
            sampler="nope",
        )
    with pytest.raises(ValueError, match="'eta'"):
        pl.bayes_search(
            MODEL,
            pl.sgd,
            *data,
            space={"eta": 0.1},
            num_trials=2,
            epochs=1,
            batch_size=BATCH,
            key=0,
        )


# -- early stopping ----------------------------------------------------------------------


def test_early_stopping_freezes_a_trial(data, results):
    # min_delta 1.0: only the first epoch counts as an improvement, so every trial
    # stops after epoch 2 and its curves stay flat from then on
    stopped = search(data, early_stopping=pl.EarlyStopping(patience=1, min_delta=1.0))
    by_lr = {r["learning_rate"]: r for r in results}
    for r in stopped:
        assert r["epochs_run"] == 2
        assert r["val_acc_curve"][1:] == [r["val_acc_curve"][1]] * (EPOCHS - 1)
        assert r["train_acc_curve"][1:] == [r["train_acc_curve"][1]] * (EPOCHS - 1)
        assert r["loss_curve"][1:] == [r["loss_curve"][1]] * (EPOCHS - 1)
        full = by_lr[r["learning_rate"]]
        np.testing.assert_allclose(r["val_acc_curve"][:2], full["val_acc_curve"][:2], atol=1e-6)


def test_patient_early_stopping_changes_nothing(data, results):
    out = search(data, early_stopping=pl.EarlyStopping(patience=EPOCHS + 1))
    for a, b in zip(out, results, strict=True):
        assert a.pop("epochs_run") == EPOCHS
        np.testing.assert_allclose(a["val_acc_curve"], b["val_acc_curve"], atol=1e-6)


# -- table ---------------------------------------------------------------------------------


def test_top_k_table(results):
    table = pl.top_k_table(results, k=3)
    lines = table.splitlines()
    assert len(lines) == 4
    assert lines[0].split() == ["rank", "learning_rate", "weight_decay", "val_acc", "train_acc"]
    assert lines[1].split()[0] == "1" and f"{results[0]['val_acc']:.4f}" in lines[1]
    assert pl.top_k_table([]) == "(no results)"


def test_weight_decay_is_ambiguous_for_a_factory_with_its_own(data):
    # "weight_decay" is the L2 penalty; adamw's decoupled decay must be renamed
    with pytest.raises(ValueError, match="own 'weight_decay'"):
        pl.random_search(
            MODEL,
            pl.adamw,
            *data,
            space={"weight_decay": pl.log_uniform(1e-4, 1e-2)},
            num_trials=2,
            epochs=1,
            batch_size=BATCH,
            key=0,
        )

    def adamw(learning_rate, decay):
        return pl.adamw(learning_rate, weight_decay=decay)

    out = pl.random_search(
        MODEL,
        adamw,
        *data,
        space={"learning_rate": 0.01, "decay": pl.log_uniform(1e-4, 1e-2)},
        num_trials=2,
        epochs=1,
        batch_size=BATCH,
        key=0,
    )
    assert all(1e-4 <= r["decay"] <= 1e-2 for r in out)


def test_bayes_search_without_optuna_says_how_to_install(data, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "optuna", None)  # makes `import optuna` fail
    with pytest.raises(ImportError, match="pip install"):
        pl.bayes_search(
            MODEL, pl.sgd, *data, space=SPACE, num_trials=2, epochs=1, batch_size=BATCH, key=0
        )


def test_search_figure_draws_the_top_k_with_their_hyperparameters(data):
    from purelearn.plotting import search_figure

    out = pl.random_search(
        MODEL,
        pl.adam,
        *data,
        space={"learning_rate": pl.log_uniform(1e-3, 1e-1), "b1": pl.uniform(0.5, 0.95)},
        num_trials=5,
        epochs=2,
        batch_size=BATCH,
        key=0,
    )
    fig = search_figure(out, k=3)
    assert len(fig.axes) == 3
    first = fig.axes[0]
    shown = re.search(r"val (\d\.\d+)", first.get_title()).group(1)  # printed precision
    assert abs(float(shown) - out[0]["val_acc"]) <= 0.5 * 10 ** -(len(shown) - 2)
    label = first.texts[0].get_text()
    assert f"lr {out[0]['learning_rate']:.1e}" in label and f"b1 {out[0]['b1']:.1e}" in label
    np.testing.assert_array_equal(first.lines[0].get_ydata(), out[0]["val_acc_curve"])
    with pytest.raises(ValueError, match="0"):
        search_figure(out, k=0)


def test_bayes_search_gp_sampler_or_a_clear_error(data):
    kwargs = dict(space=SPACE, num_trials=4, trials_per_batch=2, epochs=1, batch_size=BATCH)
    try:
        import scipy  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="PyTorch"):
            pl.bayes_search(MODEL, pl.sgd, *data, key=0, sampler="gp", **kwargs)
    else:  # pragma: no cover - PyTorch is not in the test extra
        assert len(pl.bayes_search(MODEL, pl.sgd, *data, key=0, sampler="gp", **kwargs)) == 4


# -- validation before tracing ---------------------------------------------------------


@pytest.mark.parametrize(
    ("factory", "space", "match"),
    [
        (pl.sgd, {"learning_rate": -0.1}, "-0.1"),
        (pl.sgd, {"learning_rate": pl.uniform(-0.1, 0.1)}, "low ends.*-0.1"),
        (pl.adam, {"b1": pl.uniform(0.5, 1.5)}, "high ends.*b1=1.5"),
        (pl.adam, {"b2": pl.uniform(0.9, 0.99999999)}, "b2=1.0"),  # 1.0 in float32
        (lambda learning_rate, decay: pl.adamw(learning_rate, weight_decay=decay),
         {"learning_rate": 0.1}, "decay"),
        (pl.momentum, {"learning_rate": 0.1, "momentum": [0.9]}, r"\[0.9\]"),
    ],
)  # fmt: skip
def test_the_factory_checks_the_space_before_tracing(data, factory, space, match):
    with pytest.raises(ValueError, match=match):
        pl.random_search(
            MODEL, factory, *data, space=space, num_trials=2, epochs=1, batch_size=BATCH, key=0
        )


@pytest.mark.parametrize(
    ("val", "match"),
    [
        (lambda x, y: (x[:0], y[:0]), "empty"),
        (lambda x, y: (x[:, :10], y), r"\(10,\)"),
        (lambda x, y: (x, jax.nn.one_hot(y, 3)), r"\(3,\)"),
        (lambda x, y: (x, y[:-1]), "labels"),
    ],
)
def test_bad_validation_data_is_named(data, val, match):
    train, (vx, vy) = data
    with pytest.raises(ValueError, match=match):
        pl.random_search(
            MODEL, pl.sgd, train, val(vx, vy), space=SPACE, num_trials=2, epochs=1,
            batch_size=BATCH, key=0,
        )  # fmt: skip


def test_early_stopping_must_watch_accuracy_upwards(data):
    with pytest.raises(ValueError, match="'min'"):
        search(data, early_stopping=pl.EarlyStopping(mode="min"))


def test_static_settings_and_fixed_only_spaces(data):
    # a bool must reach the factory as a Python bool (optax branches on it)
    space = {"learning_rate": 0.05, "momentum": 0.9, "nesterov": True}
    out = pl.random_search(
        MODEL, optax.sgd, *data, space=space, num_trials=2, epochs=2, batch_size=BATCH, key=0
    )
    assert all(r["nesterov"] is True and r["momentum"] == 0.9 for r in out)
    # fixed-only: the trials differ by their keys alone
    assert out[0]["loss_curve"] != out[1]["loss_curve"]
    print(pl.top_k_table(out))  # a bool column formats
    bayes = pl.bayes_search(
        MODEL, optax.sgd, *data, space=space, num_trials=2, epochs=2, batch_size=BATCH, key=0
    )
    assert sorted(r["loss_curve"] for r in bayes) == sorted(r["loss_curve"] for r in out)


def test_bayes_search_chunks_stops_and_restores_optunas_verbosity(data):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.DEBUG)
    try:
        out = pl.bayes_search(
            MODEL, pl.sgd, *data, space=SPACE, num_trials=5, trials_per_batch=3, max_parallel=2,
            epochs=EPOCHS, batch_size=BATCH, key=0,
            early_stopping=pl.EarlyStopping(patience=1, min_delta=1.0),
        )  # fmt: skip
        assert optuna.logging.get_verbosity() == optuna.logging.DEBUG
    finally:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    assert len(out) == 5 and all(r["epochs_run"] == 2 for r in out)
    assert sorted(r["trial"] for r in out) == list(range(5))


# -- one engine: static grids, collisions, divergence, the results type ---------------


def test_grid_search_passes_bools_statically_and_equals_each_setting_alone(data):
    # Regression: nesterov=[True, False] became floats and failed inside the trace.
    grid = {"learning_rate": [0.05, 0.2], "momentum": [0.9], "nesterov": [True, False]}
    out = pl.grid_search(MODEL, optax.sgd, *data, grid=grid, epochs=2, batch_size=BATCH, key=3)
    assert len(out) == 4 and {r["nesterov"] for r in out} == {True, False}
    assert all(type(r["nesterov"]) is bool for r in out)
    keys = jax.random.split(jax.random.key(3), 4)
    by_trial = {r["trial"]: r for r in out}
    for i, (lr, nesterov) in enumerate([(0.05, True), (0.05, False), (0.2, True), (0.2, False)]):
        row = by_trial[i]
        assert (row["learning_rate"], row["nesterov"]) == (lr, nesterov)  # as given, not float32
        _, alone = pl.train_run(
            MODEL, optax.sgd(lr, momentum=0.9, nesterov=nesterov), data[0], epochs=2,
            batch_size=BATCH, key=keys[i], eval_data=data[1],
        )  # fmt: skip
        np.testing.assert_allclose(row["loss_curve"], alone["loss"], rtol=1e-5)
    assert by_trial[0]["loss_curve"] != by_trial[1]["loss_curve"]  # nesterov mattered
    with pytest.raises(ValueError, match="1-D list"):
        pl.grid_search(MODEL, optax.sgd, *data, grid={"learning_rate": [[0.1]]}, epochs=1,
                       batch_size=BATCH, key=0)  # fmt: skip


@pytest.mark.parametrize("name", ["trial", "val_acc", "history", "diverged", "loss_curve"])
def test_a_space_name_that_is_a_result_field_is_refused(data, name):
    # Regression: with a **kwargs factory, {"trial": ...} silently overwrote the row's field.
    def factory(learning_rate, **kwargs):
        return pl.sgd(learning_rate)

    space = {"learning_rate": pl.log_uniform(1e-3, 1.0), name: 0.5}
    with pytest.raises(ValueError, match=f"{name!r}, which is also a field"):
        pl.random_search(MODEL, factory, *data, space=space, num_trials=2, epochs=1,
                         batch_size=BATCH, key=0)  # fmt: skip
    with pytest.raises(ValueError, match="also a field"):
        pl.grid_search(MODEL, factory, *data, grid={name: [0.1]}, epochs=1, batch_size=BATCH,
                       key=0)  # fmt: skip


def test_a_diverged_trial_ranks_last_and_is_marked(data):
    # Regression: a trial whose loss went NaN could rank first (argmax of NaN logits is
    # class 0, which scored the class-0 share of the validation set).
    grid = {"learning_rate": [1e6, 0.1, 1e-4]}
    out = pl.grid_search(MODEL, pl.sgd, *data, grid=grid, epochs=3, batch_size=BATCH, key=0)
    assert [r["learning_rate"] for r in out][-1] == 1e6
    assert out[-1]["diverged"] is True and not any(r["diverged"] for r in out[:-1])
    assert out[-1]["val_acc"] == 0.0  # non-finite logits never count as correct
    assert "diverged" in pl.top_k_table(out)
    records = out.records()
    json.dumps(records, allow_nan=False)  # NaN losses become None: valid JSON
    assert records[-1]["loss_curve"][-1] is None
    bayes = pl.bayes_search(
        MODEL, pl.sgd, *data, space={"learning_rate": pl.log_uniform(1e5, 1e6)}, num_trials=2,
        trials_per_batch=2, epochs=2, batch_size=BATCH, key=0,
    )  # fmt: skip
    assert all(r["diverged"] for r in bayes)


def test_search_results_is_a_list_with_helpers(results):
    assert isinstance(results, pl.SearchResults) and isinstance(results, list)
    assert results.best is results[0]
    top = results.top_k(2)
    assert isinstance(top, pl.SearchResults) and top == results[:2]
    assert results.table(3) == pl.top_k_table(results, 3)
    assert results.hyperparameters() == ["learning_rate", "weight_decay"]
    assert json.loads(json.dumps(results.records())) == [dict(r) for r in results]
    with pytest.raises(ValueError, match="no results"):
        _ = pl.SearchResults().best


def test_search_early_stopping_may_watch_the_loss(data):
    es = pl.EarlyStopping(patience=1, monitor="loss", min_delta=100.0)  # only epoch 1 improves
    out = search(data, early_stopping=es)
    assert all(r["epochs_run"] == 2 and r["history"]["trained"] == [True, True, False, False]
               for r in out)  # fmt: skip


@pytest.mark.slow
@settings(
    max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(num_trials=st.integers(1, 7), max_parallel=st.integers(1, 8))
def test_chunked_equals_unchunked_for_any_sizes(data, num_trials, max_parallel):
    one = search(data, num_trials=num_trials, epochs=2, max_parallel=num_trials)
    chunked = search(data, num_trials=num_trials, epochs=2, max_parallel=max_parallel)
    assert [r["trial"] for r in chunked] == [r["trial"] for r in one] or all(
        a["val_acc"] == b["val_acc"] for a, b in zip(chunked, one, strict=True)
    )
    by_trial = {r["trial"]: r for r in one}
    for r in chunked:
        np.testing.assert_allclose(r["loss_curve"], by_trial[r["trial"]]["loss_curve"], rtol=1e-5)
        assert r["learning_rate"] == by_trial[r["trial"]]["learning_rate"]
