"""Contiguous parameter storage against the pytree: optimizer updates and whole train steps.

``pl.PackedState.pack(state, optimizer)`` stores the parameters and
the optimizer state as one flat buffer per dtype (``purelearn.layout``), so a
step passes a handful of arrays through ``jax.jit`` and Adam updates all the
parameters in one pass. This measures what that buys, and what it costs, as
the number of parameter arrays ("leaves") grows at a fixed total size:

1. **Adam update** at 1, 10, 200, 1,000 and 5,000 leaves of the same total
   (4M float32; ``--quick``: 1M, up to 1,000 leaves): one jitted step
   ``opt.update`` + ``optax.apply_updates``, params and state donated, for

   * ``optax.adam`` on the pytree, and a second copy of it (``A/A``: the
     noise floor of a ratio);
   * ``optax.flatten(optax.adam)`` on the pytree (optax's own fused layout:
     leaves concatenated into one buffer and split back inside every step);
   * purelearn contiguous: ``pl.adam`` updating the stored buffers, the
     gradients handed over as buffers too (the engine's steady state: its
     backward pass packs the gradient into the buffers' layout);
   * a donated ``a + b`` kernel on one array of the same size (12 B/element),
     the copy bandwidth the update is measured against (Adam moves 28 B per
     float32 parameter: reads g, p, m, v and writes p, m, v).

   Each row gives the time, the time over the same variant's at one leaf,
   the time over optax's at the same leaf count, the arrays crossing the jit
   boundary, and the compile + warm-up time.
2. **Whole train step** of a synthetic model of N float32 vectors (1M floats;
   ``--quick`` 256K) whose logits are ``(x @ P) * (1 + sum_i mean(p_i**2))``
   (P fixed), so every leaf gets a nonzero gradient for a few flops per
   element and the step is the per-leaf cost plus Adam: ``pl.make_train_step``
   with layout ``contiguous`` and ``pytree`` and the same model and loss
   written directly with ``optax.adam`` in a jitted donated step (``optax``).
   5,000 leaves are left out by default: XLA:CPU compile time grows faster
   than linearly with the leaf count (tens of seconds at 1,000 leaves, many
   minutes at 5,000; pass ``--step-leaves`` to measure it anyway).
3. **A deep many-leaf net**, ``pl.mlp([784] + [W] * 100 + [10])`` (202
   leaves), Adam, batches of 128 from ``pl.load_mnist("embedded")`` (random
   data of MNIST's shape if it cannot be loaded), W = 100 and 32
   (``--quick``: 32): ``pl.make_train_step`` in a Python loop and fit's
   compiled epoch (the training half of ``pl.fit``'s epoch program, as in
   ``bench_training.py``), each with layout ``auto`` (the default: vectors and
   small matrices share a buffer, matrices of 1,024 elements or more keep their
   own) and ``pytree``, against ``flax.linen``
   Dense x 101 + ``optax.adam`` + a flax ``TrainState`` in a jitted donated
   step, and against a second copy of that (``A/A``). The loop's time per
   step minus the epoch program's is what a step costs outside the compiled
   program (dispatch, passing the arrays), the part the layout shrinks.
4. **No regression** where there is little to gain: the textbook's
   784-100-100-100-100-10 net (10 leaves), ``make_train_step`` with the
   default layout (``auto``) against pytree; the one-array Adam update comes
   from table 1.
5. **Momentum**: ``pl.momentum`` against ``optax.sgd(momentum=0.9)`` (20 B
   per parameter) on one 4M array and on 200 leaves, both layouts.

Every table's variants are timed in interleaved rounds (each round times every
variant once, the variants compared with each other back to back, in an order
that rotates and alternates between rounds, the groups of a table in a random
order, so that the load of a shared machine hits both sides of a ratio alike).
Times are medians over rounds; ratios are medians of the per-round ratios,
with their interquartile range. Compile and warm-up times are single
measurements. The summary marks a target met or MISSED, and "within noise"
where the margin is smaller than the A/A pair's distance from 1. Compilation
dominates the run's wall time; set ``JAX_COMPILATION_CACHE_DIR`` to keep the
programs between runs.
Run::

    python benchmarks/bench_layout.py [--quick] [--parts 1,2,3,4,5] [--rounds N]
"""

from __future__ import annotations

import argparse
import functools
import itertools
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import purelearn as pl
from purelearn import _leafwise

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_optimizers as bo
import bench_training as bt

LR = 1e-3
BATCH = bt.BATCH  # 128
ADAM_BYTES, MOMENTUM_BYTES = 28, 20  # float32 bytes read + written per parameter
NET5 = (784, 100, 100, 100, 100, 10)
DEPTH = 100  # hidden layers of the deep net


# -- timed variants ------------------------------------------------------------------


class Timed(bo.Runner):
    """A donated jitted function with its carried state (``bo.Runner``), named, with
    the arrays it passes through the jit boundary and its compile + warm-up time."""

    def __init__(self, name: str, fn: Callable, carry: tuple, fixed: tuple, extra_out: int = 0):
        super().__init__(fn, carry, fixed)
        self.name = name
        self.arrays_in = len(jax.tree.leaves((carry, fixed)))
        self.arrays_out = len(jax.tree.leaves(carry)) + extra_out
        self.warm_s = float("nan")
        self.create_s = float("nan")  # building its state, where that is timed

    def warm(self, target_s: float) -> None:
        t0 = time.perf_counter()
        self.calibrate(target_s)
        self.warm_s = time.perf_counter() - t0


def run_rounds(groups: list[list[Any]], rounds: int, sample: Callable[[Any], None]) -> None:
    """Time every variant once per round; each group's variants back to back.

    The groups run in a fresh random order each round, and within a group
    the variants rotate and alternate direction, so each variant takes each
    position in turn: slow drifts of the machine's load, and whatever the
    previous program left in the caches, hit both sides of a ratio alike.
    """
    rng = np.random.default_rng(0)
    for r in range(rounds):
        for g in rng.permutation(len(groups)):
            group = groups[g]
            shift = (r // 2) % len(group)
            turn = group[shift:] + group[:shift]
            for v in turn if r % 2 == 0 else turn[::-1]:
                sample(v)


def ratio_cell(values: list[float]) -> str:
    """``median (q1-q3)`` of per-round ratios."""
    lo, hi = bo.iqr(values)
    return f"{statistics.median(values):.3f} ({lo:.2f}-{hi:.2f})"


def verdict(value: float, target: float, floor: float | None = None) -> str:
    """``value <= target -> met/MISSED``; with the A/A ratio ``floor``, a miss or a
    pass by less than the noise (``|floor - 1|``) is flagged as within noise."""
    text = f"{value:.3f} <= {target:g} -> {'met' if value <= target else 'MISSED'}"
    if floor is not None:
        text += f" (A/A {floor:.3f}" + (
            ", within noise)" if abs(value - target) < abs(floor - 1) else ")"
        )
    return text


# -- parameters as N vectors ------------------------------------------------------------


def leaf_sizes(total: int, leaves: int) -> list[int]:
    """``leaves`` sizes summing to ``total`` (equal, the last one takes the rest)."""
    size = total // leaves
    return [size] * (leaves - 1) + [total - size * (leaves - 1)]


def host_vectors(total: int, leaves: int, seed: int, scale: float = 1.0) -> list[np.ndarray]:
    """Normal float32 vectors of ``leaf_sizes``, made on the host (one array split:
    thousands of eager device calls would take longer than the benchmark)."""
    flat = scale * np.random.default_rng(seed).standard_normal(total, np.float32)
    return np.split(flat, np.cumsum(leaf_sizes(total, leaves))[:-1])


def as_pytree(vectors: list[np.ndarray]) -> list[jax.Array]:
    return jax.device_put(vectors)


def as_buffers(vectors: list[np.ndarray]) -> tuple[jax.Array, ...]:
    """The vectors as the contiguous layout stores them (checked against ``layout_of``)."""
    lay = pl.layout.layout_of(vectors)
    expected = tuple(int(o) for o in np.cumsum([0] + [v.size for v in vectors])[:-1])
    if lay.offsets != expected or len(lay.dtypes) != 1:
        raise AssertionError(f"unexpected layout {lay.offsets[:4]} ... for float32 vectors")
    return (jax.device_put(np.concatenate(vectors)),)


def optimizer_variants(
    leaves: int, total: int, factories: dict[str, Callable[[], optax.GradientTransformation]]
) -> dict[str, Timed]:
    """One update variant per ``factories`` entry, with fresh params and grads (they
    are donated): a name starting with ``contig`` runs on the buffers, any other on
    the pytree; ``"<name> A/A"`` reuses ``<name>``'s compiled program on its own
    buffers (the noise floor of a ratio)."""
    out: dict[str, Timed] = {}
    for name, factory in factories.items():
        opt = factory()
        params = host_vectors(total, leaves, seed=1)
        grads = host_vectors(total, leaves, seed=2, scale=0.1)
        if name.startswith("contig"):
            p, g = as_buffers(params), as_buffers(grads)
            # the engine's proof that the rule is leafwise (two leaves suffice: proving
            # it on thousands takes longer than the benchmark)
            if _leafwise.optimizer_storage(opt, pl.layout.layout_of(params[:2])) is None:
                raise AssertionError(f"{name}: the optimizer is not leafwise")
        else:
            p, g = as_pytree(params), as_pytree(grads)
        twin_of = name.removesuffix(" A/A")
        # bo.make_step: (params, opt_state, grads) -> (params, opt_state), jitted, donated
        fn = out[twin_of].fn if twin_of != name else bo.make_step(opt)
        out[name] = Timed(name, fn, (p, opt.init(p)), (g,))
    return out


COPY = "a+b copy (1 array)"


def copy_variant(total: int) -> Timed:
    return Timed(
        COPY,
        jax.jit(bo._copy_kernel, donate_argnums=0),
        (jnp.zeros(total, jnp.float32),),
        (jnp.ones(total, jnp.float32),),
    )


# -- part 1: Adam update vs the leaf count ------------------------------------------------

# the timing order (rotated each round): each ratio's two sides are neighbours
ADAM_VARIANTS: dict[str, Callable[[], optax.GradientTransformation]] = {
    "contiguous pl.adam": lambda: pl.adam(LR),
    "optax.adam": lambda: optax.adam(LR),
    "optax.adam A/A": lambda: optax.adam(LR),
    "optax.flatten(adam)": lambda: optax.flatten(optax.adam(LR)),
}


def part_adam(leaf_counts: list[int], total: int, rounds: int, target: float) -> dict:
    """Table 1; returns ``{leaves: {variant name: Timed}}``."""
    print(f"\n== 1. Adam update, {total:,} float32 in N leaves, jitted, donated ==")
    groups: dict[int, dict[str, Timed]] = {}
    for n in leaf_counts:
        t0 = time.perf_counter()
        group = {COPY: copy_variant(total), **optimizer_variants(n, total, ADAM_VARIANTS)}
        for v in group.values():
            v.warm(target)
        groups[n] = group
        print(f"[{n} leaves: built, compiled, warmed up in {time.perf_counter() - t0:.1f}s]")
    t0 = time.perf_counter()
    run_rounds([list(g.values()) for g in groups.values()], rounds, lambda v: v.sample())
    print(f"[{rounds} interleaved rounds: {time.perf_counter() - t0:.1f}s]")

    first = leaf_counts[0]
    print(
        f"\n{'leaves':>6} {'variant':<20} {'arrays in/out':>13} {'ms/update':>9}"
        f" {f'x {first} leaf':>9} {'vs optax.adam (IQR)':>19} {'GB/s':>6} {'of copy':>7}"
        f" {'warm s':>6}"
    )
    order = (COPY, "optax.adam", "optax.adam A/A", "optax.flatten(adam)", "contiguous pl.adam")
    for n, group in groups.items():
        base, copy_bw = group["optax.adam"], 12 * total / group[COPY].median / 1e9
        for name in order:
            v = group[name]
            bw = (12 if name == COPY else ADAM_BYTES) * total / v.median / 1e9
            vs_optax = "" if name in (COPY, "optax.adam") else ratio_cell(bo.ratios(v, base))
            print(
                f"{n:>6} {name:<20} {f'{v.arrays_in}/{v.arrays_out}':>13}"
                f" {v.median * 1e3:>9.3f} {bo.paired_ratio(v, groups[first][name]):>9.3f}"
                f" {vs_optax:>19} {bw:>6.2f} {bw / copy_bw:>7.2f} {v.warm_s:>6.1f}"
            )
    print(
        f"('x {first} leaf': time over the same variant's at {first} leaf; 'vs optax.adam':"
        " time over optax.adam's\n on the pytree at the same leaf count; 'A/A': optax.adam"
        " against a second copy of itself,\n the noise floor; 'of copy': bandwidth over the"
        " a+b kernel's; 'warm s': compile + warm-up. The\n copy kernel's 'x 1 leaf' is the same"
        " program on other buffers: what buffer placement\n and load alone do to that column)"
    )
    return groups


# -- part 2: the whole train step of a synthetic many-leaf model -----------------------------


def vector_model(total: int, leaves: int, features: int = 32) -> pl.Model:
    """N float32 vectors; ``logits = (x @ P) * (1 + sum_i mean(p_i**2))`` with P fixed:
    every leaf has a nonzero gradient, and the forward/backward cost per leaf is a
    reduction and a scaling, so the step is its per-leaf overhead plus Adam."""
    proj = np.random.default_rng(3).standard_normal((features, 10), np.float32) / features**0.5

    def init(key: jax.Array) -> tuple[list[jax.Array], None]:
        del key  # host-made (as in part 1): fast at thousands of leaves
        return as_pytree(host_vectors(total, leaves, seed=4, scale=0.1)), None

    def apply(params, model_state, x, *, train, key=None):
        del train, key
        s = sum(jnp.mean(jnp.square(p)) for p in params)
        return (x @ proj) * (1.0 + s), model_state

    return pl.Model(init, apply)


def optax_train_step(model: pl.Model, tx: optax.GradientTransformation) -> Callable:
    """The same loss, accuracy and update as ``pl.make_train_step``, written directly:
    ``(params, opt_state, x, y) -> (params, opt_state)`` (metrics computed, dropped)."""

    def loss_fn(params, x, y):
        logits, _ = model.apply(params, None, x, train=True)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, jnp.mean(jnp.argmax(logits, -1) == y)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, x, y):
        (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, {"loss": loss, "accuracy": acc}

    return lambda params, opt_state, x, y: step(params, opt_state, x, y)[:2]


def stored(model: pl.Model, opt, key: Any, how: str) -> Any:
    """A fresh state stored as ``how``: the pytree, or a ``pl.PackedState``."""
    state = pl.TrainState.create(model, opt, key)
    return state if how == "pytree" else pl.PackedState.pack(state, opt, layout=how)


def pl_train_variant(name: str, model: pl.Model, opt, how: str, batch: tuple) -> Timed:
    """``pl.make_train_step`` (the public path, its Python checks included) on a
    state stored as ``how``; the metrics it returns are dropped."""
    step = pl.make_train_step(model, opt)
    t0 = time.perf_counter()
    state = jax.block_until_ready(stored(model, opt, jax.random.key(0), how))
    create_s = time.perf_counter() - t0
    timed = Timed(name, lambda s, x, y: step(s, x, y)[0], (state,), batch, extra_out=2)
    timed.create_s = create_s
    return timed


def check_same_numbers(model: pl.Model, opt, batch: tuple, steps: int = 2) -> float:
    """Largest |difference| of the params after ``steps`` steps, contiguous vs pytree."""
    step = pl.make_train_step(model, opt)
    states = [stored(model, opt, 0, h) for h in ("contiguous", "pytree")]
    for _ in range(steps):
        states = [step(s, *batch)[0] for s in states]
    a, b = jax.tree.leaves(states[0].unpack().params), jax.tree.leaves(states[1].params)
    return max(float(jnp.max(jnp.abs(u - v))) for u, v in zip(a, b, strict=True))


def synthetic_batch(features: int = 32, batch: int = 64) -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((batch, features), np.float32)
    return jax.device_put(x), jax.device_put(rng.integers(0, 10, batch).astype(np.int32))


def part_step(leaf_counts: list[int], total: int, rounds: int, target: float) -> None:
    print(
        f"\n== 2. Whole train step, synthetic model of N float32 vectors ({total:,} floats),"
        f" Adam, batch 64 =="
    )
    batch = synthetic_batch()
    groups: dict[int, list[Timed]] = {}
    for n in leaf_counts:
        t0 = time.perf_counter()
        model = vector_model(total, n)
        opt = pl.adam(LR)
        tx = optax.adam(LR)
        ostep = optax_train_step(model, tx)
        p1, _ = model.init(None)
        p2, _ = model.init(None)
        group = [
            pl_train_variant("contiguous", model, opt, "contiguous", batch),
            pl_train_variant("pytree", model, opt, "pytree", batch),
            Timed("optax", ostep, (p1, tx.init(p1)), batch, extra_out=2),
            Timed("optax A/A", ostep, (p2, tx.init(p2)), batch, extra_out=2),
        ]
        for v in group:
            v.warm(target)
        groups[n] = group
        print(f"[{n} leaves: built, compiled, warmed up in {time.perf_counter() - t0:.1f}s]")
    t0 = time.perf_counter()
    run_rounds(list(groups.values()), rounds, lambda v: v.sample())
    print(f"[{rounds} interleaved rounds: {time.perf_counter() - t0:.1f}s]")

    print(
        f"\n{'leaves':>6} {'contig ms':>9} {'pytree ms':>9} {'optax ms':>8}"
        f" {'contig/pytree (IQR)':>20} {'contig/optax (IQR)':>19} {'pytree/optax':>12}"
        f" {'optax A/A':>9} {'arrays in c/p/o':>15} {'warm s c/p/o':>14} {'create s c/p':>12}"
    )
    for n, (c, p, o, twin) in groups.items():
        print(
            f"{n:>6} {c.median * 1e3:>9.3f} {p.median * 1e3:>9.3f} {o.median * 1e3:>8.3f}"
            f" {ratio_cell(bo.ratios(c, p)):>20} {ratio_cell(bo.ratios(c, o)):>19}"
            f" {bo.paired_ratio(p, o):>12.3f} {bo.paired_ratio(twin, o):>9.3f}"
            f" {f'{c.arrays_in}/{p.arrays_in}/{o.arrays_in}':>15}"
            f" {f'{c.warm_s:.0f}/{p.warm_s:.0f}/{o.warm_s:.0f}':>14}"
            f" {f'{c.create_s:.1f}/{p.create_s:.1f}':>12}"
        )
    small = min(n for n in leaf_counts if n > 1) if any(n > 1 for n in leaf_counts) else None
    if small is not None:
        diff = check_same_numbers(vector_model(total, small), pl.adam(LR), batch)
        print(f"(same numbers: params after 2 steps at {small} leaves, contiguous vs pytree,")
        print(f" max |difference| = {diff:.1e}; 'warm s': compile + warm-up of each program;")
        print(
            " 'create s': pl.TrainState.create; the contiguous one packs and proves Adam leafwise)"
        )


# -- parts 3 and 4: nets trained from a loop and from fit's epoch program ------------------


class Data:
    """The training set on the device and one epoch of batches of 128."""

    def __init__(self) -> None:
        x, y, _, _, self.source = bt.load_data()
        self.x, self.y = jax.device_put(x), jax.device_put(y)
        self.n = len(x)
        self.batches = [(self.x[i], self.y[i]) for i in bt.batch_indices(self.n, self.n // BATCH)]


def flax_setup(sizes: tuple[int, ...], key: jax.Array) -> tuple[Any, Callable]:
    """bench_training's flax net and step for any widths, jitted with the state donated."""
    state, step = bt.flax_setup(key, sizes)
    return state, jax.jit(step, donate_argnums=0)


class Loop(bt.Variant):
    """A resumable training run (``bt.Variant``) that knows its arrays and warm-up."""

    def __init__(self, name: str, box: list, run: Callable[[Any], Any], steps: int):
        self.box, self.run, self.unit = box, run, steps
        self.repeat = 1
        self.arrays_in = len(jax.tree.leaves(box[0])) + 2
        self.warm_s = float("nan")
        super().__init__(name, self._chunk, lambda: jax.block_until_ready(self.box[0]))

    def _chunk(self) -> int:
        for _ in range(self.repeat):
            self.box[0] = self.run(self.box[0])
        return self.repeat * self.unit

    def warm(self, target_s: float) -> None:
        """Compile and run a chunk, then repeat chunks to last about ``target_s``."""
        t0 = time.perf_counter()
        self.chunk()
        self.finish()
        self.warm_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.chunk()
        self.finish()
        self.repeat = max(1, round(target_s / (time.perf_counter() - t0)))
        self.rates.clear()


def loop_run(step: Callable, batches: list) -> Callable[[Any], Any]:
    def run(state):
        for xb, yb in batches:
            state, _ = step(state, xb, yb)
        return state

    return run


def epoch_run(epoch_fn: Callable, data: Data) -> Callable[[Any], Any]:
    return lambda state: epoch_fn(state, data.x, data.y)[0]


def net_variants(sizes: tuple[int, ...], data: Data, *, fit: bool, flax: bool) -> list[Loop]:
    model, opt = pl.mlp(sizes), pl.adam(LR)
    key = jax.random.key(0)
    steps = len(data.batches)
    step = pl.make_train_step(model, opt)
    out: list[Loop] = []
    for how in ("auto", "pytree"):
        state = stored(model, opt, key, how)
        out.append(Loop(f"make_train_step {how}", [state], loop_run(step, data.batches), steps))
    if fit:
        epoch_fn = bt.make_epoch_fn(model, opt, data.n)
        for how in ("auto", "pytree"):
            state = stored(model, opt, key, how)
            out.append(Loop(f"fit epoch {how}", [state], epoch_run(epoch_fn, data), steps))
    if flax:
        state, fstep = flax_setup(sizes, key)
        out.append(Loop("flax + optax", [state], loop_run(fstep, data.batches), steps))
        twin, _ = flax_setup(sizes, key)
        out.append(Loop("flax + optax A/A", [twin], loop_run(fstep, data.batches), steps))
    else:  # the noise floor: the pytree loop against a second copy of itself
        state = stored(model, opt, key, "pytree")
        out.append(Loop("make_train_step pytree A/A", [state], loop_run(step, data.batches), steps))
    return out


def train_rounds(variants: list[Loop], rounds: int, target: float) -> None:
    t0 = time.perf_counter()
    for v in variants:
        v.warm(target)
    t1 = time.perf_counter()
    run_rounds([variants], rounds, lambda v: v.run_chunk())
    print(
        f"[compile + warm-up {t1 - t0:.1f}s; {rounds} interleaved rounds "
        f"{time.perf_counter() - t1:.1f}s]"
    )


def time_over(a: Loop, b: Loop) -> list[float]:
    """a's time per step over b's, round by round."""
    return [y / x for x, y in zip(a.rates, b.rates, strict=True)]


def print_loops(variants: list[Loop], base: Loop, label: str) -> None:
    print(
        f"{'variant':<28} {'steps':>6} {'ms/step':>8} {f'time/{label} (IQR)':>29}"
        f" {'arrays in':>9} {'warm s':>7}"
    )
    for v in variants:
        print(
            f"{v.name:<28} {v.steps:>6} {1e3 / v.rate:>8.3f} {ratio_cell(time_over(v, base)):>29}"
            f" {v.arrays_in:>9} {v.warm_s:>7.1f}"
        )


def print_layout_split(by_name: dict[str, Loop]) -> None:
    """Contiguous over pytree, in the loop and inside fit's program, and the per-step
    time spent outside the compiled program (the loop's time minus the epoch's)."""
    loop_c, loop_p = by_name["make_train_step auto"], by_name["make_train_step pytree"]
    fit_c, fit_p = by_name["fit epoch auto"], by_name["fit epoch pytree"]
    print(
        f"auto / pytree: make_train_step loop {ratio_cell(time_over(loop_c, loop_p))},"
        f" fit epoch {ratio_cell(time_over(fit_c, fit_p))}"
    )
    outside = [1e3 / loop.rate - 1e3 / fit.rate for loop, fit in ((loop_c, fit_c), (loop_p, fit_p))]
    print(
        f"per step outside the compiled program (loop - fit epoch): auto"
        f" {outside[0]:.3f} ms, pytree {outside[1]:.3f} ms"
    )


def part_deep(widths: list[int], data: Data, rounds: int, target: float) -> dict:
    print(
        f"\n== 3. Deep net 784-[W]x{DEPTH}-10 ({2 * DEPTH + 2} leaves), Adam, batch {BATCH};"
        f" data: {data.source} =="
    )
    out = {}
    for width in widths:
        sizes = (784,) + (width,) * DEPTH + (10,)
        n_params = sum(a * b + b for a, b in itertools.pairwise(sizes))
        print(f"\n-- W = {width} ({n_params:,} params)")
        variants = net_variants(sizes, data, fit=True, flax=True)
        train_rounds(variants, rounds, target)
        by_name = {v.name: v for v in variants}
        print_loops(variants, by_name["flax + optax"], "flax")
        print_layout_split(by_name)
        out[width] = by_name
    print(
        "('fit epoch': fit's compiled epoch, a lax.scan of the step over one shuffled epoch,\n"
        " without its train-set evaluation; 'warm s': the first chunk, compilation included)"
    )
    return out


def part_net5(data: Data, rounds: int, target: float) -> dict:
    print(f"\n== 4. No regression: the textbook net {'-'.join(map(str, NET5))} (10 leaves) ==")
    variants = net_variants(NET5, data, fit=False, flax=False)
    train_rounds(variants, rounds, target)
    by_name = {v.name: v for v in variants}
    print_loops(variants, by_name["make_train_step pytree"], "pytree")
    return by_name


# -- part 5: momentum ---------------------------------------------------------------------

# the timing order (rotated each round): each ratio's two sides are neighbours
MOMENTUM_VARIANTS: dict[str, Callable[[], optax.GradientTransformation]] = {
    "contig pl.momentum": lambda: pl.momentum(LR, momentum=0.9),
    "pl.momentum": lambda: pl.momentum(LR, momentum=0.9),
    "optax.sgd(m)": lambda: optax.sgd(LR, momentum=0.9),
    "optax.sgd(m) A/A": lambda: optax.sgd(LR, momentum=0.9),
    "contig optax.sgd(m)": lambda: optax.sgd(LR, momentum=0.9),
}


def part_momentum(total: int, rounds: int, target: float) -> None:
    print(f"\n== 5. Momentum update (0.9), {total:,} float32, jitted, donated ==")
    groups: dict[int, dict[str, Timed]] = {}
    for n in (1, 200):
        groups[n] = {COPY: copy_variant(total), **optimizer_variants(n, total, MOMENTUM_VARIANTS)}
        for v in groups[n].values():
            v.warm(target)
    run_rounds([list(g.values()) for g in groups.values()], rounds, lambda v: v.sample())
    print(
        f"{'leaves':>6} {'layout':<10} {'pl ms':>7} {'optax ms':>8} {'pl/optax (IQR)':>18}"
        f" {'pl GB/s':>7} {'of copy':>7} {'contig/pytree: pl':>17} {'optax':>6} {'A/A':>6}"
    )
    for n, g in groups.items():
        copy_bw = 12 * total / g[COPY].median / 1e9
        for layout_name, prefix in (("pytree", ""), ("contiguous", "contig ")):
            ours, theirs = g[prefix + "pl.momentum"], g[prefix + "optax.sgd(m)"]
            bw = MOMENTUM_BYTES * total / ours.median / 1e9
            tail = ""
            if prefix:
                tail = (
                    f" {bo.paired_ratio(ours, g['pl.momentum']):>17.3f}"
                    f" {bo.paired_ratio(theirs, g['optax.sgd(m)']):>6.3f}"
                    f" {bo.paired_ratio(g['optax.sgd(m) A/A'], g['optax.sgd(m)']):>6.3f}"
                )
            print(
                f"{n:>6} {layout_name:<10} {ours.median * 1e3:>7.3f} {theirs.median * 1e3:>8.3f}"
                f" {ratio_cell(bo.ratios(ours, theirs)):>18} {bw:>7.2f} {bw / copy_bw:>7.2f}" + tail
            )
    print(
        "(20 B per parameter: reads g, p, v, writes p, v; 'A/A': optax.sgd(m) on the pytree\n"
        " against a second copy of itself)"
    )


# -- main ---------------------------------------------------------------------------------


def summary(adam: dict | None, deep: dict | None, net5: dict | None) -> None:
    print("\n== summary: targets ==")
    if adam is not None and 1 in adam:
        one = adam[1]
        r = bo.paired_ratio(one["contiguous pl.adam"], one["optax.adam"])
        floor = bo.paired_ratio(one["optax.adam A/A"], one["optax.adam"])
        print(f"  one-array Adam update, contiguous / optax: {verdict(r, 1.02, floor)}")
        for n in sorted(adam):
            if n > 1:
                name = "contiguous pl.adam"
                t = bo.paired_ratio(adam[n][name], one[name])
                ref = bo.paired_ratio(adam[n]["optax.adam"], one["optax.adam"])
                # issue 15: within 1.2x of one array at 1,000 leaves (an earlier one: 1.1 at 200)
                targets = {200: 1.10, 1000: 1.20}
                goal = verdict(t, targets[n]) if n in targets else f"{t:.3f} (no target)"
                print(
                    f"  Adam update at {n} leaves / one array, contiguous: {goal}"
                    f" (optax.adam: {ref:.3f})"
                )
    if net5 is not None:
        c, p = net5["make_train_step auto"], net5["make_train_step pytree"]
        floor = statistics.median(time_over(net5["make_train_step pytree A/A"], p))
        print(
            f"  5-layer net make_train_step, auto / pytree: "
            f"{verdict(statistics.median(time_over(c, p)), 1.02, floor)}"
        )
    if deep is not None:
        for width, by_name in deep.items():
            flax = by_name["flax + optax"]
            floor = statistics.median(time_over(by_name["flax + optax A/A"], flax))
            for name, goal in (("make_train_step auto", 0.7), ("fit epoch auto", 0.85)):
                t = statistics.median(time_over(by_name[name], flax))
                print(f"  W={width}: {name} / flax+optax: {verdict(t, goal, floor)}")
            loop, fit = (
                statistics.median(time_over(by_name[f"{kind} auto"], by_name[f"{kind} pytree"]))
                for kind in ("make_train_step", "fit epoch")
            )
            print(f"  W={width}: auto / pytree (no target): loop {loop:.3f}, fit epoch {fit:.3f}")


def int_list(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1M params, few rounds")
    parser.add_argument("--parts", default="1,2,3,4,5", help="which tables (comma-separated)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of the update tables")
    parser.add_argument("--train-rounds", type=int, default=None, help="rounds of tables 3-4")
    parser.add_argument("--leaves", default=None, help="leaf counts of table 1")
    parser.add_argument("--step-leaves", default=None, help="leaf counts of table 2")
    parser.add_argument("--widths", default=None, help="deep-net widths of table 3")
    args = parser.parse_args()
    quick = args.quick
    parts = set(int_list(args.parts))
    rounds = args.rounds or (5 if quick else 15)
    train_rounds_ = args.train_rounds or (3 if quick else 7)
    target = 0.005 if quick else 0.015
    total = 2**20 if quick else 2**22
    leaves = int_list(args.leaves or ("1,10,200,1000" if quick else "1,10,200,1000,5000"))
    step_leaves = int_list(args.step_leaves or ("1,10,200" if quick else "1,10,200,1000"))
    widths = int_list(args.widths or ("32" if quick else "100,32"))

    print(
        f"jax {jax.__version__}, optax {optax.__version__}, purelearn {pl.__version__}, "
        f"{jax.devices()[0].device_kind}, {os.cpu_count()} CPUs" + (" (--quick)" if quick else "")
    )
    t_start = time.perf_counter()
    adam = part_adam(leaves, total, rounds, target) if 1 in parts else None
    if 2 in parts:
        part_step(step_leaves, 2**18 if quick else 2**20, rounds, target)
    data = Data() if parts & {3, 4} else None
    deep = part_deep(widths, data, train_rounds_, 0.3 if quick else 0.5) if 3 in parts else None
    net5 = part_net5(data, rounds, 0.2 if quick else 0.3) if 4 in parts else None
    if 5 in parts:
        part_momentum(total, rounds, target)
    summary(adam, deep, net5)
    print(f"[total {time.perf_counter() - t_start:.0f}s]")


if __name__ == "__main__":
    main()
