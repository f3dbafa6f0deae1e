"""``memoize``: one object per call as the function binds it, types kept apart.

The oracle for "the same call" is the function's own signature, spelled out
here by hand: the same values for the same parameters, however they are
passed (positionally, by keyword in any order, or left to their defaults).
"""

from __future__ import annotations

import itertools

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import purelearn as pl
from purelearn._cache import memoize

# -- the library's constructors ---------------------------------------------------------------


def test_positional_keyword_and_default_spellings_give_one_optimizer():
    assert pl.sgd(0.1) is pl.sgd(learning_rate=0.1) is pl.sgd(0.1)
    assert pl.sgd() is pl.sgd(0.01) is pl.sgd(learning_rate=0.01)
    assert pl.adam() is pl.adam(learning_rate=0.001) is pl.adam(0.001, 0.9, b2=0.999)
    assert pl.adamw(0.01, weight_decay=0.1) is pl.adamw(weight_decay=0.1, learning_rate=0.01)
    assert pl.momentum(0.1) is pl.momentum(learning_rate=0.1)
    assert pl.adam(0.01) is not pl.adam(0.02)


def test_initializers_and_models_too():
    assert pl.variance_scaling(2.0, "fan_in") is pl.variance_scaling(scale=2.0)
    assert pl.he_normal() is pl.he_normal(in_axis=-2, out_axis=-1, batch_axis=())
    assert pl.normal() is pl.normal(stddev=0.01)
    # mlp is not memoized itself: it calls the memoized _mlp with canonical settings
    assert pl.mlp([4, 3]) is pl.mlp(sizes=[4, 3]) is pl.mlp((4, 3))


def test_types_are_kept_apart():
    assert pl.sgd(1) is not pl.sgd(1.0)
    assert pl.sgd(1.0) is pl.sgd(learning_rate=1.0)
    # a cached equal number does not skip the check that refuses a bool
    pl.sgd(1)
    with pytest.raises(ValueError, match="learning_rate"):
        pl.sgd(True)
    # also inside a tuple: a cached (1, 0) does not let the bool in (True, 0) through
    pl.variance_scaling(2.0, in_axis=(1, 0))
    with pytest.raises(ValueError, match="in_axis"):
        pl.variance_scaling(2.0, in_axis=(True, 0))
    assert pl.he_normal(in_axis=(1,)) is not pl.he_normal(in_axis=(np.int64(1),))


def test_unhashable_arguments_give_fresh_objects():
    rate = jnp.float32(0.1)
    assert pl.sgd(rate) is not pl.sgd(rate)
    assert pl.sgd(learning_rate=rate) is not pl.sgd(rate)
    assert pl.he_normal(in_axis=[1], out_axis=[0]) is not pl.he_normal(in_axis=[1], out_axis=[0])


@pytest.mark.parametrize(
    "call",
    [
        lambda f: f(lr=0.1),
        lambda f: f(0.1, 0.2),
        lambda f: f(0.1, learning_rate=0.1),
    ],
    ids=["wrong keyword", "too many", "twice"],
)
def test_a_call_that_does_not_bind_raises_the_functions_own_type_error(call):
    with pytest.raises(TypeError) as own:
        call(pl.sgd.__wrapped__)
    with pytest.raises(TypeError) as got:
        call(pl.sgd)
    assert str(got.value) == str(own.value)
    assert "sgd()" in str(got.value)


# -- a memoized function of every kind of parameter --------------------------------------------

CALLS: list[tuple] = []


@memoize
def settings_of(a, b, c=3, d=4.0):
    """A fresh object for every call that reaches the function."""
    CALLS.append((a, b, c, d))
    return [a, b, c, d]


@memoize
def variadic(a, *rest, flag=False, **options):
    CALLS.append((a, rest, flag, options))
    return object()


def test_cache_clear_forgets():
    first = settings_of(1, 2)
    assert settings_of(1, 2) is first
    settings_of.cache_clear()
    assert settings_of(1, 2) is not first


def test_variadic_parameters_are_keyed_by_position_and_by_name():
    variadic.cache_clear()
    one = variadic(1, 2, 3, x=1, y=2)
    assert variadic(1, 2, 3, y=2, x=1) is one  # **options in another order
    assert variadic(a=1) is variadic(1) is variadic(1, flag=False)
    assert variadic(1, 2, 3, x=1, y=2.0) is not one
    assert variadic(1, 2, 3.0, x=1, y=2) is not one
    assert variadic(1, 2, x=1, y=2) is not one


PARAMS = ("a", "b", "c", "d")
DEFAULTS = {"c": 3, "d": 4.0}


def spellings(values: dict, data) -> tuple[tuple, dict]:
    """One random way to pass ``values`` to ``settings_of``: the first k positionally,
    the rest by keyword in a drawn order, a value equal to its default (same type)
    sometimes left out."""
    k = data.draw(st.integers(0, 4))
    args = tuple(values[p] for p in PARAMS[:k])
    rest = data.draw(st.permutations(PARAMS[k:]))
    kwargs = {}
    for p in rest:
        is_default = p in DEFAULTS and type(values[p]) is type(DEFAULTS[p])
        if is_default and values[p] == DEFAULTS[p] and data.draw(st.booleans()):
            continue
        kwargs[p] = values[p]
    return args, kwargs


scalars = st.one_of(
    st.integers(-3, 3), st.floats(-3, 3, allow_nan=False), st.booleans(), st.sampled_from([3, 4.0])
)


@settings(max_examples=100, deadline=None, database=None)
@given(values=st.fixed_dictionaries({p: scalars for p in PARAMS}), data=st.data())
def test_every_spelling_of_one_call_gives_one_object(values, data):
    settings_of.cache_clear()
    CALLS.clear()
    results = []
    for _ in range(4):
        args, kwargs = spellings(values, data)
        results.append(settings_of(*args, **kwargs))
    assert all(r is results[0] for r in results)
    assert results[0] == [values[p] for p in PARAMS]
    assert len(CALLS) == 1  # the function ran once


def retyped(v):
    """An equal value of another type (None where there is none)."""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return float(v)
    return int(v) if float(v).is_integer() else None


@settings(max_examples=100, deadline=None, database=None)
@given(values=st.fixed_dictionaries({p: scalars for p in PARAMS}), data=st.data())
def test_an_equal_value_of_another_type_is_another_call(values, data):
    settings_of.cache_clear()
    base = settings_of(**values)
    for p in PARAMS:
        other = retyped(values[p])
        if other is None:
            continue
        assert other == values[p]
        args, kwargs = spellings({**values, p: other}, data)
        assert settings_of(*args, **kwargs) is not base


@settings(max_examples=50, deadline=None, database=None)
@given(
    first=st.fixed_dictionaries({p: st.integers(0, 2) for p in PARAMS}),
    second=st.fixed_dictionaries({p: st.integers(0, 2) for p in PARAMS}),
)
def test_different_values_are_different_calls(first, second):
    settings_of.cache_clear()
    same = first == second
    assert (settings_of(**first) is settings_of(**second)) is same


def test_the_key_does_not_depend_on_keyword_order():
    settings_of.cache_clear()
    values = dict(zip(PARAMS, [1, 2, 3, 4.0], strict=True))
    base = settings_of(**values)
    for order in itertools.permutations(PARAMS):
        assert settings_of(**{p: values[p] for p in order}) is base
