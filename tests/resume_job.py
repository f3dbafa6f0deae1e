"""A training job that survives being killed: ``python tests/resume_job.py CKPT_DIR OUT``.

Used by ``tests/test_resume.py``: it trains a small net with early stopping
(``restore_best``) through ``pl.fit(checkpoints=...)``, so running the same
command again after a kill continues the run, and writes the final
parameters and history to ``OUT`` (``.npz`` and ``.json``, each atomically).
"""

from __future__ import annotations

import json
import os
import sys


def main(ckpt_dir: str, out: str) -> None:
    import jax
    import numpy as np

    import purelearn as pl

    pl.enable_compilation_cache()  # $JAX_COMPILATION_CACHE_DIR from the test suite
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 6)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int32) + (x[:, 2] > 1).astype(np.int32)
    model = pl.mlp([6, 16, 16, 3], batch_norm=True, dropout_rate=0.2)
    es = pl.EarlyStopping(patience=4, restore_best=True)
    print("training", flush=True)  # the parent times its kills from here
    state, history = pl.fit(
        model,
        pl.adam(0.01),
        (x[:192], y[:192]),
        epochs=40,
        batch_size=32,
        key=0,
        eval_data=(x[192:], y[192:]),
        early_stopping=es,
        weight_decay=1e-3,
        progress=False,
        checkpoints=pl.Checkpoints(ckpt_dir, keep=2, best="eval_accuracy"),
    )
    leaves = {
        str(i): np.asarray(a) for i, a in enumerate(jax.tree.leaves(state._replace(key=None)))
    }
    tmp = out + ".tmp"
    np.savez(tmp + ".npz", **leaves)
    os.replace(tmp + ".npz", out + ".npz")
    with open(tmp + ".json", "w") as f:
        json.dump(history, f)
    os.replace(tmp + ".json", out + ".json")
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
