"""The chapter's experiments: one module, one :class:`Experiment` record each.

Every module ``purelearn/experiments/<name>.py`` (not starting with ``_``)
defines ``EXPERIMENT``, a record holding the experiment's name, title, the
textbook's conclusion, ``run``, ``figure``, ``verdict``, ``table`` and its
result schema (a TypedDict). :data:`EXPERIMENTS` collects them in the
textbook's order; adding an experiment is adding one module.

``run(*, seed=0, seeds=1, data="auto", quick=False)`` trains seeds ``seed ..
seed + seeds - 1`` inside vmapped, compiled programs and returns plain,
JSON-ready numbers: the textbook's keys hold the first seed's run, and
``"per_seed"`` every seed's. ``quick=True`` shrinks an experiment to a smoke
test of the same shape. Calling a record runs it.
"""

from __future__ import annotations

import importlib
import pkgutil

from purelearn.experiments._common import (
    MAX_SEED,
    Experiment,
    SeedCheck,
    Verdict,
    clear_majority,
)


def _discover() -> dict[str, Experiment]:
    records = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        record = getattr(module, "EXPERIMENT", None)
        if isinstance(record, Experiment):
            records.append(record)
    records.sort(key=lambda r: (r.order, r.name))
    return {r.name: r for r in records}


#: Every experiment by name, in the textbook's order.
EXPERIMENTS: dict[str, Experiment] = _discover()

__all__ = ["EXPERIMENTS", "Experiment", "Verdict", "SeedCheck", "MAX_SEED", "clear_majority"]
