"""Fused kernels for the book's trial, compiled with numba (the optional ``fast`` extra).

``train`` runs a plain net (no BatchNorm, no dropout) under the book's ``SGD`` through
``sgd_epoch``, up to 64 updates a call (``train.FAST_CHUNK``; the book's epoch of 4 is one call):
minibatch gather, forward, softmax, backward, weight decay and the SGD update in one compiled
loop. The matrix products are the same BLAS products as the NumPy path (numba's
``np.dot`` calls SciPy's BLAS); what it saves is the element-wise passes NumPy makes one array
operation at a time (bias, ReLU and its mask, softmax, the bias gradients, weight decay, SGD:
each fused into the pass next to it, while its arrays are still in cache) and ~50 Python calls
per update.

Same science as the NumPy path: the same initial weights, minibatches and update rule
(``W -= lr * (dW + weight_decay * W)``); sums run in another order and ``exp`` is another
implementation, so the numbers agree to round-off, not bit for bit (tests/test_nn_fast.py).

Without numba, or with ``HPO_NN_FAST=0`` in the environment, ``kernels()`` is None and
everything runs on NumPy, as it does if numba fails to load or cache the kernels. numba is
imported on the first training, not with ``hpo.nn`` (~0.3 s), and the compiled kernels are
cached on disk (``cache=True``, next to this module, else numba's user-wide cache): a process
loads them in ~0.3 s; the first training after an install compiles them (~5-15 s, once per
dtype and number of layers).
"""

from __future__ import annotations

import os
from types import SimpleNamespace

_kernels: SimpleNamespace | bool | None = None  # None: not tried yet; False: unavailable


def enabled() -> bool:
    """False when ``HPO_NN_FAST=0`` asks for the NumPy path."""
    return os.environ.get("HPO_NN_FAST", "1").strip() != "0"


def kernels() -> SimpleNamespace | None:
    """The compiled kernels (``bias_relu``, ``sgd_epoch``), or None: numba missing or disabled."""
    global _kernels
    if not enabled():
        return None
    if _kernels is None:
        try:
            _kernels = _build()
        except Exception:  # noqa: BLE001 - no numba, or one that cannot load or cache: NumPy
            _kernels = False
    return _kernels or None


def _build() -> SimpleNamespace:
    from hpo.nn import _kernels as k

    return SimpleNamespace(bias_relu=k.bias_relu, sgd_epoch=k.sgd_epoch)
