"""Checkpoints: round trips of every kind of pytree, the file format, and crash safety."""

import dataclasses
import fcntl
import hashlib
import os
import select
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import threading
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx, serialization
from flax.training import train_state
from hypothesis import given, settings
from hypothesis import strategies as st

import purelearn as pl

MAGIC = b"purelearn-checkpoint-v1\n"


def is_key(x):
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def host_leaves(tree):
    """Leaves as NumPy arrays (typed PRNG keys as their data)."""
    return [np.asarray(jax.random.key_data(x) if is_key(x) else x) for x in jax.tree.leaves(tree)]


def identical(a, b):
    """Same structure, and every leaf the same dtype, shape and bytes (NaNs included)."""
    if jax.tree.structure(a) != jax.tree.structure(b):
        return False
    return all(
        u.dtype == v.dtype and u.shape == v.shape and u.tobytes() == v.tobytes()
        for u, v in zip(host_leaves(a), host_leaves(b), strict=True)
    )


def zeros_like(tree):
    """A like_state of the same structure and kinds whose values say nothing."""

    def zero(x):
        if is_key(x):
            return jax.random.wrap_key_data(
                jnp.zeros_like(jax.random.key_data(x)), impl=jax.random.key_impl(x)
            )
        if isinstance(x, jax.Array):
            return jnp.zeros_like(x)
        if isinstance(x, np.generic):
            return x.dtype.type(0)
        if isinstance(x, np.ndarray):
            return np.zeros_like(x)
        return type(x)(0)

    return jax.tree.map(zero, tree)


def round_trip(tmp_path, state, like=None):
    path = tmp_path / "state.ckpt"
    pl.save_checkpoint(path, state)
    return pl.load_checkpoint(path, zeros_like(state) if like is None else like)


def old_format_bytes(state):
    """A checkpoint as purelearn 0.1 wrote it: flax's to_bytes of the tree, keys as data."""
    raw = jax.device_get(jax.tree.map(lambda a: jax.random.key_data(a) if is_key(a) else a, state))
    payload = serialization.to_bytes(raw)
    return MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload


def toy_data(n=64, d=5, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(np.argmax(x[:, :classes], axis=1).astype(np.int32))


# -- purelearn's own TrainState (from tests/test_training.py) -------------------------


def test_train_state_round_trip_and_resume_is_bit_identical(tmp_path):
    model, opt = pl.mlp([5, 12, 3], batch_norm=True, dropout_rate=0.2), optax.adam(0.01)
    x, y = toy_data()
    step = pl.make_train_step(model, opt)
    state = pl.TrainState.create(model, opt, jax.random.key(0))
    for _ in range(3):
        state, _ = step(state, x, y)
    path = tmp_path / "ckpt.msgpack"
    pl.save_checkpoint(path, state)
    loaded = pl.load_checkpoint(path, pl.TrainState.create(model, opt, jax.random.key(5)))
    assert identical(loaded, state)
    assert isinstance(loaded.opt_state, type(state.opt_state))
    for _ in range(3):
        state, m1 = step(state, x, y)
        loaded, m2 = step(loaded, x, y)
    assert identical(loaded, state) and identical(m1, m2)


# -- every kind of pytree ---------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Params:
    w: jax.Array
    b: jax.Array
    name: str = dataclasses.field(default="layer", metadata={"static": True})


class Pair(NamedTuple):
    first: Any
    second: Any


def test_register_dataclass_round_trip(tmp_path):
    state = Params(jnp.arange(6.0).reshape(2, 3), jnp.array([1, 2], jnp.int32), name="dense")
    loaded = round_trip(tmp_path, state)
    assert type(loaded) is Params and loaded.name == "dense"  # static fields come from like
    assert identical(loaded, state)


def test_namedtuple_dict_list_tuple_none_and_empty_containers_round_trip(tmp_path):
    state = Pair(
        first={"a": [jnp.ones((2, 2)), None, ()], "b": (jnp.zeros(0), {}), "c": None},
        second=[Pair(jnp.float32(1.5), np.arange(3, dtype=np.uint8)), optax.EmptyState()],
    )
    loaded = round_trip(tmp_path, state)
    assert identical(loaded, state)
    assert loaded.first["c"] is None and loaded.first["a"][1] is None
    assert isinstance(loaded.second[1], optax.EmptyState)


def test_a_bare_array_round_trips(tmp_path):
    assert identical(round_trip(tmp_path, jnp.arange(5)), jnp.arange(5))


@pytest.mark.parametrize("name", ["a" * 255, "é" * 127])  # NAME_MAX bytes: 255 and 254
def test_the_longest_file_names_save_twice(tmp_path, name):
    for value in (1.0, 2.0):  # the second save also looks for debris of the first
        pl.save_checkpoint(tmp_path / name, {"a": jnp.full(2, value)})
    assert identical(
        pl.load_checkpoint(tmp_path / name, {"a": jnp.zeros(2)}), {"a": jnp.full(2, 2.0)}
    )
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_typed_prng_keys_round_trip_with_their_implementation(tmp_path):
    state = {
        "fry": jax.random.key(3),
        "rbg": jax.random.key(4, impl="rbg"),
        "many": jax.random.split(jax.random.key(5), 3),
    }
    loaded = round_trip(tmp_path, state)
    assert identical(loaded, state)
    assert all(jax.random.key_impl(loaded[k]) == jax.random.key_impl(state[k]) for k in state)
    np.testing.assert_array_equal(
        jax.random.uniform(loaded["rbg"], (4,)), jax.random.uniform(state["rbg"], (4,))
    )


def test_nnx_state_round_trip_restores_the_module(tmp_path):
    class Net(nnx.Module):
        def __init__(self, seed):
            rngs = nnx.Rngs(seed, dropout=seed + 1)
            self.lin = nnx.Linear(3, 4, rngs=rngs)
            self.bn = nnx.BatchNorm(4, rngs=rngs)
            self.drop = nnx.Dropout(0.5, rngs=rngs)

        def __call__(self, x):
            return self.drop(self.bn(self.lin(x)))

    x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 3)), jnp.float32)
    net = Net(0)
    net(x)  # moves the batch statistics and the dropout stream
    path = tmp_path / "net.ckpt"
    pl.save_checkpoint(path, nnx.state(net))
    other = Net(7)
    nnx.update(other, pl.load_checkpoint(path, nnx.state(other)))
    assert identical(nnx.state(other), nnx.state(net))
    np.testing.assert_array_equal(other(x), net(x))  # same weights, statistics and mask


def affine(p, x):
    return x @ p["w"] + p["b"]


FLAX_TX = optax.adam(0.1)  # one object: it is part of the TrainState's treedef


def flax_train_state(seed=0):
    params = {"w": jax.random.normal(jax.random.key(seed), (3, 2)), "b": jnp.zeros(2)}
    return train_state.TrainState.create(apply_fn=affine, params=params, tx=FLAX_TX)


@jax.jit
def flax_step(state, x):
    grads = jax.grad(lambda p: jnp.sum(state.apply_fn(p, x) ** 2))(state.params)
    return state.apply_gradients(grads=grads)


def test_flax_train_state_loads_into_a_fresh_one_and_resumes(tmp_path):
    x = jnp.ones((4, 3))
    state = flax_train_state()
    for _ in range(3):
        state = flax_step(state, x)
    assert state.step.dtype == jnp.int32  # jit made the Python int 0 an int32 array
    fresh = flax_train_state(seed=9)
    assert type(fresh.step) is int
    path = tmp_path / "flax.ckpt"
    pl.save_checkpoint(path, state)
    loaded = pl.load_checkpoint(path, fresh)
    assert type(loaded.step) is int and loaded.step == 3  # like's type, as flax/orbax do
    assert loaded.apply_fn is fresh.apply_fn and loaded.tx is fresh.tx
    assert identical(loaded.params, state.params) and identical(loaded.opt_state, state.opt_state)
    assert identical(flax_step(loaded, x).params, flax_step(state, x).params)
    # and the other way: a fresh state (Python-int step) into a jitted one's like
    pl.save_checkpoint(path, fresh)
    back = pl.load_checkpoint(path, state)
    assert back.step.dtype == jnp.int32 and int(back.step) == 0


def test_leaves_come_back_as_the_kind_of_their_like(tmp_path):
    state = {
        "jax": jnp.arange(3.0),
        "numpy": np.arange(3.0, dtype=np.float32),
        "np_scalar": np.float32(2.5),
        "int": 7,
        "float": 0.25,
        "bool": True,
        "complex": 1 - 2j,
        "big_endian": np.array([1, 70000], ">i4"),
    }
    loaded = round_trip(tmp_path, state)
    assert isinstance(loaded["jax"], jax.Array) and not loaded["jax"].committed
    committed = {"jax": jax.device_put(jnp.zeros(3), jax.devices()[0])}
    pl.save_checkpoint(tmp_path / "j", {"jax": jnp.arange(3.0)})
    assert pl.load_checkpoint(tmp_path / "j", committed)["jax"].committed  # like's placement
    assert type(loaded["numpy"]) is np.ndarray and loaded["numpy"].flags.writeable
    assert type(loaded["np_scalar"]) is np.float32 and loaded["np_scalar"] == 2.5
    assert [type(loaded[k]) for k in ("int", "float", "bool", "complex")] == [
        int,
        float,
        bool,
        complex,
    ]
    assert (loaded["int"], loaded["float"], loaded["bool"], loaded["complex"]) == (
        7,
        0.25,
        True,
        1 - 2j,
    )
    # A big-endian array keeps its values (the file stores native byte order).
    assert loaded["big_endian"].tolist() == [1, 70000]
    # jax.ShapeDtypeStruct likes (jax.eval_shape) give JAX arrays and keys.
    abstract = jax.eval_shape(lambda: {"w": jnp.zeros(3), "k": jax.random.key(0)})
    pl.save_checkpoint(tmp_path / "k", {"w": jnp.arange(3.0), "k": jax.random.key(2)})
    got = pl.load_checkpoint(tmp_path / "k", abstract)
    assert identical(got, {"w": jnp.arange(3.0), "k": jax.random.key(2)})


def test_python_numbers_take_any_0d_number_of_their_kind_and_nothing_else(tmp_path):
    path = tmp_path / "c"
    pl.save_checkpoint(path, {"s": jnp.array(5, jnp.int32), "f": jnp.array(2, jnp.int8)})
    assert pl.load_checkpoint(path, {"s": 0, "f": 0.0}) == {"s": 5, "f": 2.0}
    cases = [
        ({"s": jnp.array(1.5)}, {"s": 0}, "float32.*Python int"),  # float into int
        ({"s": jnp.array(True)}, {"s": 0}, "bool.*Python int"),
        ({"s": jnp.ones(2, jnp.int32)}, {"s": 0}, r"int32\[2\].*Python int"),
        ({"s": 2**40}, {"s": jnp.zeros((), jnp.int32)}, r"the Python int 1099511627776.*int32\[\]"),
        ({"s": 1.5}, {"s": jnp.zeros((), jnp.int32)}, "the Python float 1.5"),
        ({"s": 3}, {"s": jnp.zeros((), jnp.bool_)}, "the Python int 3"),
    ]
    for state, like, match in cases:
        pl.save_checkpoint(path, state)
        with pytest.raises(ValueError, match="entry 's' is " + match):
            pl.load_checkpoint(path, like)
    pl.save_checkpoint(path, {"s": 3})
    assert int(pl.load_checkpoint(path, {"s": jnp.zeros((), jnp.int32)})["s"]) == 3


# -- property: random pytrees of arrays ------------------------------------------------------

DTYPES = [np.float32, np.int32, np.bool_, jnp.bfloat16, np.uint8]


def make_array(dtype, shape, seed, as_jax):
    rng = np.random.default_rng(seed)
    if dtype == np.bool_:
        a = rng.random(shape) < 0.5
    elif np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        a = rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    else:
        a = (rng.normal(size=shape) * 100).astype(dtype)
    return jnp.asarray(a) if as_jax else np.asarray(a)


arrays = st.builds(
    make_array,
    st.sampled_from(DTYPES),
    st.lists(st.integers(0, 3), max_size=3).map(tuple),  # 0-d, empty and small
    st.integers(0, 2**32 - 1),
    st.booleans(),
)
keys = st.text(st.characters(blacklist_categories=("Cs",)), max_size=4)
trees = st.recursive(
    arrays,
    lambda children: st.one_of(
        st.dictionaries(keys, children, max_size=3),
        st.lists(children, max_size=3),
        st.lists(children, max_size=3).map(tuple),
    ),
    max_leaves=8,
)


@settings(max_examples=30, deadline=None)
@given(tree=trees)
def test_random_pytrees_of_arrays_round_trip_exactly(tmp_path_factory, tree):
    tmp_path = tmp_path_factory.mktemp("prop")
    loaded = round_trip(tmp_path, tree)
    assert identical(loaded, tree)
    for got, want in zip(jax.tree.leaves(loaded), jax.tree.leaves(tree), strict=True):
        assert (
            isinstance(got, jax.Array) if isinstance(want, jax.Array) else type(got) is np.ndarray
        )


# -- the file format: compatible with flax's layout and with 0.1's files ---------------------


def test_files_written_by_purelearn_0_1_still_load(tmp_path):
    model = pl.mlp([4, 3], batch_norm=True)
    opt = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.1))  # holds EmptyStates
    state = pl.TrainState.create(model, opt, jax.random.key(1))
    extra = {"state": state, "none": None, "flax": flax_train_state(), "empty": {}}
    path = tmp_path / "old.ckpt"
    path.write_bytes(old_format_bytes(extra))
    like = {
        "state": pl.TrainState.create(model, opt, jax.random.key(2)),
        "none": None,
        "flax": flax_train_state(seed=3),
        "empty": {},
    }
    assert identical(pl.load_checkpoint(path, like), extra)


def test_the_payload_is_flaxs_state_dict_layout(tmp_path):
    state = {"opt": optax.adam(0.1).init({"w": jnp.ones(2)}), "k": jax.random.key(0)}
    pl.save_checkpoint(tmp_path / "c", state)
    payload = (tmp_path / "c").read_bytes().split(b"\n", 2)[2]
    raw = jax.tree.map(lambda a: jax.random.key_data(a) if is_key(a) else a, state)
    assert identical(serialization.from_bytes(zeros_like(raw), payload), raw)


# -- mismatches and corrupt files ------------------------------------------------------------


def test_corrupt_truncated_and_foreign_files(tmp_path):
    state = {"w": jnp.arange(4.0), "step": jnp.array(3)}
    path = tmp_path / "c"
    pl.save_checkpoint(path, state)
    good = path.read_bytes()
    path.write_bytes(good[:-10])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        pl.load_checkpoint(path, state)
    flipped = bytearray(good)
    flipped[-5] ^= 0xFF
    path.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="corrupt"):
        pl.load_checkpoint(path, state)
    for foreign in (b"hello world", b"", MAGIC[:-1]):
        path.write_bytes(foreign)
        with pytest.raises(ValueError, match="not a purelearn checkpoint"):
            pl.load_checkpoint(path, state)
    # A correct digest over bytes that are not msgpack (a crafted or foreign payload).
    junk = b"\xc1\xc1\xc1"
    path.write_bytes(MAGIC + hashlib.sha256(junk).hexdigest().encode() + b"\n" + junk)
    with pytest.raises(ValueError, match="cannot be decoded"):
        pl.load_checkpoint(path, state)


def test_structure_mismatch_names_the_entry(tmp_path):
    path = tmp_path / "c"
    pl.save_checkpoint(path, {"layer": {"w": jnp.zeros(4), "b": jnp.zeros(4)}})
    with pytest.raises(ValueError, match=r"'layer/w' is float32\[4\] in the checkpoint but "):
        pl.load_checkpoint(path, {"layer": {"w": jnp.zeros(6), "b": jnp.zeros(4)}})
    with pytest.raises(ValueError, match=r"'layer/b' is float32\[4\] .* but int32\[4\]"):
        pl.load_checkpoint(path, {"layer": {"w": jnp.zeros(4), "b": jnp.zeros(4, jnp.int32)}})
    # an extra entry in the file is an error, not silently dropped
    with pytest.raises(ValueError, match="entries like_state lacks: 'layer/b'"):
        pl.load_checkpoint(path, {"layer": {"w": jnp.zeros(4)}})
    with pytest.raises(ValueError, match="lacks like_state's entries 'layer/bias'"):
        pl.load_checkpoint(path, {"layer": {"w": jnp.zeros(4), "b": jnp.zeros(4), "bias": 0.0}})
    with pytest.raises(ValueError, match=r"'layer/b'.*'layer/w'.*lacks.*'w'"):
        pl.load_checkpoint(path, {"w": jnp.zeros(4)})


def test_train_states_of_different_models_do_not_load_into_each_other(tmp_path):
    opt = optax.adam(0.1)
    small, deep = pl.mlp([5, 4, 3]), pl.mlp([5, 4, 4, 3])
    pl.save_checkpoint(tmp_path / "small", pl.TrainState.create(small, opt, 0))
    pl.save_checkpoint(tmp_path / "deep", pl.TrainState.create(deep, opt, 0))
    with pytest.raises(ValueError, match="lacks like_state's entries 'params/2/b'"):
        pl.load_checkpoint(tmp_path / "small", pl.TrainState.create(deep, opt, 0))
    with pytest.raises(ValueError, match="entries like_state lacks: 'opt_state/0/mu/2/b'"):
        pl.load_checkpoint(tmp_path / "deep", pl.TrainState.create(small, opt, 0))


@dataclasses.dataclass
class TwoNamedX:
    a: Any
    b: Any


jax.tree_util.register_pytree_with_keys(
    TwoNamedX,
    lambda t: (((jax.tree_util.DictKey("x"), t.a), (jax.tree_util.DictKey("x"), t.b)), None),
    lambda _, children: TwoNamedX(*children),
)


@pytest.mark.parametrize(
    ("state", "match"),
    [
        ({"a": "text"}, "leaf 'a' must be an array or a number, got str"),
        ({"a": [object()]}, "leaf 'a/0' must be an array or a number, got object"),
        ({"a": np.array(["x"])}, "leaf 'a' has dtype <U1"),
        ({"a": np.array([1], dtype=object)}, "leaf 'a' has dtype object"),
        ({"a": np.array(["2020-01-01"], "datetime64[D]")}, "leaf 'a' has dtype datetime64"),
        ({"a": 2**64}, "'a' = 18446744073709551616 does not fit in 64 bits"),
        (TwoNamedX(jnp.ones(1), jnp.ones(2)), "two leaves named 'x'"),
    ],
)
def test_unstorable_states_are_refused_before_writing(tmp_path, state, match):
    path = tmp_path / "c"
    with pytest.raises(ValueError, match=match):
        pl.save_checkpoint(path, state)
    assert list(tmp_path.iterdir()) == []


def test_bad_like_states_are_refused(tmp_path):
    pl.save_checkpoint(tmp_path / "c", {"a": jnp.ones(2)})
    with pytest.raises(ValueError, match="like_state leaf 'a' must be an array"):
        pl.load_checkpoint(tmp_path / "c", {"a": "text"})


# -- paths, permissions, atomicity, debris ---------------------------------------------------


def test_bad_paths_name_the_path(tmp_path):
    state = {"a": jnp.ones(2)}
    with pytest.raises(ValueError, match=f"{tmp_path}' is a directory"):
        pl.save_checkpoint(tmp_path, state)
    with pytest.raises(ValueError, match=f"{tmp_path}' is a directory"):
        pl.load_checkpoint(tmp_path, state)
    missing = tmp_path / "no" / "such" / "c"
    with pytest.raises(ValueError, match=f"'{missing}': its directory '.*such' does not exist"):
        pl.save_checkpoint(missing, state)
    with pytest.raises(FileNotFoundError, match=str(missing)):  # catchable to start afresh
        pl.load_checkpoint(missing, state)
    for bad in (0, None, "", b"c"):  # 0 would read stdin as a file descriptor
        with pytest.raises(ValueError, match="path must be"):
            pl.load_checkpoint(bad, state)
        with pytest.raises(ValueError, match="path must be"):
            pl.save_checkpoint(bad, state)


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002, 0o077])
def test_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        pl.save_checkpoint(tmp_path / "c", {"a": jnp.ones(2)})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "c").stat().st_mode) == 0o666 & ~umask


def test_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "c"
    pl.save_checkpoint(path, {"a": jnp.zeros(2)})
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr(os, "replace", crash)
        with pytest.raises(OSError, match="disk full"):
            pl.save_checkpoint(path, {"a": jnp.ones(2)})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def temp_name(target, token="0123456789abcdef"):
    return f".{target}.ckpt-{token}.tmp"


def test_dead_writers_debris_is_removed_but_live_and_foreign_files_are_kept(tmp_path):
    (tmp_path / temp_name("c")).write_bytes(b"x" * 1000)  # a dead writer's file: no lock
    live = tmp_path / temp_name("c", "fedcba9876543210")
    live.write_bytes(b"y")
    keep = [temp_name("other"), ".c.ckpt-short.tmp", "c.ckpt-0123456789abcdef.tmp", "notes"]
    for name in keep:
        (tmp_path / name).write_bytes(b"z")
    fd = os.open(live, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as a writer holds it
        pl.save_checkpoint(tmp_path / "c", {"a": jnp.ones(2)})
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["c", live.name, *keep])
    finally:
        os.close(fd)
    pl.save_checkpoint(tmp_path / "c", {"a": jnp.ones(2)})  # the lock is gone: debris now
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["c", *keep])


def test_concurrent_saves_to_one_path_all_succeed(tmp_path):
    path = tmp_path / "c"
    states = [{"a": jnp.full(1000, float(i))} for i in range(4)]
    errors = []

    def save_many(state):
        try:
            for _ in range(15):
                pl.save_checkpoint(path, state)
        except Exception as err:  # noqa: BLE001 -- any error of a thread is reported below
            errors.append(err)

    threads = [threading.Thread(target=save_many, args=(s,)) for s in states]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    loaded = pl.load_checkpoint(path, zeros_like(states[0]))
    assert any(identical(loaded, s) for s in states)
    assert [p.name for p in tmp_path.iterdir()] == ["c"]


HANGING_WRITER = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np
    import purelearn as pl

    def hang(src, dst):  # the whole file is written: stop just before moving it into place
        print("WRITTEN", src, flush=True)
        time.sleep(300)

    os.replace = hang
    pl.save_checkpoint(sys.argv[1], {"big": np.ones(4_000_000, np.float32)})
    """
)


def wait_for_line(proc, timeout):
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "the writer did not get to its write in time"
    return proc.stdout.readline()


@pytest.mark.slow
def test_sigkilled_save_leaves_debris_that_the_next_save_removes(tmp_path):
    path = tmp_path / "state.ckpt"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen(
        [sys.executable, "-c", HANGING_WRITER, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        line = wait_for_line(proc, timeout=120)
        tmp = line.split(maxsplit=1)[1].strip()
        assert os.path.basename(tmp).startswith(".state.ckpt.ckpt-")
        assert os.path.getsize(tmp) > 16_000_000  # full size
        # The writer is alive: a concurrent save must leave its file alone.
        pl.save_checkpoint(path, {"a": jnp.ones(2)})
        assert os.path.exists(tmp)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        assert os.path.exists(tmp)  # SIGKILL ran no cleanup: the debris is there
        pl.save_checkpoint(path, {"a": jnp.arange(2.0)})
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert [p.name for p in tmp_path.iterdir()] == ["state.ckpt"]
    assert identical(pl.load_checkpoint(path, {"a": jnp.zeros(2)}), {"a": jnp.arange(2.0)})


# -- sharded arrays --------------------------------------------------------------------------

SHARDED = textwrap.dedent(
    """
    import sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import purelearn as pl

    assert jax.device_count() == 8
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("a", "b"))
    grid, rows = NamedSharding(mesh, P("a", "b")), NamedSharding(mesh, P("a"))
    state = {
        "w": jax.device_put(jnp.arange(32.0).reshape(8, 4), grid),
        "keys": jax.device_put(jax.random.split(jax.random.key(0), 8), rows),
        "r": jax.device_put(jnp.ones(3), NamedSharding(mesh, P())),
    }
    assert len(state["w"].sharding.device_set) == 8
    pl.save_checkpoint(sys.argv[1], state)
    like = {
        "w": jax.device_put(jnp.zeros((8, 4)), grid),
        "keys": jax.device_put(jax.random.split(jax.random.key(1), 8), rows),
        "r": jax.device_put(jnp.zeros(3), NamedSharding(mesh, P())),
    }
    out = pl.load_checkpoint(sys.argv[1], like)
    for k in state:
        assert out[k].sharding == like[k].sharding, k
    np.testing.assert_array_equal(out["w"], np.arange(32.0).reshape(8, 4))
    np.testing.assert_array_equal(jax.random.key_data(out["keys"]),
                                  jax.random.key_data(state["keys"]))
    assert jax.random.key_impl(out["keys"]) == jax.random.key_impl(state["keys"])
    # into a plain single-device like (e.g. for evaluation on one device)
    plain = pl.load_checkpoint(sys.argv[1], jax.tree.map(lambda x: jax.device_get(x), like))
    np.testing.assert_array_equal(plain["w"], np.arange(32.0).reshape(8, 4))
    print("SHARDED_OK")
    """
)


@pytest.mark.slow
def test_sharded_arrays_are_gathered_and_restored_with_their_like_sharding(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run(
        [sys.executable, "-c", SHARDED, str(tmp_path / "c")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0 and "SHARDED_OK" in out.stdout, out.stderr[-3000:]


MULTI_PROCESS = textwrap.dedent(
    """
    import sys
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    pid, port, path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid)
    import jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import purelearn as pl

    sharding = NamedSharding(Mesh(np.array(jax.devices()), ("d",)), P("d"))
    full = np.arange(12.0, dtype=np.float32).reshape(4, 3)
    w = jax.make_array_from_callback((4, 3), sharding, lambda i: full[i])
    assert not w.is_fully_addressable
    pl.save_checkpoint(f"{path}.{pid}", {"w": w, "step": 3})
    like = {"w": jax.make_array_from_callback((4, 3), sharding, lambda i: 0 * full[i]), "step": 0}
    out = pl.load_checkpoint(f"{path}.{pid}", like)
    assert out["step"] == 3 and out["w"].sharding == sharding
    for shard in out["w"].addressable_shards:
        np.testing.assert_array_equal(shard.data, full[shard.index])
    plain = pl.load_checkpoint(f"{path}.{pid}", {"w": np.zeros((4, 3), np.float32), "step": 0})
    np.testing.assert_array_equal(plain["w"], full)  # every process wrote the whole array
    print("PROCESS_OK", pid)
    """
)


@pytest.mark.slow
def test_arrays_spanning_processes_are_gathered_by_every_process(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", MULTI_PROCESS, str(i), str(port), str(tmp_path / "c")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(2)
    ]
    try:
        outs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait(timeout=60)
    for i, (stdout, stderr) in enumerate(outs):
        assert f"PROCESS_OK {i}" in stdout, stderr[-3000:]


# -- directory checkpoints (orbax) -----------------------------------------------------------


def test_directory_checkpoints_round_trip_and_refuse_corrupt_or_mismatched_data(tmp_path):
    model, opt = pl.mlp([5, 8, 3], batch_norm=True), pl.adam(0.01)
    state = {
        "s": pl.TrainState.create(model, opt, 0),
        "n": 3,
        "np": np.arange(4, dtype=np.int64),
        "none": None,
    }
    like = {**state, "s": pl.TrainState.create(model, opt, 1), "n": 0, "np": np.zeros(4, np.int64)}
    path = tmp_path / "run"
    pl.save_checkpoint(f"{path}/", state)  # a trailing separator selects the directory format
    pl.save_checkpoint(path, state)  # now marked: a second step; the first is deleted after it
    assert sorted(os.listdir(path)) == ["1", "purelearn-checkpoints.json"]
    back = pl.load_checkpoint(path, like)
    assert identical(back, state) and back["n"] == 3 and back["np"].dtype == np.int64
    with pytest.raises(ValueError, match="lacks like_state's entries 'x'"):
        pl.load_checkpoint(path, {**like, "x": jnp.zeros(2)})
    with pytest.raises(ValueError, match=r"entry 'np' is int64\[4\] in the checkpoint"):
        pl.load_checkpoint(path, {**like, "np": np.zeros(5, np.int64)})
    # A flipped byte in the data files (orbax misses some flips in array data; the
    # stored checksums catch those).
    chunks = path / "1" / "state" / "d"
    for chunk in chunks.iterdir():
        raw = bytearray(chunk.read_bytes())
        raw[-3] ^= 0x01
        chunk.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="corrupt"):
        pl.load_checkpoint(path, like)
