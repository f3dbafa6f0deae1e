"""Data-parallel training across processes (jax.distributed on local CPU processes).

One launch of 2 processes x 2 devices and one of 1 process x 4 devices run
the same worker on the same global data; the test compares what they write.
"""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest

import purelearn as pl

WORKER = textwrap.dedent(
    """
    import json, os, signal, sys, threading, time
    import purelearn as pl

    pl.distributed.initialize()
    import jax, jax.numpy as jnp, numpy as np

    out_dir, ckpt = sys.argv[1], sys.argv[2]
    pid, nproc = jax.process_index(), jax.process_count()
    assert jax.device_count() == 4, jax.devices()
    mesh = pl.distributed.data_mesh()
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(64, 6)) * 2 + 1).astype(np.float32)
    Y = np.argmax(X[:, :3], axis=1).astype(np.int32)
    rows = pl.distributed.process_rows(64, mesh)
    x, y = pl.distributed.global_batch((X[rows], Y[rows]), mesh)  # only this process's rows
    model = pl.mlp([6, 16, 3], batch_norm=True, dropout_rate=0.1)
    opt = pl.momentum(0.05)
    host = pl.distributed.to_host
    res = {}

    def flat(tree):
        return [np.asarray(a, np.float64).ravel().tolist() for a in jax.tree.leaves(host(tree))]

    # 1. the step on global batches (state replicated by the step itself)
    step = pl.make_train_step(model, opt)
    state = pl.TrainState.create(model, opt, jax.random.key(0))
    for _ in range(5):
        state, metrics = step(state, x, y)
    res["step"] = flat((state.params, state.model_state, metrics))

    # 2. the same with AxisType.Explicit
    emesh = pl.distributed.data_mesh(explicit=True)
    ex, ey = pl.distributed.global_batch((X[rows], Y[rows]), emesh)
    estate = pl.TrainState.create(model, opt, jax.random.key(0))
    for _ in range(5):
        estate, emetrics = step(estate, ex, ey)
    res["explicit_step"] = flat((estate.params, estate.model_state, emetrics))

    # 3. fit (global shuffling from the key, global metrics) and train_run
    fstate, hist = pl.fit(model, pl.momentum(0.1), (x, y), epochs=15, batch_size=16, key=1,
                          eval_data=(x, y), progress=False)
    res["fit"] = flat(fstate.params)
    res["hist"] = hist
    rstate, curves = pl.train_run(model, opt, (x, y), epochs=2, batch_size=16, key=2)
    res["run"] = flat((rstate.params, curves))
    efstate, ehist = pl.fit(model, pl.momentum(0.1), (ex, ey), epochs=2, batch_size=16, key=1,
                            progress=False)
    res["explicit_fit"] = ehist["loss"]
    res["evaluate"] = pl.evaluate(model, fstate, x, y, batch_size=24)
    res["evaluate_host"] = pl.evaluate(model, jax.tree.map(jnp.asarray, host(fstate)),
                                       jnp.asarray(X), jnp.asarray(Y))

    # 4. checkpoints: saved by every process (each its own shards), restored by every process
    if nproc == 2:
        like = pl.TrainState.create(model, pl.momentum(0.1), jax.random.key(9))
        pl.save_checkpoint(ckpt + "/", fstate)
        back = pl.load_checkpoint(ckpt, pl.distributed.replicate(like, mesh))
        res["restored_equal"] = all(
            np.array_equal(a, b) for a, b in zip(jax.tree.leaves(host(back)),
                                                 jax.tree.leaves(host(fstate))))
    if pid == 0:
        with open(os.path.join(out_dir, f"res{nproc}.json"), "w") as f:
            json.dump(res, f)
    if nproc == 2:
        # a crash mid-save: process 1 dies (SIGKILL) once the new step's directory exists
        def killer():
            while not any(".orbax-checkpoint-tmp" in n for n in os.listdir(ckpt)):
                time.sleep(0.001)
            os.kill(os.getpid(), signal.SIGKILL)

        if pid == 1:
            threading.Thread(target=killer, daemon=True).start()
        big = fstate._replace(params=jax.tree.map(lambda a: a + 1, fstate.params))
        pl.save_checkpoint(ckpt, big)
        time.sleep(60)  # process 1 must have died; never reached in a correct run
    else:
        like = pl.TrainState.create(model, pl.momentum(0.1), jax.random.key(9))
        back = pl.load_checkpoint(ckpt, like)
        with open(os.path.join(out_dir, "inspect.json"), "w") as f:
            json.dump({"params": flat(back.params), "entries": sorted(os.listdir(ckpt))}, f)
    """
)


def max_deviation(a, b):
    return max(
        np.max(np.abs(np.asarray(u) - np.asarray(v)), initial=0.0)
        for u, v in zip(a, b, strict=True)
    )


@pytest.mark.slow
def test_two_processes_train_like_one_and_share_checkpoints(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    ckpt = tmp_path / "ckpt"
    two = pl.distributed.launch_local(
        [script, tmp_path, ckpt], num_processes=2, devices_per_process=2, timeout=240
    )
    assert (tmp_path / "res2.json").exists(), [r.stderr[-2000:] for r in two]
    res2 = json.loads((tmp_path / "res2.json").read_text())
    # process 1 was killed mid-save, and the launcher then ended process 0
    assert two[1].returncode == -9, two[1].stderr[-3000:]
    one = pl.distributed.launch_local(
        [script, tmp_path, ckpt], num_processes=1, devices_per_process=4, timeout=240
    )
    assert one[0].returncode == 0, one[0].stderr[-3000:]
    res1 = json.loads((tmp_path / "res1.json").read_text())

    deviation = max_deviation(res2["step"], res1["step"])
    print("MAX_DEVIATION 2x2 vs 1x4 (5 steps):", deviation)
    assert deviation < 1e-5
    assert max_deviation(res1["explicit_step"], res1["step"]) < 1e-5
    assert max_deviation(res2["explicit_step"], res2["step"]) < 1e-5
    assert max_deviation(res2["fit"], res1["fit"]) < 1e-4
    assert max_deviation(res2["run"], res1["run"]) < 1e-4
    np.testing.assert_allclose(res2["explicit_fit"], res1["hist"]["loss"][:2], rtol=1e-4)
    for key in ("loss", "train_accuracy", "eval_accuracy"):
        np.testing.assert_allclose(res2["hist"][key], res1["hist"][key], rtol=1e-4, atol=1e-6)
    assert res2["hist"]["train_accuracy"][-1] > 0.9  # converges
    assert res2["evaluate"] == res2["evaluate_host"] == res1["evaluate"]
    assert res2["restored_equal"]

    # after the crash: the last good checkpoint (step 0) restores in one process
    inspect = json.loads((tmp_path / "inspect.json").read_text())
    print("LEFT AFTER THE CRASH:", inspect["entries"])
    assert max_deviation(inspect["params"], res2["fit"]) == 0.0


RESUME_WORKER = textwrap.dedent(
    """
    import json, sys
    import purelearn as pl

    pl.distributed.initialize()
    import jax, numpy as np

    ckpt, out, stop_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    mesh = pl.distributed.data_mesh()
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 6)).astype(np.float32)
    Y = np.argmax(X[:, :3], axis=1).astype(np.int32)
    rows = pl.distributed.process_rows(64, mesh)
    x, y = pl.distributed.global_batch((X[rows], Y[rows]), mesh)

    def interrupt(epoch, state, history):
        if epoch == stop_at:
            raise SystemExit(3)  # every process stops after the same epoch

    state, history = pl.fit(
        pl.mlp([6, 16, 3], dropout_rate=0.1), pl.adam(0.01), (x, y), epochs=5, batch_size=16,
        key=0, progress=False, checkpoints=pl.Checkpoints(ckpt, keep=2), callback=interrupt,
    )
    if jax.process_index() == 0:
        leaves = pl.distributed.to_host(jax.tree.leaves(state.params))
        with open(out, "w") as f:
            json.dump({"params": [np.asarray(a).tolist() for a in leaves],
                       "history": history}, f)
    """
)


@pytest.mark.slow
def test_a_two_process_run_resumes_from_its_checkpoints(tmp_path):
    script = tmp_path / "resume.py"
    script.write_text(RESUME_WORKER)

    def launch(ckpt, out, stop_at):
        return pl.distributed.launch_local(
            [script, tmp_path / ckpt, tmp_path / out, str(stop_at)],
            num_processes=2,
            devices_per_process=1,
            timeout=240,
        )

    whole = launch("whole", "whole.json", -1)
    assert all(r.returncode == 0 for r in whole), [r.stderr[-2000:] for r in whole]
    cut = launch("parts", "parts.json", 1)
    # the first process to stop ends the job: the launcher kills the other, maybe mid-save
    codes = sorted(r.returncode for r in cut)
    assert 3 in codes and set(codes) <= {3, -9}, [r.stderr[-2000:] for r in cut]
    rest = launch("parts", "parts.json", -1)
    assert all(r.returncode == 0 for r in rest), [r.stderr[-2000:] for r in rest]
    want = json.loads((tmp_path / "whole.json").read_text())
    got = json.loads((tmp_path / "parts.json").read_text())
    assert got == want  # parameters and history, bit for bit
