"""purelearn: the techniques chapter of a deep-learning textbook as pure JAX.

Optimizers are optax ``GradientTransformation``\\ s; initializers, normalizations
and regularizers are pure functions. Everything is re-exported flat here::

    import purelearn as pl
    opt = pl.adam(1e-3)
"""

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
]
