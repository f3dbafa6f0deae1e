"""Checkpoints: any pytree of arrays to one file, atomically, with a digest.

A checkpoint is a msgpack-encoded nested dict (flax's
``serialization.msgpack_serialize``) behind a magic header and a SHA-256
digest of the payload, so a truncated or corrupt file is a ``ValueError``,
never a half-loaded state. The nested dict is keyed by the pytree paths of
the leaves (dict keys and sequence indices as strings, attribute names for
NamedTuples and dataclasses), which is the layout flax's ``to_state_dict``
gives for the dicts, lists, tuples, NamedTuples and flax struct dataclasses
that older versions could save, so their files still load. Any registered
pytree can be saved: ``jax.tree_util.register_dataclass`` classes,
``nnx.state(module)``, flax's ``TrainState``, optax states. Typed PRNG keys
are stored as their raw ``uint32`` data; arrays sharded over several devices
(or processes) are gathered to the host first.

Crash safety: the bytes go to ``.<name>.ckpt-<random>.tmp`` beside the target
and replace it in one ``os.replace``, so a crash leaves the previous
checkpoint intact. A writer holds an ``flock`` on its temporary file while it
writes; a save removes the temporary files of earlier saves to the same path
whose lock nobody holds, which are the debris of a crashed (even SIGKILLed)
save, and never the live file of a concurrent writer. (Where ``fcntl`` is
missing, e.g. on Windows, such debris is left alone.) Files are created with
mode ``0o666`` less the umask, like any ``open(path, "w")``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from purelearn import _checks, _files, distributed

if TYPE_CHECKING:  # pragma: no cover - orbax is imported when first used (it is slow)
    from orbax.checkpoint import CheckpointManager

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "Checkpoints",
    "CorruptCheckpoint",
    "DIRECTORY_MARKER",
]

_MAGIC = b"purelearn-checkpoint-v1\n"
_SCALARS = (bool, int, float, complex)
_TEMP_SUFFIX = ".tmp"


# -- paths and temporary files ------------------------------------------------------


def _temp_pattern(name: str) -> tuple[str, re.Pattern[str]]:
    """The temporary-file prefix for target ``name`` and a regex matching only those files."""
    # Cut to 180 bytes, so that the temporary name stays under NAME_MAX (255 bytes).
    prefix = f".{os.fsdecode(os.fsencode(name)[:180])}.ckpt-"
    return prefix, re.compile(re.escape(prefix) + _files.TOKEN + re.escape(_TEMP_SUFFIX))


def _remove_stale_temps(directory: str, name: str) -> None:
    """Delete temporary files of earlier saves to ``name`` whose writer is gone."""
    _files.remove_stale(directory, _temp_pattern(name)[1])


# -- trees <-> the nested dict --------------------------------------------------


def _key_name(key: Any) -> str:
    for attr in ("key", "idx", "name"):  # DictKey / FlattenedIndexKey, SequenceKey, GetAttrKey
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


Name = tuple[str, ...]  # a leaf's path as the keys of the file's nested dict


def _show(name: Name) -> str:
    return repr("/".join(name)) if name else "(the whole state, a single leaf)"


def _empty(x: Any) -> bool:
    """``None`` or an empty dict, list or tuple (``optax.EmptyState()``): held as a leaf
    so that the file keeps it (as ``None`` or ``{}``), as flax's ``to_state_dict`` does."""
    return x is None or (isinstance(x, dict | list | tuple) and len(x) == 0)


class CorruptCheckpoint(ValueError):
    """A checkpoint whose bytes are damaged (digest, checksum or metadata unreadable)."""


def _entries(tree: Any) -> tuple[list[Name], list[Any], Any]:
    """The leaves of ``tree`` named by their paths (("opt_state", "0", "mu")), and its
    treedef; empty subtrees (see :func:`_empty`) count as leaves."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_empty)
    names = [tuple(_key_name(k) for k in path) for path, _ in flat]
    return names, [leaf for _, leaf in flat], treedef


def _is_number(x: Any) -> bool:
    """A Python number (NumPy scalars, some of which subclass float, are arrays here)."""
    return isinstance(x, _SCALARS) and not isinstance(x, np.generic)


def _is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _storable(dtype: Any) -> bool:
    # Numbers and bools, including the ml_dtypes (bfloat16, float8, int4); not
    # strings, objects, records or datetimes.
    dtype = np.dtype(dtype)
    return dtype == np.bool_ or (jnp.issubdtype(dtype, np.number) and dtype.names is None)


def _native(dtype: np.dtype) -> np.dtype:
    """``dtype`` in this machine's byte order: the file stores a dtype by its name
    ("int32"), and its bytes must be read back in the same order."""
    return dtype.newbyteorder("=") if dtype.byteorder not in "=|" else dtype


def _to_host(name: Name, leaf: Any) -> Any:
    """One leaf as the file holds it (after ``device_get``): an array, a Python number,
    or ``None`` / ``{}`` for an empty subtree."""
    if _empty(leaf):
        return None if leaf is None else {}
    if _is_number(leaf):
        if isinstance(leaf, int) and not -(2**63) <= leaf < 2**64:
            raise ValueError(f"state leaf {_show(name)} = {leaf} does not fit in 64 bits")
        return leaf
    if not isinstance(leaf, jax.Array | np.ndarray | np.generic):
        raise ValueError(
            f"state leaf {_show(name)} must be an array or a number, got {type(leaf).__name__}"
        )
    if isinstance(leaf, jax.Array) and _is_key(leaf):  # (only jax arrays hold keys)
        leaf = jax.random.key_data(leaf)
    if not _storable(leaf.dtype):
        raise ValueError(f"state leaf {_show(name)} has dtype {leaf.dtype}, which cannot be stored")
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        from jax.experimental import multihost_utils

        # A collective: every process must save (each then writes the whole tree).
        leaf = multihost_utils.process_allgather(leaf, tiled=True)
    return leaf


def _nest(names: list[Name], leaves: list[Any], what: str) -> Any:
    """The nested dict the file holds (a bare leaf as itself, as flax writes it)."""
    if names == [()]:
        return leaves[0]
    root: dict[str, Any] = {}
    for name, leaf in zip(names, leaves, strict=True):
        node = root
        for part in name[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        if not isinstance(node, dict) or name[-1] in node:
            raise ValueError(
                f"{what} has two leaves named {_show(name)} (e.g. dict keys 1 and '1'); "
                "a checkpoint needs distinct names"
            )
        node[name[-1]] = leaf
    return root


def _flatten_saved(tree: Any, prefix: Name = ()) -> dict[Name, Any]:
    """The file's nested dict as {name: value}; ``None`` and empty dicts (written by
    older versions for ``None`` and empty containers) hold nothing."""
    if not isinstance(tree, dict):
        return {} if tree is None else {prefix: tree}
    out: dict[Name, Any] = {}
    for key, value in tree.items():
        out.update(_flatten_saved(value, (*prefix, str(key))))
    return out


# -- restoring one leaf ----------------------------------------------------------------


def _describe(value: Any) -> str:
    if _is_number(value):
        return f"the Python {type(value).__name__} {value!r}"
    return f"{value.dtype}{list(value.shape)}"


def _kind_fits(saved: np.dtype, like: Any) -> bool:
    """Whether a scalar of dtype ``saved`` may become ``like``'s type without losing meaning."""
    if like is bool or like == np.bool_:
        return saved == np.bool_
    if saved == np.bool_:
        return False
    if like is int or jnp.issubdtype(like, np.integer):
        return jnp.issubdtype(saved, np.integer)
    if like is float or jnp.issubdtype(like, np.floating):
        return jnp.issubdtype(saved, np.integer) or jnp.issubdtype(saved, np.floating)
    return True  # complex takes any number


_LIKE_ARRAYS = (jax.Array, np.ndarray, np.generic, jax.ShapeDtypeStruct)


def _restore(where: str, name: Name, saved: Any, like: Any) -> Any:
    """``saved`` (from the file) in the type, dtype and placement of ``like``."""
    if _is_key(like):
        if isinstance(like, jax.Array):  # the data's sharding places the restored keys
            data_like, impl = jax.random.key_data(like), jax.random.key_impl(like)
        else:  # a jax.ShapeDtypeStruct
            data_like = jax.eval_shape(jax.random.key_data, like)
            impl = jax.random.key_impl(jnp.zeros((), like.dtype))
        data = _restore(where, name, saved, data_like)
        return jax.random.wrap_key_data(data, impl=impl)
    if not isinstance(saved, (*_SCALARS, np.ndarray, np.generic)):
        raise ValueError(f"{where}: entry {_show(name)} is not an array (a {type(saved).__name__})")
    if _is_number(like):
        # Python numbers (flax's TrainState.step) take any 0-d number of their kind:
        # a jitted step makes them int32 arrays, a fresh state has a Python int.
        value = np.asarray(saved)
        if value.shape != () or not _kind_fits(value.dtype, type(like)):
            raise ValueError(
                f"{where}: entry {_show(name)} is {_describe(saved)} in the checkpoint "
                f"but the Python {type(like).__name__} {like!r} in like_state"
            )
        base = next(t for t in _SCALARS if isinstance(like, t))
        return base(value.item())
    dtype, shape = _native(np.dtype(like.dtype)), tuple(like.shape)
    if _is_number(saved):
        # A Python number in the file (a flax state's step) fills a 0-d array of its
        # kind; an integer must fit the dtype exactly.
        fits = shape == () and _kind_fits(np.asarray(saved).dtype, dtype)
        # (an integer kind that fits means a Python int: isinstance only tells mypy)
        if fits and isinstance(saved, int) and jnp.issubdtype(dtype, np.integer):
            fits = int(jnp.iinfo(dtype).min) <= saved <= int(jnp.iinfo(dtype).max)
        if not fits:
            raise ValueError(
                f"{where}: entry {_show(name)} is {_describe(saved)} in the checkpoint "
                f"but {dtype}{list(shape)} in like_state"
            )
        value = np.asarray(saved).astype(dtype)
    else:
        value = np.asarray(saved)
        if value.shape != shape or value.dtype != dtype:
            raise ValueError(
                f"{where}: entry {_show(name)} is {_describe(value)} in the checkpoint "
                f"but {dtype}{list(shape)} in like_state"
            )
    if isinstance(like, np.generic):
        return like.dtype.type(value)
    if isinstance(like, np.ndarray):
        return np.array(value, dtype=like.dtype)
    # Keep the like's placement when it was chosen: a sharding over several devices or
    # processes, an array committed to its device, a ShapeDtypeStruct's sharding. An
    # uncommitted like gives an uncommitted array, free to join any computation.
    sharding = getattr(like, "sharding", None)
    chosen = isinstance(like, jax.ShapeDtypeStruct) or getattr(like, "committed", False)
    if sharding is not None and (
        chosen or not sharding.is_fully_addressable or len(sharding.device_set) > 1
    ):
        return jax.make_array_from_callback(shape, sharding, lambda index: value[index])
    return jnp.asarray(value)


# -- the public functions ------------------------------------------------------------

#: the file that marks a directory as a purelearn directory (orbax) checkpoint
DIRECTORY_MARKER = "purelearn-checkpoints.json"


def _is_directory_checkpoint(path: str) -> bool:
    """A path ending in a separator, or a directory a directory checkpoint was saved to."""
    seps = tuple(s for s in (os.sep, os.altsep) if s)
    return path.endswith(seps) or os.path.isfile(os.path.join(path, DIRECTORY_MARKER))


def save_checkpoint(path: str | os.PathLike[str], state: Any) -> None:
    """Write ``state`` (any pytree of arrays and numbers) to ``path`` atomically.

    The leaves (typed PRNG keys as their data, sharded arrays gathered to the
    host) are stored under their pytree paths in a msgpack payload behind a
    header and its SHA-256 digest. The bytes go to a locked temporary file in
    the same directory, are flushed to disk, and replace ``path`` in one
    ``os.replace``: a crash mid-write leaves the previous checkpoint intact,
    and the next save to ``path`` removes the crashed save's temporary file.
    With several processes, every process must call it (arrays spanning
    processes are gathered collectively) and each writes the whole state.

    Args:
      path: the file to write (its directory must exist).
      state: a pytree whose leaves are arrays (JAX or NumPy, any numeric dtype
        or bool, typed PRNG keys) or Python numbers.

    Raises:
      ValueError: ``path`` is a directory or its directory is missing; a leaf
        is not an array or a number; two leaves have the same name.

    Example:
      >>> import os, tempfile, jax.numpy as jnp
      >>> path = os.path.join(tempfile.mkdtemp(), "state.ckpt")
      >>> save_checkpoint(path, {"w": jnp.ones(3), "step": 7})
      >>> load_checkpoint(path, {"w": jnp.zeros(3), "step": 0})
      {'step': 7, 'w': Array([1., 1., 1.], dtype=float32)}
    """
    path = _checks.file_path("path", path)
    if _is_directory_checkpoint(path):
        _save_directory(path, state)
        return
    if os.path.isdir(path):
        raise ValueError(f"path {path!r} is a directory; give a file name for the checkpoint")
    directory, name = os.path.split(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ValueError(f"path {path!r}: its directory {directory!r} does not exist")
    names, leaves, _ = _entries(state)
    # One device_get for all leaves: the transfers overlap.
    host = jax.device_get([_to_host(n, leaf) for n, leaf in zip(names, leaves, strict=True)])
    host = [x if _is_number(x) or _empty(x) else np.asarray(x, _native(x.dtype)) for x in host]
    payload = serialization.msgpack_serialize(_nest(names, host, "state"), in_place=True)
    digest = hashlib.sha256(payload).hexdigest().encode()

    _remove_stale_temps(directory, name)
    fd, tmp = _files.open_locked_temp(directory, _temp_pattern(name)[0], _TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb", closefd=False) as f:
            f.write(_MAGIC + digest + b"\n" + payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        _files.close_temp(tmp, fd)  # a failed write's temporary goes; a renamed file stays
    _files.fsync_directory(directory)


def load_checkpoint(path: str | os.PathLike[str], like_state: Any) -> Any:
    """Read a checkpoint written by :func:`save_checkpoint`.

    ``like_state`` gives the structure, shapes, dtypes and placement of the
    result: e.g. a freshly created :class:`TrainState`, ``nnx.state(model)``,
    or the tree of ``jax.ShapeDtypeStruct`` from ``jax.eval_shape``. Each leaf
    comes back as the kind of its ``like_state`` leaf: JAX arrays (with the
    like's sharding when it spans several devices or is committed), NumPy
    arrays, or Python numbers (which take any 0-d number of their kind, as
    flax and orbax do, so a flax ``TrainState`` with a Python-int ``step``
    loads a jitted state's int32 ``step``). Arrays must match in shape and
    dtype exactly.

    Raises:
      FileNotFoundError: there is no file at ``path``.
      ValueError: ``path`` is a directory; the file is not a checkpoint, is
        truncated or corrupt; it holds an entry ``like_state`` lacks or lacks
        one it has (both named); a leaf differs in shape or dtype. Nothing is
        half-loaded.
    """
    path = _checks.file_path("path", path)
    return _load(path, like_state)


def _load(path: str, like_state: Any) -> Any:
    names, likes, treedef = _entries(like_state)
    _nest(names, likes, "like_state")  # the same check of distinct names as at saving
    for name, like in zip(names, likes, strict=True):
        if not (_empty(like) or _is_number(like) or isinstance(like, _LIKE_ARRAYS)):
            raise ValueError(
                f"like_state leaf {_show(name)} must be an array, a jax.ShapeDtypeStruct "
                f"or a number, got {type(like).__name__}"
            )
    if _is_directory_checkpoint(path):
        return _load_directory(path, names, likes, treedef)[0]
    if os.path.isdir(path):
        raise ValueError(f"path {path!r} is a directory, not a checkpoint file")
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(_MAGIC):
        raise ValueError(f"{path} is not a purelearn checkpoint (bad header)")
    digest, _, payload = data[len(_MAGIC) :].partition(b"\n")
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise ValueError(f"{path} is corrupt or truncated: its SHA-256 digest does not match")
    try:
        tree = serialization.msgpack_restore(payload)
    except Exception as err:  # msgpack raises several types for a malformed payload
        raise ValueError(f"{path} is corrupt: its payload cannot be decoded ({err})") from err
    saved = _flatten_saved(tree)
    _check_same_names(str(path), saved, names, likes)
    leaves = [
        like if _empty(like) else _restore(path, n, saved[n], like)
        for n, like in zip(names, likes, strict=True)
    ]
    return jax.tree_util.tree_unflatten(treedef, leaves)


# -- directory checkpoints: orbax, every process writing its own shards ----------------

_DIRECTORY_FORMAT = "purelearn-orbax-v1"


def _as_words(a: Any) -> Any:
    """An array's bits as unsigned words (NumPy or jnp, whichever ``a`` is)."""
    xp = np if isinstance(a, np.ndarray | np.generic) else jnp
    if jnp.issubdtype(a.dtype, np.complexfloating):
        return xp.stack([_as_words(xp.real(a)), _as_words(xp.imag(a))])
    if a.dtype == np.bool_ or a.dtype.itemsize < 1 or np.dtype(a.dtype).kind == "V":
        return a.astype(xp.uint8).astype(xp.uint32)
    width = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint32}[a.dtype.itemsize]
    words: np.ndarray | jax.Array
    if xp is np:
        words = np.ascontiguousarray(a).view(width)
    else:
        words = jax.lax.bitcast_convert_type(a, width)
    return words.astype(xp.uint32)


def _weighted_sum(words: Any) -> Any:
    """A position-weighted sum mod 2**32 (odd weights: any one changed word shows)."""
    xp = np if isinstance(words, np.ndarray) else jnp
    flat = words.reshape(-1)
    weights = xp.arange(flat.shape[0], dtype=xp.uint32) * xp.uint32(2654435761) | xp.uint32(1)
    return (flat * weights).sum(dtype=xp.uint32)


@jax.jit
def _device_checksums(arrays: list[jax.Array]) -> list[jax.Array]:
    return [_weighted_sum(_as_words(a)) for a in arrays]


def _checksums(arrays: list[Any]) -> list[int]:
    """Layout-independent checksums of the arrays' global values: one program over the
    JAX arrays (a collective for arrays spanning processes), NumPy for NumPy arrays."""
    from purelearn import distributed

    on_device = [i for i, a in enumerate(arrays) if isinstance(a, jax.Array)]
    sums: list[int] = [0] * len(arrays)
    if on_device:
        device_sums = _device_checksums([arrays[i] for i in on_device])
        for i, value in zip(on_device, distributed.to_host(device_sums), strict=True):
            sums[i] = int(value)
    for i, a in enumerate(arrays):
        if not isinstance(a, jax.Array):
            with np.errstate(over="ignore"):
                sums[i] = int(_weighted_sum(_as_words(np.asarray(a))))
    return sums


def _manager(directory: str, *, keep: int | None = 1) -> CheckpointManager:
    """An orbax manager of ``directory``'s steps that keeps the last ``keep`` (None: all)."""
    import orbax.checkpoint as ocp
    from orbax.checkpoint import checkpoint_managers as policies

    options = ocp.CheckpointManagerOptions(
        preservation_policy=policies.LatestN(keep),
        enable_async_checkpointing=False,
        cleanup_tmp_directories=True,
        create=True,
        # A deleted step is first renamed out of the way (atomic), so a process killed
        # while deleting never leaves a half-deleted step that looks finished.
        todelete_subdir=_DELETED,
    )
    _remove_deleted(directory)
    return ocp.CheckpointManager(
        os.path.abspath(directory), options=options, item_names=("state", "meta")
    )


#: where pruned steps wait to be removed (not a step name: orbax never lists it)
_DELETED = "purelearn-deleted"


def _remove_deleted(directory: str) -> None:
    """Remove pruned steps (also what a killed prune left behind); process 0 only."""
    import shutil

    trash = os.path.join(os.path.abspath(directory), _DELETED)
    if jax.process_index() == 0 and os.path.isdir(trash):
        shutil.rmtree(trash, ignore_errors=True)


def _next_step(manager: Any) -> int:
    """One past the newest step, as process 0 sees it (every process must agree)."""
    latest = manager.latest_step()
    step = 0 if latest is None else latest + 1
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        step = int(multihost_utils.broadcast_one_to_all(np.int32(step)))
    return step


def _save_directory(
    path: str,
    state: Any,
    *,
    manager: Any = None,
    step: int | None = None,
    metrics: Any = None,
    run: Any = None,
) -> int:
    """Save ``state`` as a new step of the directory checkpoint ``path``; its step."""
    import orbax.checkpoint as ocp

    names, leaves, _ = _entries(state)
    _nest(names, leaves, "state")
    arrays: list[Any] = []
    entries: list[dict[str, Any]] = []
    for name, leaf in zip(names, leaves, strict=True):
        if _empty(leaf):
            entries.append({"kind": "empty", "value": None if leaf is None else {}})
            continue
        if _is_number(leaf):
            _to_host(name, leaf)  # the 64-bit check
            value = [leaf.real, leaf.imag] if isinstance(leaf, complex) else leaf
            entries.append({"kind": type(leaf).__name__, "value": value})
            continue
        if not isinstance(leaf, jax.Array | np.ndarray | np.generic):
            _to_host(name, leaf)  # raises the file format's error
        impl = None
        if _is_key(leaf):
            impl = str(jax.random.key_impl(leaf))
            leaf = jax.random.key_data(leaf)
        if not _storable(leaf.dtype):
            raise ValueError(
                f"state leaf {_show(name)} has dtype {leaf.dtype}, which cannot be stored"
            )
        if isinstance(leaf, np.generic):
            leaf = np.asarray(leaf)
        entries.append({"kind": "array", "index": len(arrays), "key": impl})
        arrays.append(leaf)
    meta = {
        "format": _DIRECTORY_FORMAT,
        "names": [list(n) for n in names],
        "entries": entries,
        "shapes": [list(a.shape) for a in arrays],
        "dtypes": [np.dtype(a.dtype).name for a in arrays],
        "checksums": _checksums(arrays),
        "metrics": metrics,
        "run": run,
    }
    own = manager is None
    if own:
        if os.path.exists(path) and not os.path.isdir(path):
            raise ValueError(f"path {path!r} is a file, not a checkpoint directory")
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise ValueError(f"path {path!r}: its directory {parent!r} does not exist")
        manager = _manager(path)
    try:
        # The marker goes first: once any process returns from a save, the others may
        # be killed, and a directory of complete steps without its marker would read
        # as "a directory, not a checkpoint file" (steps themselves are atomic).
        marker = os.path.join(path, DIRECTORY_MARKER)
        if jax.process_index() == 0 and not os.path.exists(marker):
            os.makedirs(path, exist_ok=True)
            with open(marker + ".tmp", "w") as f:
                json.dump({"format": _DIRECTORY_FORMAT}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(marker + ".tmp", marker)
            _files.fsync_directory(path)
        if step is None:
            step = _next_step(manager)
        manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeSave(arrays), meta=ocp.args.JsonSave(meta)
            ),
            metrics=metrics,
            force=True,
        )
        manager.wait_until_finished()
    finally:
        if own:
            manager.close()
    _remove_deleted(path)  # the step the keep policy pruned
    return step


def _like_target(like: Any) -> tuple[Any, Any]:
    """What orbax restores one array leaf as: a placed ShapeDtypeStruct and its restore
    args (JAX likes), or a NumPy array (NumPy likes, Python numbers)."""
    import orbax.checkpoint as ocp

    if _is_key(like):
        data = (
            jax.eval_shape(jax.random.key_data, like)
            if not isinstance(like, jax.Array)
            else (jax.random.key_data(like))
        )
        return _like_target(data)
    if isinstance(like, jax.Array | jax.ShapeDtypeStruct):
        sharding = getattr(like, "sharding", None)
        if sharding is None:
            sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.ShapeDtypeStruct(like.shape, like.dtype, sharding=sharding)
        return target, ocp.ArrayRestoreArgs(sharding=sharding)
    return None, ocp.RestoreArgs(restore_type=np.ndarray)


def _read_meta(manager: Any, step: int, where: str) -> dict[str, Any]:
    """The JSON metadata of ``step``; ``CorruptCheckpoint`` when orbax cannot read it."""
    import orbax.checkpoint as ocp

    try:
        restored = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    except Exception as err:  # orbax raises many types for damaged files: all mean corrupt
        raise CorruptCheckpoint(f"{where} is corrupt: its metadata cannot be read ({err})") from err
    meta: dict[str, Any] = restored["meta"]
    return meta


def _load_directory(
    path: str,
    names: list[Name],
    likes: list[Any],
    treedef: Any,
    *,
    step: int | None = None,
    prefix: Name | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Restore the newest (or ``step``'s) state of the directory checkpoint ``path``, and
    its metadata. ``prefix``: restore only the entries under it (default: a run record's
    ``("state",)``, else everything)."""
    import orbax.checkpoint as ocp

    if not os.path.isdir(path):
        raise FileNotFoundError(f"no checkpoint directory at {path!r}")
    manager = _manager(path, keep=None)
    try:
        if step is None:
            step = manager.latest_step()
        steps = sorted(manager.all_steps())
        if step is None or step not in steps:
            raise FileNotFoundError(
                f"{path} holds no finished checkpoint"
                + ("" if step is None else f" of step {step}; its steps are {steps}")
            )
        where = f"{path} (step {step})"
        meta = _read_meta(manager, step, where)
        if not isinstance(meta, dict) or meta.get("format") != _DIRECTORY_FORMAT:
            raise ValueError(f"{where} is not a purelearn checkpoint (no {_DIRECTORY_FORMAT})")
        if prefix is None:
            prefix = ("state",) if meta.get("run") is not None else ()
        cut = len(prefix)
        saved = {
            tuple(n)[cut:]: e
            for n, e in zip(meta["names"], meta["entries"], strict=True)
            if e["kind"] != "empty" and tuple(n)[:cut] == prefix
        }
        _check_same_names(where, saved, names, likes)
        plan, targets, restore_args = [], [], []
        for name, like in zip(names, likes, strict=True):
            if _empty(like):
                continue
            entry = saved[name]
            if entry["kind"] != "array":
                continue
            i = entry["index"]
            shape, dtype = tuple(meta["shapes"][i]), np.dtype(meta["dtypes"][i])
            if _is_key(like) != (entry["key"] is not None):
                raise ValueError(
                    f"{where}: entry {_show(name)} is "
                    f"{'a PRNG key' if entry['key'] else f'{dtype}{list(shape)}'} in the "
                    f"checkpoint but {'a PRNG key' if _is_key(like) else 'not one'} in like_state"
                )
            target, args = _like_target(like)
            if target is not None and (target.shape != shape or target.dtype != dtype):
                raise ValueError(
                    f"{where}: entry {_show(name)} is {dtype}{list(shape)} in the checkpoint "
                    f"but {target.dtype}{list(target.shape)} in like_state"
                )
            if target is None:
                target = np.zeros(shape, dtype)
            plan.append((name, i))
            targets.append(target)
            restore_args.append(args)
        try:
            restored = manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.PyTreeRestore(
                        _placeholders(meta, plan, targets),
                        restore_args=_placeholders(meta, plan, restore_args),
                    )
                ),
            )["state"]
        except Exception as err:
            raise CorruptCheckpoint(f"{where} is corrupt or unreadable: {err}") from err
    finally:
        manager.close()
    values = {name: restored[i] for name, i in plan}
    sums = _checksums([values[name] for name, _ in plan])
    for (name, i), got in zip(plan, sums, strict=True):
        if got != meta["checksums"][i]:
            raise CorruptCheckpoint(
                f"{where} is corrupt: the checksum of entry {_show(name)} does not match"
            )
    leaves = []
    for name, like in zip(names, likes, strict=True):
        if _empty(like):
            leaves.append(like)
            continue
        entry = saved[name]
        if entry["kind"] != "array":
            value = entry["value"]
            if entry["kind"] == "complex":
                value = complex(*value)
            leaves.append(_restore(where, name, value, like))
        elif isinstance(values[name], jax.Array):
            value = values[name]
            if _is_key(like):
                value = jax.random.wrap_key_data(
                    value,
                    impl=jax.random.key_impl(
                        like if isinstance(like, jax.Array) else jnp.zeros((), like.dtype)
                    ),
                )
            leaves.append(value)
        else:
            leaves.append(_restore(where, name, np.asarray(values[name]), like))
    return jax.tree_util.tree_unflatten(treedef, leaves), meta


def _placeholders(
    meta: dict[str, Any], plan: list[tuple[Name, int]], values: list[Any]
) -> list[Any]:
    """A list as long as the saved arrays, ``values`` at the planned indices; the rest
    (not needed) are restored as small NumPy arrays of their saved shapes."""
    import orbax.checkpoint as ocp

    out: list[Any] = [None] * len(meta["shapes"])
    for (_, i), value in zip(plan, values, strict=True):
        out[i] = value
    for i, value in enumerate(out):
        if value is None:
            is_args = values and not isinstance(values[0], jax.ShapeDtypeStruct | np.ndarray)
            out[i] = (
                ocp.RestoreArgs(restore_type=np.ndarray)
                if is_args
                else np.zeros(meta["shapes"][i], meta["dtypes"][i])
            )
    return out


def _check_same_names(
    where: str, saved: dict[Name, Any], names: list[Name], likes: list[Any]
) -> None:
    wanted = [n for n, like in zip(names, likes, strict=True) if not _empty(like)]
    extra = sorted(set(saved) - set(wanted))
    missing = [n for n in wanted if n not in saved]
    if extra or missing:

        def listed(names: list[Name]) -> str:
            more = f" and {len(names) - 10} more" if len(names) > 10 else ""
            return ", ".join(map(_show, names[:10])) + more

        parts = []
        if extra:
            parts.append(f"it has entries like_state lacks: {listed(extra)}")
        if missing:
            parts.append(f"it lacks like_state's entries {listed(missing)}")
        raise ValueError(f"{where} does not match the structure of like_state: " + "; ".join(parts))


def _step_of(state: Any, epoch: int) -> int:
    """The step a state is saved under: its own ``step`` count when it has one."""
    step = getattr(state, "step", None)
    if step is None or np.ndim(step) != 0:
        return int(epoch)
    return int(np.asarray(distributed.to_host(step)))  # replicated across processes too


class Checkpoints:
    """A directory of checkpoints that keeps the newest ``keep`` and the best: a ``fit`` callback.

    ``fit(..., callback=Checkpoints("run/", keep=3, best="eval_accuracy"))``
    saves the state after every epoch (orbax, every process writing its own
    shards, each step committed atomically) under ``state.step``, the number
    of training steps it has taken (a state without a ``step`` is saved
    under the callback's epoch), so the steps of a resumed run
    (``fit(state=s)``) follow those of the run it resumes. Then it deletes
    the steps that are neither among the newest ``keep`` nor the best by
    ``best`` (a history metric, larger is better unless ``mode="min"``).
    Saving a step that exists replaces it (a run redone from an older
    checkpoint). It never stops training (returns False). Restore with
    :meth:`restore` (default: the newest step).

    Example:
      >>> import os, tempfile, jax.numpy as jnp
      >>> ckpts = Checkpoints(os.path.join(tempfile.mkdtemp(), "run"), keep=1, best="loss",
      ...                     mode="min")
      >>> for epoch, loss in enumerate([3.0, 1.0, 2.0]):
      ...     _ = ckpts(epoch, {"w": jnp.full(2, loss)}, {"loss": [loss]})
      >>> ckpts.steps(), ckpts.best_step()
      ([1, 2], 1)
      >>> ckpts.restore({"w": jnp.zeros(2)}, step=1)["w"]
      Array([1., 1.], dtype=float32)
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        keep: int = 3,
        best: str | None = None,
        mode: str = "max",
    ) -> None:
        self.directory: str = os.path.abspath(_checks.file_path("directory", directory))
        self.keep: int = _checks.positive_int("keep", keep)
        self.mode = _checks.choice("mode", mode, ("max", "min"))
        if best is not None and not isinstance(best, str):
            raise ValueError(f"best must be a history metric's name or None, got {best!r}")
        self.best = best
        parent = os.path.dirname(self.directory)
        if not os.path.isdir(parent):
            raise ValueError(f"directory {directory!r}: its parent {parent!r} does not exist")

    def _manager(self) -> Any:
        return _manager(self.directory, keep=None)

    def _metric(self, manager: Any, step: int) -> float | None:
        try:
            meta = _read_meta(manager, step, f"{self.directory} (step {step})")
        except CorruptCheckpoint:  # an unreadable step has no metric: it is never the best
            return None
        value = (meta.get("metrics") or {}).get(self.best)
        return None if value is None else (value if self.mode == "max" else -value)

    def _best(self, manager: Any) -> int | None:
        steps = sorted(manager.all_steps())
        if self.best is None:
            return steps[-1] if steps else None
        scored = [(m, s) for s in steps if (m := self._metric(manager, s)) is not None]
        # the earliest of equally good steps
        return max(scored, key=lambda ms: (ms[0], -ms[1]))[1] if scored else None

    def __call__(self, epoch: int, state: Any, history: dict[str, list[float]]) -> bool:
        """Save ``state`` as step ``state.step`` (else ``epoch``), with the history's last
        values as metrics."""
        self._save(_step_of(state, epoch), state, history, None)
        return False

    def _save(self, step: int, tree: Any, history: dict[str, list[Any]], run: Any) -> None:
        """Save ``tree`` as ``step`` (replacing one that exists), then prune."""
        metrics = {
            k: float(v[-1])
            for k, v in history.items()
            if k not in ("step_loss", "epoch", "best_epoch") and v
        }
        if self.best is not None and self.best not in metrics:
            raise ValueError(f"best={self.best!r} is not in the history: {sorted(metrics)}")
        manager = self._manager()
        try:
            if step in manager.all_steps():
                manager.delete(step)
            _save_directory(
                self.directory, tree, manager=manager, step=step, metrics=metrics, run=run
            )
            steps = sorted(manager.all_steps())
            keep = set(steps[-self.keep :]) | {self._best(manager)}
            for old in steps:
                if old not in keep:
                    manager.delete(old)
        finally:
            manager.close()
        _remove_deleted(self.directory)

    def save_record(
        self, tree: Any, *, step: int, history: dict[str, list[Any]], run: dict[str, Any]
    ) -> None:
        """Save a resumable run's record as ``step``: ``tree`` holds the state under
        ``"state"`` (what :meth:`restore` reads) beside the rest of what decides the run's
        future (``fit`` puts early stopping's state and the best state there), and ``run``
        (JSON: the epoch count, the history so far) goes into the step's metadata."""
        self._save(int(step), tree, history, run)

    def latest_record(self, like_tree: Any) -> tuple[Any, dict[str, Any]] | None:
        """The newest readable run record, as ``(tree, run)``, or None when the directory
        holds none. A step whose bytes are damaged is skipped (with a warning) for the
        next newest; a record of another structure (another model or optimizer) is a
        ``ValueError``."""
        import warnings

        names, likes, treedef = _entries(like_tree)
        for step in reversed(self.steps()):
            where = f"{self.directory} (step {step})"
            try:
                manager = self._manager()
                try:
                    is_record = _read_meta(manager, step, where).get("run") is not None
                finally:
                    manager.close()
                if is_record:
                    tree, meta = _load_directory(
                        self.directory, names, likes, treedef, step=step, prefix=()
                    )
            except CorruptCheckpoint as err:
                warnings.warn(f"skipping a damaged checkpoint: {err}", stacklevel=2)
                continue
            except FileNotFoundError:  # pruned by another process meanwhile
                continue
            if not is_record:
                raise ValueError(
                    f"{where} holds a state saved by the Checkpoints callback, not a "
                    f"resumable run record: resume it with "
                    f"fit(state=checkpoints.restore(like_state)), or use another directory"
                )
            return tree, meta["run"]
        return None

    def steps(self) -> list[int]:
        """The steps on disk, oldest first."""
        manager = self._manager()
        try:
            return sorted(manager.all_steps())
        finally:
            manager.close()

    def best_step(self) -> int | None:
        """The best step by ``best`` (the latest without ``best``)."""
        manager = self._manager()
        try:
            return self._best(manager)
        finally:
            manager.close()

    def restore(self, like_state: Any, *, step: int | None = None) -> Any:
        """The state of ``step`` (default: the newest), as :func:`load_checkpoint` gives it
        (from a run record of ``fit(checkpoints=...)``: its state)."""
        names, likes, treedef = _entries(like_state)
        return _load_directory(self.directory, names, likes, treedef, step=step)[0]
