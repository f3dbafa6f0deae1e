"""Figures, verdicts and the HTML report, on synthetic results of the experiments' schemas."""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import re
import sys

import numpy as np
import pytest

from purelearn import plotting

needs_mpl = pytest.mark.skipif(
    importlib.util.find_spec("matplotlib") is None, reason="matplotlib is an optional extra"
)

OPTIMIZERS = ["SGD", "Momentum", "Nesterov", "AdaGrad", "RMSProp", "Adam"]
ACTIVATIONS = ["sigmoid", "tanh", "relu"]
INITS = ["std=1", "std=0.01", "xavier", "he"]


def _common(quick: bool) -> dict:
    return {"seconds": 1.5, "quick": quick, "data": "embedded MNIST sample (4000/1000)"}


def _decay(n: int, start: float, end: float, rate: float, seed: int) -> list[float]:
    """A noisy exponentially decaying loss curve."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    curve = end + (start - end) * np.exp(-rate * t / n)
    return (curve * (1 + 0.05 * rng.standard_normal(n))).round(5).tolist()


def _rise(n: int, end: float, speed: float = 5.0, start: float = 0.1) -> list[float]:
    """An accuracy curve rising from ``start`` towards ``end``."""
    t = np.arange(1, n + 1)
    return (end + (start - end) * np.exp(-speed * t / n)).round(4).tolist()


# ---------------------------------------------------------------------------
# synthetic results, shaped like the textbook's outcome (agree) or against it
# ---------------------------------------------------------------------------


def paths_data(agree: bool = True) -> dict:
    def zigzag():
        p = [(-7.0, 2.0)]
        for _ in range(30):
            x, y = p[-1]
            p.append((x * 0.905, -0.9 * y))
        return p

    def smooth(rate):
        p = [(-7.0, 2.0)]
        for _ in range(30):
            x, y = p[-1]
            p.append((x * rate, y * 0.6))
        return p

    paths = {"SGD": zigzag(), "Momentum": smooth(0.85), "AdaGrad": smooth(0.8), "Adam": smooth(0.8)}
    if not agree:
        paths["SGD"], paths["Momentum"] = paths["Momentum"], paths["SGD"]
    return {
        "final": {k: list(v[-1]) for k, v in paths.items()},
        "paths": {k: [list(q) for q in v] for k, v in paths.items()},
        "lr": {"SGD": 0.95, "Momentum": 0.1, "AdaGrad": 1.5, "Adam": 0.3},
        "steps": 30,
        **_common(False),
    }


def loss_data(names, finals, iterations: int, quick: bool) -> dict:
    return {
        "loss": {
            n: _decay(iterations, 2.3, f, 5.0 if f < 2.0 else 0.0, i)
            for i, (n, f) in enumerate(zip(names, finals, strict=True))
        },
        "test_accuracy": {n: round(1 - f / 2.5, 3) for n, f in zip(names, finals, strict=True)},
        "iterations": iterations,
        **_common(quick),
    }


def optimizers_data(agree: bool = True, quick: bool = False) -> dict:
    finals = [0.4, 0.1, 0.09, 0.05, 0.12, 0.08] if agree else [0.05, 0.3, 0.2, 0.4, 0.2, 0.3]
    return loss_data(OPTIMIZERS, finals, 200 if quick else 2000, quick)


def init_data(agree: bool = True, quick: bool = False) -> dict:
    finals = [2.3, 0.4, 0.2] if agree else [0.3, 0.4, 2.3]
    return loss_data(["std=0.01", "xavier", "he"], finals, 300 if quick else 2000, quick)


def _forward(activation: str, init: str, rng) -> list[dict]:
    x = rng.standard_normal((300, 100))
    std = {"std=1": 1.0, "std=0.01": 0.01, "xavier": 0.1, "he": math.sqrt(0.02)}[init]
    f = {
        "sigmoid": lambda a: 1 / (1 + np.exp(-a)),
        "tanh": np.tanh,
        "relu": lambda a: np.maximum(a, 0),
    }[activation]
    lo = -1.0 if activation == "tanh" else 0.0
    layers = []
    for _ in range(5):
        x = f(x @ (rng.standard_normal((100, 100)) * std))
        counts, edges = np.histogram(x, bins=30, range=(lo, 1.0))
        layers.append(
            {
                "counts": counts.tolist(),
                "edges": edges.round(4).tolist(),
                "mean": round(float(x.mean()), 5),
                "std": round(float(x.std()), 5),
            }
        )
    return layers


def activations_data(agree: bool = True, quick: bool = False) -> dict:
    rng = np.random.default_rng(0)
    acts = ACTIVATIONS[-1:] if quick else ACTIVATIONS
    settings = {
        f"{a}, {i}": {"activation": a, "init": i, "layers": _forward(a, i, rng)}
        for a in acts
        for i in INITS
    }
    if not agree:  # ReLU with He shrinking like Xavier does
        settings["relu, he"]["layers"] = settings["relu, xavier"]["layers"]
    return {"settings": settings, **_common(quick)}


def batchnorm_data(agree: bool = True, quick: bool = False) -> dict:
    n, epochs = (4, 5) if quick else (16, 20)
    scales = np.logspace(0, -4, n).tolist()
    good = [_rise(epochs, 0.95) for _ in scales]
    bad = [_rise(epochs, 0.3 if i % 3 else 0.9, speed=2.0) for i in range(n)]
    bn, plain = (good, bad) if agree else (bad, good)
    return {
        "weight_scales": scales,
        "train_acc_bn": bn,
        "train_acc_plain": plain,
        "epochs": epochs,
        **_common(quick),
    }


def overfit_data(keys, agree: bool = True, quick: bool = False) -> dict:
    epochs = 60 if quick else 200
    runs = {}
    for i, key in enumerate(keys):
        regularized = i > 0
        gap = 0.1 if regularized == agree else 0.3
        train = 0.85 if regularized else 1.0
        runs[key] = {"train_acc": _rise(epochs, train), "test_acc": _rise(epochs, train - gap)}
    return {"runs": runs, "epochs": epochs, **_common(quick)}


def search_data(agree: bool = True, quick: bool = False, learned: bool = True) -> dict:
    n, epochs = (6, 10) if quick else (100, 50)
    rng = np.random.default_rng(1)
    lrs = 10 ** rng.uniform(-6, -2, n)
    wds = 10 ** rng.uniform(-8, -4, n)
    # Accuracy grows with the learning rate (agree) or with the weight decay (against).
    driver = np.log10(lrs) + 6 if agree else np.log10(wds) + 8
    vals = 0.1 + 0.7 * driver / 4 if learned else np.full(n, 0.11)
    trials = [
        {
            "learning_rate": float(lr),
            "weight_decay": float(wd),
            "val_acc": round(float(v), 4),
            "train_acc": round(float(min(1.0, v + 0.1)), 4),
            "val_acc_curve": _rise(epochs, float(v)),
            "train_acc_curve": _rise(epochs, float(min(1.0, v + 0.1))),
        }
        for lr, wd, v in zip(lrs, wds, vals, strict=True)
    ]
    trials.sort(key=lambda t: -t["val_acc"])
    return {
        "trials": trials,
        "space": {"learning_rate": [1e-6, 1e-2], "weight_decay": [1e-8, 1e-4]},
        "num_trials": n,
        "epochs": epochs,
        **_common(quick),
    }


MAKERS = {
    "paths": lambda agree=True, quick=False: paths_data(agree),
    "optimizers": optimizers_data,
    "activations": activations_data,
    "init": init_data,
    "batchnorm": batchnorm_data,
    "weight-decay": lambda agree=True, quick=False: overfit_data(["0", "0.1"], agree, quick),
    "dropout": lambda agree=True, quick=False: overfit_data(["0", "0.15", "0.2"], agree, quick),
    "search": search_data,
}


@functools.cache
def _stored(name: str, agree: bool, quick: bool) -> str:
    return json.dumps(MAKERS[name](agree=agree, quick=quick))


def make(name: str, agree: bool = True, quick: bool = False) -> dict:
    """A fresh copy of the synthetic result, passed through JSON as the CLI stores it."""
    return json.loads(_stored(name, agree, quick))


# ---------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------

# name -> (quick?) -> (number of axes, lines per axes)
EXPECTED = {
    "paths": {False: (4, 2), True: (4, 2)},
    "optimizers": {False: (1, 6), True: (1, 6)},
    "activations": {False: (60, 0), True: (20, 0)},
    "init": {False: (1, 3), True: (1, 3)},
    "batchnorm": {False: (16, 2), True: (4, 2)},
    "weight-decay": {False: (2, 2), True: (2, 2)},
    "dropout": {False: (3, 2), True: (3, 2)},
    "search": {False: (20, 2), True: (6, 2)},
}


@needs_mpl
@pytest.mark.parametrize("quick", [False, True], ids=["full", "quick"])
@pytest.mark.parametrize("name", plotting.EXPERIMENTS)
def test_figure_has_expected_panels_and_lines(name, quick):
    from matplotlib.figure import Figure

    fig = plotting.figure(name, make(name, quick=quick))
    assert isinstance(fig, Figure)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    n_axes, n_lines = EXPECTED[name][quick]
    assert len(axes) == n_axes
    for ax in axes:
        assert len(ax.get_lines()) == n_lines
        assert ax.get_title()


@needs_mpl
def test_figure_titles_follow_the_textbook():
    fig = plotting.figure("paths", make("paths"))
    assert [ax.get_title() for ax in fig.axes] == [
        "SGD (lr=0.95)",
        "Momentum (lr=0.1)",
        "AdaGrad (lr=1.5)",
        "Adam (lr=0.3)",
    ]
    fig = plotting.figure("batchnorm", make("batchnorm"))
    assert fig.axes[0].get_title() == "W:1"
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert labels == ["Batch Normalization", "Normal (without BN)"]
    assert [line.get_linestyle() for line in fig.axes[0].get_lines()] == ["-", "--"]
    fig = plotting.figure("search", make("search"))
    assert fig.axes[0].get_title().startswith("Best-1")
    assert fig.axes[19].get_title().startswith("Best-20")


@needs_mpl
def test_loss_figure_smooths_and_labels_test_accuracy():
    data = make("optimizers")
    fig = plotting.figure("optimizers", data)
    (ax,) = fig.axes
    assert ax.get_ylim() == (0.0, 1.0)
    sgd = ax.get_lines()[0]
    assert len(sgd.get_ydata()) == data["iterations"]
    assert np.std(np.diff(sgd.get_ydata())) < np.std(np.diff(data["loss"]["SGD"]))
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[0] == f"SGD (test acc {data['test_accuracy']['SGD']:.3f})"


@needs_mpl
def test_figure_is_not_registered_with_pyplot():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    plotting.figure("init", make("init"))
    assert plt.get_fignums() == before


def test_figure_rejects_unknown_experiment():
    with pytest.raises(ValueError, match="unknown experiment 'nope'"):
        plotting.figure("nope", {})
    with pytest.raises(ValueError, match="unknown experiment"):
        plotting.verdict("nope", {})


@needs_mpl
@pytest.mark.parametrize("name", ["paths", "batchnorm", "search", "activations"])
def test_save_figure_writes_png(tmp_path, name):
    path = tmp_path / "sub" / f"{name}.png"
    plotting.save_figure(name, make(name, quick=True), path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert 300 < width < 2000 and 200 < height < 4000


def test_figure_needs_matplotlib(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=re.escape("pip install 'purelearn[examples]'")):
        plotting.figure("init", make("init"))
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert plotting.verdict("init", make("init"))[0] is True  # verdicts need no matplotlib


def test_smooth_curve():
    assert plotting.smooth_curve([]).shape == (0,)
    assert plotting.smooth_curve([3.0, 4.0]).tolist() == [3.0, 4.0]
    x = np.r_[np.zeros(50), np.ones(50)]
    y = plotting.smooth_curve(x)
    assert y.shape == x.shape
    assert np.all(np.diff(y) >= -1e-12) and 0 < y[50] < 1
    np.testing.assert_allclose(plotting.smooth_curve(np.full(7, 2.0)), 2.0)


# ---------------------------------------------------------------------------
# verdicts
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("quick", [False, True], ids=["full", "quick"])
@pytest.mark.parametrize("name", plotting.EXPERIMENTS)
def test_verdict_agrees_with_textbook_shaped_data(name, quick):
    agrees, reason = plotting.verdict(name, make(name, agree=True, quick=quick))
    assert agrees is True, reason
    assert re.search(r"\d", reason) and reason.endswith(".")


@pytest.mark.parametrize("name", plotting.EXPERIMENTS)
def test_verdict_disagrees_with_contrary_data(name):
    agrees, reason = plotting.verdict(name, make(name, agree=False))
    assert agrees is False, reason
    assert re.search(r"\d", reason)


def test_verdict_cannot_judge_incomplete_runs():
    data = make("optimizers")
    del data["loss"]["SGD"]
    assert plotting.verdict("optimizers", data)[0] is None
    assert plotting.verdict("search", search_data(learned=False))[0] is None
    few = make("search")
    few["trials"] = few["trials"][:2]
    assert plotting.verdict("search", few)[0] is None
    assert plotting.verdict("activations", {"settings": {}})[0] is None


def test_overfit_verdict_needs_an_overfitting_baseline():
    data = make("weight-decay")
    data["runs"]["0"]["test_acc"] = data["runs"]["0"]["train_acc"]
    agrees, reason = plotting.verdict("weight-decay", data)
    assert agrees is False and "barely overfits" in reason


def test_init_verdict_requires_std001_to_stall():
    data = make("init")
    data["loss"]["std=0.01"] = data["loss"]["xavier"]
    agrees, reason = plotting.verdict("init", data)
    assert agrees is False and "std=0.01 did learn" in reason


# ---------------------------------------------------------------------------
# tables and the report
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", plotting.EXPERIMENTS)
def test_headline_table_is_rectangular(name):
    head, rows = plotting.headline_table(name, make(name))
    assert rows and all(len(row) == len(head) for row in rows)
    assert all(isinstance(cell, str) for row in rows for cell in row)


def test_search_table_ranks_top_20():
    head, rows = plotting.headline_table("search", make("search"))
    assert head[:2] == ["rank", "val acc"]
    assert [r[0] for r in rows] == [str(i) for i in range(1, 21)]
    accs = [float(r[1]) for r in rows]
    assert accs == sorted(accs, reverse=True)


def test_write_report(tmp_path):
    results = {name: make(name) for name in plotting.EXPERIMENTS}
    results["dropout"]["data"] = "<script>alert('x')</script> & more"
    path = plotting.write_report(results, tmp_path, render_missing=False)
    assert path == tmp_path / "report.html"
    page = path.read_text(encoding="utf-8")
    for name in plotting.EXPERIMENTS:
        assert plotting.html.escape(plotting.TITLES[name]) in page
        assert f'<img src="{name}.png"' in page
        assert f'href="#exp-{name}"' in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more" in page
    assert "<script" not in page
    assert not re.search(r"(src|href)=\"(https?:|//)", page)
    assert page.count("This run agrees with the textbook") == len(plotting.EXPERIMENTS)
    assert "<table" in page and "1.5 s" in page


@needs_mpl
def test_write_report_skips_missing_and_renders_figures(tmp_path):
    results = {"init": make("init", quick=True), "weight-decay": make("weight-decay", agree=False)}
    path = plotting.write_report(results, tmp_path / "out")
    page = path.read_text(encoding="utf-8")
    assert (tmp_path / "out" / "init.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "out" / "weight-decay.png").exists()
    assert plotting.html.escape(plotting.TITLES["init"]) in page
    assert plotting.TITLES["paths"] not in page and 'src="paths.png"' not in page
    assert "This run does not agree with the textbook" in page
    assert "quick run" in page


def test_write_report_survives_malformed_results(tmp_path):
    results = {"paths": {"seconds": 0.1}, "custom": {"seconds": "n/a"}}
    page = plotting.write_report(results, tmp_path, render_missing=False).read_text()
    assert "cannot be judged" in page
    assert "custom" in page
