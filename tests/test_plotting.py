"""The generic drawing helpers, the records' figures, verdicts and tables on synthetic
results, and the HTML report (no training here)."""

from __future__ import annotations

import dataclasses
import importlib.util
import re

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from purelearn import plotting, report
from purelearn.experiments import EXPERIMENTS, Experiment, Verdict

needs_mpl = pytest.mark.skipif(
    importlib.util.find_spec("matplotlib") is None, reason="matplotlib is an optional extra"
)

OPTIMIZERS = ["SGD", "Momentum", "Nesterov", "AdaGrad", "RMSProp", "Adam"]


def decay(n: int, end: float, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    curve = end + (2.3 - end) * np.exp(-5.0 * np.arange(n) / n)
    return (curve * (1 + 0.02 * rng.standard_normal(n))).round(5).tolist()


def optimizers_result(finals_per_seed: list[dict[str, float]]) -> dict:
    """A synthetic optimizers result: seed i's curves end at finals_per_seed[i]."""
    loss = {
        k: [decay(100, f[k], 7 * i + j) for i, f in enumerate(finals_per_seed)]
        for j, k in enumerate(OPTIMIZERS)
    }
    acc = {k: [0.9] * len(finals_per_seed) for k in OPTIMIZERS}
    return {
        "loss": {k: v[0] for k, v in loss.items()},
        "test_accuracy": {k: v[0] for k, v in acc.items()},
        "iterations": 100,
        "seeds": list(range(len(finals_per_seed))),
        "per_seed": {"loss": loss, "test_accuracy": acc},
        "data": "synthetic",
        "quick": True,
        "seconds": 1.0,
    }


SGD_HIGH = dict(zip(OPTIMIZERS, [0.5, 0.1, 0.1, 0.05, 0.08, 0.01], strict=True))
SGD_LOW = {**SGD_HIGH, "SGD": 0.02}


# -- helpers ----------------------------------------------------------------------------


def test_band_stats_against_numpy():
    rng = np.random.default_rng(0)
    c = rng.normal(size=(5, 30))
    mid, lo, hi = plotting.band_stats(c)
    np.testing.assert_array_equal(mid, c.mean(0))
    np.testing.assert_array_equal(lo, c.min(0))
    np.testing.assert_array_equal(hi, c.max(0))
    np.testing.assert_array_equal(plotting.band_stats(c, "median")[0], np.median(c, 0))
    with pytest.raises(ValueError, match="center"):
        plotting.band_stats(c, "mode")


def test_smooth_curve_is_a_kaiser_moving_average():
    x = np.random.default_rng(1).normal(size=50)
    y = plotting.smooth_curve(x)
    w = np.kaiser(11, 2)
    w /= w.sum()
    np.testing.assert_allclose(y[5:-5], np.convolve(x, w, mode="valid"), atol=1e-12)


@needs_mpl
def test_band_shades_only_with_several_seeds():
    fig = plotting.new_figure(3, 2)
    ax = fig.add_subplot()
    plotting.band(ax, [[0.0, 1.0, 2.0]], label="one")
    assert len(ax.collections) == 0
    line = plotting.band(ax, [[0.0, 1.0, 2.0], [1.0, 2.0, 4.0]], label="two")
    (shade,) = ax.collections
    np.testing.assert_array_equal(line.get_ydata(), [0.5, 1.5, 3.0])
    verts = shade.get_paths()[0].vertices
    assert verts[:, 1].min() == 0.0 and verts[:, 1].max() == 4.0


@needs_mpl
def test_panels_grid_and_save(tmp_path):
    assert plotting.grid(5, 4) == (2, 4)
    fig = plotting.new_figure(6, 4)
    axes = plotting.panels(fig, 5, 4, sharey=True)
    assert len(axes) == 5 and len(fig.axes) == 5
    plotting.label_outer(axes, "epochs", "accuracy")
    path = plotting.save(fig, tmp_path / "sub" / "f.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@needs_mpl
def test_histogram_marks_a_cut_first_bin():
    fig = plotting.new_figure(3, 2)
    ax = fig.add_subplot()
    plotting.histogram(ax, [500, 10, 20, 5], [0, 1, 2, 3, 4], cut_above=20)
    assert any("bin 1 cut: 500" in t.get_text() for t in ax.texts)
    assert ax.get_ylim()[1] == pytest.approx(26.0)


@needs_mpl
def test_search_figure_draws_bands_for_rerun_trials():
    trials = [
        {
            "learning_rate": 1e-2 / (i + 1),
            "weight_decay": 1e-6,
            "val_acc": 0.8 - 0.1 * i,
            "val_acc_curve": [0.5, 0.8 - 0.1 * i],
            "train_acc_curve": [0.6, 0.9],
        }
        for i in range(3)
    ]
    spread = [{"val_acc_curve": [[0.5, 0.8], [0.4, 0.7]], "train_acc_curve": [[0.6, 0.9]] * 2}]
    fig = plotting.search_figure(trials, k=3, spread=spread)
    axes = fig.axes
    assert len(axes) == 3
    assert "2 seeds" in axes[0].get_title() and "seeds" not in axes[1].get_title()
    assert len(axes[0].collections) == 2 and len(axes[1].collections) == 0
    with pytest.raises(ValueError, match="k must be"):
        plotting.search_figure(trials, k=0)


def _search_trials(vals, params, epochs=12):
    """Trials whose curves cover the panel: validation flat at the top, flat at the
    bottom or rising steeply; training falling from the upper left (where the label
    used to sit) to the lower right."""
    shapes = [
        np.full(epochs, 0.99),
        np.full(epochs, 0.01),
        np.minimum(1.0, np.linspace(0.0, 2.0, epochs)),
    ]
    falling = np.linspace(0.97, 0.03, epochs).tolist()
    return [
        {
            **{name: 10.0 ** -(i + j + 1) for j, name in enumerate(params)},
            "val_acc": v,
            "val_acc_curve": shapes[i % 3].tolist(),
            "train_acc_curve": falling,
        }
        for i, v in enumerate(vals)
    ]


def _drawn(fig):
    """Draw ``fig`` with the Agg renderer; return the renderer."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    return fig.canvas.get_renderer()


def _line_points(ax, per_segment=25):
    """Display coordinates of every line in ``ax``: its data points and points along
    each segment between them."""
    pts = []
    for line in ax.lines:
        xy = ax.transData.transform(np.asarray(line.get_xydata(), dtype=float))
        t = np.linspace(0.0, 1.0, per_segment)[:, None, None]
        pts.append(xy)
        if len(xy) > 1:
            pts.append((xy[:-1] + t * (xy[1:] - xy[:-1])).reshape(-1, 2))
    return np.concatenate(pts)


@needs_mpl
@pytest.mark.parametrize(
    "n, params",
    [
        (20, ["learning_rate", "weight_decay"]),  # the search experiment's figure
        (1, ["learning_rate"]),
        (7, ["learning_rate", "weight_decay", "b1"]),  # two label lines
        (12, ["learning_rate", "weight_decay", "b1", "b2", "eps"]),  # three
    ],
)
def test_search_figure_labels_never_cover_a_curve(n, params):
    trials = _search_trials(np.linspace(0.95, 0.1, n).tolist(), params)
    first = trials[0]
    spread = [{k: [first[k]] * 2 for k in ("val_acc_curve", "train_acc_curve")}]
    fig = plotting.search_figure(trials, k=20, spread=spread)
    renderer = _drawn(fig)
    assert len(fig.axes) == n
    for ax, t in zip(fig.axes, trials, strict=True):
        assert len(ax.texts) == 1
        label = ax.texts[0]
        for name, value in plotting._hyperparameters(t):
            assert f"{name} {value:.1e}" in label.get_text()
        box = label.get_window_extent(renderer)
        xy = _line_points(ax)
        inside = (xy[:, 0] >= box.x0) & (xy[:, 0] <= box.x1)
        inside &= (xy[:, 1] >= box.y0) & (xy[:, 1] <= box.y1)
        assert not inside.any(), f"label {label.get_text()!r} covers {inside.sum()} points"
    for ax in fig.axes:
        # Outside every panel, between its panel and its title, inside the figure.
        box = ax.texts[0].get_window_extent(renderer)
        title = ax.title.get_window_extent(renderer)
        assert not any(box.overlaps(other.bbox) for other in fig.axes)
        assert box.y0 >= ax.bbox.y1 and title.y0 >= box.y1
        assert fig.bbox.contains(box.x0, box.y0) and fig.bbox.contains(box.x1, box.y1)
    boxes = [ax.title.get_window_extent(renderer) for ax in fig.axes]
    boxes += [ax.texts[0].get_window_extent(renderer) for ax in fig.axes]
    for i, a in enumerate(boxes):  # no two titles or labels overlap
        assert not any(a.overlaps(b) for b in boxes[i + 1 :])


def _title_value(ax):
    match = re.search(r"val (\d+\.(\d+))", ax.get_title())
    assert match, ax.get_title()
    return float(match.group(1)), len(match.group(2))


@needs_mpl
@pytest.mark.parametrize(
    "vals, decimals",
    [
        ([0.934, 0.927, 0.5], 3),  # read "val 0.93" twice before
        ([0.9341, 0.9344, 0.9], 4),
        ([0.93412, 0.93409], 5),
        ([0.8, 0.8, 0.1], 3),  # equal values may read the same
    ],
)
def test_search_figure_titles_tell_different_accuracies_apart(vals, decimals):
    fig = plotting.search_figure(_search_trials(vals, ["learning_rate"]))
    shown = [_title_value(ax) for ax in fig.axes]
    assert {d for _, d in shown} == {decimals}
    for (value, d), v in zip(shown, vals, strict=True):
        assert abs(value - v) <= 0.5 * 10.0**-d + 1e-12
    for i in range(len(vals)):
        for j in range(i + 1, len(vals)):
            if vals[i] != vals[j]:
                assert fig.axes[i].get_title() != fig.axes[j].get_title()


# -- records on synthetic results ---------------------------------------------------------


def test_optimizers_verdict_counts_seeds_with_effect_sizes():
    record = EXPERIMENTS["optimizers"]
    v = record.verdict(optimizers_result([SGD_HIGH, SGD_HIGH, SGD_LOW]))
    assert (v.agrees, v.agreeing, v.seeds) == (True, 2, 3)
    assert "in 2 of 3 seeds" in v.reason and " ± " in v.reason
    v = record.verdict(optimizers_result([SGD_HIGH, SGD_LOW, SGD_LOW]))
    assert (v.agrees, v.agreeing) == (False, 1)
    head, rows = record.table(optimizers_result([SGD_HIGH, SGD_LOW]))
    assert head[0] == "seed" and head[-1] == "agrees"
    assert [r[-1] for r in rows] == ["yes", "no", "1 of 2"]
    sgd = head.index("SGD final loss")
    assert float(rows[0][sgd]) == pytest.approx(0.5, abs=0.05)


@needs_mpl
def test_loss_figure_has_a_band_per_optimizer():
    fig = EXPERIMENTS["optimizers"].figure(optimizers_result([SGD_HIGH, SGD_LOW]))
    (ax,) = fig.axes
    assert len(ax.lines) == 6 and len(ax.collections) == 6
    assert "2 seeds" in ax.get_title()


def test_a_single_seed_verdict_reads_one_of_one():
    v = EXPERIMENTS["optimizers"].verdict(optimizers_result([SGD_HIGH]))
    assert (v.agrees, v.agreeing, v.seeds) == (True, 1, 1)
    assert "in 1 of 1 seed;" in v.reason


def test_batchnorm_verdict_on_synthetic_curves():
    rng = np.random.default_rng(0)
    bn = np.clip(0.9 + 0.01 * rng.normal(size=(3, 4, 5)), 0, 1)
    plain = np.full((3, 4, 5), 0.1)
    plain[2] = 0.95  # one seed where the plain net wins everywhere
    result = {
        "weight_scales": [1, 0.1, 0.01, 0.001],
        "per_seed": {"train_acc_bn": bn.tolist(), "train_acc_plain": plain.tolist()},
        "seeds": [0, 1, 2],
        "eps": 1e-6,
    }
    v = EXPERIMENTS["batchnorm"].verdict(result)
    assert (v.agrees, v.agreeing, v.seeds) == (True, 2, 3)


# -- the report --------------------------------------------------------------------------


def toy_record(name: str = "toy") -> Experiment:
    def verdict(result):
        k = sum(result["ok"])
        return Verdict(
            k * 3 >= 2 * len(result["ok"]),
            f"{k} <of> seeds",
            k,
            len(result["ok"]),
            len(result["ok"]),
        )

    def figure(result):
        fig = plotting.new_figure(2, 2)
        plotting.band(fig.add_subplot(), result["curves"])
        return fig

    return Experiment(
        name=name,
        title="A toy & its title",
        conclusion="Toys agree.",
        order=1,
        run=lambda **kw: {},
        figure=figure,
        verdict=verdict,
        table=lambda r: (["seed", "x"], [["0", "1.0"], ["mean ± std", "1.0 ± 0.0"]]),
        schema=dict,
        explanation="Why <this> matters.",
    )


@needs_mpl
def test_report_shows_figure_table_explanation_and_verdict(tmp_path):
    record = toy_record()
    result = {
        "ok": [True, True, False],
        "curves": [[0, 1], [1, 2]],
        "seconds": 2.5,
        "seeds": [4, 5, 6],
        "data": "d",
        "quick": True,
    }
    path = report.write_report(
        {"toy": result, "stray": {"seconds": 1}}, tmp_path, experiments={"toy": record}
    )
    page = path.read_text()
    assert (tmp_path / "toy.png").read_bytes()[:4] == b"\x89PNG"
    assert 'src="toy.png"' in page and "A toy &amp; its title" in page
    assert "Why &lt;this&gt; matters." in page and "2 &lt;of&gt; seeds" in page
    assert "(2 of 3 seeds)" in page and 'class="summary"' in page
    assert "seeds 4 to 6 (3)" in page and "quick run" in page
    assert re.search(r"stray.*not judged", page, re.S)
    assert "<script" not in page and "http" not in page.replace("http-equiv", "")


def test_safe_verdict_on_broken_results():
    v = report.safe_verdict(EXPERIMENTS["optimizers"], {"seeds": [0]})
    assert v.agrees is None and "could not be judged" in v.reason


@needs_mpl
def test_every_record_draws_its_figure_from_a_dropout_like_result(tmp_path):
    curves = {"train_acc": [[0.5, 1.0], [0.6, 0.9]], "test_acc": [[0.4, 0.7], [0.5, 0.6]]}
    result = {
        "seeds": [0, 1],
        "per_seed": {
            "runs": {"0": curves, "0.2": curves},
            "runs_inverted": {"0": curves, "0.2": curves},
        },
    }
    fig = EXPERIMENTS["dropout"].figure(result)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 4
    assert all(len(ax.collections) == 2 for ax in visible)  # train and test bands
    new = dataclasses.replace(EXPERIMENTS["dropout"], name="d2")
    assert new.figure is EXPERIMENTS["dropout"].figure


# -- diverged runs ---------------------------------------------------------------


def _synthetic_batchnorm_result(diverged_plain):
    scales = [1.0, 0.01]
    flat = [[0.1, 0.1, 0.1], [0.1, 0.1, 0.1]]
    return {
        "weight_scales": scales,
        "train_acc_bn": [[0.3, 0.6, 0.9], [0.2, 0.5, 0.8]],
        "train_acc_plain": [[0.1, 0.0, 0.0], [0.1, 0.1, 0.1]],
        "diverged_bn": [None, None],
        "diverged_plain": diverged_plain,
        "per_seed": {
            "train_acc_bn": [[[0.3, 0.6, 0.9], [0.2, 0.5, 0.8]]],
            "train_acc_plain": [[[0.1, 0.0, 0.0], flat[1]]],
            "diverged_bn": [[None, None]],
            "diverged_plain": [diverged_plain],
        },
        "epochs": 3,
        "eps": 1e-6,
        "seeds": [0],
        "data": "synthetic",
        "quick": True,
        "seconds": 0.0,
    }


def test_a_diverged_run_is_marked_in_the_figure_verdict_and_table():
    from purelearn.experiments import EXPERIMENTS
    from purelearn.plotting import DIVERGED

    record = EXPERIMENTS["batchnorm"]
    result = _synthetic_batchnorm_result([2, None])
    assert set(result) == set(record.schema.__annotations__)
    fig = record.figure(result)
    legend_labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert DIVERGED in legend_labels
    first = fig.axes[0]
    markers = [ln for ln in first.get_lines() if ln.get_label() == DIVERGED]
    assert len(markers) == 1 and markers[0].get_xdata()[0] == 2
    # the plain curve stops where the run diverged: no flat line at 0 after it
    plain = next(ln for ln in first.get_lines() if ln.get_label() == "Normal (without BN)")
    assert np.isnan(np.asarray(plain.get_ydata(), float)[1:]).all()
    assert not any(ln.get_label() == DIVERGED for ln in fig.axes[1].get_lines())
    assert "diverged" in record.verdict(result).reason
    head, rows = record.table(result)
    col = head.index("scales plain diverged")
    assert rows[0][col] == "1"


def test_no_diverged_run_no_marker_and_old_results_still_draw():
    from purelearn.experiments import EXPERIMENTS
    from purelearn.plotting import DIVERGED

    record = EXPERIMENTS["batchnorm"]
    result = _synthetic_batchnorm_result([None, None])
    fig = record.figure(result)
    assert DIVERGED not in [t.get_text() for t in fig.legends[0].get_texts()]
    assert "diverged" not in record.verdict(result).reason
    # a result written before divergence was recorded has no such keys
    old = {k: v for k, v in result.items() if not k.startswith("diverged")}
    old["per_seed"] = {k: v for k, v in result["per_seed"].items() if "diverged" not in k}
    record.figure(old)
    assert record.table(old)[1][0][record.table(old)[0].index("scales plain diverged")] == "0"


@given(st.lists(st.one_of(st.none(), st.integers(1, 5)), min_size=1, max_size=4))
@example([1])
@example([None])
@settings(max_examples=20, deadline=None)
def test_diverged_epochs_finds_the_first_non_finite_loss(epochs):
    from purelearn.experiments._common import diverged_epochs

    loss = np.ones((len(epochs), 5))
    for i, e in enumerate(epochs):
        if e is not None:
            loss[i, e - 1] = np.nan
            loss[i, e:] = np.inf
    assert diverged_epochs(loss) == epochs
