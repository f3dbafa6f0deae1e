"""flax.nnx modules through pl.from_flax: training, modes, explicit keys, nnx.Optimizer."""

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import purelearn as pl
from purelearn.training import evaluate, fit, make_train_step, train_run


class Net(nnx.Module):
    """An MLP with BatchNorm and Dropout, the nnx way (modes set by train()/eval())."""

    def __init__(self, din=2, hidden=16, dout=2, *, rate=0.2, rngs: nnx.Rngs):
        # no bias before BatchNorm: it would cancel (and its gradient is rounding noise)
        self.hidden = nnx.Linear(din, hidden, use_bias=False, kernel_init=pl.he_normal(), rngs=rngs)
        self.bn = nnx.BatchNorm(hidden, momentum=0.9, rngs=rngs)
        self.drop = nnx.Dropout(rate, rngs=rngs)
        self.out = nnx.Linear(hidden, dout, rngs=rngs)

    def __call__(self, x):
        return self.out(self.drop(nnx.relu(self.bn(self.hidden(x)))))


def two_moons(n=128, seed=0):
    """A tiny synthetic problem: the label is the sign of x0 * x1 (XOR-like)."""
    x = np.random.default_rng(seed).normal(size=(n, 2)).astype(np.float32)
    return jnp.asarray(x), jnp.asarray((x[:, 0] * x[:, 1] > 0).astype(np.int32))


def factory(rngs):
    return Net(rngs=rngs)


def tree_equal(a, b):
    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        np.array_equal(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def test_fit_trains_an_nnx_mlp_with_batch_norm_and_dropout():
    x, y = two_moons()
    model = pl.from_flax(factory, x[:1])
    start = pl.TrainState.create(model, pl.adam(0.02), jax.random.key(0))
    assert evaluate(model, start, x, y) < 0.7
    state, history = fit(
        model,
        pl.adam(0.02),
        (x, y),
        epochs=30,
        batch_size=32,
        key=jax.random.key(0),
        progress=False,
    )
    assert history["loss"][-1] < 0.6 * history["loss"][0]
    assert history["train_accuracy"][-1] > 0.9
    assert evaluate(model, state, x, y) == pytest.approx(history["train_accuracy"][-1])
    # the batch statistics moved away from their initial (0, 1)
    assert not np.allclose(state.model_state["bn"]["mean"], 0)
    assert sorted(state.model_state["bn"]) == ["mean", "var"]
    # trained values go back into a module with nnx.update
    net = Net(rngs=nnx.Rngs(5))
    nnx.update(net, state.params, state.model_state)
    net.eval()
    np.testing.assert_allclose(
        net(x), model.apply(state.params, state.model_state, x, train=False)[0], atol=1e-6
    )


def test_factory_init_follows_the_key_and_an_instance_keeps_its_weights():
    x, _ = two_moons(8)
    model = pl.from_flax(factory, x[:1])
    a, _ = model.init(jax.random.key(0))
    b, _ = model.init(jax.random.key(1))
    a2, _ = model.init(0)  # an int seed is a key
    assert not np.allclose(a["hidden"]["kernel"], b["hidden"]["kernel"])
    assert tree_equal(a, a2)
    # the factory's weights are the module's own for nnx.Rngs(key)
    direct = Net(rngs=nnx.Rngs(jax.random.key(0)))
    np.testing.assert_array_equal(a["hidden"]["kernel"], direct.hidden.kernel[...])

    # a partial of the class, or the class itself, is a factory too
    partial = pl.from_flax(functools.partial(Net, hidden=8), x[:1])
    assert partial.init(0)[0]["hidden"]["kernel"].shape == (2, 8)
    assert tree_equal(pl.from_flax(Net, x[:1]).init(0), model.init(0))

    net = Net(rngs=nnx.Rngs(3))
    wrapped = pl.from_flax(net, x[:1])
    p0, _ = wrapped.init(jax.random.key(0))
    p1, _ = wrapped.init(jax.random.key(1))
    assert tree_equal(p0, p1)
    np.testing.assert_array_equal(p0["out"]["kernel"], net.out.kernel[...])
    # later changes to the module do not reach the snapshot taken when wrapped
    net.out.kernel[...] = jnp.zeros_like(net.out.kernel[...])
    assert tree_equal(wrapped.init(0)[0], p0)


def test_training_leaves_a_wrapped_instance_usable():
    # the engine donates its state's buffers: the wrapped module's own must survive
    x, y = two_moons(64)
    net = Net(rngs=nnx.Rngs(0))
    model = pl.from_flax(net, x[:1])
    fit(model, pl.sgd(0.1), (x, y), epochs=2, batch_size=16, key=0, progress=False)
    fit(model, pl.sgd(0.1), (x, y), epochs=1, batch_size=16, key=1, progress=False)
    net.eval()
    assert net(x).shape == (64, 2)


def test_train_and_eval_modes():
    x, _ = two_moons(32)
    x = x * 3 + 1  # batch statistics far from the running (0, 1)
    model = pl.from_flax(lambda rngs: Net(rate=0.5, rngs=rngs), x[:1])
    params, state = model.init(jax.random.key(0))
    key = jax.random.key(1)
    train_a, new_state = model.apply(params, state, x, train=True, key=key)
    eval_a, same = model.apply(params, state, x, train=False)
    eval_b, _ = model.apply(params, state, x, train=False, key=jax.random.key(9))
    # eval: no dropout (any key gives the same), running statistics, state unchanged
    np.testing.assert_array_equal(eval_a, eval_b)
    assert same is state
    assert not np.allclose(train_a, eval_a)
    # train: statistics updated by momentum 0.9 from the batch's, as nnx.BatchNorm does
    h = x @ params["hidden"]["kernel"]
    np.testing.assert_allclose(new_state["bn"]["mean"], 0.1 * h.mean(0), rtol=1e-5, atol=1e-6)
    # an eval pass equals the nnx module in eval mode, by hand
    net = Net(rate=0.5, rngs=nnx.Rngs(0))
    nnx.update(net, params, state)
    net.eval()
    np.testing.assert_allclose(eval_a, net(x), rtol=1e-6, atol=1e-6)
    # train mode drops units: some hidden units are zeroed for some examples
    hidden = nnx.relu((h - h.mean(0)) / jnp.sqrt(h.var(0) + 1e-5))
    with_dropout = train_a - params["out"]["bias"]
    no_dropout = (hidden * params["bn"]["scale"] + params["bn"]["bias"]) @ params["out"]["kernel"]
    assert not np.allclose(with_dropout, no_dropout, atol=1e-4)


def test_same_key_same_result_and_keys_drive_dropout():
    x, _ = two_moons(16)
    model = pl.from_flax(lambda rngs: Net(rate=0.5, rngs=rngs), x[:1])
    params, state = model.init(0)
    a, sa = model.apply(params, state, x, train=True, key=jax.random.key(1))
    b, sb = model.apply(params, state, x, train=True, key=jax.random.key(1))
    c, _ = model.apply(params, state, x, train=True, key=jax.random.key(2))
    np.testing.assert_array_equal(a, b)  # no hidden counter advanced between the calls
    assert tree_equal(sa, sb)
    assert not np.allclose(a, c)
    jitted = jax.jit(model.apply, static_argnames="train")
    np.testing.assert_allclose(
        jitted(params, state, x, train=True, key=jax.random.key(1))[0], a, rtol=1e-6, atol=1e-6
    )
    with pytest.raises(ValueError, match="needs a key"):
        model.apply(params, state, x, train=True)


def test_rngs_argument_of_call_gets_the_key():
    class CallRngs(nnx.Module):
        def __init__(self, rngs):
            self.lin = nnx.Linear(2, 8, rngs=rngs)
            self.drop = nnx.Dropout(0.5)

        def __call__(self, x, rngs=None):
            return self.drop(self.lin(x), rngs=rngs)

    x, _ = two_moons(8)
    model = pl.from_flax(CallRngs, x[:1])
    params, state = model.init(0)
    a, _ = model.apply(params, state, x, train=True, key=jax.random.key(1))
    b, _ = model.apply(params, state, x, train=True, key=jax.random.key(1))
    c, _ = model.apply(params, state, x, train=True, key=jax.random.key(2))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c) and np.any(np.asarray(a) == 0)
    e, _ = model.apply(params, state, x, train=False)
    assert not np.any(np.asarray(e) == 0)


def hand_written_step(net, tx, opt_state, x, y):
    """One textbook step the nnx way: nnx.value_and_grad, then the optax update."""

    def loss_fn(net):
        logits = net(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(net)
    params = nnx.state(net, nnx.Param)
    updates, opt_state = tx.update(grads, opt_state, params)
    nnx.update(net, optax.apply_updates(params, updates))
    return loss, opt_state


@pytest.mark.parametrize("optimizer", [pl.sgd(0.1), pl.adam(0.01)])
def test_one_step_matches_a_hand_written_nnx_step(optimizer):
    x, y = two_moons(32)
    model = pl.from_flax(lambda rngs: Net(rate=0.0, rngs=rngs), x[:1])
    state = pl.TrainState.create(model, optimizer, jax.random.key(0))
    init_key, _ = jax.random.split(jax.random.key(0))
    net = Net(rate=0.0, rngs=nnx.Rngs(init_key))
    net.train()
    opt_state = optimizer.init(nnx.state(net, nnx.Param))
    step = make_train_step(model, optimizer)
    for _ in range(3):
        state, metrics = step(state, x, y)
        loss, opt_state = hand_written_step(net, optimizer, opt_state, x, y)
        np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-6)
    for got, want in zip(
        jax.tree.leaves(state.params),
        jax.tree.leaves(nnx.to_pure_dict(nnx.state(net, nnx.Param))),
        strict=True,
    ):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        state.model_state["bn"]["var"], net.bn.var[...], rtol=1e-6, atol=1e-7
    )


def test_nnx_list_params_checkpoint_round_trip(tmp_path):
    class Stack(nnx.Module):  # nnx.List: integer keys in the params dicts
        def __init__(self, rngs):
            self.layers = nnx.List([nnx.Linear(2, 2, rngs=rngs) for _ in range(2)])

        def __call__(self, x):
            return self.layers[1](nnx.relu(self.layers[0](x)))

    x, y = two_moons(16)
    model = pl.from_flax(Stack, x[:1])
    state, _ = fit(model, pl.adam(0.01), (x, y), epochs=1, batch_size=8, key=0, progress=False)
    assert sorted(state.params["layers"]) == [0, 1]
    pl.save_checkpoint(tmp_path / "ckpt", state)
    back = pl.load_checkpoint(tmp_path / "ckpt", pl.TrainState.create(model, pl.adam(0.01), 1))
    assert tree_equal(back.params, state.params)
    assert evaluate(model, back, x, y) == evaluate(model, state, x, y)


def test_train_run_and_random_search_run_an_nnx_model():
    x, y = two_moons(64)
    model = pl.from_flax(factory, x[:1])
    _, curves = jax.jit(
        lambda k: train_run(model, pl.adam(0.02), (x, y), epochs=5, batch_size=16, key=k)
    )(jax.random.key(0))
    assert curves["train_accuracy"].shape == (5,)
    assert curves["loss"][-1] < curves["loss"][0]
    results = pl.random_search(
        model,
        pl.adam,
        (x, y),
        (x, y),
        space={"learning_rate": pl.log_uniform(1e-3, 0.1)},
        num_trials=2,
        epochs=3,
        batch_size=16,
        key=0,
    )
    assert len(results) == 2 and all(0 <= r["val_acc"] <= 1 for r in results)


def test_nnx_optimizer_with_purelearn_adam_and_initializer():
    x, y = two_moons()
    net = Net(rate=0.0, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(net, pl.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def step(net, optimizer, x, y):
        def loss_fn(net):
            return optax.softmax_cross_entropy_with_integer_labels(net(x), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(net)
        optimizer.update(net, grads)
        return loss

    losses = [float(step(net, optimizer, x, y)) for _ in range(60)]
    assert losses[-1] < 0.6 * losses[0]
    # the same trajectory as optax.adam, the reference implementation
    ref = Net(rate=0.0, rngs=nnx.Rngs(0))
    ref_opt = nnx.Optimizer(ref, optax.adam(1e-2), wrt=nnx.Param)
    ref_losses = [float(step(ref, ref_opt, x, y)) for _ in range(60)]
    np.testing.assert_allclose(losses, ref_losses, rtol=2e-5, atol=1e-6)


def test_nnx_optimizer_update_with_value():
    update = pl.adam(1e-2).update
    params = inspect.signature(update).parameters
    if "value" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        pytest.skip("pl.adam's update does not accept extra arguments (value=) yet")
    net = Net(rate=0.0, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(net, pl.adam(1e-2), wrt=nnx.Param)
    x, y = two_moons(16)

    def loss_fn(net):
        return optax.softmax_cross_entropy_with_integer_labels(net(x), y).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(net)
    before = net.out.kernel[...]
    optimizer.update(net, grads, value=loss)
    assert not np.allclose(before, net.out.kernel[...])


class NoCall(nnx.Module):
    def __init__(self, rngs):
        self.lin = nnx.Linear(2, 2, rngs=rngs)


@pytest.mark.parametrize(
    "module, match",
    [
        (lambda x: x, "returned"),  # a plain function
        (jnp.tanh, "nnx"),
        (NoCall(nnx.Rngs(0)), "__call__"),
        (NoCall, "__call__"),  # a factory of a module without __call__
        (lambda rngs: 3, "not an nnx.Module"),
        (lambda a, b: a, "one argument"),
        (3, "got int"),
        (None, "got NoneType"),
        ("Net", "got str"),
        (dict, "class dict"),
        (lambda rngs: Net(rngs=rngs, dout=None), "Rngs failed"),
    ],
)
def test_unsupported_modules_are_refused_when_wrapped(module, match):
    with pytest.raises(ValueError, match=match):
        pl.from_flax(module, jnp.ones((1, 2)))


def test_bad_inputs_are_clear_errors():
    x, _ = two_moons(8)
    with pytest.raises(ValueError, match=r"sample_input of shape \(1, 3\)"):
        pl.from_flax(factory, jnp.ones((1, 3)))  # Net takes 2 features
    with pytest.raises(ValueError, match="sample_input"):
        pl.from_flax(factory, None)
    model = pl.from_flax(factory, x[:1])
    params, state = model.init(0)
    with pytest.raises(ValueError, match=r"\(8, 3\).*\(1, 2\)"):
        model.apply(params, state, jnp.ones((8, 3)), train=False)
    with pytest.raises(ValueError, match="train"):
        model.apply(params, state, x, train="no")
    with pytest.raises(ValueError, match="key"):
        model.apply(params, state, x, train=True, key="k")
    smaller, _ = pl.from_flax(lambda r: Net(hidden=4, rngs=r), x[:1]).init(0)
    with pytest.raises(
        ValueError, match=r"params do not belong.*\['hidden'\]\['kernel'\] has shape \(2, 4\)"
    ):
        model.apply(smaller, state, x, train=False)
    with pytest.raises(ValueError, match="params do not belong"):
        model.apply({"hidden": params["hidden"]}, state, x, train=False)
    with pytest.raises(ValueError, match="model_state do not belong"):
        model.apply(params, {}, x, train=False)


@pytest.mark.filterwarnings("ignore:Using 'Module.sow:DeprecationWarning")
def test_other_variables_are_model_state_and_intermediates_are_not():
    class Odd(nnx.Module):
        def __init__(self, rngs):
            self.lin = nnx.Linear(2, 2, rngs=rngs)
            self.calls = nnx.Variable(jnp.zeros((), jnp.int32))

        def __call__(self, x):
            self.calls[...] += 1
            h = self.lin(x)
            self.sow(nnx.Intermediate, "h", h)
            return h

    x, _ = two_moons(4)
    net = Odd(nnx.Rngs(0))
    net(x)  # leaves a sown intermediate behind: not state
    model = pl.from_flax(net, x[:1])
    params, state = model.init(0)
    assert state == {"calls": 1} and sorted(params) == ["lin"]
    _, new = model.apply(params, state, x, train=True, key=0)
    assert int(new["calls"]) == 2
    assert model.apply(params, new, x, train=False)[1] is new  # eval changes no state

    class Lazy(nnx.Module):
        def __init__(self, rngs):
            self.lin = nnx.Linear(2, 2, rngs=rngs)

        def __call__(self, x):
            if not hasattr(self, "seen"):
                self.seen = nnx.BatchStat(jnp.zeros(()))
            return self.lin(x)

    with pytest.raises(ValueError, match="created new variables"):
        pl.from_flax(Lazy, x[:1])
