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
import os
import re
import secrets
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from purelearn import _checks

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

__all__ = ["save_checkpoint", "load_checkpoint"]

_MAGIC = b"purelearn-checkpoint-v1\n"
_SCALARS = (bool, int, float, complex)
_TEMP_SUFFIX = ".tmp"


# -- paths and temporary files ------------------------------------------------------


def _temp_pattern(name: str) -> tuple[str, re.Pattern[str]]:
    """The temporary-file prefix for target ``name`` and a regex matching only those files."""
    # Cut to 180 bytes, so that the temporary name stays under NAME_MAX (255 bytes).
    prefix = f".{os.fsdecode(os.fsencode(name)[:180])}.ckpt-"
    return prefix, re.compile(re.escape(prefix) + r"[0-9a-f]{16}" + re.escape(_TEMP_SUFFIX))


def _same_file(path: str, fd: int) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _remove_stale_temps(directory: str, name: str) -> None:
    """Delete temporary files of earlier saves to ``name`` whose writer is gone.

    A live writer holds an exclusive ``flock`` on its file until it has moved
    it into place; a lock we can take means the writer died (the kernel drops
    the locks of a killed process).
    """
    if fcntl is None:
        return
    _, pattern = _temp_pattern(name)
    try:
        with os.scandir(directory) as entries:
            candidates = [e.path for e in entries if pattern.fullmatch(e.name)]
    except OSError:  # an unlistable directory: nothing we can clean
        return
    for tmp in candidates:
        try:
            fd = os.open(tmp, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        except OSError:  # gone already, or not ours to touch
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if _same_file(tmp, fd):
                os.unlink(tmp)
        except OSError:  # locked by a live writer (or no lock support): leave it
            pass
        finally:
            os.close(fd)


def _open_locked_temp(directory: str, name: str) -> tuple[int, str]:
    """Create and lock a new temporary file (mode 0o666 less the umask)."""
    prefix, _ = _temp_pattern(name)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = os.path.join(directory, prefix + secrets.token_hex(8) + _TEMP_SUFFIX)
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        if fcntl is None:
            return fd, tmp
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a file system without locks: cleaners cannot lock it either
            return fd, tmp
        # Another saver may have taken our file for debris between open and flock.
        if _same_file(tmp, fd):
            return fd, tmp
        os.close(fd)
    raise OSError(f"could not create a temporary file for {name!r} in {directory}")


def _fsync_directory(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not possible everywhere (e.g. Windows); the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


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
    if _is_key(leaf):
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
        if fits and jnp.issubdtype(dtype, np.integer):
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


def save_checkpoint(path: str | os.PathLike, state: Any) -> None:
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
    fd, tmp = _open_locked_temp(directory, name)
    try:
        with os.fdopen(fd, "wb", closefd=False) as f:
            f.write(_MAGIC + digest + b"\n" + payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if _same_file(tmp, fd):
            os.unlink(tmp)
        raise
    finally:
        os.close(fd)  # only now: the lock tells cleaners this file is live
    _fsync_directory(directory)


def load_checkpoint(path: str | os.PathLike, like_state: Any) -> Any:
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
    names, likes, treedef = _entries(like_state)
    _nest(names, likes, "like_state")  # the same check of distinct names as at saving
    for name, like in zip(names, likes, strict=True):
        if not (_empty(like) or _is_number(like) or isinstance(like, _LIKE_ARRAYS)):
            raise ValueError(
                f"like_state leaf {_show(name)} must be an array, a jax.ShapeDtypeStruct "
                f"or a number, got {type(like).__name__}"
            )
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
        raise ValueError(f"{path} does not match the structure of like_state: " + "; ".join(parts))
    leaves = [
        like if _empty(like) else _restore(path, n, saved[n], like)
        for n, like in zip(names, likes, strict=True)
    ]
    return jax.tree_util.tree_unflatten(treedef, leaves)
