"""The training engine against a baseline revision of itself and flax.linen + optax, one run.

Two versions of purelearn cannot share a process, so the parent process (no
JAX work of its own) starts long-lived worker processes and times every
variant through them, round by round:

* ``current``: the working tree's purelearn (or ``--current PATH``);
* ``baseline``: ``--baseline REF`` (default ``cb94ec4``) checked out with
  ``git worktree add --detach`` in a temporary folder, removed at exit;
* ``twin``: a second worker on the current tree. It runs the flax.linen +
  optax variants and ``A/A``, the current tree's variant a second time: the
  noise floor of a ratio between two processes, which is what
  current/baseline is.

Each worker runs with ``PYTHONPATH`` set to its tree and reports
``purelearn.__file__``, which the parent checks. The parent writes one JSON
command per line to a worker's stdin (``setup``: build a variant and run it
once, compiling it; ``time``: run it ``n`` times, blocking on the result;
``drop``) and reads one JSON reply per line. A table's variants are set up
(compiled) in all workers at once, then timed in interleaved rounds
(``bench_layout.run_rounds``: each round times every variant once, a leaf
count's variants back to back in a rotating, alternating order), so every
ratio is the median of per-round ratios taken seconds apart; ``(IQR)`` gives
their interquartile range (``bench_layout.ratio_cell``). Times are medians
per call.

Nets: ``pl.mlp([64] + [32] * L + [10])`` with 10, 200 and 1,000 parameter
leaves (L = 4, 99, 499; ``--leaves``), Adam (lr 1e-3), synthetic data (2,048
examples of 64 features, 10 classes; 512 more as ``eval_data``), batch 64
(32 steps an epoch). Only the public API both versions share is used, never
a ``layout=`` argument. The flax side is bench_training's ``FlaxMLP`` and
step (``flax.linen.Dense`` layers, a flax ``TrainState``, ``optax.adam``).

1. ``pl.fit(..., epochs=3, eval_data=..., progress=False)``, warm (a call
   creates its state and runs 3 epochs). flax: the equivalent program, a
   jitted init (module init + ``TrainState.create``) and 3 calls of a jitted,
   donated epoch (a ``lax.scan`` of the step over a shuffled epoch, then the
   train and eval accuracy, as fit's epoch computes them), the curves fetched
   after each epoch as fit does.
2. ``pl.train_run`` (3 epochs, eval data), warm. flax: the same init and
   epochs as one jitted ``lax.scan`` over epochs.
3. ``pl.random_search`` of ``pl.adam``'s learning rate (log-uniform in
   [1e-4, 1e-1]), 100 trials of 2 epochs, default ``max_parallel``, warm.
   A 100-trial search is slow at 1,000 leaves on a small CPU machine:
   ``--search-leaves`` picks its nets (default 10,200), ``--search-trials``
   its size.
4. ``pl.make_train_step`` in a Python loop, 200 steps over batches already
   on the device, the state from ``pl.TrainState.create(model, opt, key)``.
   flax: a jitted, donated step (``TrainState.apply_gradients``) in the same
   loop.
5. First-call latency, each measurement in a fresh process, without the
   persistent compilation cache (``JAX_COMPILATION_CACHE_DIR`` removed from
   the environment; the child checks that jax has no cache directory), timed
   from before building the model and optimizer to the blocked result (data
   made before): ``pl.fit(..., epochs=1)`` on the textbook net
   ``pl.mlp([784, 100, 100, 100, 100, 10])`` (random data of MNIST's shape,
   4,000 examples + 1,000 eval, batch 100) and on the 200-leaf net of parts
   1-4; and ``pl.TrainState.create`` alone at 1,000 leaves. flax: build the
   module, init its ``TrainState``, jit the epoch, run one epoch (for
   ``create``: module init + ``TrainState.create``, as users call them,
   unjitted). ``--first-reps`` rounds (fresh processes each), medians.

Targets (the summary marks each met or MISSED, and "within noise" where the
margin is smaller than the A/A ratio's distance from 1): current/baseline <=
1.05 for fit, train_run and random_search; the make_train_step loop
current/flax <= 1.0. Run::

    python benchmarks/bench_state.py [--quick] [--baseline REF] [--parts 1,2,3,4,5]
        [--leaves 10,200,1000] [--rounds N] [--current PATH]

``--quick``: 3 rounds, leaves 10,200, a 16-trial search, 2 first-call rounds.
Set ``JAX_COMPILATION_CACHE_DIR`` to keep the compiled programs of parts 1-4
between runs (part 5 never uses it).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import IO, Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEFAULT_BASELINE = "cb94ec4"  # today's main

LR = 1e-3
FEATURES, CLASSES = 64, 10
N_TRAIN, N_EVAL, BATCH = 2048, 512, 64
EPOCHS = 3  # parts 1 and 2
SEARCH_EPOCHS = 2
LOOP_STEPS = 200  # part 4
FIT_TARGET, LOOP_TARGET = 1.05, 1.0

# part 5: id -> (label, sizes, train examples, eval examples, batch, what is timed)
FIRST_CALL: dict[str, tuple[str, tuple[int, ...], int, int, int, str]] = {
    "textbook": ("fit, textbook net (10 leaves)", (784, 100, 100, 100, 100, 10), 4000, 1000, 100,
                 "fit"),
    "fit200": ("fit, 200 leaves", (64, *[32] * 99, 10), N_TRAIN, N_EVAL, BATCH, "fit"),
    "create1000": ("TrainState.create, 1000 leaves", (64, *[32] * 499, 10), 64, 0, BATCH,
                   "create"),
}  # fmt: skip


def mlp_sizes(leaves: int) -> list[int]:
    """``[64] + [32] * L + [10]``: L + 1 layers of a weight and a bias each."""
    if leaves < 4 or leaves % 2:
        raise ValueError(f"leaf counts are even and at least 4, got {leaves}")
    return [FEATURES] + [32] * (leaves // 2 - 1) + [CLASSES]


def _protocol_stdout() -> IO[str]:
    """Keep fd 1 for the JSON replies; anything else printed goes to stderr."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


def _no_cache_check() -> str | None:
    import jax

    return jax.config.jax_compilation_cache_dir


# -- the flax + optax side (bench_training's net and step) ---------------------------------


def flax_accuracy(state: Any, x: Any, y: Any) -> Any:
    import jax.numpy as jnp

    logits = state.apply_fn({"params": state.params}, x)
    return jnp.mean(jnp.argmax(logits, -1) == y)


def flax_epoch(step: Callable, n: int, batch: int) -> Callable:
    """fit's epoch for flax: ``(state, key, x, y, xv, yv) -> (state, curves)``: the
    step scanned over one shuffled epoch, then the accuracy on both sets."""
    import jax

    steps = n // batch

    def epoch(state, key, x, y, xv, yv):
        order = jax.random.permutation(jax.random.fold_in(key, state.step), n)
        idx = order[: steps * batch].reshape(steps, batch)
        state, metrics = jax.lax.scan(lambda s, i: step(s, x[i], y[i]), state, idx)
        curves = {
            "loss": metrics["loss"].mean(),
            "train_accuracy": flax_accuracy(state, x, y),
            "eval_accuracy": flax_accuracy(state, xv, yv),
            "step_loss": metrics["loss"],
        }
        return state, curves

    return epoch


def make_data(n: int, n_eval: int, features: int, seed: int = 0) -> tuple:
    """Synthetic ``(x, y, x_eval, y_eval)`` on the device (float32, int32 labels)."""
    import jax
    import numpy as np

    rng = np.random.default_rng(seed)
    arrays = (
        rng.standard_normal((n, features), np.float32),
        rng.integers(0, CLASSES, n).astype(np.int32),
        rng.standard_normal((n_eval, features), np.float32),
        rng.integers(0, CLASSES, n_eval).astype(np.int32),
    )
    return jax.block_until_ready(jax.device_put(arrays))


# -- worker: the variants ---------------------------------------------------------------


def worker_builders() -> dict[str, Callable[[dict], Callable[[], Any]]]:
    """Variant kind -> ``build(spec) -> run``; ``run()`` does one timed unit of work
    and blocks on its result."""
    import bench_training as bt
    import jax
    import numpy as np
    import optax

    import purelearn as pl

    x, y, xv, yv = make_data(N_TRAIN, N_EVAL, FEATURES)
    key = jax.random.key(0)
    order = np.random.default_rng(1).permutation(N_TRAIN)
    distinct = [order[i : i + BATCH] for i in range(0, N_TRAIN - BATCH + 1, BATCH)]
    batches = [(x[i], y[i]) for i in distinct]
    loop_batches = [batches[i % len(batches)] for i in range(LOOP_STEPS)]

    def net(spec: dict) -> tuple[Any, Any]:
        return pl.mlp(mlp_sizes(spec["leaves"])), pl.adam(LR)

    def layout_kw(spec: dict) -> dict:
        # only the "auto" variant names a layout (the current tree's opt-in packing)
        return {"layout": spec["layout"]} if spec.get("layout") else {}

    def pl_fit(spec: dict) -> Callable[[], Any]:
        model, opt = net(spec)

        def run():
            state, _ = pl.fit(
                model, opt, (x, y), epochs=EPOCHS, batch_size=BATCH, key=key,
                eval_data=(xv, yv), progress=False, **layout_kw(spec),
            )  # fmt: skip
            return jax.block_until_ready(state)

        return run

    def pl_train_run(spec: dict) -> Callable[[], Any]:
        model, opt = net(spec)

        def run():
            out = pl.train_run(
                model, opt, (x, y), epochs=EPOCHS, batch_size=BATCH, key=key, eval_data=(xv, yv),
                **layout_kw(spec),
            )  # fmt: skip
            return jax.block_until_ready(out)

        return run

    def pl_search(spec: dict) -> Callable[[], Any]:
        model, _ = net(spec)

        def run():
            # the results are NumPy on the host: the search has synced its programs
            return pl.random_search(
                model, pl.adam, (x, y), (xv, yv),
                space={"learning_rate": pl.log_uniform(1e-4, 1e-1)},
                num_trials=spec["trials"], epochs=SEARCH_EPOCHS, batch_size=BATCH, key=key,
            )  # fmt: skip

        return run

    def pl_loop(spec: dict) -> Callable[[], Any]:
        model, opt = net(spec)
        step = pl.make_train_step(model, opt)
        box = [pl.TrainState.create(model, opt, key)]

        def run():
            state = box[0]
            for xb, yb in loop_batches:
                state, _ = step(state, xb, yb)
            box[0] = jax.block_until_ready(state)

        return run

    def flax_parts(spec: dict) -> tuple[tuple[int, ...], Callable]:
        sizes = tuple(mlp_sizes(spec["leaves"]))
        return sizes, flax_epoch(bt.flax_setup(key, sizes)[1], N_TRAIN, BATCH)

    def flax_fit(spec: dict) -> Callable[[], Any]:
        sizes, epoch = flax_parts(spec)
        init = jax.jit(lambda k: bt.flax_setup(k, sizes)[0])
        epoch_fn = jax.jit(epoch, donate_argnums=0)

        def run():
            state = init(key)
            for _ in range(EPOCHS):
                state, curves = epoch_fn(state, key, x, y, xv, yv)
                jax.device_get(curves)
            return jax.block_until_ready(state)

        return run

    def flax_train_run(spec: dict) -> Callable[[], Any]:
        sizes, epoch = flax_parts(spec)

        @jax.jit
        def whole(k, x, y, xv, yv):
            state = bt.flax_setup(k, sizes)[0]
            return jax.lax.scan(lambda s, _: epoch(s, k, x, y, xv, yv), state, length=EPOCHS)

        return lambda: jax.block_until_ready(whole(key, x, y, xv, yv))

    def flax_loop(spec: dict) -> Callable[[], Any]:
        state, step = bt.flax_setup(key, tuple(mlp_sizes(spec["leaves"])))
        step = jax.jit(step, donate_argnums=0)
        box = [state]

        def run():
            state = box[0]
            for xb, yb in loop_batches:
                state, _ = step(state, xb, yb)
            box[0] = jax.block_until_ready(state)

        return run

    del optax  # imported so a missing optax fails here, at start
    return {
        "pl_fit": pl_fit, "pl_train_run": pl_train_run, "pl_search": pl_search,
        "pl_loop": pl_loop, "flax_fit": flax_fit, "flax_train_run": flax_train_run,
        "flax_loop": flax_loop,
    }  # fmt: skip


def worker_main() -> None:
    """Serve JSON commands from stdin, one reply line each, until ``quit`` or EOF."""
    proto = _protocol_stdout()
    import jax

    import purelearn as pl

    builders = worker_builders()
    variants: dict[str, Callable[[], Any]] = {}
    for line in sys.stdin:
        msg = json.loads(line)
        cmd = msg["cmd"]
        reply: dict[str, Any] = {"ok": True}
        try:
            if cmd == "info":
                reply.update(
                    purelearn=os.path.realpath(pl.__file__),
                    jax=jax.__version__,
                    cache_dir=_no_cache_check(),
                    pid=os.getpid(),
                )
            elif cmd == "setup":
                t0 = time.perf_counter()
                run = builders[msg["kind"]](msg)
                run()
                variants[msg["name"]] = run
                reply["first_s"] = time.perf_counter() - t0
            elif cmd == "time":
                run = variants[msg["name"]]
                t0 = time.perf_counter()
                for _ in range(msg["n"]):
                    run()
                reply["s"] = time.perf_counter() - t0
            elif cmd == "drop":
                for name in msg["names"]:
                    variants.pop(name, None)
                jax.clear_caches()
            elif cmd == "quit":
                proto.write(json.dumps(reply) + "\n")
                return
            else:
                raise ValueError(f"unknown command {cmd!r}")
        except Exception:  # noqa: BLE001 -- any failure goes back to the parent as a reply
            reply = {"ok": False, "error": traceback.format_exc()}
        proto.write(json.dumps(reply) + "\n")


# -- first-call latency: one fresh process per measurement -------------------------------


def first_call_main(task: str, impl: str) -> None:
    """Time one first call in this (fresh) process; print ``{"s": ...}`` as JSON."""
    proto = _protocol_stdout()
    import bench_training as bt
    import jax

    import purelearn as pl

    _, sizes, n, n_eval, batch, what = FIRST_CALL[task]
    x, y, xv, yv = make_data(n, max(n_eval, 1), sizes[0])
    key = jax.block_until_ready(jax.random.key(0))
    t0 = time.perf_counter()
    if impl == "flax":
        state, step = bt.flax_setup(key, sizes)  # build the module, init, TrainState
        if what == "fit":
            epoch = jax.jit(flax_epoch(step, n, batch), donate_argnums=0)
            state, curves = epoch(state, key, x, y, xv, yv)
            jax.device_get(curves)
    elif what == "fit":
        model, opt = pl.mlp(list(sizes)), pl.adam(LR)
        state, _ = pl.fit(
            model, opt, (x, y), epochs=1, batch_size=batch, key=key, eval_data=(xv, yv),
            progress=False,
        )  # fmt: skip
    else:
        state = pl.TrainState.create(pl.mlp(list(sizes)), pl.adam(LR), key)
    jax.block_until_ready(state)
    seconds = time.perf_counter() - t0
    out = {"s": seconds, "purelearn": os.path.realpath(pl.__file__), "cache_dir": _no_cache_check()}
    proto.write(json.dumps(out) + "\n")


# -- parent: processes ----------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies (Linux), so no worker
    outlives it even if it is killed without running its ``finally``."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def child_env(tree: str, keep_cache: bool) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = tree
    if not keep_cache:
        for name in list(env):
            if name.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE")):
                del env[name]
    return env


def tail(path: str, lines: int = 25) -> str:
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-lines:])


class Worker:
    """A long-lived worker process on one tree, talking JSON lines."""

    def __init__(self, label: str, tree: str, log_dir: str):
        self.label, self.tree = label, tree
        self.log = os.path.join(log_dir, f"worker-{label}.log")
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--worker"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                env=child_env(tree, keep_cache=True), preexec_fn=_die_with_parent,
            )  # fmt: skip

    def send(self, msg: dict) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()

    def recv(self) -> dict:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=10)
            raise RuntimeError(
                f"worker {self.label} exited ({self.proc.returncode}); its log:\n{tail(self.log)}"
            )
        return json.loads(line)

    def call(self, msg: dict) -> dict:
        self.send(msg)
        reply = self.recv()
        if not reply["ok"]:
            raise RuntimeError(f"worker {self.label}: {reply['error']}")
        return reply

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.send({"cmd": "quit"})
                self.proc.wait(timeout=5)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(Exception):
                pipe.close()


class Remote:
    """One variant living in a worker; ``samples`` are seconds per call, one per round
    (the attribute ``bench_optimizers.ratios`` reads)."""

    def __init__(self, worker: Worker, label: str, spec: dict):
        self.worker, self.label = worker, label
        self.spec = {**spec, "name": f"{spec['name']}/{label}"}
        self.n = 1
        self.samples: list[float] = []
        self.error: str | None = None

    def call_s(self, n: int) -> float:
        return self.worker.call({"cmd": "time", "name": self.spec["name"], "n": n})["s"]

    def sample(self) -> None:
        self.samples.append(self.call_s(self.n) / self.n)

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")


def git(*args: str, cwd: str = REPO) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def describe_tree(tree: str) -> str:
    try:
        rev = git("log", "-1", "--format=%h %s", cwd=tree)
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "purelearn", cwd=tree)
    except (subprocess.CalledProcessError, OSError):
        return "(not a git checkout)"
    return rev[:70] + (" + uncommitted changes in purelearn/" if dirty else "")


# -- parent: parts 1-4 --------------------------------------------------------------------


class Part:
    def __init__(self, number: int, title: str, kinds: dict[str, str], leaves: list[int]):
        self.number, self.title, self.kinds, self.leaves = number, title, kinds, leaves
        self.groups: dict[int, dict[str, Remote]] = {}


def run_part(part: Part, workers: dict[str, Worker], args: argparse.Namespace, bl: Any) -> None:
    """Set up every variant (all workers at once), calibrate, time interleaved rounds."""
    print(f"\n== {part.number}. {part.title} ==", flush=True)
    where = {
        "current": "current",
        "baseline": "baseline",
        "flax": "twin",
        "A/A": "twin",
        "auto": "twin",
    }
    pending: dict[str, list[Remote]] = {w: [] for w in workers}
    for leaves in part.leaves:
        group = {}
        for label, kind in part.kinds.items():
            spec = {"cmd": "setup", "kind": kind, "name": f"p{part.number}/{leaves}/{label}",
                    "leaves": leaves, "trials": args.search_trials,
                    "layout": "auto" if label == "auto" else None}  # fmt: skip
            group[label] = Remote(workers[where[label]], label, spec)
            pending[where[label]].append(group[label])
        part.groups[leaves] = group
    t0 = time.perf_counter()
    for w, remotes in pending.items():
        for r in remotes:
            workers[w].send(r.spec)
    for w, remotes in pending.items():
        for r in remotes:
            reply = workers[w].recv()
            if not reply["ok"]:
                r.error = reply["error"]
                last = reply["error"].strip().splitlines()[-1]
                print(f"  {r.spec['name']} ({w} worker) FAILED to set up: {last}", flush=True)
    print(f"[set up and compiled in all workers at once: {time.perf_counter() - t0:.1f}s]")
    live = [[r for r in g.values() if r.error is None] for g in part.groups.values()]
    t0 = time.perf_counter()
    for group in live:
        if not group:
            continue
        one = statistics.median(r.call_s(1) for r in group)
        n = max(1, min(1000, round(args.target / one)))
        for r in group:
            r.n = n
    rounds = args.search_rounds if part.number == 3 else args.rounds
    bl.run_rounds([g for g in live if g], rounds, lambda r: r.sample())
    print(f"[{rounds} interleaved rounds: {time.perf_counter() - t0:.1f}s]", flush=True)
    for w, remotes in pending.items():
        with contextlib.suppress(RuntimeError):
            workers[w].call({"cmd": "drop", "names": [r.spec["name"] for r in remotes]})


def fmt_ms(seconds: float) -> str:
    ms = seconds * 1e3
    if ms != ms:  # nan
        return "-"
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}"


def ratio(a: Remote | None, b: Remote | None, bl: Any, bo: Any) -> tuple[str, float | None]:
    if a is None or b is None or a.error or b.error or not a.samples:
        return "-", None
    values = bo.ratios(a, b)
    return bl.ratio_cell(values), statistics.median(values)


def print_part(part: Part, bl: Any, bo: Any) -> dict[int, dict[str, float | None]]:
    has_flax = "flax" in part.kinds
    print(
        f"\n{'leaves':>6} {'calls':>5} {'current ms':>10} {'baseline ms':>11} {'flax ms':>8}"
        f" {'current/baseline (IQR)':>23} {'current/flax (IQR)':>22} {'A/A (IQR)':>20}"
        f" {'auto/baseline (IQR)':>23}"
    )
    out = {}
    for leaves, g in part.groups.items():
        cur, base, flax, twin = (g.get(k) for k in ("current", "baseline", "flax", "A/A"))
        cells = {}
        vs_base, cells["baseline"] = ratio(cur, base, bl, bo)
        vs_flax, cells["flax"] = ratio(cur, flax, bl, bo) if has_flax else ("-", None)
        aa, cells["A/A"] = ratio(twin, cur, bl, bo)
        auto = g.get("auto")
        auto_cell, cells["auto"] = ratio(auto, base, bl, bo) if auto else ("-", None)
        ms = [fmt_ms(r.median) if r and not r.error else ("fail" if r else "-")
              for r in (cur, base, flax)]  # fmt: skip
        print(
            f"{leaves:>6} {cur.n if cur else 0:>5} {ms[0]:>10} {ms[1]:>11} {ms[2]:>8}"
            f" {vs_base:>23} {vs_flax:>22} {aa:>20} {auto_cell:>23}"
        )
        out[leaves] = cells
    print(
        "(ms: median time per call; ratios: time over time, medians of per-round ratios; 'A/A':"
        "\n the current tree in a second process over the first, the noise floor; 'calls':"
        " calls per sample;\n 'auto/baseline': the current tree with layout='auto', its opt-in"
        " packing, over the baseline)"
    )
    return out


# -- parent: part 5 ---------------------------------------------------------------------------


def first_call_once(task: str, impl: str, tree: str, log_dir: str) -> tuple[float | None, str]:
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--first-call", task, "--impl", impl],
        env=child_env(tree, keep_cache=False), capture_output=True, text=True, timeout=1800,
        preexec_fn=_die_with_parent,
    )  # fmt: skip
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        with open(os.path.join(log_dir, "first-call-failures.log"), "a") as f:
            f.write(f"--- {task} / {impl} / {tree}\n{proc.stderr}\n")
        return None, proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "no output"
    reply = json.loads(lines[-1])
    if reply["cache_dir"] is not None:
        raise RuntimeError(f"first-call child had a compilation cache: {reply['cache_dir']}")
    if not reply["purelearn"].startswith(os.path.realpath(tree) + os.sep):
        raise RuntimeError(f"first-call child imported {reply['purelearn']}, not from {tree}")
    return reply["s"], ""


def part_first_call(trees: dict[str, str], tasks: list[str], reps: int, log_dir: str) -> dict:
    print(
        "\n== 5. First-call latency: a fresh process per call, no persistent compilation cache ==",
        flush=True,
    )
    variants = {  # label -> (tree, impl)
        "current": (trees["current"], "pl"),
        "baseline": (trees["baseline"], "pl"),
        "flax": (trees["current"], "flax"),
        "A/A": (trees["current"], "pl"),
    }
    labels = list(variants)
    times: dict[str, dict[str, list[float | None]]] = {t: {k: [] for k in labels} for t in tasks}
    errors: dict[tuple[str, str], str] = {}
    t0 = time.perf_counter()
    for r in range(reps):
        for task in tasks:
            turn = labels[r % len(labels) :] + labels[: r % len(labels)]
            for label in turn if r % 2 == 0 else turn[::-1]:
                s, err = first_call_once(task, variants[label][1], variants[label][0], log_dir)
                times[task][label].append(s)
                if err:
                    errors[task, label] = err
        print(f"[round {r + 1}/{reps}: {time.perf_counter() - t0:.0f}s]", flush=True)
    for (task, label), err in errors.items():
        print(f"  {FIRST_CALL[task][0]} / {label} FAILED: {err}")

    def paired(task: str, a: str, b: str) -> tuple[str, float | None]:
        pairs = [x / y for x, y in zip(times[task][a], times[task][b], strict=True) if x and y]
        if not pairs:
            return "-", None
        m = statistics.median(pairs)
        return f"{m:.3f} ({min(pairs):.2f}-{max(pairs):.2f})", m

    def med(task: str, label: str) -> str:
        vals = [v for v in times[task][label] if v is not None]
        return f"{statistics.median(vals):.2f}" if vals else "fail"

    print(
        f"\n{'first call':<31} {'current s':>9} {'baseline s':>10} {'flax s':>7}"
        f" {'current/baseline':>20} {'current/flax':>20} {'A/A':>20}"
    )
    out = {}
    for task in tasks:
        cb, rb = paired(task, "current", "baseline")
        cf, rf = paired(task, "current", "flax")
        aa, ra = paired(task, "A/A", "current")
        print(
            f"{FIRST_CALL[task][0]:<31} {med(task, 'current'):>9} {med(task, 'baseline'):>10}"
            f" {med(task, 'flax'):>7} {cb:>20} {cf:>20} {aa:>20}"
        )
        out[task] = {"baseline": rb, "flax": rf, "A/A": ra}
    print(
        f"(medians of {reps} fresh processes each, ratios: median (min-max) of per-round ratios;"
        "\n model and optimizer construction, tracing, compiling and running included, imports"
        "\n and data excluded; flax 'create' is the module's unjitted init + TrainState.create)"
    )
    return out


# -- parent: main ---------------------------------------------------------------------------


def summary(results: dict[int, dict], bl: Any) -> None:
    print("\n== summary: targets ==")
    # part -> (its name, the ratio with a target, the target)
    goals = {
        1: ("fit", "baseline", FIT_TARGET),
        2: ("train_run", "baseline", FIT_TARGET),
        3: ("random_search", "baseline", FIT_TARGET),
        4: ("make_train_step loop", "flax", LOOP_TARGET),
    }
    for number, rows in results.items():
        if number in goals:
            name, vs, target = goals[number]
            for leaves, cells in rows.items():
                what = f"{name}, {leaves} leaves, current/{vs}:"
                goal = "not measured"
                if cells[vs] is not None:
                    goal = bl.verdict(cells[vs], target, cells["A/A"])
                print(f"  {what:<50} {goal}")
        else:
            for task, cells in rows.items():
                what = f"first call, {FIRST_CALL[task][0]}:"
                values = [f"current/{k} {cells[k]:.3f}" for k in ("baseline", "flax") if cells[k]]
                print(f"  {what:<50} {', '.join(values) or 'not measured'} (no target)")


def int_list(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", default=DEFAULT_BASELINE, help="git revision to compare")
    parser.add_argument(
        "--current", default=REPO, help="tree whose purelearn is 'current' (default: this repo)"
    )
    parser.add_argument("--parts", default="1,2,3,4,5", help="which tables (comma-separated)")
    parser.add_argument("--leaves", default=None, help="leaf counts of parts 1, 2, 4")
    parser.add_argument("--fit-leaves", default=None, help="part 1's leaf counts (--leaves)")
    parser.add_argument("--run-leaves", default=None, help="part 2's leaf counts (--leaves)")
    parser.add_argument("--search-leaves", default=None, help="part 3's leaf counts (10,200)")
    parser.add_argument("--loop-leaves", default=None, help="part 4's leaf counts (--leaves)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of parts 1, 2, 4 (9)")
    parser.add_argument("--search-rounds", type=int, default=None, help="rounds of part 3 (5)")
    parser.add_argument("--search-trials", type=int, default=None, help="trials (100)")
    parser.add_argument("--first-calls", default=",".join(FIRST_CALL), help="part 5's measurements")
    parser.add_argument("--first-reps", type=int, default=None, help="part 5's processes (5)")
    parser.add_argument("--target", type=float, default=None, help="seconds per sample (0.5)")
    parser.add_argument("--quick", action="store_true", help="3 rounds, 10,200 leaves, 16 trials")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--first-call", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--impl", default="pl", help=argparse.SUPPRESS)
    args = parser.parse_args()
    quick = args.quick
    leaves = args.leaves or ("10,200" if quick else "10,200,1000")
    args.fit_leaves = int_list(args.fit_leaves or leaves)
    args.run_leaves = int_list(args.run_leaves or leaves)
    args.loop_leaves = int_list(args.loop_leaves or leaves)
    args.search_leaves = int_list(args.search_leaves or "10,200")
    args.rounds = args.rounds or (3 if quick else 9)
    args.search_rounds = args.search_rounds or (2 if quick else 5)
    args.search_trials = args.search_trials or (16 if quick else 100)
    args.first_reps = args.first_reps or (2 if quick else 5)
    args.first_calls = [s for s in args.first_calls.split(",") if s]
    for task in args.first_calls:
        if task not in FIRST_CALL:
            parser.error(f"--first-calls: {task!r} is not one of {', '.join(FIRST_CALL)}")
    args.target = args.target or (0.15 if quick else 0.5)
    for counts in (args.fit_leaves, args.run_leaves, args.loop_leaves, args.search_leaves):
        for n in counts:
            mlp_sizes(n)  # checks it
    return args


def main() -> None:
    args = parse_args()
    if args.worker:
        return worker_main()
    if args.first_call:
        return first_call_main(args.first_call, args.impl)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that `finally` runs
    current = os.path.realpath(args.current)
    if not os.path.isfile(os.path.join(current, "purelearn", "__init__.py")):
        sys.exit(f"--current {current}: no purelearn/ there")
    # the shared helpers, imported with the current tree's purelearn
    sys.path.insert(0, current)
    import bench_layout as bl
    import bench_optimizers as bo

    parts = set(int_list(args.parts))
    rev = git("rev-parse", "--verify", f"{args.baseline}^{{commit}}")
    tmp = tempfile.mkdtemp(prefix="bench_state_")
    base_tree = os.path.join(tmp, "baseline")
    workers: dict[str, Worker] = {}
    t_start = time.perf_counter()
    results: dict[int, dict] = {}
    try:
        git("worktree", "add", "--detach", base_tree, rev)
        trees = {"current": current, "baseline": base_tree}
        print(f"current:  {current}: {describe_tree(current)}")
        print(f"baseline: {args.baseline} = {describe_tree(base_tree)} (worktree in {tmp})")
        print(
            f"{os.cpu_count()} CPUs; nets mlp([64] + [32] * L + [10]), Adam {LR}, {N_TRAIN}"
            f" x {FEATURES} synthetic examples (+{N_EVAL} eval), batch {BATCH}"
            + (" (--quick)" if args.quick else ""),
            flush=True,
        )
        if parts & {1, 2, 3, 4}:
            for label, tree in (("current", current), ("baseline", base_tree), ("twin", current)):
                workers[label] = Worker(label, tree, tmp)
            for label, w in workers.items():
                info = w.call({"cmd": "info"})
                if not info["purelearn"].startswith(os.path.realpath(w.tree) + os.sep):
                    raise RuntimeError(f"worker {label} imported {info['purelearn']}")
                print(
                    f"worker {label:<8} pid {info['pid']}: purelearn from {info['purelearn']}"
                    f" (jax {info['jax']}, compilation cache: {info['cache_dir']})"
                )
            table = [
                Part(1, f"pl.fit, warm, epochs={EPOCHS} with eval_data (flax: jitted init +"
                     " epoch program)", {"current": "pl_fit", "baseline": "pl_fit",
                     "flax": "flax_fit", "A/A": "pl_fit", "auto": "pl_fit"}, args.fit_leaves),
                Part(2, f"pl.train_run, warm, epochs={EPOCHS} with eval_data (flax: one jitted"
                     " scan of epochs)", {"current": "pl_train_run", "baseline": "pl_train_run",
                     "flax": "flax_train_run", "A/A": "pl_train_run", "auto": "pl_train_run"},
                     args.run_leaves),
                Part(3, f"pl.random_search, warm, {args.search_trials} trials x {SEARCH_EPOCHS}"
                     " epochs, default max_parallel", {"current": "pl_search",
                     "baseline": "pl_search", "A/A": "pl_search"}, args.search_leaves),
                Part(4, f"pl.make_train_step loop, {LOOP_STEPS} steps on device-resident batches"
                     " (flax: jitted donated step)", {"current": "pl_loop",
                     "baseline": "pl_loop", "flax": "flax_loop", "A/A": "pl_loop"},
                     args.loop_leaves),
            ]  # fmt: skip
            for part in table:
                if part.number in parts and part.leaves:
                    run_part(part, workers, args, bl)
                    results[part.number] = print_part(part, bl, bo)
            for w in workers.values():
                w.close()
        if 5 in parts:
            results[5] = part_first_call(trees, args.first_calls, args.first_reps, tmp)
        summary(results, bl)
        print(f"[total {time.perf_counter() - t_start:.0f}s]")
    finally:
        for w in workers.values():
            w.close()
        with contextlib.suppress(subprocess.CalledProcessError):
            git("worktree", "remove", "--force", base_tree)
        shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(subprocess.CalledProcessError):
            git("worktree", "prune")


if __name__ == "__main__":
    main()
