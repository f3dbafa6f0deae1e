"""The chapter's experiments as records: every record's ``run`` at quick sizes over two
seeds, its verdict, its schema, and that one seed is bit for bit the first of two.

One module-wide run of every experiment (``seeds=2``) and one with ``seeds=1``; the
tests read those results and check the claims the textbook makes, against NumPy
oracles where there is one.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import shutil
import subprocess
import sys
import typing

import numpy as np
import pytest

from purelearn import cli
from purelearn.experiments import EXPERIMENTS, Experiment, clear_majority, paths
from purelearn.experiments._common import SeedCheck, seed_list, verdict_over

pytestmark = pytest.mark.slow

NAMES = list(EXPERIMENTS)


def run_all(seeds: int) -> dict:
    """Every record's quick run, two at a time: most of the cost is XLA compiling, which
    runs outside the GIL, so two threads keep both cores busy."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            name: pool.submit(record.run, seed=0, seeds=seeds, data="embedded", quick=True)
            for name, record in EXPERIMENTS.items()
        }
        return {name: f.result() for name, f in futures.items()}


@pytest.fixture(scope="module")
def two():
    return run_all(2)


@pytest.fixture(scope="module")
def one(two):
    return run_all(1)


# -- the registry and the records ------------------------------------------------------


def test_registry_is_the_textbooks_order_and_every_module_has_a_record():
    assert NAMES == [
        "paths",
        "optimizers",
        "activations",
        "init",
        "batchnorm",
        "weight-decay",
        "dropout",
        "search",
    ]
    orders = [r.order for r in EXPERIMENTS.values()]
    assert orders == sorted(orders)
    for name, record in EXPERIMENTS.items():
        assert isinstance(record, Experiment) and record.name == name
        assert record.title and record.conclusion and typing.is_typeddict(record.schema)


@pytest.mark.parametrize("name", NAMES)
def test_result_follows_the_schema_and_is_json(two, name):
    result = two[name]
    assert set(result) == set(EXPERIMENTS[name].schema.__annotations__)
    assert json.loads(json.dumps(result)) == result
    assert result["seeds"] == [0, 1] and result["quick"] is True


@pytest.mark.parametrize("name", NAMES)
def test_one_seed_is_the_first_of_two(one, two, name):
    """Bit for bit: a run's numbers do not depend on the seeds trained beside it."""
    a, b = dict(one[name]), dict(two[name])
    for r in (a, b):
        r.pop("seconds")
        r.pop("seeds")
        r.pop("per_seed", None)
        r.pop("pooled", None)
    assert a == b


@pytest.mark.parametrize("name", NAMES)
def test_verdict_agrees_in_every_seed_and_counts_them(two, name):
    v = EXPERIMENTS[name].verdict(two[name])
    assert v.agrees is True, v.reason
    seeds = 1 if name == "paths" else 2
    assert (v.agreeing, v.seeds) == (seeds, seeds)
    assert f"in {seeds} of {seeds} seed" in v.reason
    head, rows = EXPERIMENTS[name].table(two[name])
    assert rows and all(len(row) == len(head) for row in rows)
    if name not in ("paths",):
        assert [row[0] for row in rows] == ["0", "1", "mean ± std"]
        assert rows[-1][-1] == "2 of 2"


# -- per experiment ---------------------------------------------------------------------


def numpy_path(update, lr, steps=30, start=(-7.0, 2.0)):
    """The textbook's optimizers on f(x, y) = x**2/20 + y**2, in NumPy."""
    p = {"x": np.float64(start[0]), "y": np.float64(start[1])}
    state = {}
    for t in range(1, steps + 1):
        g = {"x": p["x"] / 10.0, "y": 2.0 * p["y"]}
        update(p, g, state, lr, t)
    return [p["x"], p["y"]]


def np_sgd(p, g, state, lr, t):
    for k in p:
        p[k] -= lr * g[k]


def np_momentum(p, g, state, lr, t, a=0.9):
    for k in p:
        state[k] = a * state.get(k, 0.0) - lr * g[k]
        p[k] += state[k]


def np_adagrad(p, g, state, lr, t):
    for k in p:
        state[k] = state.get(k, 0.0) + g[k] * g[k]
        p[k] -= lr * g[k] / (np.sqrt(state[k]) + 1e-7)


def np_adam(p, g, state, lr, t, b1=0.9, b2=0.999, eps=1e-8):
    for k in p:
        m = state[k + "m"] = b1 * state.get(k + "m", 0.0) + (1 - b1) * g[k]
        v = state[k + "v"] = b2 * state.get(k + "v", 0.0) + (1 - b2) * g[k] ** 2
        p[k] -= lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)


def test_paths_match_numpy_and_sgd_zigzags(two):
    data = two["paths"]
    reference = {"SGD": np_sgd, "Momentum": np_momentum, "AdaGrad": np_adagrad, "Adam": np_adam}
    for name, update in reference.items():
        np.testing.assert_allclose(
            data["final"][name], numpy_path(update, paths.SETTINGS[name][1]), atol=1e-4
        )
        assert len(data["paths"][name]) == 31
    assert data["paths"]["SGD"][0] == [-7.0, 2.0]
    assert "Deterministic" in EXPERIMENTS["paths"].verdict(data).reason


@pytest.mark.parametrize("name", ["optimizers", "init"])
def test_loss_curves_keep_todays_keys_as_the_first_seed(two, name):
    data = two[name]
    for k, curves in data["per_seed"]["loss"].items():
        assert len(curves) == 2 and all(len(c) == data["iterations"] for c in curves)
        assert data["loss"][k] == curves[0]
        assert data["test_accuracy"][k] == data["per_seed"]["test_accuracy"][k][0]
        assert curves[0] != curves[1]  # the seeds differ


def test_sgd_learns_slowest_in_every_seed(two):
    data = two["optimizers"]
    assert set(data["loss"]) == {"SGD", "Momentum", "Nesterov", "AdaGrad", "RMSProp", "Adam"}
    for i in range(2):
        tails = {k: np.mean(v[i][-20:]) for k, v in data["per_seed"]["loss"].items()}
        assert max(tails, key=tails.get) == "SGD", tails


def test_std_001_does_not_learn_and_he_learns_fastest(two):
    data = two["init"]
    for i in range(2):
        tails = {k: np.mean(v[i][-50:]) for k, v in data["per_seed"]["loss"].items()}
        assert tails["std=0.01"] > 2.2  # ln(10) = 2.30: chance level
        assert tails["he"] < tails["xavier"] < tails["std=0.01"]


def test_activation_statistics_and_pooled_histograms(two):
    data = two["activations"]
    s = data["settings"]
    assert len(s) == 12 and all(len(v["layers"]) == 5 for v in s.values())
    std = {name: [layer["std"] for layer in v["layers"]] for name, v in s.items()}
    assert min(std["sigmoid, std=1"]) > 0.4 and max(std["sigmoid, std=0.01"]) < 0.05
    assert std["relu, he"][-1] > 0.5 * std["relu, he"][0]
    assert std["relu, xavier"][-1] < 0.5 * std["relu, xavier"][0]
    counts = s["sigmoid, std=1"]["layers"][0]["counts"]
    assert sum(counts) == 1000 * 100 and counts[0] + counts[-1] > 4 * counts[15]
    # the pooled histograms hold both seeds' values; the first seed's moments are per_seed's
    pooled = data["pooled"]["sigmoid, std=1"]["layers"][0]["counts"]
    assert sum(pooled) == 2 * 1000 * 100
    per = data["per_seed"]["settings"]["tanh, xavier"]
    assert np.shape(per["std"]) == (2, 5)
    assert per["std"][0] == [layer["std"] for layer in s["tanh, xavier"]["layers"]]


def test_batch_norm_uses_the_books_eps_and_helps_at_small_scales(two):
    data = two["batchnorm"]
    assert data["eps"] == 1e-6
    bn = np.array(data["per_seed"]["train_acc_bn"])
    plain = np.array(data["per_seed"]["train_acc_plain"])
    assert bn.shape == plain.shape == (2, len(data["weight_scales"]), data["epochs"])
    assert data["train_acc_bn"] == bn[0].tolist()
    small = np.array(data["weight_scales"]) < 0.05
    assert np.all(plain[:, small, -1] < 0.2)  # the plain net does not learn there
    assert np.all(bn[:, small, -1] > plain[:, small, -1] + 0.1)


@pytest.mark.parametrize(
    "name, field, key",
    [
        ("weight-decay", "runs", "0.1"),
        ("dropout", "runs", "0.2"),
        ("dropout", "runs_inverted", "0.2"),
    ],
)
def test_regularization_narrows_the_gap_in_every_seed(two, name, field, key):
    data = two[name]
    per_seed = data["per_seed"][field]
    for i in range(2):

        def gap(run, i=i):
            return np.mean(np.subtract(run["train_acc"][i], run["test_acc"][i])[-10:])

        assert gap(per_seed[key]) < gap(per_seed["0"])
    first = data[field][key]
    assert first["train_acc"] == per_seed[key]["train_acc"][0]
    assert first["history"]["train_accuracy"] == first["train_acc"]
    assert set(first["history"]) == {"loss", "train_accuracy", "eval_accuracy"}


def test_dropout_runs_both_forms_and_the_books_trains_slower(two):
    data = two["dropout"]
    assert set(data["runs"]) == set(data["runs_inverted"]) == {"0", "0.15", "0.2"}
    assert data["runs"]["0"] == data["runs_inverted"]["0"]  # no dropout layer: one run
    for rate in ("0.15", "0.2"):
        book = np.array(data["per_seed"]["runs"][rate]["train_acc"])[:, -10:].mean()
        inverted = np.array(data["per_seed"]["runs_inverted"][rate]["train_acc"])[:, -10:].mean()
        assert book < inverted  # SGD at q**2 the learning rate


def test_search_trials_ranked_and_rerun_over_seeds(two):
    data = two["search"]
    trials = data["trials"]
    assert len(trials) == data["num_trials"]
    assert [t["val_acc"] for t in trials] == sorted((t["val_acc"] for t in trials), reverse=True)
    for t in trials:
        assert 1e-6 <= t["learning_rate"] <= 1e-2 and 1e-8 <= t["weight_decay"] <= 1e-4
        assert t["val_acc"] == pytest.approx(t["val_acc_curve"][-1], abs=1e-4)
        assert len(t["train_acc_curve"]) == data["epochs"]
    top = data["per_seed"]
    assert top["trial"] == [t["trial"] for t in trials[: len(top["trial"])]]
    for j, t in enumerate(trials[: len(top["trial"])]):
        assert top["val_acc_curve"][j][0] == t["val_acc_curve"]  # seed 0 is the search itself
        assert len(top["val_acc_curve"][j]) == 2


def test_a_rerun_with_the_first_seed_repeats_the_search(two):
    """The re-run's keys are the search's: re-running with seed 0 gives its curves."""
    from purelearn.experiments import search
    from purelearn.experiments._common import mnist, subset

    data = two["search"]
    (x, y), _, _ = mnist("embedded")
    x, y = subset(x, y, 500, 0)
    top = data["trials"][:2]
    again = search.rerun(
        top, [0], data["num_trials"], (x[:400], y[:400]), (x[400:], y[400:]), epochs=data["epochs"]
    )
    for j, t in enumerate(top):
        np.testing.assert_allclose(again["eval_accuracy"][0, j], t["val_acc_curve"], atol=1e-4)


# -- seeds and verdict arithmetic --------------------------------------------------------


def test_seed_list_refuses_seeds_past_32_bits():
    assert seed_list(2**32 - 2, 2) == [2**32 - 2, 2**32 - 1]
    with pytest.raises(ValueError, match="seeds=3"):
        seed_list(2**32 - 2, 3)
    with pytest.raises(ValueError, match="seeds"):
        seed_list(0, 0)


@pytest.mark.parametrize(
    "k, n, expected",
    [
        (1, 1, True),
        (0, 1, False),
        (1, 2, False),
        (2, 2, True),
        (2, 3, True),
        (1, 3, False),
        (3, 5, False),
        (4, 5, True),
        (0, 0, False),
    ],
)
def test_clear_majority_is_two_thirds(k, n, expected):
    assert clear_majority(k, n) is expected


def test_verdict_over_counts_seeds_and_refuses_to_judge_without_a_majority_of_data():
    yes, no, unknown = SeedCheck(True, {}), SeedCheck(False, {}), SeedCheck(None, {})
    v = verdict_over([yes, yes, no], "claim", "effect")
    assert (v.agrees, v.agreeing, v.judged, v.seeds) == (True, 2, 3, 3)
    assert v.reason == "claim in 2 of 3 seeds; effect."
    assert verdict_over([yes, no, no], "c", "e").agrees is False
    assert verdict_over([yes, unknown, unknown], "c", "e").agrees is None


# -- through the command ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tour(two, tmp_path_factory):
    """``purelearn tour --quick`` with every record's run replaced by its result above:
    the command's writing and report, without training again."""
    out = tmp_path_factory.mktemp("tour")
    calls = []
    saved = dict(cli.EXPERIMENTS)
    try:
        for name, record in saved.items():

            def run(_name=name, **kwargs):
                calls.append((_name, kwargs))
                return json.loads(json.dumps(two[_name]))

            cli.EXPERIMENTS[name] = dataclasses.replace(record, run=run)
        assert cli.main(["tour", "--quick", "--out", str(out), "--data", "embedded"]) == 0
    finally:
        cli.EXPERIMENTS.update(saved)
    return out, calls


def test_tour_writes_every_json_png_and_the_report(tour):
    out, calls = tour
    assert [name for name, _ in calls] == NAMES
    assert all(kw == {"seed": 0, "seeds": 2, "data": "embedded", "quick": True} for _, kw in calls)
    html = (out / "report.html").read_text()
    for name in NAMES:
        assert json.loads((out / f"{name}.json").read_text())["seeds"] == [0, 1]
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f'src="{name}.png"' in html
    assert html.count("mean ± std") >= len(NAMES) - 1
    assert "q² the learning rate" in html and "10e-7" in html


@pytest.mark.skipif(shutil.which("purelearn") is None, reason="the package is not installed")
def test_console_script():
    out = subprocess.run(["purelearn", "--help"], capture_output=True, text=True, check=True)
    assert "tour" in out.stdout and "--quick" in out.stdout and "--seeds" in out.stdout
    bad = subprocess.run(["purelearn", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_module_entry_point():
    out = subprocess.run(
        [sys.executable, "-m", "purelearn.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "weight-decay" in out.stdout
