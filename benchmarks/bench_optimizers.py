"""Optimizer update time of purelearn against optax, side by side.

For each of the seven optimizers and three parameter layouts, one jitted step

    updates, opt_state = opt.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)

with the params and the optimizer state donated (``donate_argnums=(0, 1)``),
is timed for purelearn and for its optax counterpart:

    sgd       optax.sgd                       momentum  optax.sgd(momentum=0.9)
    nesterov  optax.sgd(momentum, nesterov)   adagrad   optax.adagrad
    rmsprop   optax.rmsprop                   adam      optax.adam
    adamw     optax.adamw
    adam-flat optax.flatten(pl.adam) vs optax.flatten(optax.adam): the fused
              one-buffer layout optax offers (leaves concatenated per step)

(``adagrad``/``rmsprop`` differ from optax in where eps goes and how the
accumulator starts, not in how much work a step does.) The layouts are

* ``one-array``: one float32 array of 4M (2**22) elements,
* ``200-leaf``: a pytree of 200 arrays (1-D and 2-D, sizes spread over two
  orders of magnitude) holding the same 4M elements,
* ``5-layer-net``: the textbook's 784-100-100-100-100-10 net (weights and
  biases, 109,810 elements: small, so per-call overhead dominates).

All variants live in one process and are timed in interleaved rounds (each
round times every variant once; the two sides of a pair back to back, the
first side alternating); the table gives each median time and the
purelearn/optax time ratio as the median of the per-round ratios, with its
interquartile range. A control pair (optax Adam against itself) shows the
noise floor of a ratio on the machine. Bandwidth is the bytes a step must move
(Adam: read g, p, m, v and write p, m, v, so 28 bytes per float32 parameter)
over its time, against a plain jitted donated ``a + b`` kernel of the same
size (12 bytes per element). A donated no-op jit taking Adam's arguments
measures the per-call cost of passing the arrays (the per-leaf overhead that
no optimizer can avoid), and ``--hlo`` counts the kernels of each program.
Run::

    python benchmarks/bench_optimizers.py [--quick] [--rounds N] [--hlo]
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import re
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

import purelearn as pl

SIZE = 2**22  # 4M float32 = 16 MiB per buffer
NET_SIZES = (784, 100, 100, 100, 100, 10)
LR = 1e-3
LAYOUTS = ("one-array", "200-leaf", "5-layer-net")

# name -> (purelearn factory, optax factory, float32 buffers read+written per parameter).
# Reads: g, p and each state buffer; writes: p and each state buffer.
OPTIMIZERS: dict[str, tuple[Callable, Callable, int]] = {
    "sgd": (lambda: pl.sgd(LR), lambda: optax.sgd(LR), 3),
    "momentum": (
        lambda: pl.momentum(LR, momentum=0.9),
        lambda: optax.sgd(LR, momentum=0.9),
        5,
    ),
    "nesterov": (
        lambda: pl.nesterov(LR, momentum=0.9),
        lambda: optax.sgd(LR, momentum=0.9, nesterov=True),
        5,
    ),
    "adagrad": (lambda: pl.adagrad(LR), lambda: optax.adagrad(LR), 5),
    "rmsprop": (
        lambda: pl.rmsprop(LR, decay=0.99, eps=1e-7),
        lambda: optax.rmsprop(LR, decay=0.99, eps=1e-7),
        5,
    ),
    "adam": (lambda: pl.adam(LR), lambda: optax.adam(LR), 7),
    "adamw": (
        lambda: pl.adamw(LR, weight_decay=1e-4),
        lambda: optax.adamw(LR, weight_decay=1e-4),
        7,
    ),
    # the fused-buffer layout optax already offers: leaves concatenated into one buffer
    "adam-flat": (
        lambda: optax.flatten(pl.adam(LR)),
        lambda: optax.flatten(optax.adam(LR)),
        7,
    ),
}


# -- parameter layouts ---------------------------------------------------------


def _leaf_shapes(total: int, blocks: int = 40) -> list[tuple[int, ...]]:
    """200 shapes (``blocks`` blocks of five leaves) summing exactly to ``total``.

    Each block is a layer-like group: ``(r, 320)``, ``(320,)``, ``(320, 64)``,
    ``(64,)``, ``(r,)``, with ``r`` as large as fits; the last leaf takes the
    remainder. Sizes span 64 to ``320 r`` elements. Few distinct shapes keep
    compilation short (XLA:CPU compiles one kernel per distinct fusion).
    """
    r = 16
    while blocks * (320 * (r + 16) + 320 + 320 * 64 + 64 + r + 16) <= total:
        r += 16
    block = [(r, 320), (320,), (320, 64), (64,), (r,)]
    shapes = block * blocks
    rest = total - sum(math.prod(s) for s in shapes)
    shapes[-1] = (r + rest,)
    return shapes


def layouts(quick: bool) -> dict[str, Any]:
    """The three parameter pytrees (as shape trees), by name."""
    size = SIZE // 4 if quick else SIZE
    net = [{"w": (n_in, n_out), "b": (n_out,)} for n_in, n_out in itertools.pairwise(NET_SIZES)]
    return {
        "one-array": {"w": (size,)},
        "200-leaf": {f"p{i:03d}": s for i, s in enumerate(_leaf_shapes(size))},
        "5-layer-net": net,
    }


def _is_shape(x: Any) -> bool:
    return isinstance(x, tuple) and all(isinstance(d, int) for d in x)


def _materialize(shape_tree: Any, key: jax.Array, scale: float = 1.0) -> Any:
    leaves, treedef = jax.tree.flatten(shape_tree, is_leaf=_is_shape)
    keys = jax.random.split(key, len(leaves))
    arrays = [
        scale * jax.random.normal(k, s, jnp.float32) for k, s in zip(keys, leaves, strict=True)
    ]
    return jax.tree.unflatten(treedef, arrays)


def num_elements(tree: Any) -> int:
    return sum(x.size for x in jax.tree.leaves(tree))


# -- the timed programs ----------------------------------------------------------


def make_step(opt: optax.GradientTransformation) -> Callable:
    def step(params, opt_state, grads):
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return jax.jit(step, donate_argnums=(0, 1))


def _copy_kernel(a, b):
    return a + b


def _no_op(params, opt_state, grads):
    del grads
    return params, opt_state


class Runner:
    """One timed variant: a donated jitted function and the state it threads."""

    def __init__(self, fn: Callable, carry: tuple, fixed: tuple):
        self.fn = fn
        self.carry = carry
        self.fixed = fixed
        self.inner = 1
        self.samples: list[float] = []

    def call(self) -> None:
        out = self.fn(*self.carry, *self.fixed)
        self.carry = out if isinstance(out, tuple) else (out,)

    def block(self) -> None:
        jax.block_until_ready(self.carry)

    def calibrate(self, target_s: float) -> None:
        """Warm up (compile), then pick calls per sample to last about ``target_s``."""
        self.call()
        self.block()
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            self.call()
            self.block()
            times.append(time.perf_counter() - t0)
        self.inner = max(1, min(1000, round(target_s / max(min(times), 1e-7))))

    def sample(self) -> None:
        t0 = time.perf_counter()
        for _ in range(self.inner):
            self.call()
        self.block()
        self.samples.append((time.perf_counter() - t0) / self.inner)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


def ratios(a: Runner, b: Runner) -> list[float]:
    """a's time over b's time, round by round."""
    return [x / y for x, y in zip(a.samples, b.samples, strict=True)]


def paired_ratio(a: Runner, b: Runner) -> float:
    """Median over rounds of a's time over b's time in the same round."""
    return statistics.median(ratios(a, b))


def iqr(values: list[float]) -> tuple[float, float]:
    if len(values) < 4:
        return min(values), max(values)
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


def hlo_stats(fn: Callable, args: tuple) -> dict[str, int]:
    """Kernel counts in the optimized HLO's entry computation."""
    text = fn.lower(*args).compile().as_text()
    entry = text[text.index("ENTRY") :]
    entry = entry[: entry.index("\n}")]
    ops = re.findall(r"=\s*\S+\s+([\w-]+)\(", entry)
    skip = ("parameter", "tuple", "get-tuple-element", "constant", "bitcast")
    return {
        "fusions": sum(op == "fusion" for op in ops),
        "copies": sum(op == "copy" for op in ops),
        "kernels": sum(op not in skip for op in ops),
    }


# -- one layout: its runners -----------------------------------------------------

CONTROL = "adam A/A"  # optax Adam against itself: the noise floor of a ratio


class Layout:
    """The runners of one parameter layout: singles (copy, no-op) and pairs."""

    def __init__(self, name: str, shape_tree: Any, names: list[str], with_hlo: bool):
        self.name = name
        self.leaves = len(jax.tree.leaves(shape_tree, is_leaf=_is_shape))
        k_p, k_g = jax.random.split(jax.random.fold_in(jax.random.key(0), len(name)))
        self.size = num_elements(_materialize(shape_tree, k_p))
        self.copy = Runner(
            jax.jit(_copy_kernel, donate_argnums=0),
            (jnp.zeros(self.size, jnp.float32),),
            (jnp.ones(self.size, jnp.float32),),
        )
        adam = optax.adam(LR)
        params = _materialize(shape_tree, k_p)
        self.no_op = Runner(
            jax.jit(_no_op, donate_argnums=(0, 1)),
            (params, adam.init(params)),
            (_materialize(shape_tree, k_g),),
        )
        self.pairs: dict[str, tuple[Runner, Runner]] = {}
        self.hlo: dict[tuple[str, str], dict[str, int]] = {}
        for name_ in names:
            pair = []
            for lib, factory in zip(("purelearn", "optax"), OPTIMIZERS[name_][:2], strict=True):
                opt = factory()
                params = _materialize(shape_tree, k_p)
                grads = _materialize(shape_tree, k_g, scale=0.1)
                step = make_step(opt)
                if with_hlo:
                    self.hlo[name_, lib] = hlo_stats(step, (params, opt.init(params), grads))
                pair.append(Runner(step, (params, opt.init(params)), (grads,)))
            self.pairs[name_] = (pair[0], pair[1])
        if "adam" in self.pairs:  # the same optax program, a second copy of its buffers
            theirs = self.pairs["adam"][1]
            params = _materialize(shape_tree, k_p)
            grads = _materialize(shape_tree, k_g, scale=0.1)
            twin = Runner(theirs.fn, (params, adam.init(params)), (grads,))
            self.pairs[CONTROL] = (twin, theirs)

    def runners(self) -> list[Runner]:
        out = [self.copy, self.no_op]
        for pair in self.pairs.values():
            out.extend(r for r in pair if r not in out)
        return out


def run_rounds(layouts_: list[Layout], rounds: int) -> None:
    """Time every variant once per round; the two sides of a pair back to back.

    Within a round every layout takes its turn (copy kernel and no-op first);
    the pair order rotates and the side going first alternates, so slow
    drifts of a shared machine's load hit both sides of a ratio alike. The
    control pair shares optax's runner with the adam pair, so that runner is
    timed twice a round (its samples are split between the two pairs).
    """
    for r in range(rounds):
        for lay in layouts_:
            lay.copy.sample()
            lay.no_op.sample()
            pairs = [(k, v) for k, v in lay.pairs.items() if k != CONTROL]
            shift = r % len(pairs)
            for _, (ours, theirs) in pairs[shift:] + pairs[:shift]:
                for runner in (ours, theirs) if r % 2 == 0 else (theirs, ours):
                    runner.sample()
            if CONTROL in lay.pairs:
                twin, theirs = lay.pairs[CONTROL]
                for runner in (twin, theirs) if r % 2 == 0 else (theirs, twin):
                    runner.sample()


def pair_samples(lay: Layout, name: str) -> tuple[Runner, Runner]:
    """The pair's runners, with optax's samples from the right sampling slots."""
    ours, theirs = lay.pairs[name]
    if CONTROL not in lay.pairs or theirs is not lay.pairs[CONTROL][1]:
        return ours, theirs
    view = Runner(theirs.fn, theirs.carry, theirs.fixed)
    view.samples = theirs.samples[1::2] if name == CONTROL else theirs.samples[0::2]
    return ours, view


# -- main -------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1M elements, sgd and adam, 3 rounds"
    )
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds (default 21)")
    parser.add_argument("--layouts", default=",".join(LAYOUTS), help="comma-separated subset")
    parser.add_argument("--optimizers", default=None, help="comma-separated subset")
    parser.add_argument("--hlo", action="store_true", help="also print kernel counts per program")
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 21)
    target = 0.005 if args.quick else 0.015
    names = (args.optimizers or ("sgd,adam" if args.quick else ",".join(OPTIMIZERS))).split(",")
    wanted = args.layouts.split(",")
    for name in names:
        if name not in OPTIMIZERS:
            parser.error(f"unknown optimizer {name!r}")
    for layout in wanted:
        if layout not in LAYOUTS:
            parser.error(f"unknown layout {layout!r}")

    print(
        f"jax {jax.__version__}, optax {optax.__version__}, purelearn {pl.__version__}, "
        f"{jax.devices()[0].device_kind}, {os.cpu_count()} CPUs"
    )
    built: dict[str, Layout] = {}
    for layout, shape_tree in layouts(args.quick).items():
        if layout not in wanted:
            continue
        t0 = time.perf_counter()
        lay = Layout(layout, shape_tree, names, args.hlo)
        for runner in lay.runners():
            runner.calibrate(target)
        built[layout] = lay
        print(
            f"[{layout}: {lay.size:,} float32 in {lay.leaves} leaves; "
            f"compile + warm-up {time.perf_counter() - t0:.1f}s]"
        )
    t0 = time.perf_counter()
    run_rounds(list(built.values()), rounds)
    print(f"[{rounds} interleaved rounds: {time.perf_counter() - t0:.1f}s]")

    # -- the table
    print()
    print(
        f"{'layout':<12} {'optimizer':<9} {'purelearn':>9} {'optax':>9} {'pl/optax':>8}"
        f" {'(IQR)':>13} {'B/param':>7} {'pl GB/s':>7} {'optax GB/s':>10} {'pl/copy BW':>10}"
    )
    cell: dict[tuple[str, str], float] = {}
    for layout, lay in built.items():
        copy_bw = 12 * lay.size / lay.copy.median / 1e9
        for name in lay.pairs:
            ours, theirs = pair_samples(lay, name)
            nbytes = OPTIMIZERS["adam" if name == CONTROL else name][2] * 4
            bw_ours = nbytes * lay.size / ours.median / 1e9
            bw_theirs = nbytes * lay.size / theirs.median / 1e9
            r = ratios(ours, theirs)
            lo, hi = iqr(r)
            if name != CONTROL:
                cell[layout, name] = statistics.median(r)
            print(
                f"{layout:<12} {name:<9} {ours.median * 1e6:>7.0f}us {theirs.median * 1e6:>7.0f}us"
                f" {statistics.median(r):>8.3f} {f'({lo:.2f}-{hi:.2f})':>13} {nbytes:>7d}"
                f" {bw_ours:>7.2f} {bw_theirs:>10.2f} {bw_ours / copy_bw:>10.2f}"
            )
        print(
            f"{layout:<12} {'a+b copy':<9} {lay.copy.median * 1e6:>7.0f}us {'':>9} {'':>8}"
            f" {'':>13} {12:>7d} {copy_bw:>7.2f}"
        )
        print(
            f"{layout:<12} {'no-op':<9} {lay.no_op.median * 1e6:>7.0f}us   (a donated jit "
            f"taking Adam's {4 * lay.leaves + 1} arrays, returning {3 * lay.leaves + 1})"
        )
    print(f"('{CONTROL}': optax Adam timed against a second copy of itself: the noise floor)")

    if args.hlo:
        print()
        print("kernels per program (fusions/copies/all ops but parameters), purelearn | optax:")
        for layout, lay in built.items():
            for name in names:
                a, b = lay.hlo[name, "purelearn"], lay.hlo[name, "optax"]
                print(
                    f"  {layout:<12} {name:<9} {a['fusions']:>4}/{a['copies']}/{a['kernels']:<4}"
                    f" | {b['fusions']:>4}/{b['copies']}/{b['kernels']}"
                )

    # -- summary and targets
    print()
    tree_vs_one = None
    if "adam" in names and "one-array" in built and "200-leaf" in built:
        one, tree = built["one-array"], built["200-leaf"]
        for lib, side in (("purelearn", 0), ("optax", 1)):
            a, b = pair_samples(tree, "adam")[side], pair_samples(one, "adam")[side]
            ratio = paired_ratio(a, b)
            tree_vs_one = ratio if side == 0 else tree_vs_one
            print(
                f"Adam 200-leaf / one-array time ({lib}): {ratio:.3f} "
                f"({b.median * 1e3:.2f} -> {a.median * 1e3:.2f} ms)"
            )
        if "adam-flat" in tree.pairs:
            flat = pair_samples(tree, "adam-flat")[0]
            ratio = paired_ratio(flat, pair_samples(one, "adam")[0])
            print(
                f"Adam 200-leaf under optax.flatten / one-array time (purelearn): {ratio:.3f} "
                f"({flat.median * 1e3:.2f} ms: the concatenation and split cost more than "
                "the arrays they save)"
                if ratio > 1.10
                else f"Adam 200-leaf under optax.flatten / one-array time (purelearn): {ratio:.3f}"
            )
        extra = tree.no_op.median - one.no_op.median
        print(
            f"  of which passing the arrays (no-op jit, {4 * tree.leaves + 1} in / "
            f"{3 * tree.leaves + 1} out vs 5 / 4): +{extra * 1e3:.2f} ms"
        )
    print("targets:")
    worst = max(cell, key=cell.get)
    print(
        f"  every pl/optax ratio <= 1.0: worst {cell[worst]:.3f} ({worst[0]}/{worst[1]})"
        f" -> {verdict(cell[worst] <= 1.0)}"
    )
    one_cells = {k: v for k, v in cell.items() if k[0] == "one-array"}
    if one_cells:
        w = max(one_cells, key=one_cells.get)
        print(
            f"  one-array: every pl/optax ratio <= 1.05: worst {one_cells[w]:.3f} ({w[1]})"
            f" -> {verdict(one_cells[w] <= 1.05)}"
        )
    if tree_vs_one is not None:
        print(
            f"  Adam 200-leaf <= 1.10 x one-array (purelearn): {tree_vs_one:.3f}"
            f" -> {verdict(tree_vs_one <= 1.10)}"
        )


if __name__ == "__main__":
    main()
