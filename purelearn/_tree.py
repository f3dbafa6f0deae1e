"""Pytree helpers shared by the optimizers, the regularizers and the training state."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

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


def unaliased(tree: Any) -> Any:
    """``tree`` with every array that appears more than once replaced by copies after
    its first appearance, so it can be donated: optimizers that keep the parameters in
    their state (``optax.contrib.prodigy``, ``dog``, ``mechanize``) hold the same array
    twice, and donating one buffer twice is an error."""
    leaves, treedef = jax.tree.flatten(tree)
    if len({id(a) for a in leaves}) == len(leaves):
        return tree
    seen: set[int] = set()
    fresh = []
    for a in leaves:
        if id(a) in seen and isinstance(a, jax.Array):
            a = jnp.copy(a)
        seen.add(id(a))
        fresh.append(a)
    return jax.tree.unflatten(treedef, fresh)
