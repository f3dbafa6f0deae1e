"""Many processes, one training run: helpers around ``jax.distributed``.

JAX runs a job as several processes (one per host, or per GPU) joined by
``jax.distributed.initialize``; every process runs the same program, and an
array may span the devices of all of them (a *global* array). purelearn's
engine (:func:`~purelearn.training.make_train_step`, ``fit``, ``train_run``,
``evaluate``) is data parallel over such arrays: give it the training set as
global arrays sharded over a mesh of every device, and it replicates the
state over that mesh, shuffles the global set from the key, shards every
batch over the mesh, and computes gradients, batch-norm statistics and
metrics over the global batch.

What each process loads: with ``n`` examples in the global data set and
``P = jax.process_count()`` processes, process ``i`` loads the rows
:func:`process_rows` gives, the ``i``-th contiguous block of ``n // P`` rows
(``n`` divisible by the number of devices), and turns them into the global
set with :func:`global_batch`. The global set is the processes' blocks in
process order, so a run over ``P`` processes sees exactly the arrays (and
takes exactly the steps) of a single process holding all ``n`` rows.

Example (one process; the same lines run in every process of a job)::

    mesh = pl.distributed.data_mesh()
    rows = pl.distributed.process_rows(len(x_all))
    x, y = pl.distributed.global_batch((x_all[rows], y_all[rows]), mesh)
    state, history = pl.fit(model, opt, (x, y), epochs=5, batch_size=64, key=0)

:func:`launch_local` starts a script as several local processes (CPU
devices, ``127.0.0.1``), for trying this on one machine and for tests; the
script calls :func:`initialize`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from purelearn import _checks

__all__ = [
    "initialize",
    "data_mesh",
    "process_rows",
    "global_batch",
    "replicate",
    "to_host",
    "launch_local",
    "LaunchResult",
]

# The environment launch_local hands each process (read by initialize).
_ENV_COORDINATOR = "PURELEARN_COORDINATOR"
_ENV_PROCESSES = "PURELEARN_NUM_PROCESSES"
_ENV_PROCESS_ID = "PURELEARN_PROCESS_ID"


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    **kwargs: Any,
) -> None:
    """Join this process to the job: ``jax.distributed.initialize`` with CPU collectives.

    Without arguments it takes the address, count and id that
    :func:`launch_local` sets in the environment, else lets JAX detect the
    cluster (SLURM, Open MPI, Cloud TPU, GKE); with arguments they go to
    ``jax.distributed.initialize`` as they are (``kwargs`` too). On the CPU
    backend it first selects the gloo collectives, without which arrays
    spanning processes cannot be reduced. Call it before any other JAX call.
    """
    if coordinator_address is not None and not (
        isinstance(coordinator_address, str) and coordinator_address
    ):
        raise ValueError(
            f"coordinator_address must be 'host:port' or None, got {coordinator_address!r}"
        )
    if num_processes is not None:
        num_processes = _checks.positive_int("num_processes", num_processes)
    if process_id is not None:
        process_id = _checks.nonnegative_int("process_id", process_id)
        if num_processes is not None and process_id >= num_processes:
            raise ValueError(
                f"process_id must be in [0, num_processes={num_processes}), got {process_id}"
            )
    env = os.environ
    if coordinator_address is None and _ENV_COORDINATOR in env:
        coordinator_address = env[_ENV_COORDINATOR]
        num_processes = int(env[_ENV_PROCESSES])
        process_id = int(env[_ENV_PROCESS_ID])
    if os.environ.get("JAX_PLATFORMS", "").strip().lower() == "cpu" or (
        coordinator_address or ""
    ).startswith("127.0.0.1"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        **kwargs,
    )


def data_mesh(axis_name: str = "data", *, explicit: bool = False) -> Mesh:
    """A one-axis mesh of every device of every process, in process order.

    Process ``i``'s devices hold the ``i``-th block of a global array sharded
    over it, which is what :func:`process_rows` and :func:`global_batch`
    rely on. ``explicit=True`` makes the axis ``AxisType.Explicit`` (JAX's
    sharding in types); the default is ``Auto``.

    Example:
      >>> import purelearn as pl
      >>> mesh = pl.distributed.data_mesh()
      >>> mesh.axis_names, mesh.size == jax.device_count()
      (('data',), True)
    """
    if not isinstance(axis_name, str) or not axis_name:
        raise ValueError(f"axis_name must be a non-empty str, got {axis_name!r}")
    explicit = _checks.boolean("explicit", explicit)
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    kind = AxisType.Explicit if explicit else AxisType.Auto
    return Mesh(np.array(devices), (axis_name,), axis_types=(kind,))


def process_rows(n: int, mesh: Mesh | None = None) -> slice:
    """The rows of an ``n``-example global data set that this process loads.

    Process ``i`` of ``P`` loads ``slice(i * n // P, (i + 1) * n // P)``: its
    devices hold that block of a global array sharded over ``mesh`` (default
    :func:`data_mesh`). ``n`` must be divisible by the mesh's size, so that
    every device holds as many rows.

    Example:
      >>> import purelearn as pl
      >>> pl.distributed.process_rows(8)  # one process: all of it
      slice(0, 8, None)
    """
    n = _checks.positive_int("n", n)
    mesh = data_mesh() if mesh is None else _check_mesh(mesh)
    if n % mesh.size:
        raise ValueError(
            f"n = {n} rows cannot be split evenly over the mesh's {mesh.size} devices; "
            f"drop the last {n % mesh.size} rows"
        )
    devices = list(mesh.devices.flat)
    mine = [i for i, d in enumerate(devices) if d.process_index == jax.process_index()]
    if not mine or mine != list(range(mine[0], mine[-1] + 1)):
        raise ValueError(
            "this process's devices are not one contiguous block of the mesh; "
            "use pl.distributed.data_mesh()"
        )
    per_device = n // mesh.size
    return slice(mine[0] * per_device, (mine[-1] + 1) * per_device)


def _check_mesh(mesh: Any) -> Mesh:
    if not isinstance(mesh, Mesh):
        raise ValueError(f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    return mesh


def global_batch(local: Any, mesh: Mesh | None = None, *, axis_name: str | None = None) -> Any:
    """This process's rows (any pytree of arrays) as global arrays sharded over ``mesh``.

    ``jax.make_array_from_process_local_data`` with the leading axis split
    over ``axis_name`` (default: the mesh's first axis): the global array
    holds every process's rows, in process order. Every process must call it.

    Example:
      >>> import numpy as np, purelearn as pl
      >>> x = pl.distributed.global_batch(np.ones((8, 3), np.float32))
      >>> x.shape, len(x.sharding.device_set) == jax.device_count()
      ((8, 3), True)
    """
    mesh = data_mesh() if mesh is None else _check_mesh(mesh)
    axis_name = mesh.axis_names[0] if axis_name is None else axis_name
    if axis_name not in mesh.axis_names:
        raise ValueError(f"axis_name {axis_name!r} is not an axis of the mesh {mesh.axis_names}")
    sharding = NamedSharding(mesh, PartitionSpec(axis_name))
    local_devices = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)

    def one(x: Any) -> jax.Array:
        x = np.asarray(x)
        if x.ndim == 0 or x.shape[0] % max(local_devices, 1):
            raise ValueError(
                f"global_batch: this process's {x.shape[0] if x.ndim else 'scalar'} rows "
                f"cannot be split over its {local_devices} devices of the mesh"
            )
        out: jax.Array = jax.make_array_from_process_local_data(sharding, x)
        return out

    return jax.tree.map(one, local)


def _is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jax.numpy.issubdtype(x.dtype, jax.dtypes.prng_key)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """``tree`` (the same values in every process) replicated over every device of ``mesh``.

    Works across processes, where ``jax.device_put`` refuses shardings with
    other processes' devices; typed PRNG keys stay keys.
    """
    sharding = NamedSharding(_check_mesh(mesh), PartitionSpec())

    def one(x: Any) -> Any:
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x
        if _is_key(x):
            return jax.random.wrap_key_data(
                one(jax.random.key_data(x)), impl=jax.random.key_impl(x)
            )
        value = to_host(x)
        return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

    return jax.tree.map(one, tree)


def to_host(tree: Any) -> Any:
    """Every leaf's whole value as NumPy, in every process (global arrays gathered).

    Every process must call it when some leaf spans processes without being
    replicated (the gather is a collective).
    """

    def one(x: Any) -> Any:
        if _is_key(x):
            x = jax.random.key_data(x)
        if not isinstance(x, jax.Array) or x.is_fully_addressable:
            return np.asarray(x)
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(one, tree)


# -- a local launcher -----------------------------------------------------------------


class LaunchResult(NamedTuple):
    """One process's outcome: its exit code and its output."""

    returncode: int
    stdout: str
    stderr: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def launch_local(
    argv: Sequence[str],
    *,
    num_processes: int = 2,
    devices_per_process: int = 2,
    timeout: float = 300.0,
    env: dict[str, str] | None = None,
) -> list[LaunchResult]:
    """Run ``python *argv`` as ``num_processes`` processes of one job on this machine.

    Each process sees ``devices_per_process`` CPU devices and finds the
    others through a coordinator on ``127.0.0.1`` at a free port (nothing
    leaves the machine); the script joins with :func:`initialize`. All
    processes are killed when one fails (the rest would wait on it forever)
    or when ``timeout`` seconds pass, and always reaped.

    Returns:
      one :class:`LaunchResult` per process, in process order.
    """
    num_processes = _checks.positive_int("num_processes", num_processes)
    devices_per_process = _checks.positive_int("devices_per_process", devices_per_process)
    timeout = _checks.real("timeout", timeout)
    if not timeout > 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    if isinstance(argv, str | bytes | os.PathLike) or not all(
        isinstance(a, str | os.PathLike) for a in (argv if isinstance(argv, Sequence) else [None])
    ):
        raise ValueError(f"argv must be a list of str arguments (after python), got {argv!r}")
    argv = [os.fspath(a) for a in argv]
    if env is not None and not (
        isinstance(env, Mapping)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
    ):
        raise ValueError(f"env must be a dict of str to str or None, got {env!r}")
    base = dict(os.environ if env is None else env)
    base.update(
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}",
        **{_ENV_COORDINATOR: f"127.0.0.1:{_free_port()}", _ENV_PROCESSES: str(num_processes)},
    )
    logs = []
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(num_processes):
            out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
            logs.append((out, err))
            procs.append(
                subprocess.Popen(
                    [sys.executable, *argv],
                    stdout=out,
                    stderr=err,
                    stdin=subprocess.DEVNULL,
                    env={**base, _ENV_PROCESS_ID: str(i)},
                )
            )
        deadline = time.monotonic() + timeout
        while any(p.poll() is None for p in procs):
            if time.monotonic() > deadline or any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.05)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            p.wait()
    results = []
    for p, (out, err) in zip(procs, logs, strict=True):
        out.seek(0), err.seek(0)
        results.append(LaunchResult(p.returncode, out.read(), err.read()))
        out.close()
        err.close()
    return results


# -- the engine's data-parallel placement (used by purelearn.training) ---------------
# Not in __all__: what a user calls is above; these say how the engine lays out a
# training set split over devices and the state beside it.


def spans_processes(x: Any) -> bool:
    """Whether ``x`` is a concrete array some of whose shards live in other processes."""
    if not isinstance(x, jax.Array) or isinstance(x, jax.core.Tracer):
        return False
    return not x.is_fully_addressable


def data_sharding(x: Any) -> NamedSharding | None:
    """The sharding of a training set split over several devices along its examples:
    each batch is split the same way (data parallel). None for anything else."""
    sharding = getattr(x, "sharding", None) if isinstance(x, jax.Array) else None
    if isinstance(x, jax.core.Tracer) or not isinstance(sharding, NamedSharding):
        return None
    if len(sharding.device_set) < 2 or not sharding.spec or sharding.spec[0] is None:
        return None
    return NamedSharding(sharding.mesh, PartitionSpec(sharding.spec[0]))


def is_explicit(sharding: NamedSharding) -> bool:
    """Whether the mesh has explicit axes (shardings are part of the arrays' types)."""
    return any(t == AxisType.Explicit for t in sharding.mesh.axis_types)


def place(x: Any, sharding: NamedSharding | None) -> Any:
    """Inside jit: ``x`` laid out as ``sharding`` (explicit axes are resharded, auto
    ones constrained); as it is without one."""
    if sharding is None:
        return x
    if is_explicit(sharding):
        return jax.tree.map(lambda a: jax.sharding.reshard(a, sharding), x)
    return jax.lax.with_sharding_constraint(x, sharding)


def replicated(sharding: NamedSharding | None) -> NamedSharding | None:
    """The sharding that holds a whole copy on every device of ``sharding``'s mesh."""
    return None if sharding is None else NamedSharding(sharding.mesh, PartitionSpec())


def gather_rows(x: jax.Array, idx: jax.Array, sharding: NamedSharding | None) -> jax.Array:
    """The rows ``idx`` of the global set, split over the data axis like the set."""
    if sharding is None:
        return x[idx]
    if is_explicit(sharding):
        spec = PartitionSpec(sharding.spec[0], *([None] * (x.ndim - 1)))
        return x.at[idx].get(out_sharding=NamedSharding(sharding.mesh, spec))
    rows: jax.Array = jax.lax.with_sharding_constraint(x[idx], sharding)
    return rows


def replicate_for(tree: Any, x: Any) -> Any:
    """``tree`` (a training state living on one process) replicated over the mesh of a
    batch ``x`` that spans processes (a jitted step cannot mix the two) or whose mesh is
    explicit (the sharding of every gradient must be known from its types); as it is
    otherwise, and when it already spans the processes."""
    sharding = data_sharding(x)
    if sharding is None or not (spans_processes(x) or is_explicit(sharding)):
        return tree
    if all(spans_processes(a) for a in jax.tree.leaves(tree)):
        return tree
    return replicate(tree, _check_mesh(sharding.mesh))


@jax.jit
def _min_max(y: jax.Array) -> tuple[jax.Array, jax.Array]:
    return y.min(), y.max()


def min_max(y: jax.Array) -> tuple[int, int]:
    """The smallest and largest entry of ``y``, which may span processes (every
    process must call it then: it reduces on the devices and reads the replicas)."""
    lo, hi = to_host(_min_max(y))
    return int(lo), int(hi)
