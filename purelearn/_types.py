"""Type aliases shared by the package's annotations (not public API).

Every name here resolves at runtime, so ``typing.get_type_hints`` (typeguard,
pydantic, IDEs) works on every public function.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["PyTree", "Figure", "Axes", "Line2D"]

#: A JAX pytree (nested tuples, lists, dicts and NamedTuples of arrays); JAX has
#: no precise type for one, so this alias says where one is meant.
PyTree = Any

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
else:
    # matplotlib is optional and takes ~0.7 s to import, which the experiments
    # (imported by the CLI) must not pay: at runtime these aliases are Any.
    Axes = Figure = Line2D = Any
