"""The public surface is typed: annotations complete and resolvable, mypy --strict clean."""

from __future__ import annotations

import importlib.resources
import inspect
import os
import pathlib
import typing
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from surface import public_callables

import purelearn

_REPO = pathlib.Path(__file__).resolve().parent.parent


def _annotated_targets(name: str, obj: object) -> Iterator[tuple[str, Callable[..., Any]]]:
    """The functions whose signatures a user's IDE shows for the public object ``obj``."""
    if inspect.isclass(obj):
        if not _is_namedtuple(obj):  # (a NamedTuple's constructor is its fields)
            for method in ("__init__", "__new__"):
                owner = next(k for k in obj.__mro__ if method in vars(k))
                if owner.__module__.startswith("purelearn"):
                    yield f"{name}.{method}", getattr(obj, method)
        # the class's own public methods and properties, and __call__
        for attr, value in vars(obj).items():
            if attr.startswith("_") and attr != "__call__":
                continue
            if isinstance(value, classmethod | staticmethod):
                value = value.__func__
            elif isinstance(value, property) and value.fget is not None:
                value = value.fget
            if inspect.isfunction(value):
                yield f"{name}.{attr}", value
        return
    if inspect.isfunction(obj) or inspect.ismethod(obj):
        yield name, obj
        return
    unwrapped = inspect.unwrap(obj)  # jax.jit / custom_vjp wrappers
    if unwrapped is not obj:
        yield name, unwrapped
        return
    assert "__call__" in dir(type(obj)), f"{name}: callable of unknown kind {type(obj)!r}"
    yield f"{name}.__call__", type(obj).__call__


def _is_namedtuple(obj: object) -> bool:
    return inspect.isclass(obj) and issubclass(obj, tuple) and hasattr(obj, "_fields")


def _surface() -> list[tuple[str, object]]:
    """Public callables, minus type aliases (``Batch = tuple[...]``), which have no signature."""
    return [(n, o) for n, o in public_callables().items() if typing.get_origin(o) is None]


def test_surface_is_enumerated() -> None:
    # A broken enumeration (an import error swallowed, an empty __all__) would make the
    # per-callable tests below pass vacuously.
    names = dict(_surface())
    assert len(names) > 100
    assert "purelearn.optimizers.adam" in names
    assert "purelearn.training.state.TrainState" in names


@pytest.mark.parametrize(("name", "obj"), _surface(), ids=[n for n, _ in _surface()])
def test_public_callable_is_fully_annotated(name: str, obj: object) -> None:
    if _is_namedtuple(obj):
        hints = typing.get_type_hints(obj)
        missing = [f for f in obj._fields if f not in hints]
        assert not missing, f"{name}: NamedTuple fields without a type: {missing}"
    targets = list(_annotated_targets(name, obj))
    assert targets or inspect.isclass(obj), f"{name}: nothing to check"
    for label, fn in targets:
        # get_type_hints evaluates every annotation string: a name imported only under
        # TYPE_CHECKING raises NameError here, as it would in typeguard or pydantic.
        hints = typing.get_type_hints(fn)
        signature = inspect.signature(fn)
        missing = [
            p.name
            for i, p in enumerate(signature.parameters.values())
            if p.name not in hints and not (i == 0 and p.name in {"self", "cls"})
        ]
        assert not missing, f"{label}: parameters without a type: {missing}"
        if fn.__name__ != "__init__":
            assert "return" in hints, f"{label}: no return type"


def test_annotation_check_can_fail() -> None:
    def untyped(x, y: int):  # deliberately unannotated
        return x

    with pytest.raises(AssertionError, match=r"parameters without a type: \['x'\]"):
        test_public_callable_is_fully_annotated("untyped", untyped)

    def no_return(x: int):  # deliberately unannotated
        return x

    with pytest.raises(AssertionError, match="no return type"):
        test_public_callable_is_fully_annotated("no_return", no_return)


def test_package_ships_py_typed() -> None:
    marker = importlib.resources.files("purelearn") / "py.typed"
    assert marker.is_file()
    assert purelearn.__name__ == "purelearn"


@pytest.mark.slow
def test_mypy_strict_is_clean() -> None:
    api = pytest.importorskip("mypy.api")
    cwd = os.getcwd()
    os.chdir(_REPO)  # mypy reads [tool.mypy] from ./pyproject.toml
    try:
        stdout, stderr, status = api.run([])
    finally:
        os.chdir(cwd)
    assert status == 0, stdout + stderr
    assert "Success: no issues found" in stdout
