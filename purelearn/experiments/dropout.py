"""Figure 6-23: overfitting and Dropout, in the book's form and the inverted form.

The weight-decay experiment's setting (300 training images, 784-100x6-10,
SGD lr 0.01, batches of 100, 200 epochs) with dropout rates 0, 0.15 (the
book's figure) and 0.2 (its code). Dropout narrows the train/test gap.

The book's ``Dropout`` multiplies by the mask in training and by
``q = 1 - rate`` at test time; the library's default (inverted) divides by
``q`` in training instead. The two compute the same function, but SGD on the
book's form is SGD on the inverted form at ``q**2`` the learning rate for the
weights after a dropout layer, so the book's net learns much more slowly.
``runs`` is the book's form (what the textbook plots); ``runs_inverted`` the
inverted form beside it. Every (rate, form) is one program over the seeds.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, TypedDict

from tqdm.auto import tqdm

from purelearn._types import Figure
from purelearn.experiments._common import (
    Experiment,
    SeedCheck,
    Table,
    Verdict,
    column,
    mnist,
    pm,
    seed_list,
    seed_table,
    verdict_over,
)
from purelearn.experiments._overfit import (
    SIZES,
    Run,
    SeedRun,
    first_and_per_seed,
    gaps,
    narrows,
    overfit_data,
    overfit_panels,
    overfit_runs,
)
from purelearn.models import mlp

RATES = (0.0, 0.15, 0.2)
FORMS = ("textbook", "inverted")


class DropoutResult(TypedDict):
    """``runs`` (the book's form) and ``runs_inverted``: the first seed's curves per rate
    ("0", "0.15", "0.2"); ``per_seed`` holds both for every seed."""

    runs: dict[str, Run]
    runs_inverted: dict[str, Run]
    per_seed: dict[str, dict[str, SeedRun]]  # {"runs": ..., "runs_inverted": ...}
    form: str
    epochs: int
    seeds: list[int]
    data: str
    quick: bool
    seconds: float


_FIELD = {"textbook": "runs", "inverted": "runs_inverted"}


def run(*, seed: int = 0, seeds: int = 1, data: str = "auto", quick: bool = False) -> DropoutResult:
    start = time.perf_counter()
    seed_values = seed_list(seed, seeds)
    (x, y), test, described = mnist(data)
    train = overfit_data(x, y, seed_values)
    epochs = 60 if quick else 200
    out: dict[str, dict[str, Run]] = {"runs": {}, "runs_inverted": {}}
    per_seed: dict[str, dict[str, SeedRun]] = {"runs": {}, "runs_inverted": {}}
    done: dict[tuple[float, str | None], tuple[Run, SeedRun]] = {}
    settings = [(rate, form) for rate in RATES for form in FORMS]
    # The rate and the form decide the model's structure: each pair is its own program
    # (rate 0 has no dropout layer, so both forms share its run).
    for rate, form in tqdm(settings, desc="dropout", leave=False):
        same = (rate, form if rate > 0 else None)
        if same not in done:
            model = mlp(SIZES, dropout_rate=rate, dropout_scale=form)
            (curves,) = overfit_runs(model, train, test, seeds=seed_values, epochs=epochs)
            done[same] = first_and_per_seed(curves)
        out[_FIELD[form]][f"{rate:g}"], per_seed[_FIELD[form]][f"{rate:g}"] = done[same]
    return DropoutResult(
        runs=out["runs"],
        runs_inverted=out["runs_inverted"],
        per_seed=per_seed,
        form="textbook",
        epochs=epochs,
        seeds=seed_values,
        data=f"300 training images of the {described} (drawn per seed)",
        quick=quick,
        seconds=round(time.perf_counter() - start, 2),
    )


def check(result: Mapping[str, Any], i: int) -> SeedCheck:
    """Seed ``i`` agrees when, in the book's form, the run without dropout overfits
    (gap at least 0.05, means of the last 10 epochs) and every rate > 0 has a smaller
    gap. The inverted form's numbers are reported beside it."""
    numbers: dict[str, float] = {}
    verdicts = {}
    for field, tag in (("runs", "book"), ("runs_inverted", "inverted")):
        g = gaps(result["per_seed"][field], i)
        verdicts[tag] = narrows(g)
        for key, (tr, te, gap) in g.items():
            numbers |= {f"{tag} train {key}": tr, f"{tag} test {key}": te, f"{tag} gap {key}": gap}
    numbers["inverted narrows"] = float(bool(verdicts["inverted"]))
    return SeedCheck(verdicts["book"], numbers)


def verdict(result: Mapping[str, Any]) -> Verdict:
    checks = [check(result, i) for i in range(len(result["seeds"]))]
    if checks[0].agrees is None:
        return verdict_over(checks, "", "the run needs one run without dropout and one with it")
    rates = [k for k in result["per_seed"]["runs"] if float(k) != 0]
    top = max(rates, key=float)

    def rate_part(tag: str, k: str) -> str:
        return (
            f"rate {k}: train {pm(column(checks, f'{tag} train {k}'), 2)}, test "
            f"{pm(column(checks, f'{tag} test {k}'), 2)}, "
            f"gap {pm(column(checks, f'{tag} gap {k}'), 2)}"
        )

    inverted = int(sum(column(checks, "inverted narrows")))
    return verdict_over(
        checks,
        "dropout (the book's form) narrows the train-test gap of an overfitting net",
        f"without dropout train {pm(column(checks, 'book train 0'), 2)}, test "
        f"{pm(column(checks, 'book test 0'), 2)}, gap {pm(column(checks, 'book gap 0'), 2)}; "
        + "; ".join(rate_part("book", k) for k in rates)
        + ". The inverted form at the same learning rate learns faster "
        f"({rate_part('inverted', top)}) and narrows the gap in {inverted} of "
        f"{len(checks)} seeds (means of the last 10 epochs)",
    )


def table(result: Mapping[str, Any]) -> Table:
    checks = [check(result, i) for i in range(len(result["seeds"]))]
    cols = [("book gap 0", "gap, no dropout")]
    for k in result["per_seed"]["runs"]:
        if float(k) != 0:
            cols += [(f"book train {k}", f"book {k}: train"), (f"book gap {k}", f"book {k}: gap")]
    for k in result["per_seed"]["runs_inverted"]:
        if float(k) != 0:
            cols += [
                (f"inverted train {k}", f"inverted {k}: train"),
                (f"inverted gap {k}", f"inverted {k}: gap"),
            ]
    return seed_table(result["seeds"], checks, cols)


def _describe(key: str) -> str:
    return "no dropout" if float(key) == 0 else f"dropout rate {key}"


def figure(result: Mapping[str, Any]) -> Figure:
    return overfit_panels(
        [
            ("book's form (* q at test)", result["per_seed"]["runs"]),
            ("inverted (/ q in training)", result["per_seed"]["runs_inverted"]),
        ],
        _describe,
        "300 training images, 7-layer net: Dropout, the book's form (top) and inverted (bottom)",
        len(result["seeds"]),
    )


EXPERIMENT = Experiment(
    name="dropout",
    title="Overfitting and Dropout (Figure 6-23)",
    conclusion=(
        "Dropout, which deletes randomly chosen hidden units at every training step, narrows "
        "the gap between training and test accuracy, and the training accuracy no longer "
        "reaches 100%: like weight decay it suppresses overfitting, and it acts like an "
        "ensemble of thinned networks."
    ),
    order=23,
    run=run,
    figure=figure,
    verdict=verdict,
    table=table,
    schema=DropoutResult,
    explanation=(
        "Two forms of dropout compute the same function but train differently. The book's "
        "Dropout keeps each unit with probability q = 1 - rate and multiplies by the mask "
        "in training, then by q at test time. The inverted form (the library's default, and "
        "every framework's) divides by q in training and does nothing at test time. A book "
        "net whose weights V read a dropout layer equals an inverted net with weights q·V; "
        "an SGD step of lr on V moves q·V by lr·q² times its gradient. So SGD on the book's "
        "form is SGD on the inverted form at q² the learning rate (0.64 lr at rate 0.2) for "
        "those weights: the book's net learns more slowly, and part of the narrower gap the "
        "textbook shows is slower learning: compare the book's and the inverted training "
        "accuracy at each rate in the table. The top row is the book's form (what Figure "
        "6-23 plots), the bottom row the inverted form at the same learning rate; "
        'pl.mlp(..., dropout_scale="textbook") is the book\'s form.'
    ),
)

__all__ = ["EXPERIMENT"]
