"""A run survives any interruption: killed with SIGKILL at random moments (mid-epoch,
mid-save, mid-prune) and restarted with the same command, it ends with the
uninterrupted run's parameters, history, early stop and best state, bit for bit.

The quick version (3 kills) runs in the suite; the long one is::

    PURELEARN_KILLS=30 python -m pytest -q -n 0 -s tests/test_resume.py -k killed
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import toy_data, trees_equal

import purelearn as pl

JOB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "resume_job.py")


def _start(ckpt_dir: str, out: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, JOB, ckpt_dir, out],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def _finish(ckpt_dir: str, out: str) -> None:
    proc = _start(ckpt_dir, out)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0 and "done" in output, output


def _result(out: str) -> tuple[dict, dict]:
    with np.load(out + ".npz") as f:
        leaves = {k: f[k] for k in f.files}
    with open(out + ".json") as f:
        return leaves, json.load(f)


def _debris(ckpt_dir: str) -> list[str]:
    """What a finished run leaves besides its steps and the marker: nothing, if a killed
    save or prune was cleaned up."""
    return [
        name
        for name in os.listdir(ckpt_dir)
        if not name.isdigit() and name != pl.checkpoints.DIRECTORY_MARKER
    ]


@pytest.mark.slow
def test_a_run_killed_at_random_moments_ends_as_the_uninterrupted_one(tmp_path):
    kills = int(os.environ.get("PURELEARN_KILLS", "3"))
    whole_out = str(tmp_path / "whole")
    _finish(str(tmp_path / "whole_ckpts"), whole_out)
    want_leaves, want_history = _result(whole_out)
    assert len(want_history["epoch"]) < 40  # early stopping fired: the stop is compared too

    rng = random.Random(int(os.environ.get("PURELEARN_KILL_SEED", "0")))
    ckpt_dir, out = str(tmp_path / "ckpts"), str(tmp_path / "killed")
    seen = {"killed": 0, "finished early": 0, "tmp debris": 0, "prune debris": 0}
    # Training (after the first "training" line) takes about as long as the whole run's
    # epochs and saves; kills land anywhere in it, saves and prunes included.
    span = 3.0
    while seen["killed"] < kills:
        proc = _start(ckpt_dir, out)
        assert proc.stdout.readline().strip() == "training"
        time.sleep(rng.uniform(0.0, span))
        if proc.poll() is not None:  # it finished first: the next start returns at once
            seen["finished early"] += 1
            span /= 2
            proc.communicate()
            if os.path.exists(out + ".json"):
                os.remove(out + ".json")
                os.remove(out + ".npz")
            continue
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        seen["killed"] += 1
        names = os.listdir(ckpt_dir) if os.path.isdir(ckpt_dir) else []
        seen["tmp debris"] += any("tmp" in n for n in names)
        seen["prune debris"] += any(n == "purelearn-deleted" for n in names)
    _finish(ckpt_dir, out)
    print(f"\n[resume] {seen}")
    got_leaves, got_history = _result(out)
    assert got_history == want_history
    assert sorted(got_leaves) == sorted(want_leaves)
    for k in want_leaves:
        np.testing.assert_array_equal(got_leaves[k], want_leaves[k], err_msg=k)
    assert _debris(ckpt_dir) == []


# -- the pieces, in process -------------------------------------------------------------

MODEL = pl.mlp([5, 8, 3], dropout_rate=0.1)


def _kw(**extra):
    x, y = toy_data()
    kw = dict(
        train_data=(x, y),
        epochs=12,
        batch_size=32,
        key=0,
        eval_data=toy_data(48, seed=1),
        progress=False,
        early_stopping=pl.EarlyStopping(patience=2, restore_best=True),
    )
    kw.update(extra)
    return kw


class _Interrupt(Exception):
    pass


def _interrupt_after(n):
    def callback(epoch, state, history):
        if epoch == n:
            raise _Interrupt

    return callback


def test_rerunning_the_same_fit_continues_and_matches(tmp_path):
    opt = pl.adam(0.02)
    whole, want = pl.fit(MODEL, opt, **_kw())
    ckpts = pl.Checkpoints(tmp_path / "run", keep=2)
    for stop in (1, 4):
        with pytest.raises(_Interrupt):
            pl.fit(MODEL, opt, **_kw(checkpoints=ckpts, callback=_interrupt_after(stop)))
    state, history = pl.fit(MODEL, opt, **_kw(checkpoints=ckpts))
    assert trees_equal(state, whole) and history == want
    assert history["best_epoch"][-1] == int(np.argmax(history["eval_accuracy"]))
    again, history_again = pl.fit(MODEL, opt, **_kw(checkpoints=ckpts))  # finished: at once
    assert trees_equal(again, whole) and history_again == want
    restored = ckpts.restore(pl.TrainState.create(MODEL, opt, 0))
    assert int(restored.step) == int(history["epoch"][-1] + 1) * 3  # the last epoch's state


def test_best_epoch_names_the_state_returned():
    opt = pl.adam(0.05)
    state, history = pl.fit(MODEL, opt, **_kw(epochs=8))
    best = history["best_epoch"][-1]
    again, _ = pl.fit(MODEL, opt, **_kw(epochs=best + 1, early_stopping=None))
    assert trees_equal(state, again)
    x, y = toy_data(48, seed=1)
    assert pl.evaluate(MODEL, state, x, y) == pytest.approx(history["eval_accuracy"][best])


def test_a_record_from_another_model_names_both(tmp_path):
    ckpts = pl.Checkpoints(tmp_path / "run")
    pl.fit(MODEL, pl.adam(), **_kw(epochs=1, checkpoints=ckpts))
    other = pl.mlp([5, 4, 3])
    with pytest.raises(ValueError, match=r"not made with this model, optimizer and early stopping"):
        pl.fit(other, pl.adam(), **_kw(epochs=1, checkpoints=ckpts))
    with pytest.raises(ValueError, match=r"checkpoints must be a pl\.Checkpoints"):
        pl.fit(MODEL, pl.adam(), **_kw(checkpoints=str(tmp_path)))


def test_a_missing_step_lists_the_steps_there(tmp_path):
    ckpts = pl.Checkpoints(tmp_path / "run", keep=3)
    pl.fit(MODEL, pl.sgd(0.1), **_kw(epochs=3, early_stopping=None, callback=ckpts))
    with pytest.raises(FileNotFoundError, match=r"step 4; its steps are \[3, 6, 9\]"):
        ckpts.restore(pl.TrainState.create(MODEL, pl.sgd(0.1), 0), step=4)


def test_a_callback_checkpoint_is_not_a_run_record(tmp_path):
    ckpts = pl.Checkpoints(tmp_path / "run")
    pl.fit(MODEL, pl.sgd(0.1), **_kw(epochs=1, early_stopping=None, callback=ckpts))
    with pytest.raises(ValueError, match="not a resumable run record"):
        pl.fit(MODEL, pl.sgd(0.1), **_kw(epochs=2, early_stopping=None, checkpoints=ckpts))


def test_a_damaged_newest_record_falls_back_to_the_one_before(tmp_path):
    opt = pl.sgd(0.1)
    kw = _kw(early_stopping=None, epochs=4)
    whole, want = pl.fit(MODEL, opt, **kw)
    ckpts = pl.Checkpoints(tmp_path / "run", keep=2)
    with pytest.raises(_Interrupt):
        pl.fit(MODEL, opt, **{**kw, "checkpoints": ckpts, "callback": _interrupt_after(2)})
    newest = os.path.join(ckpts.directory, str(ckpts.steps()[-1]))
    data = [
        os.path.join(root, name)
        for root, _, names in os.walk(newest)
        for name in names
        if "state" in root and os.path.getsize(os.path.join(root, name)) > 64
    ]
    assert data
    for path in data:  # flip bytes in every array file of the newest step
        with open(path, "r+b") as f:
            f.seek(os.path.getsize(path) // 2)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.warns(UserWarning, match="damaged"):
        state, history = pl.fit(MODEL, opt, **{**kw, "checkpoints": ckpts})
    assert trees_equal(state, whole) and history == want


def test_a_finished_record_needs_no_key_and_keeps_state_arrays_usable(tmp_path):
    ckpts = pl.Checkpoints(tmp_path / "run")
    state, _ = pl.fit(MODEL, pl.sgd(0.1), **_kw(early_stopping=None, epochs=2,
                                                checkpoints=ckpts))  # fmt: skip
    again, _ = pl.fit(MODEL, pl.sgd(0.1), **_kw(early_stopping=None, epochs=2, key=None,
                                                checkpoints=ckpts))  # fmt: skip
    assert trees_equal(again, state)
    assert float(jnp.sum(jax.tree.leaves(again.params)[0])) == float(
        jnp.sum(jax.tree.leaves(state.params)[0])
    )


def test_a_directory_of_another_run_is_refused_naming_what_differs(tmp_path):
    ckpts = pl.Checkpoints(tmp_path / "run")
    pl.fit(MODEL, pl.adam(0.01), **_kw(epochs=2, checkpoints=ckpts))
    for change, what in (
        ({"weight_decay": 0.1}, "weight_decay"),
        ({"key": 1}, "start"),
        ({"batch_size": 16}, "settings"),
        ({"train_data": toy_data(seed=5)}, "data"),
    ):
        with pytest.raises(ValueError, match=rf"other [a-z_, ]*{what}"):
            pl.fit(MODEL, pl.adam(0.01), **_kw(epochs=2, checkpoints=ckpts, **change))
    with pytest.raises(ValueError, match="other optimizer"):
        pl.fit(MODEL, pl.adam(0.02), **_kw(epochs=2, checkpoints=ckpts))
    pl.fit(MODEL, pl.adam(0.01), **_kw(epochs=3, checkpoints=ckpts))  # more epochs: fine


def test_what_a_killed_save_or_prune_leaves_is_ignored_and_removed(tmp_path):
    """A kill mid-save leaves orbax's temporary step directory; a kill mid-prune leaves
    the renamed step in the trash. Neither is read, and the next save removes both."""
    opt = pl.sgd(0.1)
    kw = _kw(early_stopping=None, epochs=4)
    whole, want = pl.fit(MODEL, opt, **kw)
    ckpts = pl.Checkpoints(tmp_path / "run", keep=2)
    with pytest.raises(_Interrupt):
        pl.fit(MODEL, opt, **{**kw, "checkpoints": ckpts, "callback": _interrupt_after(1)})
    run = ckpts.directory
    newest = ckpts.steps()[-1]
    half_saved = os.path.join(run, f"{newest + 3}.orbax-checkpoint-tmp-1234")
    os.makedirs(os.path.join(half_saved, "state"))
    with open(os.path.join(half_saved, "state", "junk"), "wb") as f:
        f.write(b"\0" * 100)
    half_pruned = os.path.join(run, "purelearn-deleted", "3", "state")
    os.makedirs(half_pruned)
    assert ckpts.steps() == [3, 6]
    state, history = pl.fit(MODEL, opt, **{**kw, "checkpoints": ckpts})
    assert trees_equal(state, whole) and history == want
    assert sorted(os.listdir(run)) == ["12", "9", pl.checkpoints.DIRECTORY_MARKER]
