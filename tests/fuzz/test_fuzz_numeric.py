"""Fuzz tests for the registry's numeric group (reg_numeric.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import purelearn as pl
from fuzz.fuzzing import check_invalid_calls, check_valid_calls, invalid_names, valid_names


@pytest.mark.parametrize("name", valid_names("numeric"))
def test_valid_calls(name: str) -> None:
    check_valid_calls(name)


@pytest.mark.parametrize("name", invalid_names("numeric"))
def test_invalid_calls(name: str) -> None:
    check_invalid_calls(name)


# Fixed beside this suite (pinned here as explicit examples): a 1e30 gradient overflowed
# the squared-gradient state of adam/adagrad/rmsprop to inf in float32, and bfloat16 adam
# drifted from optax's bits.
@pytest.mark.parametrize("name", ["adam", "adagrad", "rmsprop"])
def test_huge_gradients_keep_a_finite_state(name: str) -> None:
    opt = getattr(pl, name)()
    params = {"w": jnp.ones(3)}
    state = opt.init(params)
    for _ in range(3):
        updates, state = opt.update({"w": jnp.full(3, 1e30)}, state, params)
        params = optax.apply_updates(params, updates)
    assert all(bool(jnp.isfinite(a).all()) for a in jax.tree.leaves((updates, state, params)))


def test_bfloat16_adam_matches_optax_bit_for_bit() -> None:
    params = {"w": jnp.linspace(-1, 1, 7, dtype=jnp.bfloat16)}
    grads = {"w": jnp.linspace(0.5, -2, 7, dtype=jnp.bfloat16)}
    outs = []
    for opt in (pl.adam(1e-2), optax.adam(1e-2)):
        p, s = params, opt.init(params)
        for _ in range(3):
            u, s = opt.update(grads, s, p)
            p = optax.apply_updates(p, u)
        outs.append(p["w"])
    assert outs[0].dtype == outs[1].dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(outs[0], np.float32), np.asarray(outs[1], np.float32))
