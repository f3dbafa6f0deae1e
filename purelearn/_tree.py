"""Pytree helpers shared by the optimizers and the regularizers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from purelearn._checks import boolean


def leaf_mask(mask: Any, params: Any, default: Callable[[Any], bool]) -> Any:
    """One Python bool per leaf of ``params``, as a pytree shaped like it.

    ``mask`` is ``None`` (``default(leaf)`` decides), a pytree of bools
    matching ``params`` or a prefix of it (a bool covers a whole subtree), or
    a function of ``params`` returning one. A mismatch is a ``ValueError``.
    """
    if mask is None:
        return jax.tree.map(lambda p: bool(default(p)), params)
    tree = mask(params) if callable(mask) else mask
    # a string leaf such as "no" is truthy: only real bools may select
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        boolean(f"mask leaf {jax.tree_util.keystr(path)}", leaf)
    try:
        return jax.tree.map(lambda m, sub: jax.tree.map(lambda _: bool(m), sub), tree, params)
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"mask must be a pytree of bools matching params (or a prefix of it): {err}"
        ) from err
