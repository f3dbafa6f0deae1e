"""Registry entries: searches, data, distribution, plotting, the report, the command,
the experiments and the compilation cache."""

from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import strategies as st

import purelearn as pl
from fuzz import strategies as S
from fuzz.registry import (
    BAD_COUNTS,
    NOT_A_MODEL,
    NOT_DATA,
    Call,
    bad,
    c,
    entry,
    model,
    toy,
)
from purelearn import distributed, plotting, tuning
from purelearn.experiments import EXPERIMENTS, _common

P = "purelearn."


def _tmp() -> Path:
    return Path(tempfile.mkdtemp(prefix="plfuzz-"))


def _is(value: Any, cls: type) -> None:
    assert isinstance(value, cls), (type(value), cls)


def _eq(a: Any, b: Any) -> None:
    assert a == b, (a, b)


# -- tuning --------------------------------------------------------------------------

_BOUNDS = st.floats(1e-6, 1e3).flatmap(
    lambda lo: st.tuples(st.just(lo), st.floats(lo * 1.01 + 1e-9, lo * 10 + 1))
)
_NUM_FORMS = [float, np.float32, np.float64, np.asarray]


def _bounds_call(pair: tuple[float, float], form: Any) -> Call:
    lo, hi = pair
    return c(low=form(lo), high=form(hi))


_dist = st.builds(_bounds_call, _BOUNDS, st.sampled_from(_NUM_FORMS))


def _dist_oracle(call: Call, d: Any) -> None:
    x = d.sample(np.random.default_rng(0), 64)
    lo, hi = float(call.kwargs["low"]), float(call.kwargs["high"])
    assert np.isfinite(x).all() and (x >= lo).all() and (x <= hi).all()


_BAD_BOUND = [math.nan, math.inf, -math.inf, "1", None, True, np.array([1.0, 2.0])]
for _name, _extra in [("uniform", []), ("log_uniform", [0.0, -1.0])]:
    entry(
        f"{P}tuning.{_name}",
        valid=_dist,
        oracle=_dist_oracle,
        invalid=bad(_dist, low=_BAD_BOUND + _extra + [1e9], high=[*_BAD_BOUND, 1e-09]),
    )
entry(
    f"{P}tuning.Distribution",
    valid=st.builds(lambda cl, log: Call({**cl.kwargs, "log": log}), _dist, st.booleans()),
    oracle=_dist_oracle,
    invalid=bad(_dist, log=["yes", 1, None], low=_BAD_BOUND),
)
_ROWS = st.lists(
    st.fixed_dictionaries(
        {
            "learning_rate": st.floats(1e-4, 1),
            "trial": st.integers(0, 9),
            "val_acc": st.floats(0, 1) | st.just(math.nan),
            "train_acc": st.floats(0, 1),
            "diverged": st.booleans(),
            "val_acc_curve": st.lists(st.floats(0, 1), min_size=2, max_size=2),
            "train_acc_curve": st.lists(st.floats(0, 1), min_size=2, max_size=2),
        }
    ),
    max_size=4,
)
entry(
    f"{P}tuning.SearchResults",
    valid=_ROWS.map(lambda rows: c(rows)),
    oracle=lambda call, r: _eq(list(r), call.args[0]),
)
_topk = st.builds(lambda rows, k: c(results=rows, k=k), _ROWS, st.integers(1, 5))
entry(
    f"{P}tuning.top_k_table",
    valid=_topk,
    oracle=lambda call, t: _is(t, str),
    invalid=bad(_topk, k=BAD_COUNTS, results=([None, 3], ("results",))),
)
_SEARCH_BASE = dict(
    model=model(),
    optimizer_factory=pl.sgd,
    train_data=toy(),
    val_data=toy(),
    epochs=1,
    batch_size=8,
)
_SEARCH_BAD = dict(
    model=NOT_A_MODEL,
    optimizer_factory=[None, "sgd", pl.sgd(0.1)],
    train_data=NOT_DATA,
    val_data=NOT_DATA,
    epochs=BAD_COUNTS,
    batch_size=[*BAD_COUNTS, 17],
    key=S.bad_keys(),
)


def _search_oracle(call: Call, rows: Any) -> None:
    assert len(rows) >= 1
    accs = [r["val_acc"] for r in rows]
    assert all(0 <= a <= 1 for a in accs) and accs == sorted(accs, reverse=True)


_rs = st.builds(
    lambda k: c(
        space={"learning_rate": tuning.log_uniform(1e-3, 1)}, num_trials=2, key=k, **_SEARCH_BASE
    ),
    S.keys(),
)
entry(
    f"{P}tuning.random_search",
    valid=_rs,
    oracle=_search_oracle,
    invalid=bad(
        _rs,
        space=(
            [
                None,
                {},
                {"learning_rate": (1, 0)},
                {"lr": tuning.uniform(0, 1)},
                {"learning_rate": "x"},
            ],
            ("space", "lr", "learning_rate"),
        ),
        num_trials=BAD_COUNTS,
        **_SEARCH_BAD,
    ),
    weight=0.1,
)
_gs = st.builds(lambda k: c(grid={"learning_rate": [0.01, 0.1]}, key=k, **_SEARCH_BASE), S.keys())
entry(
    f"{P}tuning.grid_search",
    valid=_gs,
    oracle=_search_oracle,
    invalid=bad(
        _gs,
        grid=(
            [None, {}, {"learning_rate": []}, {"learning_rate": [-1.0]}, {"learning_rate": 0.1}],
            ("grid", "learning_rate"),
        ),
        max_parallel=BAD_COUNTS,
        **_SEARCH_BAD,
    ),
    weight=0.1,
)
_bs = st.builds(
    lambda k: c(
        space={"learning_rate": tuning.log_uniform(1e-3, 1)}, num_trials=2, key=k, **_SEARCH_BASE
    ),
    S.keys(),
)
entry(
    f"{P}tuning.bayes_search",
    valid=_bs,
    oracle=_search_oracle,
    invalid=bad(_bs, num_trials=BAD_COUNTS, space=([None, {}], ("space",)), **_SEARCH_BAD),
    weight=0.1,
)


# -- datasets ------------------------------------------------------------------------

entry(
    f"{P}datasets.cache_dir",
    valid=st.just(c()),
    oracle=lambda call, p: _is(p, Path),
)
_lm = st.builds(
    lambda n, f, o: c(source="embedded", normalize=n, flatten=f, one_hot=o),
    st.booleans(),
    st.booleans(),
    st.booleans(),
)


def _mnist_oracle(call: Call, out: Any) -> None:
    (x, y), (xt, yt) = out
    assert len(x) == len(y) == 4000 and len(xt) == len(yt) == 1000
    assert x.shape[1:] == ((784,) if call.kwargs["flatten"] else (28, 28))
    if call.kwargs["normalize"]:
        assert 0 <= x.min() and x.max() <= 1
    assert y.shape[1:] == ((10,) if call.kwargs["one_hot"] else ())


entry(
    f"{P}datasets.load_mnist",
    valid=_lm,
    oracle=_mnist_oracle,
    invalid=bad(
        _lm,
        source=(
            ["mnist", None, 3, ""]
            + [S.make_path(_tmp(), k) for k in ("missing", "corrupt", "empty")],
            ("source",),
        ),
        normalize=["yes", 1, None],
        flatten=["no", 0],
        one_hot=[None, "1"],
    ),
    errors=(ValueError, TypeError, OSError),
    weight=0.2,
)


def _idx_header(shape: tuple[int, ...], code: int = 0x08) -> bytes:
    return bytes([0, 0, code, len(shape)]) + b"".join(n.to_bytes(4, "big") for n in shape)


def _idx_bytes(shape: tuple[int, ...], code: int = 0x08) -> bytes:
    return _idx_header(shape, code) + bytes(int(np.prod(shape)))


def _idx_file(shape: tuple[int, ...]) -> Path:
    p = _tmp() / "f.idx"
    p.write_bytes(_idx_bytes(shape))
    return p


_ri = S.shapes(min_dims=1, max_dims=3, max_side=4).map(
    lambda s: Call({"path": _idx_file(s)}, extra={"shape": s})
)


def _bad_idx(content: bytes) -> Path:
    p = _tmp() / "bad.idx"
    p.write_bytes(content)
    return p


entry(
    f"{P}datasets.read_idx",
    valid=_ri,
    oracle=lambda call, a: _eq(a.shape, call.extra["shape"]),
    invalid=bad(
        _ri,
        path=(
            S.bad_path_values()
            | st.sampled_from(S.PATH_KINDS).map(lambda k: S.make_path(_tmp(), k))
            | st.sampled_from(
                [
                    _idx_bytes((3,))[:-1],  # cut short
                    _idx_bytes((3,), code=0x42),  # unknown dtype code
                    b"\x01\x00\x08\x01",  # bad magic
                    _idx_header((2**31, 2**31)),  # a header claiming 2**62 bytes
                ]
            ).map(_bad_idx),
            ("path", "idx", "IDX"),
        ),
        max_bytes=[-1, 0, 1.5, "x", None],
    ),
    errors=(ValueError, TypeError, OSError),
)
_dl = st.just(c(directory=_tmp(), base_url="file:///nonexistent/", progress=False, timeout=1.0))
entry(
    f"{P}datasets.download_mnist",
    invalid=bad(
        _dl,
        timeout=[0, -1, math.nan, math.inf, "1", None, True],
        base_url=[None, 3, "", "ftp://x/", "not a url"],
        checksums=[{"a": "b"}, "sha", 3],
        progress=["yes", None],
        directory=([S.make_path(_tmp(), "file_as_dir"), 3], ("directory",)),
    ),
    errors=(ValueError, TypeError, OSError),
    why_no_valid="the valid path downloads MNIST: test_datasets serves it from a file:// mirror",
)


# -- distributed (one process, the test's devices) ------------------------------------

_dm = st.builds(
    lambda n, e: c(axis_name=n, explicit=e), st.sampled_from(["data", "batch"]), st.booleans()
)
entry(
    f"{P}distributed.data_mesh",
    valid=_dm,
    oracle=lambda call, m: _eq(m.axis_names, (call.kwargs["axis_name"],)),
    invalid=bad(_dm, axis_name=["", None, 3], explicit=["yes", None]),
)
_pr = st.integers(1, 64).map(lambda n: c(n=n * jax.device_count()))
entry(
    f"{P}distributed.process_rows",
    valid=_pr,
    oracle=lambda call, s: _eq((s.start, s.stop), (0, call.kwargs["n"])),
    invalid=bad(_pr, n=BAD_COUNTS, mesh=["mesh", 3]),
)
_gb = (
    S.float_arrays(S.shapes(min_dims=1, max_dims=3, min_side=1))
    .filter(lambda a: a.shape[0] % jax.device_count() == 0)
    .map(lambda a: c(local=a))
)
entry(
    f"{P}distributed.global_batch",
    valid=_gb,
    oracle=lambda call, g: np.testing.assert_array_equal(
        np.asarray(g), np.asarray(jnp.asarray(call.kwargs["local"]))
    ),
    invalid=bad(_gb, mesh=["mesh", 3], axis_name=["model", 3]),
    finite=False,
)
_rep = S.pytrees(max_leaves=3).map(lambda t: c(tree=t, mesh=distributed.data_mesh()))
entry(
    f"{P}distributed.replicate",
    valid=_rep,
    oracle=lambda call, t: _eq(jax.tree.structure(t), jax.tree.structure(call.kwargs["tree"])),
    invalid=bad(_rep, mesh=[None, "mesh", 3]),
)
entry(
    f"{P}distributed.to_host",
    valid=S.pytrees(max_leaves=3).map(lambda t: c(tree=t)),
    oracle=lambda call, t: _eq(jax.tree.structure(t), jax.tree.structure(call.kwargs["tree"])),
)
entry(
    f"{P}distributed.initialize",
    invalid=bad(
        c(coordinator_address="127.0.0.1:1", num_processes=1, process_id=0),
        num_processes=[0, -1, "2", 1.5],
        process_id=[-1, 1, "0", 1.5],
        coordinator_address=[3, "", b"127.0.0.1:1"],
    ),
    why_no_valid="joining a job is once per process and before any JAX call: test_distributed",
)
_ll = st.just(c(argv=["-c", "print('hi')"], num_processes=1, devices_per_process=1, timeout=60.0))


def _launch_oracle(call: Call, results: Any) -> None:
    assert [r.returncode for r in results] == [0]
    assert results[0].stdout.strip() == "hi"


entry(
    f"{P}distributed.launch_local",
    valid=_ll,
    oracle=_launch_oracle,
    invalid=bad(
        _ll,
        argv=[None, "script.py", 3, [3]],
        num_processes=BAD_COUNTS,
        devices_per_process=BAD_COUNTS,
        timeout=[0, -1, math.nan, "1", None],
        env=["PATH=/bin", 3, {"A": 1}],
    ),
    weight=0.1,
)
entry(
    f"{P}distributed.LaunchResult",
    valid=st.just(c(returncode=0, stdout="a", stderr="")),
    oracle=lambda call, r: _is(r, distributed.LaunchResult),
)


# -- plotting ------------------------------------------------------------------------

_CURVES = st.integers(1, 4).flatmap(
    lambda n: st.lists(
        st.lists(st.floats(-1e3, 1e3), min_size=n, max_size=n), min_size=1, max_size=4
    )
)
_bst = st.builds(
    lambda cv, ce: c(curves=cv, center=ce), _CURVES, st.sampled_from(["mean", "median"])
)


def _band_stats_oracle(call: Call, out: Any) -> None:
    a = np.asarray(call.kwargs["curves"], np.float64)
    centre = a.mean(0) if call.kwargs["center"] == "mean" else np.median(a, 0)
    np.testing.assert_allclose(out[0], centre, rtol=1e-6, atol=1e-6)
    assert (out[1] <= out[0] + 1e-9).all() and (out[2] >= out[0] - 1e-9).all()


entry(
    f"{P}plotting.band_stats",
    valid=_bst,
    oracle=_band_stats_oracle,
    invalid=bad(
        _bst, center=["avg", None, 1], curves=([[], [[1.0], [1.0, 2.0]], "c", None], ("curves",))
    ),
)


def _fig():
    return plotting.new_figure(2, 2)


def _ax():
    return _fig().add_subplot()


entry(
    f"{P}plotting.band",
    valid=_bst.map(lambda cl: c(ax=_ax(), **cl.kwargs)),
    oracle=lambda call, line: None,
    invalid=bad(
        _bst.map(lambda cl: c(ax=_ax(), **cl.kwargs)),
        center=["avg", None],
        alpha=([-1.0, 2.0, "a"], ("alpha",)),
    ),
    weight=0.3,
)
_grid = st.builds(lambda n, m: c(n=n, max_cols=m), st.integers(1, 30), st.integers(1, 8))


def _grid_oracle(call: Call, rc: Any) -> None:
    rows, cols = rc
    assert cols <= call.kwargs["max_cols"] and rows * cols >= call.kwargs["n"] > (rows - 1) * cols


entry(
    f"{P}plotting.grid",
    valid=_grid,
    oracle=_grid_oracle,
    invalid=bad(_grid, n=[-1, 1.5, "2", None, True], max_cols=BAD_COUNTS),
)
_hist = st.integers(1, 5).flatmap(
    lambda n: st.builds(
        lambda counts, cut: c(
            ax=_ax(), counts=counts, edges=list(np.linspace(0, 1, n + 1)), cut_above=cut
        ),
        st.lists(st.floats(0, 1e3), min_size=n, max_size=n),
        st.none() | st.floats(0.1, 1e3),
    )
)
entry(
    f"{P}plotting.histogram",
    valid=_hist,
    oracle=lambda call, r: None,
    invalid=bad(
        _hist,
        edges=([[0.0], [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]], ("edges", "counts")),
        cut_above=[-1.0, math.nan, "x"],
    ),
    weight=0.3,
)
_lo = st.just(None).map(
    lambda _: c(axes=list(plotting.panels(_fig(), 4, 2).flat), xlabel="x", ylabel="y")
)
entry(
    f"{P}plotting.label_outer",
    valid=_lo,
    oracle=lambda call, r: None,
    invalid=bad(_lo, fontsize=[-1, 0, math.nan, "9"]),
    weight=0.3,
)
_nf = st.builds(lambda w, h: c(width=w, height=h), st.floats(0.5, 10), st.floats(0.5, 10))
entry(
    f"{P}plotting.new_figure",
    valid=_nf,
    oracle=lambda call, f: np.testing.assert_allclose(
        f.get_size_inches(), [call.kwargs["width"], call.kwargs["height"]]
    ),
    invalid=bad(_nf, width=[0, -1, math.nan, math.inf, "3", None], height=[0, -2.0, math.nan]),
    weight=0.3,
)
_pan = st.builds(lambda n, m: c(fig=_fig(), n=n, max_cols=m), st.integers(1, 6), st.integers(1, 3))
entry(
    f"{P}plotting.panels",
    valid=_pan,
    oracle=lambda call, a: _eq(a.size >= call.kwargs["n"], True),
    invalid=bad(_pan, n=[-1, 1.5, "2", None, True], max_cols=BAD_COUNTS),
    weight=0.3,
)
_save = st.builds(lambda: c(fig=_fig(), path=_tmp() / "f.png"))
entry(
    f"{P}plotting.save",
    valid=_save,
    oracle=lambda call, p: _eq(p.exists(), True),
    invalid=bad(
        _save,
        path=S.bad_path_values()
        # a missing parent is created (documented): not a bad path
        | st.just("file_as_dir").map(lambda k: S.make_path(_tmp(), k).with_suffix(".png")),
        dpi=[0, -1, 1.5, "110", None],
        fig=([None, "fig"], ("fig",)),
    ),
    errors=(ValueError, TypeError, OSError),
    weight=0.2,
)
_sf = st.builds(lambda rows, k: c(results=rows, k=k), _ROWS.filter(bool), st.integers(1, 5))
entry(
    f"{P}plotting.search_figure",
    valid=_sf,
    oracle=lambda call, f: None,
    invalid=bad(_sf, k=BAD_COUNTS, results=([[], None], ("results",))),
    weight=0.2,
)
entry(
    f"{P}plotting.smooth_curve",
    valid=st.lists(st.floats(-1e3, 1e3), max_size=30).map(lambda x: c(x=x)),
    oracle=lambda call, y: _eq(len(y), len(call.kwargs["x"])),
    invalid=st.sampled_from([None, "abc", [[1.0, 2.0]], 3]).map(lambda v: c().replace("x", v)),
)


# -- report, command, experiments ----------------------------------------------------

_fp = st.builds(lambda n: c(out_dir=_tmp(), name=n), st.sampled_from(sorted(EXPERIMENTS)))
entry(
    f"{P}report.figure_path",
    valid=_fp,
    oracle=lambda call, p: _eq(p.name, f"{call.kwargs['name']}.png"),
    invalid=bad(_fp, name=["", None, 3, "../x", "a/b"], out_dir=S.bad_path_values()),
)
_sv = st.builds(
    lambda name, result: c(record=EXPERIMENTS[name], result=result),
    st.sampled_from(sorted(EXPERIMENTS)),
    st.sampled_from([{}, {"seeds": [0]}, {"runs": None}, {"final": {}}, {"loss": {"SGD": []}}]),
)
entry(
    f"{P}report.safe_verdict",
    valid=_sv,
    oracle=lambda call, v: _is(v, _common.Verdict),
)
_wr = st.just(None).map(lambda _: c(results={}, out_dir=_tmp()))
entry(
    f"{P}report.write_report",
    valid=_wr,
    oracle=lambda call, p: _eq(p.exists(), True),
    invalid=bad(
        _wr,
        results=([None, {"paths": None}, "r"], ("results",)),
        out_dir=S.bad_path_values(),
        render_missing=["yes", None],
    ),
    errors=(ValueError, TypeError, OSError),
    weight=0.3,
)
_main = st.just(None).map(lambda _: c(["paths", "--quick", "--out", str(_tmp())]))
entry(
    f"{P}cli.main",
    valid=_main,
    oracle=lambda call, rc: _eq(rc, 0),
    invalid=st.sampled_from(
        [
            ["nosuch"],
            ["paths", "--seed", "-1"],
            ["paths", "--seeds", "0"],
            ["paths", "--seed", "x"],
            ["paths", "--data", "nowhere/at/all"],
            ["paths", "--out", "/dev/null/x"],
            ["paths", "--bogus"],
        ]
    ).map(lambda argv: Call(args=(argv,), bad=("usage", "error", "argument", "--", "purelearn"))),
    errors=(SystemExit,),
    weight=0.2,
)
_rx = st.just(None).map(lambda _: c(name="paths", out=_tmp(), seed=0, data="embedded", quick=True))
entry(
    f"{P}cli.run_experiment",
    valid=_rx,
    oracle=lambda call, r: _eq("final" in r, True),
    invalid=bad(
        _rx,
        name=["nosuch", None, 3],
        seed=[-1, 2**32, 1.5, "0", None],
        seeds=[0, -1, 1.5],
        data=(["nowhere/at/all", None, 3], ("data", "source")),
        quick=["yes", None, 1],
    ),
    weight=0.2,
)


def _experiment_oracle(record: Any):
    def check(call: Call, result: Any) -> None:
        assert "seeds" in result
        verdict = record.verdict(result)
        assert isinstance(verdict, _common.Verdict)
        header, rows = record.table(result)
        assert all(len(r) == len(header) for r in rows)

    return check


_HEAVY_EXPERIMENT = (
    "a quick run still trains on the embedded MNIST for seconds: argument checks only here "
    "(test_experiments runs every experiment)"
)
for _name, _record in EXPERIMENTS.items():
    _base = st.just(c(seed=0, seeds=1, data="embedded", quick=True))
    _light = _name == "paths"  # the only experiment that trains nothing
    entry(
        f"{_record.run.__module__}.EXPERIMENT",
        valid=_base if _light else None,
        oracle=_experiment_oracle(_record),
        invalid=bad(
            _base,
            seed=[-1, 2**32, 1.5, "0", None, True],
            seeds=[0, -1, 1.5, "2", None],
            data=(["nowhere/at/all", None, 3], ("data", "source")),
            quick=["yes", None, 1],
        ),
        weight=0.2,
        why_no_valid="" if _light else _HEAVY_EXPERIMENT,
    )
entry(
    f"{P}experiments._common.Experiment",
    valid=st.just(None).map(
        lambda _: c(
            **{
                f: getattr(EXPERIMENTS["paths"], f)
                for f in (
                    "name",
                    "title",
                    "conclusion",
                    "order",
                    "run",
                    "figure",
                    "verdict",
                    "table",
                    "schema",
                )
            }
        )
    ),
    oracle=lambda call, r: _is(r, _common.Experiment),
)
entry(
    f"{P}experiments._common.SeedCheck",
    valid=st.builds(
        lambda a, v: c(agrees=a, numbers={"x": v}), st.none() | st.booleans(), st.floats()
    ),
    oracle=lambda call, r: _is(r, _common.SeedCheck),
    finite=False,
)
entry(
    f"{P}experiments._common.Verdict",
    valid=st.just(c(agrees=True, reason="r", agreeing=1, judged=1, seeds=1)),
    oracle=lambda call, r: _is(r, _common.Verdict),
)
_cm = st.integers(0, 10).flatmap(
    lambda s: st.builds(lambda a: c(agreeing=a, seeds=s), st.integers(0, s))
)
entry(
    f"{P}experiments._common.clear_majority",
    valid=_cm,
    oracle=lambda call, r: _eq(
        r, call.kwargs["seeds"] > 0 and 3 * call.kwargs["agreeing"] >= 2 * call.kwargs["seeds"]
    ),
    invalid=bad(_cm, agreeing=[-1, 1.5, "1", None], seeds=[-1, 1.5, "3", None]),
)
entry(
    f"{P}_cache.enable_compilation_cache",
    valid=st.just(c()),  # the default directory: the one the suite's conftest enabled
    oracle=lambda call, p: _is(p, Path),
    invalid=st.sampled_from([3, 1.5, b"\x00", ["a"]]).map(lambda v: c().replace("directory", v)),
)
del sys
