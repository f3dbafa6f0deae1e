"""The textbook's multi-layer net in NumPy: the baseline of ``bench_training.py``.

Layers with explicit forward and backward passes, as the chapter builds them::

    Affine           y = x W + b            dx = dy W^T,  dW = x^T dy,  db = sum(dy)
    Relu             y = max(x, 0)          dx = dy * (x > 0)
    SoftmaxWithLoss  p = softmax(x), L = -mean(log p[t])      dx = (p - onehot(t)) / N

and the textbook's Adam (bias correction folded into the step size)::

    t += 1;  lr_t = lr * sqrt(1 - b2**t) / (1 - b1**t)
    m += (1 - b1) (g - m);  v += (1 - b2) (g*g - v);  W -= lr_t m / (sqrt(v) + eps)

Parameters are updated in place, as in the textbook; ``dtype`` is float32 by
default (the same arithmetic width as the JAX runs; the textbook's own code
ends up in float64 because ``np.random.randn`` does).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np


class Affine:
    def __init__(self, w: np.ndarray, b: np.ndarray):
        self.w, self.b = w, b
        self.x: np.ndarray | None = None
        self.dw = np.zeros_like(w)
        self.db = np.zeros_like(b)

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.x = x
        out = x @ self.w
        out += self.b
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        np.matmul(self.x.T, dout, out=self.dw)
        np.sum(dout, axis=0, out=self.db)
        return dout @ self.w.T


class Relu:
    def __init__(self):
        self.mask: np.ndarray | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.mask = x <= 0
        out = x.copy()
        out[self.mask] = 0
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        dout[self.mask] = 0
        return dout


class SoftmaxWithLoss:
    def __init__(self):
        self.p: np.ndarray | None = None
        self.t: np.ndarray | None = None

    def forward(self, x: np.ndarray, t: np.ndarray) -> float:
        z = x - x.max(axis=1, keepdims=True)
        e = np.exp(z)
        self.p = e / e.sum(axis=1, keepdims=True)
        self.t = t
        rows = np.arange(len(t))
        return float(-np.mean(np.log(self.p[rows, t] + 1e-7)))

    def backward(self) -> np.ndarray:
        dx = self.p.copy()
        dx[np.arange(len(self.t)), self.t] -= 1
        dx /= len(self.t)
        return dx


class MultiLayerNet:
    """Affine -> Relu -> ... -> Affine -> SoftmaxWithLoss, He-initialized."""

    def __init__(self, sizes: Sequence[int], *, seed: int = 0, dtype=np.float32):
        rng = np.random.default_rng(seed)
        self.params: dict[str, np.ndarray] = {}
        self.layers: list[Affine | Relu] = []
        self.affines: list[Affine] = []
        for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes), start=1):
            w = (rng.standard_normal((n_in, n_out)) * np.sqrt(2.0 / n_in)).astype(dtype)
            b = np.zeros(n_out, dtype)
            self.params[f"W{i}"], self.params[f"b{i}"] = w, b
            affine = Affine(w, b)
            self.affines.append(affine)
            self.layers.append(affine)
            if i < len(sizes) - 1:
                self.layers.append(Relu())
        self.last = SoftmaxWithLoss()

    def loss(self, x: np.ndarray, t: np.ndarray) -> float:
        for layer in self.layers:
            x = layer.forward(x)
        return self.last.forward(x, t)

    def gradient(self, x: np.ndarray, t: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        loss = self.loss(x, t)
        dout = self.last.backward()
        for layer in reversed(self.layers):
            dout = layer.backward(dout)
        grads = {}
        for i, affine in enumerate(self.affines, start=1):
            grads[f"W{i}"], grads[f"b{i}"] = affine.dw, affine.db
        return loss, grads

    def accuracy(self, x: np.ndarray, t: np.ndarray) -> float:
        for layer in self.layers:
            x = layer.forward(x)
        return float(np.mean(np.argmax(x, axis=1) == t))


class Adam:
    """The textbook's Adam, updating ``params`` in place."""

    def __init__(self, lr: float = 0.001, beta1: float = 0.9, beta2: float = 0.999):
        self.lr, self.beta1, self.beta2 = lr, beta1, beta2
        self.iter = 0
        self.m: dict[str, np.ndarray] | None = None
        self.v: dict[str, np.ndarray] | None = None

    def update(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        if self.m is None:
            self.m = {k: np.zeros_like(p) for k, p in params.items()}
            self.v = {k: np.zeros_like(p) for k, p in params.items()}
        self.iter += 1
        lr_t = self.lr * math.sqrt(1.0 - self.beta2**self.iter) / (1.0 - self.beta1**self.iter)
        for key, p in params.items():
            g, m, v = grads[key], self.m[key], self.v[key]
            m += (1 - self.beta1) * (g - m)
            v += (1 - self.beta2) * (g * g - v)
            p -= (lr_t * m / (np.sqrt(v) + 1e-7)).astype(p.dtype, copy=False)


def train_step(net: MultiLayerNet, opt: Adam, x: np.ndarray, t: np.ndarray) -> float:
    """One mini-batch step; returns the batch loss."""
    loss, grads = net.gradient(x, t)
    opt.update(net.params, grads)
    return loss
