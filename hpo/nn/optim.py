"""Optimizers, after the book's ``common/optimizer.py``.

``update(params, grads)`` changes the arrays of ``params`` in place (the layers hold the same
arrays). State (velocities, moments) is created on the first call, in each parameter's dtype.
"""

from __future__ import annotations

from operator import is_

import numpy as np

from hpo.nn.layers import axpy

Params = dict[str, np.ndarray]


def _address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def flat_pair(params: Params, grads: Params) -> tuple[np.ndarray, np.ndarray] | None:
    """``(P, G)`` when the parameters are views that exactly tile one contiguous 1-D array ``P``
    and each gradient is the view at the same offset into a like array ``G`` (as ``MLP`` lays
    them out); else None."""
    ps = list(params.values())
    P, G = ps[0].base if ps else None, grads[next(iter(params))].base if ps else None
    if not (isinstance(P, np.ndarray) and isinstance(G, np.ndarray) and P.ndim == G.ndim == 1
            and P.shape == G.shape and P.dtype == G.dtype and P.flags.c_contiguous
            and G.flags.c_contiguous):
        return None
    spans = []
    for key, p in params.items():
        g = grads[key]
        if not (p.base is P and g.base is G and p.flags.c_contiguous and g.flags.c_contiguous):
            return None
        at = _address(p) - _address(P)
        if at != _address(g) - _address(G):
            return None
        spans.append((at, p.nbytes))
    spans.sort()
    end = 0
    for at, size in spans:
        if at != end:
            return None
        end = at + size
    return (P, G) if end == P.nbytes else None


class SGD:
    """``W -= lr * dW``, in one pass over each parameter (BLAS ``axpy``); in one call for all
    of them when they and their gradients are views of two flat arrays (``flat_pair``)."""

    def __init__(self, lr: float = 0.01) -> None:
        self.lr = float(lr)
        self._seen: tuple[list, list, tuple | None] = ([], [], None)  # arrays -> flat_pair

    def update(self, params: Params, grads: Params) -> None:
        a = -self.lr
        ps, gs, flat = self._seen
        if not (len(ps) == len(params) and all(map(is_, params.values(), ps))
                and all(map(is_, map(grads.__getitem__, params), gs))):
            ps, gs = list(params.values()), [grads[k] for k in params]
            flat = flat_pair(params, grads)
            self._seen = (ps, gs, flat)
        if flat is not None:
            axpy(a, flat[1], flat[0])
            return
        for key, p in params.items():
            axpy(a, grads[key], p)


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
