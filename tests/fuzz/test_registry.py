"""The registry covers the public surface exactly: a public name without a fuzz
entry, or an entry for a name that is not public, fails the suite."""

from __future__ import annotations

import typing

from surface import modules_without_all, public_callables

from fuzz.registry import ENTRIES


def test_every_public_callable_has_an_entry() -> None:
    missing = sorted(set(public_callables()) - set(ENTRIES))
    assert not missing, f"public callables without a fuzz entry in tests/fuzz: {missing}"


def test_no_entry_names_a_private_or_missing_callable() -> None:
    extra = sorted(set(ENTRIES) - set(public_callables()))
    assert not extra, f"fuzz entries for names that are not public: {extra}"


def test_every_public_module_declares_all() -> None:
    assert modules_without_all() == []


def test_every_entry_fuzzes_something() -> None:
    callables = public_callables()
    for name, entry in ENTRIES.items():
        if entry.alias:  # a typing alias has nothing to call: check it is one
            assert typing.get_origin(callables[name]) is not None, name
            continue
        assert entry.valid is not None or entry.invalid is not None, name
        if entry.valid is None:
            assert entry.why_no_valid, f"{name}: say why no valid call is fuzzed"
