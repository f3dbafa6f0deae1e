"""Forward + backward cost of purelearn's normalizations against flax.linen.

For batch, layer, group and instance norm on a conv activation (32, 28, 28, 64)
and a dense activation (4096, 1024), one jitted ``value_and_grad`` (with
respect to input, scale and bias) of ``sum(norm(x) * cotangent)`` for:

* ``purelearn``: the shipped functions (custom JVP rules),
* ``pl-autodiff``: the same forward pass differentiated by plain JAX autodiff
  (what the custom rules replace; they stay only if they beat it),
* ``flax-exact``: ``flax.linen`` with ``use_fast_variance=False`` (same math),
* ``flax-fast``: ``flax.linen`` defaults (``E[x^2] - E[x]^2``: cheaper, unstable).

Two measures, side by side in one run:

* ``time``: median wall time, the variants interleaved round by round so that
  load on the machine hits all of them alike, with each ratio to purelearn;
* ``traffic``: XLA's own estimate of bytes read and written by the compiled
  program (``cost_analysis()["bytes accessed"]``), in units of the size of x.
  It is deterministic: the passes over memory the backend actually emits.

Instance norm has no spatial axis on a rank-2 input, so the dense shape is
read as (4096, 32, 32) (NLC) for it. Every program is compiled ahead of time
(``jit(...).lower(...).compile()``), so each variant runs the code it was
traced with. ``--parity`` instead prints the largest deviation of each
purelearn normalization from flax (exact variance) on these shapes.

    python benchmarks/bench_normalization.py [--repeats 20] [--parity]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from unittest import mock

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import purelearn as pl
from purelearn import normalization

EPS = 1e-5
MOMENTUM = 0.9
KINDS = ("batch", "layer", "group", "instance")
SHAPES = ((32, 28, 28, 64), (4096, 1024))
VARIANTS = ("purelearn", "pl-autodiff", "flax-exact", "flax-fast")


def _shape(kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    return (4096, 32, 32) if kind == "instance" and len(shape) == 2 else shape


def _groups(c: int) -> int:
    return 32 if c % 32 == 0 else 1


def ours(kind: str) -> Callable:
    def f(x, scale, bias):
        if kind == "batch":
            stats = pl.BatchNormStats.init(x.shape[-1])
            return pl.batch_norm(x, scale, bias, stats, train=True, momentum=MOMENTUM, eps=EPS)
        if kind == "layer":
            return pl.layer_norm(x, scale, bias, eps=EPS)
        if kind == "group":
            return pl.group_norm(x, _groups(x.shape[-1]), scale, bias, eps=EPS)
        return pl.instance_norm(x, scale, bias, eps=EPS)

    return f


def theirs(kind: str, fast: bool) -> Callable:
    def f(x, scale, bias):
        if kind == "batch":
            module = nn.BatchNorm(momentum=MOMENTUM, epsilon=EPS, use_fast_variance=fast)
        elif kind == "layer":
            module = nn.LayerNorm(epsilon=EPS, use_fast_variance=fast)
        elif kind == "group":
            module = nn.GroupNorm(_groups(x.shape[-1]), epsilon=EPS, use_fast_variance=fast)
        else:
            module = nn.InstanceNorm(epsilon=EPS, use_fast_variance=fast)
        variables = {"params": {"scale": scale, "bias": bias}}
        if kind != "batch":
            return module.apply(variables, x)
        variables["batch_stats"] = pl.BatchNormStats.init(x.shape[-1])._asdict()
        y, mutated = module.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
        return y, pl.BatchNormStats(**mutated["batch_stats"])

    return f


@contextlib.contextmanager
def _plain_autodiff() -> Iterator[None]:
    """Trace purelearn with its custom JVP rules swapped for plain autodiff."""
    jax.clear_caches()  # the library's inner jit would otherwise reuse a trace
    with (
        mock.patch.object(normalization, "_constant_on", lambda *args: False),
        mock.patch.object(normalization, "_standardize", normalization._standardize_plain),
    ):
        yield
    jax.clear_caches()


def _compiled(norm: Callable, args: tuple, plain: bool = False):
    def loss(x, scale, bias, cot):
        out = norm(x, scale, bias)
        y = out[0] if isinstance(out, tuple) else out
        return jnp.sum(y * cot)

    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
    with _plain_autodiff() if plain else contextlib.nullcontext():
        return grad.lower(*args).compile()


def _inputs(shape: tuple[int, ...], seed: int = 0) -> tuple:
    rng = np.random.default_rng(seed)
    c = shape[-1]
    x = jnp.asarray(rng.normal(1.0, 2.0, size=shape), jnp.float32)
    cot = jnp.asarray(rng.normal(size=shape), jnp.float32)
    scale = jnp.asarray(1 + 0.1 * rng.normal(size=c), jnp.float32)
    bias = jnp.asarray(0.1 * rng.normal(size=c), jnp.float32)
    return x, scale, bias, cot


def _time(fn: Callable, args: tuple) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def benchmark(repeats: int) -> None:
    print(f"jax {jax.__version__}, flax, {jax.devices()[0].platform}; median of {repeats}")
    cols = " ".join(f"{v:>24}" for v in VARIANTS)
    print(f"{'norm':8} {'shape':17}  time [ms] (ratio to purelearn) / traffic [x-sizes]")
    print(f"{'':8} {'':17} {cols}")
    for kind in KINDS:
        for base in SHAPES:
            shape = _shape(kind, base)
            args = _inputs(shape)
            fns = {
                "purelearn": _compiled(ours(kind), args),
                "pl-autodiff": _compiled(ours(kind), args, plain=True),
                "flax-exact": _compiled(theirs(kind, fast=False), args),
                "flax-fast": _compiled(theirs(kind, fast=True), args),
            }
            traffic = {
                name: fn.cost_analysis()["bytes accessed"] / (4 * np.prod(shape))
                for name, fn in fns.items()
            }
            for fn in fns.values():
                _time(fn, args)  # warm up
            times: dict[str, list[float]] = {name: [] for name in fns}
            for _ in range(repeats):
                for name, fn in fns.items():
                    times[name].append(_time(fn, args))
            med = {name: statistics.median(t) for name, t in times.items()}
            cells = " ".join(
                f"{med[v] * 1e3:7.2f} ({med[v] / med['purelearn']:4.2f}x) / {traffic[v]:4.1f}"
                for v in VARIANTS
            )
            print(f"{kind:8} {shape!s:17} {cells}", flush=True)
    print("time ratio > 1: slower than purelearn. traffic: bytes accessed / bytes of x.")


def parity() -> None:
    """Largest |purelearn - flax (exact variance)| over each output."""
    print("max |purelearn - flax.linen (use_fast_variance=False)|, float32, eps 1e-5")
    for kind in KINDS:
        for base in SHAPES:
            shape = _shape(kind, base)
            x, scale, bias, _ = _inputs(shape, seed=1)
            if kind == "batch":
                print(f"{kind:8} {shape!s:17} {_batch_parity(x, scale, bias)}")
                continue
            mine = jax.jit(ours(kind))(x, scale, bias)
            dev = float(jnp.max(jnp.abs(mine - theirs(kind, fast=False)(x, scale, bias))))
            print(f"{kind:8} {shape!s:17} y {dev:.2e}")
    # The large-offset case: 1e4 + N(0, 1).
    rng = np.random.default_rng(0)
    x = jnp.asarray(1e4 + rng.normal(size=(256, 64)), jnp.float32)
    x64 = np.asarray(x, np.float64)
    ref = (x64 - x64.mean(0)) / np.sqrt(x64.var(0) + EPS)
    print("\nbatch norm of 1e4 + N(0, 1), float32 (256, 64), against float64:")
    stats0 = pl.BatchNormStats.init(64)
    for name, fn in [
        ("purelearn", lambda: pl.batch_norm(x, None, None, stats0, train=True, momentum=0.0)),
        ("flax-exact", lambda: _flax_bn(x, fast=False)),
        ("flax-fast", lambda: _flax_bn(x, fast=True)),
    ]:
        y, s = fn()
        y_err = float(np.max(np.abs(np.asarray(y, np.float64) - ref)))
        var_err = float(np.max(np.abs(np.asarray(s.var, np.float64) / x64.var(0) - 1)))
        print(f"  {name:11} max |y error| {y_err:.2e}, max relative var error {var_err:.2e}")


def _batch_parity(x, scale, bias) -> str:
    """Five training steps side by side, then evaluation with the running stats."""
    module = nn.BatchNorm(momentum=MOMENTUM, epsilon=EPS, use_fast_variance=False)
    params = {"scale": scale, "bias": bias}

    @jax.jit
    def steps(x, stats, flax_stats):
        y, stats = pl.batch_norm(x, scale, bias, stats, train=True, momentum=MOMENTUM, eps=EPS)
        variables = {"params": params, "batch_stats": flax_stats._asdict()}
        y_f, mutated = module.apply(
            variables, x, use_running_average=False, mutable=["batch_stats"]
        )
        return y, stats, y_f, pl.BatchNormStats(**mutated["batch_stats"])

    stats = flax_stats = pl.BatchNormStats.init(x.shape[-1])
    dev_y = dev_stats = 0.0
    for i in range(5):
        y, stats, y_f, flax_stats = steps(x * (1 + i) + 3 * i, stats, flax_stats)
        dev_y = max(dev_y, float(jnp.max(jnp.abs(y - y_f))))
        for a, b in zip(stats, flax_stats, strict=True):
            dev_stats = max(dev_stats, float(jnp.max(jnp.abs(a - b) / (1 + jnp.abs(b)))))
    y_eval, _ = pl.batch_norm(x, scale, bias, stats, train=False, eps=EPS)
    variables = {"params": params, "batch_stats": flax_stats._asdict()}
    y_eval_f = module.apply(variables, x, use_running_average=True)
    dev_eval = float(jnp.max(jnp.abs(y_eval - y_eval_f)))
    return (
        f"y (5 train steps) {dev_y:.2e}, running stats (relative) {dev_stats:.2e}, "
        f"eval y {dev_eval:.2e}"
    )


def _flax_bn(x, fast):
    module = nn.BatchNorm(
        momentum=0.0, epsilon=EPS, use_fast_variance=fast, use_scale=False, use_bias=False
    )
    y, mutated = module.apply(
        {"batch_stats": pl.BatchNormStats.init(x.shape[-1])._asdict()},
        x,
        use_running_average=False,
        mutable=["batch_stats"],
    )
    return y, pl.BatchNormStats(**mutated["batch_stats"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--parity", action="store_true", help="print deviations from flax")
    args = parser.parse_args()
    if args.parity:
        parity()
    else:
        benchmark(args.repeats)


if __name__ == "__main__":
    main()
