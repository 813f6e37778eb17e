"""Optimizers, after the book's ``common/optimizer.py``.

``update(params, grads)`` changes the arrays of ``params`` in place (the layers hold the same
arrays). State (velocities, moments) is created on the first call, in each parameter's dtype.
"""

from __future__ import annotations

import numpy as np

Params = dict[str, np.ndarray]


class SGD:
    """``W -= lr * dW`` (``lr * dW`` goes into an array kept per parameter: nothing is
    allocated per step)."""

    def __init__(self, lr: float = 0.01) -> None:
        self.lr = float(lr)
        self._step: Params = {}

    def update(self, params: Params, grads: Params) -> None:
        lr = self.lr
        for key, p in params.items():
            step = self._step.get(key)
            if step is None or step.shape != p.shape or step.dtype != p.dtype:
                step = self._step[key] = np.empty_like(p)
            np.multiply(grads[key], lr, out=step)
            p -= step


class Momentum:
    """``v = momentum * v - lr * dW; W += v``."""

    def __init__(self, lr: float = 0.01, momentum: float = 0.9) -> None:
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.v: Params | None = None

    def update(self, params: Params, grads: Params) -> None:
        if self.v is None:
            self.v = {key: np.zeros_like(p) for key, p in params.items()}
        for key, p in params.items():
            v = self.v[key]
            v *= self.momentum
            v -= self.lr * grads[key]
            p += v


class AdaGrad:
    """``h += dW**2; W -= lr * dW / (sqrt(h) + 1e-7)``."""

    def __init__(self, lr: float = 0.01) -> None:
        self.lr = float(lr)
        self.h: Params | None = None

    def update(self, params: Params, grads: Params) -> None:
        if self.h is None:
            self.h = {key: np.zeros_like(p) for key, p in params.items()}
        for key, p in params.items():
            g, h = grads[key], self.h[key]
            h += g * g
            p -= self.lr * g / (np.sqrt(h) + 1e-7)


class Adam:
    """Adam with the book's bias correction folded into the step size."""

    def __init__(self, lr: float = 0.001, beta1: float = 0.9, beta2: float = 0.999) -> None:
        self.lr = float(lr)
        self.beta1 = float(beta1)
        self.beta2 = float(beta2)
        self.iter = 0
        self.m: Params | None = None
        self.v: Params | None = None

    def update(self, params: Params, grads: Params) -> None:
        if self.m is None:
            self.m = {key: np.zeros_like(p) for key, p in params.items()}
            self.v = {key: np.zeros_like(p) for key, p in params.items()}
        self.iter += 1
        b1, b2 = self.beta1, self.beta2
        lr_t = self.lr * np.sqrt(1.0 - b2**self.iter) / (1.0 - b1**self.iter)
        lr_t = float(lr_t)
        for key, p in params.items():
            g, m, v = grads[key], self.m[key], self.v[key]
            m += (1.0 - b1) * (g - m)
            v += (1.0 - b2) * (g * g - v)
            p -= lr_t * m / (np.sqrt(v) + 1e-7)


OPTIMIZERS = {"sgd": SGD, "momentum": Momentum, "adagrad": AdaGrad, "adam": Adam}


def make_optimizer(name: str, lr: float, **kw: float) -> SGD | Momentum | AdaGrad | Adam:
    """Build an optimizer by name: ``"sgd"``, ``"momentum"``, ``"adagrad"`` or ``"adam"``.

    Extra keywords go to the constructor (``momentum=``, ``beta1=``, ``beta2=``).
    """
    cls = OPTIMIZERS.get(name.lower()) if isinstance(name, str) else None
    if cls is None:
        allowed = ", ".join(repr(k) for k in OPTIMIZERS)
        raise ValueError(f"unknown optimizer {name!r}; allowed: {allowed}")
    return cls(lr, **kw)
