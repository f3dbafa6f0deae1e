"""The chapter's experiments through the command, in --quick form.

One module-wide ``purelearn tour --quick`` run; every test reads what it
wrote and checks a claim the textbook makes.
"""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from purelearn import cli
from purelearn.experiments import EXPERIMENTS, paths

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tour(tmp_path_factory):
    out = tmp_path_factory.mktemp("tour")
    assert cli.main(["tour", "--quick", "--out", str(out), "--data", "embedded"]) == 0
    return out


def load(out, name):
    return json.loads((out / f"{name}.json").read_text())


def test_tour_writes_every_json_png_and_the_report(tour):
    for name in EXPERIMENTS:
        assert (tour / f"{name}.json").stat().st_size > 0
        assert (tour / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (tour / "report.html").read_text()
    for name in EXPERIMENTS:
        assert f'src="{name}.png"' in html


def smoothed_tail(curve, n=50):
    return float(np.mean(curve[-n:]))


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


def test_paths_match_numpy_and_sgd_ends_farthest(tour):
    data = load(tour, "paths")
    reference = {"SGD": np_sgd, "Momentum": np_momentum, "AdaGrad": np_adagrad, "Adam": np_adam}
    for name, update in reference.items():
        np.testing.assert_allclose(
            data["final"][name], numpy_path(update, paths.SETTINGS[name][1]), atol=1e-4
        )
        assert len(data["paths"][name]) == 31
    assert data["paths"]["SGD"][0] == [-7.0, 2.0]


def test_sgd_learns_slowest(tour):
    data = load(tour, "optimizers")
    tails = {name: smoothed_tail(loss) for name, loss in data["loss"].items()}
    assert set(tails) == {"SGD", "Momentum", "Nesterov", "AdaGrad", "RMSProp", "Adam"}
    assert max(tails, key=tails.get) == "SGD", tails
    assert min(data["test_accuracy"], key=data["test_accuracy"].get) == "SGD"
    assert all(len(loss) == data["iterations"] for loss in data["loss"].values())


def test_std_001_does_not_learn_and_he_learns_fastest(tour):
    data = load(tour, "init")
    tails = {name: smoothed_tail(loss) for name, loss in data["loss"].items()}
    assert tails["std=0.01"] > 2.2  # ln(10) = 2.30: chance level
    assert tails["he"] < tails["xavier"] < tails["std=0.01"]
    assert data["test_accuracy"]["std=0.01"] < 0.2 < data["test_accuracy"]["he"]


def test_activation_statistics_follow_the_textbook(tour):
    s = load(tour, "activations")["settings"]
    assert len(s) == 12
    assert all(len(v["layers"]) == 5 for v in s.values())
    std = {name: [layer["std"] for layer in v["layers"]] for name, v in s.items()}
    # std 1: sigmoid outputs pile up at 0 and 1 (a large spread); std 0.01: at 0.5.
    assert min(std["sigmoid, std=1"]) > 0.4 and max(std["sigmoid, std=0.01"]) < 0.05
    # ReLU: He keeps the last layer's spread, std 0.01 and Xavier let it shrink.
    assert std["relu, he"][-1] > 0.5 * std["relu, he"][0]
    assert std["relu, xavier"][-1] < 0.5 * std["relu, xavier"][0]
    assert std["relu, std=0.01"][-1] < 1e-3
    counts = s["sigmoid, std=1"]["layers"][0]["counts"]
    assert sum(counts) == 1000 * 100 and counts[0] + counts[-1] > 4 * counts[15]


def test_batch_norm_helps_at_small_weight_scales(tour):
    data = load(tour, "batchnorm")
    bn, plain = np.array(data["train_acc_bn"]), np.array(data["train_acc_plain"])
    assert bn.shape == plain.shape == (len(data["weight_scales"]), data["epochs"])
    small = np.array(data["weight_scales"]) < 0.05
    # At the smallest scale even batch norm needs more than the quick run's
    # epochs (its gradients pass through the tiny last layer), so: a majority.
    wins = bn[small, -1] > plain[small, -1] + 0.1
    assert wins.sum() > small.sum() / 2, (bn[:, -1], plain[:, -1])
    assert np.all(bn[:, -1] >= plain[:, -1] - 0.02)
    assert np.all(plain[small, -1] < 0.2)  # the plain net does not learn there


@pytest.mark.parametrize("name, key", [("weight-decay", "0.1"), ("dropout", "0.2")])
def test_regularization_narrows_the_train_test_gap(tour, name, key):
    runs = load(tour, name)["runs"]

    def gap(run):
        return np.mean(np.subtract(run["train_acc"], run["test_acc"])[-10:])

    assert gap(runs[key]) < gap(runs["0"])
    assert runs["0"]["train_acc"][-1] > runs["0"]["test_acc"][-1]


def test_dropout_runs_every_rate(tour):
    assert set(load(tour, "dropout")["runs"]) == {"0", "0.15", "0.2"}


def test_search_trials_are_ranked_and_inside_the_space(tour):
    data = load(tour, "search")
    trials = data["trials"]
    assert len(trials) == data["num_trials"]
    assert [t["val_acc"] for t in trials] == sorted((t["val_acc"] for t in trials), reverse=True)
    for t in trials:
        assert 1e-6 <= t["learning_rate"] <= 1e-2 and 1e-8 <= t["weight_decay"] <= 1e-4
        assert t["val_acc"] == pytest.approx(t["val_acc_curve"][-1], abs=1e-4)
        assert len(t["train_acc_curve"]) == data["epochs"]


def test_seed_makes_runs_reproducible(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        cli.main(["search", "--quick", "--seed", "3", "--out", str(out), "--data", "embedded"])
    assert load(a, "search")["trials"] == load(b, "search")["trials"]
    cli.main(["search", "--quick", "--seed", "4", "--out", str(a), "--data", "embedded"])
    assert load(a, "search")["trials"] != load(b, "search")["trials"]


@pytest.mark.skipif(shutil.which("purelearn") is None, reason="the package is not installed")
def test_console_script():
    out = subprocess.run(["purelearn", "--help"], capture_output=True, text=True, check=True)
    assert "tour" in out.stdout and "--quick" in out.stdout
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
