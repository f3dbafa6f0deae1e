"""Training: one engine behind ``make_train_step``, ``fit``, ``train_run`` and the searches.

One idea per module, data flowing down the list:

* :mod:`.state`: :class:`TrainState`, the ordinary pytree, and the checks
  that bind a state to its model and optimizer;
* :mod:`.packing`: contiguous storage, decided per compiled program, and
  :class:`PackedState` for callers who keep buffers across step calls;
* :mod:`.data`: the data sets, checked against the model;
* :mod:`.step`: the loss and the step, :func:`make_train_step`;
* :mod:`.epoch`: the compiled epoch and run programs;
* :mod:`.loops`: :func:`train_run` and :func:`fit`;
* :mod:`.trials`: many runs as one vmapped, chunked program (the searches
  and the experiments);
* :mod:`.evaluation`: :func:`evaluate`.

Sharding helpers live in :mod:`purelearn.distributed`.
"""

from purelearn.checkpoints import load_checkpoint, save_checkpoint
from purelearn.early_stopping import METRICS, EarlyStopping, EarlyStoppingState
from purelearn.training.data import check_data
from purelearn.training.evaluation import evaluate
from purelearn.training.loops import fit, train_run
from purelearn.training.packing import PackedState
from purelearn.training.state import TrainState
from purelearn.training.step import make_train_step

__all__ = [
    "TrainState",
    "PackedState",
    "make_train_step",
    "fit",
    "train_run",
    "evaluate",
    "check_data",
    "EarlyStopping",
    "EarlyStoppingState",
    "METRICS",
    "save_checkpoint",
    "load_checkpoint",
]
