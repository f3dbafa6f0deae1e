"""Data-parallel training over 2 processes: run ``python examples/multiprocess.py``.

It launches itself as 2 local processes of 2 CPU devices each (coordinator on
127.0.0.1); each process loads only its own rows of the data, and both train
one model on the global batches. On a GPU cluster or a TPU pod slice, run the
``worker`` part in every process instead, with ``pl.distributed.initialize``
given the cluster's coordinator address, process count and id (or none: JAX
detects SLURM, Open MPI and Cloud TPU by itself).
"""

from __future__ import annotations

import os
import sys


def worker(ckpt_dir: str) -> None:
    import purelearn as pl

    pl.distributed.initialize()  # before any other JAX call
    import jax
    import numpy as np

    (x_all, y_all), _ = pl.load_mnist(flatten=True)
    n = len(x_all) // jax.device_count() * jax.device_count()  # rows split evenly
    mesh = pl.distributed.data_mesh()
    rows = pl.distributed.process_rows(n, mesh)  # this process's block of rows
    x, y = pl.distributed.global_batch((np.asarray(x_all[rows]), np.asarray(y_all[rows])), mesh)

    model, opt = pl.mlp([784, 100, 10], batch_norm=True), pl.adam(1e-3)
    state, history = pl.fit(model, opt, (x, y), epochs=3, batch_size=100, key=0, progress=False)
    pl.save_checkpoint(ckpt_dir + "/", state)  # every process writes its own shards
    if jax.process_index() == 0:
        print("train accuracy per epoch:", [round(a, 3) for a in history["train_accuracy"]])


if __name__ == "__main__":
    if os.environ.get("PURELEARN_PROCESS_ID") is not None:
        worker(sys.argv[1])
    else:
        import tempfile

        import purelearn as pl

        ckpt = os.path.join(tempfile.mkdtemp(), "ckpt")
        results = pl.distributed.launch_local([__file__, ckpt], num_processes=2, timeout=600)
        for i, r in enumerate(results):
            print(f"process {i}: exit {r.returncode}")
        print(results[0].stdout.strip().splitlines()[-1] if results[0].stdout.strip() else "")
        if any(r.returncode for r in results):
            print(results[0].stderr[-3000:], file=sys.stderr)
            sys.exit(1)
        print("checkpoint:", ckpt)
