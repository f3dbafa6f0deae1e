"""The chapter's experiments, one module each.

Every experiment is ``run(*, seed=0, data="auto", quick=False) -> dict``: it
trains inside compiled programs (independent runs vmapped where their shapes
agree) and returns plain, JSON-ready numbers; ``purelearn.plotting`` draws
them and ``purelearn.cli`` writes them to disk. ``quick=True`` shrinks every
experiment to a smoke test of the same shape.
"""

from purelearn.experiments import (
    activations,
    batchnorm,
    dropout,
    init,
    optimizers,
    paths,
    search,
    weight_decay,
)

EXPERIMENTS = {
    "paths": paths.run,
    "optimizers": optimizers.run,
    "activations": activations.run,
    "init": init.run,
    "batchnorm": batchnorm.run,
    "weight-decay": weight_decay.run,
    "dropout": dropout.run,
    "search": search.run,
}

__all__ = ["EXPERIMENTS"]
