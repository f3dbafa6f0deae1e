"""The defects this suite found, each pinned as a hypothesis ``@example`` on its entry.

Every call here once crashed with an unrelated error (``ZeroDivisionError``,
``KeyError``, ``AttributeError``, a bare ``TypeError`` from Python or NumPy),
was silently accepted, or ran a full-length experiment; each now meets its
entry's contract. An invalid call names the argument its error must state.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from fuzz.registry import MISSING, Call, c, model, sgd, toy
from purelearn.training.trials import Settings


def bad_call(base: Call, name: str, value: Any) -> Call:
    return base.replace(name, value)


_PLOT_ROWS = [
    {"learning_rate": 0.1, "trial": 0, "val_acc": 0.5, "train_acc": 0.5,
     "val_acc_curve": [0.4, 0.5], "train_acc_curve": [0.4, 0.5]}
]  # fmt: skip
_EXPERIMENT = c(seed=0, seeds=1, data="embedded", quick=True)

PINS: dict[str, tuple[Call, ...]] = {
    # the message named the class, not the argument (found by the deep profile)
    "purelearn.models.from_flax": (
        bad_call(c(sample_input=np.ones((1, 3), np.float32)), "module", nn.Dense),
    ),
    "purelearn.tuning.uniform": (c(low=np.asarray(1.0), high=np.asarray(2.0)),),
    "purelearn.tuning.log_uniform": (c(low=np.float32(0.5), high=np.asarray(2.0)),),
    "purelearn.tuning.top_k_table": (bad_call(c(k=1), "results", None),),
    "purelearn.plotting.search_figure": (
        bad_call(c(k=1), "results", []),
        bad_call(c(results=_PLOT_ROWS), "k", 0),
    ),
    "purelearn.layout.layout_of": (bad_call(c(tree={"a": np.ones(2)}), "alone_from", "a"),),
    "purelearn.layout.storage_of": (bad_call(c(tree={"a": np.ones(2)}), "alone_from", "a"),),
    "purelearn.layout.pack": (bad_call(c(tree={"a": np.ones(2)}), "storage", "s"),),
    "purelearn.training.trials.chunk_width": (
        bad_call(c(n=3), "chunk", 0),
        bad_call(c(n=3), "chunk", math.nan),
    ),
    "purelearn.training.trials.in_chunks": (
        bad_call(c(call=lambda a: a, n=3, batched=np.arange(3)), "chunk", 0),
    ),
    "purelearn.training.trials.run_trials": (
        bad_call(
            c(
                model=model(),
                optimizer=sgd(),
                data=toy(),
                settings=Settings(epochs=1, batch_size=8),
            ),
            "keys",
            jax.random.key(0),
        ),
        # found by the deep profile: a jax-internal "non-hashable static argument"
        bad_call(
            c(
                optimizer=sgd(),
                data=toy(),
                keys=jax.random.split(jax.random.key(0), 1),
                settings=Settings(1, batch_size=8),
            ),
            "model",
            {"init": 1},
        ),
    ),
    "purelearn.training.data.check_data": (
        bad_call(c(train_data=toy(), batch_size=4), "model", {"init": 1}),
        bad_call(c(model=model(), train_data=toy()), "batch_size", "2"),
    ),
    "purelearn.experiments._common.clear_majority": (bad_call(c(seeds=3), "agreeing", -1),),
    "purelearn.plotting.grid": (bad_call(c(n=3), "max_cols", "2"),),
    "purelearn.plotting.new_figure": (bad_call(c(height=2.0), "width", -1.0),),
    "purelearn.plotting.smooth_curve": (
        bad_call(c(), "x", [[1.0, 2.0]]),
        bad_call(c(), "x", "abc"),
    ),
    "purelearn.plotting.band_stats": (bad_call(c(), "curves", []),),
    "purelearn.report.figure_path": (bad_call(c(name="paths"), "out_dir", None),),
    "purelearn._cache.enable_compilation_cache": (bad_call(c(), "directory", 3),),
    "purelearn.distributed.initialize": (bad_call(c(), "coordinator_address", 3),),
    "purelearn.distributed.launch_local": (
        bad_call(c(num_processes=1), "argv", "script.py"),
        bad_call(c(argv=["-c", "0"], num_processes=1), "env", {"A": 1}),
    ),
    "purelearn.cli.run_experiment": (
        bad_call(c(out=None, seed=0, data="embedded", quick=True), "name", "nosuch"),
    ),
}
# a falsy non-bool quick (None) ran the full-length experiment (minutes): now refused
for _name in (
    "activations", "batchnorm", "dropout", "init", "optimizers", "paths", "search", "weight_decay"
):  # fmt: skip
    PINS[f"purelearn.experiments.{_name}.EXPERIMENT"] = (
        bad_call(_EXPERIMENT, "quick", None),
        # experiments that train on no MNIST (paths, activations) ignored a missing data dir
        bad_call(_EXPERIMENT, "data", "nowhere/at/all"),
    )

__all__ = ["MISSING", "PINS"]
