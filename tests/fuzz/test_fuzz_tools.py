"""Fuzz tests for the registry's tools group (reg_tools.py)."""

from __future__ import annotations

import pytest

from fuzz.fuzzing import check_invalid_calls, check_valid_calls, invalid_names, valid_names


@pytest.mark.parametrize("name", valid_names("tools"))
def test_valid_calls(name: str) -> None:
    check_valid_calls(name)


@pytest.mark.parametrize("name", invalid_names("tools"))
def test_invalid_calls(name: str) -> None:
    check_invalid_calls(name)
