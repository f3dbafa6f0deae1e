"""purelearn's public surface, enumerated one way for every test that needs it.

A module is public when no part of its dotted name starts with ``_``; its public
names are its ``__all__``. The fuzz registry (``tests/fuzz``) and the typing
test both walk this list, so the two describe the same surface.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import purelearn


def public_modules() -> list[ModuleType]:
    """``purelearn`` and every submodule whose dotted name has no ``_`` part."""
    modules = [purelearn]
    for info in pkgutil.walk_packages(purelearn.__path__, "purelearn."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        modules.append(importlib.import_module(info.name))
    return modules


def canonical_name(module: ModuleType, name: str, obj: object) -> str:
    """One name per object however many modules re-export it: where it is defined."""
    owner = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if isinstance(owner, str) and isinstance(qualname, str) and owner.startswith("purelearn"):
        return f"{owner}.{qualname}"
    return f"{module.__name__}.{name}"


def public_callables() -> dict[str, object]:
    """Every callable (function, class, callable record) in a public ``__all__``.

    Keys are :func:`canonical_name`; submodules listed in an ``__all__`` are
    walked as modules, not counted as callables.
    """
    found: dict[str, object] = {}
    for module in public_modules():
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            if inspect.ismodule(obj) or not callable(obj):
                continue
            found.setdefault(canonical_name(module, name, obj), obj)
    return dict(sorted(found.items()))


def modules_without_all() -> list[str]:
    """Public modules that do not declare their public names."""
    return [m.__name__ for m in public_modules() if not hasattr(m, "__all__")]
