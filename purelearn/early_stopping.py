"""Early stopping as a pure state machine, and the per-epoch metric vocabulary.

Every training entry point (``fit``, ``train_run``, the searches, the
experiments) reports the same per-epoch metrics, named once here:

    loss            mean training loss over the epoch's steps      (lower is better)
    train_accuracy  accuracy on the whole training set, inference mode (higher is better)
    eval_accuracy   accuracy on the eval (validation) set, inference mode, when given

``EarlyStopping`` watches one of them. Being ``init``/``update`` on arrays,
the same object runs on the host (``fit``), inside ``lax.scan``
(``train_run``) and under ``vmap`` (the searches).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from purelearn import _checks

__all__ = ["METRICS", "EarlyStopping", "EarlyStoppingState", "default_monitor"]

#: The per-epoch metrics and the direction in which each improves.
METRICS: dict[str, str] = {
    "loss": "min",
    "train_accuracy": "max",
    "eval_accuracy": "max",
}


def default_monitor(has_eval: bool) -> str:
    """The metric watched when none is named: eval accuracy if there is eval data."""
    return "eval_accuracy" if has_eval else "train_accuracy"


class EarlyStoppingState(NamedTuple):
    """Best metric so far (sign-adjusted so larger is better), epochs since it
    improved, and whether to stop (sticky)."""

    best: jax.Array
    wait: jax.Array
    should_stop: jax.Array


@dataclasses.dataclass(frozen=True)
class EarlyStopping:
    """Stop when the monitored metric has not improved for ``patience`` epochs.

    An epoch improves when its metric beats the best so far by more than
    ``min_delta`` in the metric's direction (a NaN never improves); after
    ``patience`` epochs in a row without improvement ``should_stop`` is set,
    and it stays set.

    Args:
      patience: epochs without improvement before stopping (>= 1).
      min_delta: the smallest change that counts as an improvement (>= 0).
      mode: "max" or "min"; ``None`` takes the monitored metric's own
        direction. A mode that contradicts the metric (``"min"`` on an
        accuracy) is a ``ValueError``.
      monitor: a metric of :data:`~purelearn.early_stopping.METRICS`; ``None`` watches
        ``"eval_accuracy"`` when eval data is given, else ``"train_accuracy"``.
      restore_best: return the state of the best epoch instead of the last.

    Example:
      >>> import purelearn as pl
      >>> es = pl.EarlyStopping(patience=2)
      >>> s = es.init()
      >>> for acc in [0.5, 0.6, 0.6, 0.59]:
      ...     s = es.update(s, acc)
      >>> bool(s.should_stop), float(s.best)
      (True, 0.6000000238418579)
    """

    patience: int = 5
    min_delta: float = 0.0
    mode: str | None = None
    monitor: str | None = None
    restore_best: bool = False

    def __post_init__(self) -> None:
        _checks.positive_int("patience", self.patience)
        object.__setattr__(self, "min_delta", _checks.real("min_delta", self.min_delta, low=0.0))
        _checks.boolean("restore_best", self.restore_best)
        if self.monitor is not None:
            _checks.choice("monitor", self.monitor, METRICS)
        if self.mode is not None:
            _checks.choice("mode", self.mode, ("max", "min"))
        # Without a monitor the watched metric is an accuracy, whose direction is "max".
        direction = METRICS[self.monitor] if self.monitor is not None else "max"
        if self.mode is not None and self.mode != direction:
            watched = self.monitor or "an accuracy (eval_accuracy or train_accuracy)"
            raise ValueError(
                f"mode={self.mode!r} contradicts the monitored metric {watched}, which improves "
                f"when it goes {'up' if direction == 'max' else 'down'}; use "
                f"mode={direction!r}, or monitor='loss' to watch the training loss"
            )

    @property
    def direction(self) -> str:
        """``"max"`` or ``"min"``: ``mode``, or the monitored metric's own direction."""
        if self.mode is not None:
            return self.mode
        return METRICS[self.monitor] if self.monitor is not None else "max"

    def watched(self, has_eval: bool) -> str:
        """The metric this stopper watches, given whether eval data exists."""
        if self.monitor == "eval_accuracy" and not has_eval:
            raise ValueError("EarlyStopping(monitor='eval_accuracy') needs eval_data")
        return self.monitor or default_monitor(has_eval)

    def init(self) -> EarlyStoppingState:
        return EarlyStoppingState(
            best=jnp.array(-jnp.inf, jnp.float32),
            wait=jnp.zeros([], jnp.int32),
            should_stop=jnp.zeros([], bool),
        )

    def update(self, state: EarlyStoppingState, metric: Any) -> EarlyStoppingState:
        """The state after one more epoch whose monitored value is ``metric``."""
        value = jnp.asarray(metric, jnp.float32)
        value = value if self.direction == "max" else -value
        improved = value - state.best > self.min_delta
        wait = jnp.where(improved, 0, state.wait + 1)
        return EarlyStoppingState(
            best=jnp.where(improved, value, state.best),
            wait=wait,
            should_stop=state.should_stop | (wait >= self.patience),
        )

    def best_metric(self, state: EarlyStoppingState) -> jax.Array:
        """The best metric seen, in its own sign."""
        return state.best if self.direction == "max" else -state.best
