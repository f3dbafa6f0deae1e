"""The state is the pytree: TrainState idioms, binding to model and optimizer, donation,
packing inside programs only, and resuming (issue: the state is the pytree again).

Oracles: the pytree path itself (a fresh state made for the optimizer in use), optax's
own ``tree_get``/``inject_hyperparams`` behaviour, and uninterrupted runs for resumes.
"""

from __future__ import annotations

import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import host_leaves, toy_data, trees_equal
from flax import serialization

import purelearn as pl

MODEL = pl.mlp([5, 8, 3])


def _by_rank(params):
    return jax.tree.map(lambda a: a.ndim >= 2, params)


# -- an ordinary pytree -------------------------------------------------------------


def test_state_is_a_named_tuple_with_the_models_and_optimizers_leaves():
    opt = pl.adam(0.01)
    state = pl.TrainState.create(MODEL, opt, 0)
    params, _ = MODEL.init(jax.random.split(jax.random.key(0))[0])
    assert isinstance(state, tuple) and state._fields == (
        "step",
        "params",
        "model_state",
        "opt_state",
        "key",
    )
    assert jax.tree.structure(state.params) == jax.tree.structure(params)
    assert [a.shape for a in jax.tree.leaves(state.params)] == [
        a.shape for a in jax.tree.leaves(params)
    ]
    assert jax.tree.structure(state.opt_state) == jax.tree.structure(opt.init(params))
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(state)]
    assert ".params[0]['w']" in paths and ".step" in paths


def test_tree_map_and_tree_get_across_states():
    opt = pl.adam(0.01)
    a = pl.TrainState.create(MODEL, opt, 0)
    x, y = toy_data()
    b, _ = pl.fit(MODEL, opt, (x, y), epochs=1, batch_size=32, key=1, progress=False)
    diff = jax.tree.map(lambda u, v: u - v, a._replace(key=None), b._replace(key=None))
    assert jax.tree.structure(diff) == jax.tree.structure(a._replace(key=None))
    assert float(jnp.abs(diff.params[0]["w"]).max()) > 0
    assert int(optax.tree_utils.tree_get(a, "count")) == 0
    assert int(optax.tree_utils.tree_get(b, "count")) == 3


def test_inject_hyperparams_write_changes_the_training():
    """optax's documented idiom: write the injected learning rate into the state."""
    x, y = toy_data()
    opt = optax.inject_hyperparams(pl.sgd)(learning_rate=0.1)
    step = pl.make_train_step(MODEL, opt)
    state = pl.TrainState.create(MODEL, opt, 0)
    state.opt_state.hyperparams["learning_rate"] = jnp.asarray(0.0)
    after, _ = step(jax.tree.map(jnp.copy, state), x, y)
    assert trees_equal(after.params, state.params)  # lr 0: nothing moved
    state.opt_state.hyperparams["learning_rate"] = jnp.asarray(0.5)
    moved, _ = step(state, x, y)
    oracle_opt = pl.sgd(0.5)
    oracle, _ = pl.make_train_step(MODEL, oracle_opt)(
        pl.TrainState.create(MODEL, oracle_opt, 0), x, y
    )
    np.testing.assert_array_equal(moved.params[0]["w"], oracle.params[0]["w"])


def test_flax_serialization_round_trip():
    state = pl.TrainState.create(MODEL, pl.adam(), 0)
    like = pl.TrainState.create(MODEL, pl.adam(), 1)
    back = serialization.from_bytes(
        like._replace(key=None), serialization.to_bytes(state._replace(key=None))
    )
    assert trees_equal(back.params, state.params)


# -- bound to its model and optimizer -------------------------------------------------


def test_a_state_made_for_adam_trained_with_masked_adamw_decays_by_rank():
    """The old contiguous default packed for adam and stepped adamw: no decay at all."""
    x, y = toy_data()
    adam, adamw = pl.adam(0.01), pl.adamw(0.01, weight_decay=0.5, mask=_by_rank)
    from_adam = pl.TrainState.create(MODEL, adam, 0)
    from_adamw = pl.TrainState.create(MODEL, adamw, 0)
    assert jax.tree.structure(from_adam) == jax.tree.structure(from_adamw)
    no_decay = pl.adamw(0.01, weight_decay=0.0)
    for layout in ("pytree", "auto"):
        got, h = pl.fit(
            MODEL,
            adamw,
            (x, y),
            epochs=2,
            batch_size=32,
            state=from_adam,
            progress=False,
            layout=layout,
        )
        want, hw = pl.fit(
            MODEL,
            adamw,
            (x, y),
            epochs=2,
            batch_size=32,
            state=from_adamw,
            progress=False,
            layout="pytree",
        )
        assert trees_equal(got, want) and h == hw
        plain, _ = pl.fit(
            MODEL, no_decay, (x, y), epochs=2, batch_size=32, state=from_adam, progress=False
        )
        assert not np.array_equal(got.params[0]["w"], plain.params[0]["w"])  # decay applied
    step_got, _ = pl.make_train_step(MODEL, adamw)(jax.tree.map(jnp.copy, from_adam), x, y)
    step_want, _ = pl.make_train_step(MODEL, adamw)(from_adamw, x, y)
    assert trees_equal(step_got, step_want)


def test_contiguous_with_a_rank_mask_is_refused_naming_the_optimizer():
    x, y = toy_data()
    adamw = pl.adamw(0.01, weight_decay=0.5, mask=_by_rank)
    state = pl.TrainState.create(MODEL, pl.adam(0.01), 0)
    with pytest.raises(ValueError, match=r"contiguous.*elementwise"):
        pl.fit(
            MODEL,
            adamw,
            (x, y),
            epochs=1,
            batch_size=32,
            state=state,
            progress=False,
            layout="contiguous",
        )  # the layout applies with state= too


def test_a_state_from_another_optimizer_or_model_names_both():
    x, y = toy_data()
    state = pl.TrainState.create(MODEL, pl.sgd(0.1), 0)
    with pytest.raises(ValueError, match=r"state\.opt_state does not match the optimizer given"):
        pl.fit(MODEL, pl.adam(), (x, y), epochs=1, batch_size=32, state=state, progress=False)
    with pytest.raises(ValueError, match=r"state\.opt_state does not match the optimizer given"):
        pl.make_train_step(MODEL, pl.adam())(state, x, y)
    other = pl.mlp([5, 4, 3])
    with pytest.raises(ValueError, match=r"state\.params does not match the model given"):
        pl.fit(other, pl.sgd(0.1), (x, y), epochs=1, batch_size=32, state=state, progress=False)
    with pytest.raises(ValueError, match="TrainState"):
        pl.fit(MODEL, pl.sgd(0.1), (x, y), epochs=1, batch_size=32, state=(1, 2), progress=False)


def test_create_does_not_trace_update():
    calls = {"init": 0, "update": 0}
    base = pl.adam()

    def init(params):
        calls["init"] += 1
        return base.init(params)

    def update(grads, state, params=None):
        calls["update"] += 1
        return base.update(grads, state, params)

    pl.TrainState.create(
        pl.mlp([5] + [4] * 20 + [3]), optax.GradientTransformation(init, update), 0
    )
    assert calls == {"init": 1, "update": 0}


def test_layout_argument_of_create_is_deprecated():
    with pytest.warns(DeprecationWarning, match="PackedState.pack"):
        state = pl.TrainState.create(MODEL, pl.sgd(), 0, layout="pytree")
    assert isinstance(state, pl.TrainState)
    with pytest.warns(DeprecationWarning):
        packed = pl.TrainState.create(MODEL, pl.sgd(), 0, layout="contiguous")
    assert isinstance(packed, pl.PackedState)
    with pytest.raises(TypeError, match="unexpected keyword"):
        pl.TrainState.create(MODEL, pl.sgd(), 0, layot="pytree")


# -- packing inside programs, decided for the program's optimizer ---------------------


def _scan_update(kind):
    """Per-leaf rules through control flow (a running sum along the leaf, loops, a branch
    on a leaf statistic): not one elementwise rule, so never packed."""

    def running(g):
        flat = g.ravel()
        if kind == "scan":
            out = jax.lax.scan(lambda c, v: (c + v, c + v), 0.0, flat)[1]
        elif kind == "fori":
            out = jax.lax.fori_loop(
                0, flat.shape[0], lambda i, a: a.at[i].add(a[i - 1] * (i > 0)), flat
            )
        elif kind == "while":
            out = jax.lax.while_loop(
                lambda c: c[0] < 3, lambda c: (c[0] + 1, c[1] * 0.5), (0, flat)
            )[1]
        else:  # cond on a per-leaf statistic
            out = jax.lax.cond(flat.sum() > 0, lambda a: a * 0.5, lambda a: a * 2.0, flat)
        return -0.05 * out.reshape(g.shape)

    def init(params):
        return optax.EmptyState()

    def update(grads, state, params=None):
        return jax.tree.map(running, grads), state

    return optax.GradientTransformation(init, update)


@pytest.mark.parametrize("kind", ["scan", "fori", "while", "cond"])
def test_control_flow_updates_give_the_pytree_numbers(kind):
    x, y = toy_data()
    model = pl.mlp([5, 4, 4, 4, 3])
    opt = _scan_update(kind)
    runs = {}
    for layout in ("pytree", "auto", "contiguous"):
        try:
            runs[layout] = pl.fit(
                model, opt, (x, y), epochs=2, batch_size=32, key=0, progress=False, layout=layout
            )
        except ValueError as err:
            assert layout == "contiguous" and "elementwise" in str(err)
    for layout, (state, history) in runs.items():
        assert trees_equal(state, runs["pytree"][0]), layout
        assert history == runs["pytree"][1], layout


def test_packing_inside_fit_leaves_a_pytree_and_keeps_numbers_for_elementwise_sgd():
    x, y = toy_data()
    model = pl.mlp([5, 4, 4, 4, 3])
    results = {
        layout: pl.fit(
            model,
            pl.sgd(0.1),
            (x, y),
            epochs=2,
            batch_size=32,
            key=0,
            progress=False,
            layout=layout,
        )
        for layout in ("pytree", "auto", "contiguous")
    }
    for layout, (state, _) in results.items():
        assert isinstance(state, pl.TrainState), layout
        assert trees_equal(state, results["pytree"][0]), layout


# -- donation -------------------------------------------------------------------------

ALIASING = {
    "prodigy": lambda: optax.contrib.prodigy(1.0),
    "dog": lambda: optax.contrib.dog(1.0),
    "dowg": lambda: optax.contrib.dowg(1.0),
    "mechanize": lambda: optax.contrib.mechanize(optax.sgd(0.1)),
}


@pytest.mark.parametrize("name", sorted(ALIASING))
def test_optimizers_that_keep_the_params_train_with_donation(name):
    x, y = toy_data()
    opt = ALIASING[name]()
    state = pl.TrainState.create(MODEL, opt, 0)
    kept = jax.tree.map(jnp.copy, state)
    donated, _ = pl.make_train_step(MODEL, opt)(state, x, y)
    oracle, _ = pl.make_train_step(MODEL, opt, donate=False)(kept, x, y)
    assert trees_equal(donated, oracle)
    assert not any(a.is_deleted() for a in jax.tree.leaves(kept))  # donate=False: kept
    got, history = pl.fit(MODEL, opt, (x, y), epochs=2, batch_size=32, key=0, progress=False)
    assert np.isfinite(history["loss"]).all() and int(got.step) == 6


def test_make_train_step_donate_flag_is_checked():
    with pytest.raises(ValueError, match="donate"):
        pl.make_train_step(MODEL, pl.sgd(), donate="yes")


def test_the_state_a_callback_receives_stays_valid():
    x, y = toy_data()
    seen = []
    pl.fit(
        MODEL,
        pl.adam(0.01),
        (x, y),
        epochs=3,
        batch_size=32,
        key=0,
        progress=False,
        callback=lambda epoch, state, history: seen.append(state),
    )
    for i, state in enumerate(seen):
        want, _ = pl.fit(
            MODEL, pl.adam(0.01), (x, y), epochs=i + 1, batch_size=32, key=0, progress=False
        )
        assert trees_equal(state, want)  # readable after later epochs, and right


# -- PackedState: packed storage across step calls, asked for by name ----------------


def test_packed_state_steps_and_unpacks():
    x, y = toy_data()
    model, opt = pl.mlp([5, 4, 4, 3]), pl.sgd(0.1)
    state = pl.TrainState.create(model, opt, 0)
    packed = pl.PackedState.pack(jax.tree.map(jnp.copy, state), opt)
    assert len(jax.tree.leaves(packed.params)) < len(jax.tree.leaves(state.params))
    step = pl.make_train_step(model, opt)
    for _ in range(3):
        packed, _ = step(packed, x, y)
        state, _ = step(state, x, y)
    assert isinstance(packed, pl.PackedState)
    assert trees_equal(packed.unpack(), state)
    again = pl.PackedState.pack(packed.unpack(), opt, layout="contiguous")
    assert len(jax.tree.leaves(again.params)) == 1


def test_packed_state_with_another_optimizer():
    x, y = toy_data()
    model = pl.mlp([5, 4, 4, 3])
    packed = pl.PackedState.pack(pl.TrainState.create(model, pl.sgd(0.1), 0), pl.sgd(0.1))
    same_rule, _ = pl.make_train_step(model, pl.sgd(0.2))(jax.tree.map(jnp.copy, packed), x, y)
    assert isinstance(same_rule, pl.PackedState)
    adam_packed = pl.PackedState.pack(pl.TrainState.create(model, pl.adam(), 0), pl.adam())
    with pytest.raises(ValueError, match="packed for the optimizer"):
        pl.make_train_step(model, pl.sgd(0.1))(adam_packed, x, y)
    with pytest.raises(ValueError, match="elementwise"):
        pl.PackedState.pack(pl.TrainState.create(model, pl.adam(), 0), pl.adamw(mask=_by_rank))


# -- resuming ---------------------------------------------------------------------------


def test_fit_4_then_2_then_4_is_the_10_epoch_run_with_checkpoints(tmp_path):
    x, y = toy_data()
    ex, ey = toy_data(48, seed=1)
    opt = pl.adam(0.01)
    kw = dict(batch_size=32, eval_data=(ex, ey), progress=False)
    whole_ckpts = pl.Checkpoints(os.path.join(tmp_path, "whole"), keep=3)
    whole, whole_h = pl.fit(MODEL, opt, (x, y), epochs=10, key=0, callback=whole_ckpts, **kw)

    ckpts = pl.Checkpoints(os.path.join(tmp_path, "parts"), keep=3)
    state, h1 = pl.fit(MODEL, opt, (x, y), epochs=4, key=0, callback=ckpts, **kw)
    assert ckpts.steps() == [6, 9, 12]  # steps follow state.step: 3 per epoch
    state, h2 = pl.fit(MODEL, opt, (x, y), epochs=2, state=state, callback=ckpts, **kw)
    assert ckpts.steps() == [12, 15, 18]
    like = pl.TrainState.create(MODEL, opt, 0)
    assert trees_equal(ckpts.restore(like), state)  # the resumed run's latest
    resumed = ckpts.restore(like)
    state, h3 = pl.fit(MODEL, opt, (x, y), epochs=4, state=resumed, callback=ckpts, **kw)
    assert (
        h1["epoch"] == [0, 1, 2, 3] and h2["epoch"] == [4, 5] and h3["epoch"] == list(range(6, 10))
    )
    assert trees_equal(state, whole)
    for name in whole_h:
        assert h1[name] + h2[name] + h3[name] == whole_h[name], name
    assert ckpts.steps() == whole_ckpts.steps() == [24, 27, 30]
    assert trees_equal(ckpts.restore(like), whole_ckpts.restore(like))


def test_checkpoints_replace_a_step_that_exists(tmp_path):
    x, y = toy_data()
    opt = pl.sgd(0.1)
    ckpts = pl.Checkpoints(os.path.join(tmp_path, "run"), keep=5)
    start = pl.TrainState.create(MODEL, opt, 0)
    pl.fit(MODEL, opt, (x, y), epochs=2, batch_size=32, state=start, callback=ckpts, progress=False)
    # redo the same epochs from the same start (a rerun after a crash): no error
    again, _ = pl.fit(
        MODEL, opt, (x, y), epochs=2, batch_size=32, state=start, callback=ckpts, progress=False
    )
    assert ckpts.steps() == [3, 6]
    assert trees_equal(ckpts.restore(start), again)


def test_memoized_constructors_ignore_spelling():
    assert pl.sgd(0.1) is pl.sgd(learning_rate=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pl.adam() is pl.adam(learning_rate=0.001)


def test_host_leaves_of_a_state_are_the_models_shapes():
    state = pl.TrainState.create(pl.mlp([784, 100, 10]), pl.adam(), 0)
    shapes = [a.shape for a in host_leaves(state.params)]
    assert (784, 100) in shapes and (100,) in shapes


def test_a_hand_built_state_that_holds_an_array_twice_still_steps():
    x, y = toy_data()
    opt = optax.contrib.prodigy(1.0)
    made = pl.TrainState.create(MODEL, opt, 0)
    ids = [id(a) for a in jax.tree.leaves(made)]
    assert len(ids) == len(set(ids))  # create copies what the optimizer keeps twice
    params = made.params
    by_hand = made._replace(opt_state=opt.init(params))  # holds params' arrays twice
    ids = [id(a) for a in jax.tree.leaves(by_hand)]
    assert len(ids) > len(set(ids))
    oracle, _ = pl.make_train_step(MODEL, opt, donate=False)(by_hand, x, y)
    stepped, _ = pl.make_train_step(MODEL, opt)(by_hand, x, y)
    assert trees_equal(stepped, oracle)


# -- the argument checks of TrainState.create ------------------------------------------


@pytest.mark.parametrize(
    ("optimizer", "words"),
    [("adam", r"pl\.adam\(\.\.\.\)"), (0.1, "got float 0.1"), (None, "got NoneType None")],
)
def test_create_with_a_non_optimizer_is_a_type_error_naming_optimizer(optimizer, words):
    with pytest.raises(TypeError, match=r"optimizer must be an optax GradientTransformation"):
        pl.TrainState.create(pl.mlp([4, 3]), optimizer, 0)
    with pytest.raises(ValueError, match=words):  # still a ValueError, as before
        pl.TrainState.create(pl.mlp([4, 3]), optimizer, 0)


@pytest.mark.parametrize("model", ["mlp", object(), (1, 2), None])
def test_create_with_a_non_model_is_a_type_error_naming_model(model):
    with pytest.raises(TypeError, match=r"model must be a purelearn Model: pass pl\.mlp"):
        pl.TrainState.create(model, pl.adam(), 0)


@pytest.mark.parametrize("key", ["0", 1.5, None, True, -1, 2**32])
def test_create_with_a_bad_key_names_key(key):
    with pytest.raises(ValueError, match=r"key"):
        pl.TrainState.create(pl.mlp([4, 3]), pl.adam(), key)
