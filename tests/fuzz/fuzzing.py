"""The generated fuzz tests' body: every registry entry's valid and invalid calls.

``test_fuzz_<group>.py`` parametrize these over one registry group each (xdist's
``--dist loadscope`` spreads modules, so one module per group runs in parallel).

A valid call must give the documented result (the entry's oracle) and finite
floats from finite input; an invalid call must raise the entry's error
(``ValueError``/``TypeError`` by default) with a message naming the bad
argument, eagerly and, for arguments a jitted caller would trace, under
``jax.jit`` too. Examples per entry: the profile's ``max_examples / 20``
times the entry's weight (quick: 5 for a light entry; deep: 50).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest
from hypothesis import example, given, settings
from surface import public_callables

from fuzz.registry import ENTRIES, Call, Entry, all_finite

CALLABLES = public_callables()
#: Seconds one example may take before it counts as a hang.
HANG = 120


def _examples(entry: Entry) -> int:
    return max(1, round(settings.default.max_examples / 20 * entry.weight))


def _target(name: str) -> Any:
    entry, obj = ENTRIES[name], CALLABLES[name]
    return getattr(obj, entry.call) if entry.call else obj


def _invoke(fn: Any, call: Call) -> Any:
    return fn(*call.args, **call.kwargs)


@contextlib.contextmanager
def _no_hang(what: str) -> Iterator[None]:
    def fail(*_: Any) -> None:
        raise AssertionError(f"{what} ran past {HANG} s (a hang)")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(HANG)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _finite_input(call: Call) -> bool:
    try:
        return all_finite((call.args, dict(call.kwargs)))
    except (TypeError, ValueError):  # a leaf NumPy cannot read as floats: not a float input
        return True


_COUNT = [0]


def _counted(check: Any) -> Any:
    def counted(call: Call) -> None:
        _COUNT[0] += 1
        check(call)

    return counted


def _report(name: str, kind: str) -> None:
    """With ``$PURELEARN_FUZZ_COUNTS`` set, append how many calls the entry ran (the
    nested ``@given`` tests do not reach ``--hypothesis-show-statistics``)."""
    path = os.environ.get("PURELEARN_FUZZ_COUNTS")
    if path:
        with open(path, "a") as f:
            f.write(f"{name} {kind} {_COUNT[0]}\n")
    _COUNT[0] = 0


def _params(names: list[str]) -> list[Any]:
    out = []
    for name in names:
        entry = ENTRIES[name]
        marks = [pytest.mark.xfail(reason=entry.xfail, strict=False)] if entry.xfail else []
        out.append(pytest.param(name, marks=marks, id=name))
    return out


def valid_names(group: str) -> list[Any]:
    names = sorted(n for n, e in ENTRIES.items() if e.valid is not None and e.group == group)
    return _params(names)


def invalid_names(group: str) -> list[Any]:
    names = sorted(n for n, e in ENTRIES.items() if e.invalid is not None and e.group == group)
    return _params(names)


def _with_examples(test: Any, calls: list[Call]) -> Any:
    for call in calls:
        test = example(call)(test)
    return test


def check_valid_calls(name: str) -> None:
    """Draw the entry's valid calls; each must meet its oracle, finite in, finite out."""
    _COUNT[0] = 0
    entry, fn = ENTRIES[name], _target(name)

    def check(call: Call) -> None:
        finite_in = entry.finite and _finite_input(call)  # before a call that donates
        with _no_hang(name):
            result = _invoke(fn, call)
            if entry.oracle is not None:
                entry.oracle(call, result)
            if finite_in:
                assert all_finite(result), f"{name}: non-finite output from finite input"

    pinned = [r for r in entry.regressions if not r.bad]
    test = settings(max_examples=_examples(entry))(given(entry.valid)(_counted(check)))
    _with_examples(test, pinned)()
    _report(name, "valid")


def _jitted(fn: Any, call: Call, traced: tuple[str, ...]) -> Any:
    names = [
        k
        for k in traced
        if isinstance(call.kwargs.get(k), np.ndarray | jax.Array)
        and np.asarray(call.kwargs[k]).dtype != object
    ]
    rest = {k: v for k, v in call.kwargs.items() if k not in names}
    return jax.jit(lambda *a: fn(*call.args, **rest, **dict(zip(names, a, strict=True))))(
        *[call.kwargs[k] for k in names]
    )


def _path_words(call: Call) -> tuple[str, ...]:
    """A bad path is named by the path itself (or the part of it that fails)."""
    out: list[str] = []
    for name in call.bad:
        value = call.kwargs.get(name)
        if isinstance(value, os.PathLike) or (isinstance(value, str) and os.sep in value):
            path = Path(value)
            out += [str(path)] + [str(p) for p in path.parents if len(p.parts) > 2]
    return tuple(out)


def _message(err: BaseException, stderr: str) -> str:
    return stderr if isinstance(err, SystemExit) else str(err)


def check_invalid_calls(name: str) -> None:
    """Draw the entry's invalid calls; each must raise an error naming the bad argument."""
    _COUNT[0] = 0
    entry, fn = ENTRIES[name], _target(name)

    def check(call: Call) -> None:
        assert call.bad, f"{name}: an invalid call must say which argument is bad"
        runs = [("eagerly", lambda: _invoke(fn, call))]
        if entry.traced and any(k in call.kwargs for k in entry.traced):
            runs.append(("under jit", lambda: _jitted(fn, call, entry.traced)))
        for how, run in runs:
            stderr = io.StringIO()
            with _no_hang(name), contextlib.redirect_stderr(stderr):
                try:
                    run()
                except entry.errors as err:
                    msg = _message(err, stderr.getvalue())
                    words = call.bad + _path_words(call)
                    assert any(word in msg for word in words), (
                        f"{name} {how}: {type(err).__name__} does not name {call.bad}: {msg}"
                    )
                else:
                    raise AssertionError(f"{name} {how}: {call.note} was accepted")

    pinned = [r for r in entry.regressions if r.bad]
    test = settings(max_examples=_examples(entry))(given(entry.invalid)(_counted(check)))
    _with_examples(test, pinned)()
    _report(name, "invalid")


def _unused_math_helpers_sane() -> None:
    # the suite's own helper: NaN input is not finite input
    assert not _finite_input(Call({"x": np.array([math.nan])}))
    assert _finite_input(Call({"x": np.array([1.0]), "s": "text"}))
