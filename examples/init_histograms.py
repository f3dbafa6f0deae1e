"""The textbook's weight-initialization experiment, as text.

A batch of 1000 Gaussian inputs flows through 5 fully connected layers of 100
units with no bias; each layer's weights come from an initializer, and we look
at the distribution of each layer's activations. The chapter's findings:

* std 1 with sigmoid: outputs pile up at 0 and 1, where the gradient vanishes;
* std 0.01: outputs collapse onto one value (0.5 for sigmoid), so the units
  all say the same thing;
* Xavier (std sqrt(1/n)) keeps a healthy spread for sigmoid and tanh;
* for ReLU, Xavier's activations shrink layer after layer, while He
  (std sqrt(2/n)) keeps them the same size.

Run::

    python examples/init_histograms.py [--seed 0]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import purelearn as pl

ACTIVATIONS = {"sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh, "relu": jax.nn.relu}
INITIALIZERS = {
    "std=1": pl.normal(1.0),
    "std=0.01": pl.normal(0.01),
    "xavier": pl.xavier_normal(),
    "he": pl.he_normal(),
}
BINS = 10
BAR = 30


def activation_statistics(
    key: jax.Array, *, num_examples: int = 1000, width: int = 100, depth: int = 5
) -> dict[str, dict[str, list[dict]]]:
    """Per-layer activation statistics for every activation and initializer.

    Returns ``{activation: {initializer: [per layer {"mean", "std",
    "saturated", "histogram", "range"}]}}``, where ``saturated`` is the share
    of outputs in the flat 5% ends of the activation's range (sigmoid below
    0.05 or above 0.95, tanh beyond +-0.95; for ReLU the share of exact zeros)
    and ``histogram`` the share of outputs (ReLU: of non-zero outputs) in each
    of 10 equal bins over ``range``.
    """
    data_key, weight_key = jax.random.split(key)
    x0 = jax.random.normal(data_key, (num_examples, width))
    # The same keys everywhere: all four initializers draw N(0, 1) * std, so
    # the runs differ only in the weights' scale, as in the textbook.
    keys = jax.random.split(weight_key, depth)
    out: dict[str, dict[str, list[dict]]] = {}
    for act_name, act in ACTIVATIONS.items():
        out[act_name] = {}
        for init_name, init in INITIALIZERS.items():
            x, layers = x0, []
            for k in keys:
                x = act(x @ init(k, (width, width)))
                layers.append(_summary(np.asarray(x, np.float64), act_name))
            out[act_name][init_name] = layers
    return out


def _summary(a: np.ndarray, act_name: str) -> dict:
    if act_name == "sigmoid":
        lo, hi = 0.0, 1.0
        saturated = np.mean((a < 0.05) | (a > 0.95))
    elif act_name == "tanh":
        lo, hi = -1.0, 1.0
        saturated = np.mean(np.abs(a) > 0.95)
    else:
        # Half of ReLU's outputs are exact zeros; histogram the other half.
        lo, hi = 0.0, max(float(a.max()), 1e-30)
        saturated = np.mean(a == 0)
    shown = a[a > 0] if act_name == "relu" else a
    hist = np.histogram(shown, bins=BINS, range=(lo, hi))[0] / max(shown.size, 1)
    return {
        "mean": float(a.mean()),
        "std": float(a.std()),
        "saturated": float(saturated),
        "histogram": hist.tolist(),
        "range": (lo, hi),
    }


def render(stats: dict[str, dict[str, list[dict]]]) -> str:
    """The statistics as text: one histogram row of bar glyphs per layer."""
    glyphs = " .:-=+*#%@"
    lines = []
    for act_name, by_init in stats.items():
        lines.append(f"=== {act_name} " + "=" * 60)
        for init_name, layers in by_init.items():
            sat = "zeros" if act_name == "relu" else "saturated"
            lines.append(f"  {init_name}")
            for i, layer in enumerate(layers, 1):
                peak = max(layer["histogram"]) or 1.0
                bar = "".join(
                    glyphs[min(round(h / peak * (len(glyphs) - 1)), len(glyphs) - 1)]
                    for h in layer["histogram"]
                )
                lines.append(
                    f"    layer {i}: mean {layer['mean']:7.3f}  std {layer['std']:7.3f}  "
                    f"{sat} {layer['saturated']:6.1%}  |{bar}|"
                    + (f"  (0, {layer['range'][1]:.3g}]" if act_name == "relu" else "")
                )
        lines.append("")
    lines.append(
        "Histogram bars: 10 equal bins over the activation's range "
        "(sigmoid [0, 1], tanh [-1, 1], relu's non-zero outputs (0, max]); "
        "denser glyph = more outputs."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="activation statistics per initializer")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(render(activation_statistics(jax.random.key(args.seed))))


if __name__ == "__main__":
    main()
