"""purelearn: the techniques chapter of a deep-learning textbook as pure JAX.

Optimizers are optax ``GradientTransformation``\\ s; initializers, normalizations
and regularizers are pure functions. Everything is re-exported flat here::

    import purelearn as pl
    opt = pl.adam(1e-3)
"""

from purelearn import distributed, layout
from purelearn._cache import enable_compilation_cache
from purelearn.checkpoints import Checkpoints, load_checkpoint, save_checkpoint
from purelearn.datasets import download_mnist, load_mnist
from purelearn.initializers import (
    compute_fans,
    he_normal,
    he_uniform,
    normal,
    variance_scaling,
    xavier_normal,
    xavier_uniform,
)
from purelearn.models import Model, from_flax, mlp
from purelearn.normalization import (
    BatchNormStats,
    batch_norm,
    group_norm,
    instance_norm,
    layer_norm,
)
from purelearn.optimizers import (
    AdaGradState,
    AdamState,
    MomentumState,
    RMSPropState,
    SgdState,
    adagrad,
    adam,
    adamw,
    momentum,
    nesterov,
    rmsprop,
    sgd,
)
from purelearn.regularization import dropout, l2_penalty
from purelearn.training import (
    EarlyStopping,
    EarlyStoppingState,
    PackedState,
    TrainState,
    evaluate,
    fit,
    make_train_step,
    train_run,
)
from purelearn.tuning import (
    Distribution,
    SearchResults,
    bayes_search,
    grid_search,
    log_uniform,
    random_search,
    top_k_table,
    uniform,
)

__version__ = "0.1.0"

__all__ = [
    # optimizers
    "sgd",
    "momentum",
    "nesterov",
    "adagrad",
    "rmsprop",
    "adam",
    "adamw",
    "SgdState",
    "MomentumState",
    "AdaGradState",
    "RMSPropState",
    "AdamState",
    # initializers
    "normal",
    "xavier_normal",
    "xavier_uniform",
    "he_normal",
    "he_uniform",
    "compute_fans",
    "variance_scaling",
    # normalization
    "BatchNormStats",
    "batch_norm",
    "layer_norm",
    "instance_norm",
    "group_norm",
    # regularization
    "dropout",
    "l2_penalty",
    # models
    "Model",
    "mlp",
    "from_flax",
    # training
    "TrainState",
    "PackedState",
    "make_train_step",
    "fit",
    "train_run",
    "evaluate",
    "EarlyStopping",
    "EarlyStoppingState",
    "save_checkpoint",
    "load_checkpoint",
    "Checkpoints",
    # many processes
    "distributed",
    "layout",
    # data
    "load_mnist",
    "download_mnist",
    # tuning
    "log_uniform",
    "uniform",
    "Distribution",
    "SearchResults",
    "random_search",
    "grid_search",
    "bayes_search",
    "top_k_table",
    # compilation
    "enable_compilation_cache",
]
