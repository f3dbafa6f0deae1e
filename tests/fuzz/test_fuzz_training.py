"""Fuzz tests for the registry's training group (reg_training.py)."""

from __future__ import annotations

import pytest

from fuzz.fuzzing import check_invalid_calls, check_valid_calls, invalid_names, valid_names


@pytest.mark.parametrize("name", valid_names("training"))
def test_valid_calls(name: str) -> None:
    check_valid_calls(name)


@pytest.mark.parametrize("name", invalid_names("training"))
def test_invalid_calls(name: str) -> None:
    check_invalid_calls(name)
