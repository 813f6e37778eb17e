"""Layers of the MLP, after the book's ``common/layers.py``.

Each layer is a small class: ``forward`` keeps what ``backward`` needs, ``backward(dout)``
returns the gradient with respect to the layer's input. Layers with parameters expose them in
``.params`` (name -> array, updated in place by the optimizers) and, after ``backward``, their
gradients in ``.grads`` (same names). Arrays keep the dtype they come in with (float32 or
float64); nothing here upcasts.

Inputs are 2-D: ``(batch, features)``. Labels ``t`` are integer class indices.
"""

from __future__ import annotations

import numpy as np


class Affine:
    """``out = x @ W + b``.

    ``need_dx = False`` skips the input gradient in ``backward`` (returns ``None``): the network
    sets it on its first layer, whose input is the data.

    ``backward`` writes the gradients into arrays the layer keeps (``grads["W"]``,
    ``grads["b"]``, and its dx per batch size): a trial makes 200 updates of the same shapes, so
    nothing is allocated per update. They are valid until the next ``backward``.
    """

    def __init__(self, W: np.ndarray, b: np.ndarray) -> None:
        self.W = W
        self.b = b
        self.params = {"W": W, "b": b}
        self.grads: dict[str, np.ndarray] = {"W": np.empty_like(W), "b": np.empty_like(b)}
        self.need_dx = True
        self.x: np.ndarray | None = None
        self._ones: np.ndarray = np.ones(0, dtype=W.dtype)
        self._dx: np.ndarray | None = None

    def forward(self, x: np.ndarray, train: bool = False) -> np.ndarray:
        self.x = x
        out = x @ self.W
        out += self.b
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray | None:
        n = dout.shape[0]
        np.matmul(self.x.T, dout, out=self.grads["W"])
        if self._ones.shape[0] != n:
            self._ones = np.ones(n, dtype=dout.dtype)
        np.matmul(self._ones, dout, out=self.grads["b"])  # the column sums, as one BLAS call
        if not self.need_dx:
            return None
        dx = self._dx
        if dx is None or dx.shape[0] != n:
            dx = self._dx = np.empty((n, self.W.shape[0]), dtype=dout.dtype)
        return np.matmul(dout, self.W.T, out=dx)


class Relu:
    """``out = max(x, 0)``.

    With ``inplace=True`` the forward pass overwrites ``x`` (the network does this: its input
    is the fresh output of the previous layer). ``backward`` zeroes ``dout`` in place where the
    input was <= 0, as the book does, and returns it.
    """

    def __init__(self, inplace: bool = False) -> None:
        self.inplace = inplace
        self.out: np.ndarray | None = None
        self._zeros: np.ndarray | None = None

    def forward(self, x: np.ndarray, train: bool = False) -> np.ndarray:
        # np.maximum against a zeros array of the same shape runs numpy's SIMD loop; against the
        # scalar 0 it is ~3x slower. The zeros are kept (for the largest batch seen) and sliced.
        z = self._zeros
        if z is None or z.shape[0] < x.shape[0] or z.shape[1:] != x.shape[1:] or z.dtype != x.dtype:
            z = self._zeros = np.zeros_like(x)
        self.out = np.maximum(x, z[: x.shape[0]], out=x if self.inplace else None)
        return self.out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        # out > 0 exactly where x > 0; the bool mask multiplies as 0/1.
        np.multiply(dout, self.out > 0, out=dout)
        return dout


class Dropout:
    """Inverted dropout: at train time each unit is dropped with probability ``ratio`` and the
    kept ones are scaled by ``1 / (1 - ratio)``; at test time the layer is the identity.

    The book instead scales by ``1 - ratio`` at test time; both give the same expected
    activation, and the inverted form costs nothing at inference. The masks are drawn from
    ``rng`` (a ``numpy.random.Generator``), so a seeded generator gives reproducible masks.
    """

    def __init__(self, ratio: float, rng: np.random.Generator) -> None:
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"dropout ratio must be in [0, 1), got {ratio!r}")
        self.ratio = float(ratio)
        self.rng = rng
        self.mask: np.ndarray | None = None

    def forward(self, x: np.ndarray, train: bool = False) -> np.ndarray:
        if not train or self.ratio == 0.0:
            self.mask = None
            return x
        keep = self.rng.random(x.shape, dtype=x.dtype) >= self.ratio
        self.mask = keep * x.dtype.type(1.0 / (1.0 - self.ratio))
        return x * self.mask

    def backward(self, dout: np.ndarray) -> np.ndarray:
        if self.mask is None:
            return dout
        return dout * self.mask


class BatchNorm:
    """Batch normalization over the batch axis: ``out = gamma * (x - mean) / std + beta``.

    Train mode uses the batch statistics and updates the running averages
    (``running = momentum * running + (1 - momentum) * batch``); test mode uses the running
    averages. ``eps = 1e-6`` is the book's ``10e-7``. Unlike the book, the running variance
    starts at 1 (not 0), so early test-mode passes do not blow activations up.
    """

    def __init__(
        self, gamma: np.ndarray, beta: np.ndarray, momentum: float = 0.9, eps: float = 1e-6
    ) -> None:
        self.gamma = gamma
        self.beta = beta
        self.momentum = float(momentum)
        self.eps = float(eps)
        self.params = {"gamma": gamma, "beta": beta}
        self.grads: dict[str, np.ndarray] = {}
        self.running_mean = np.zeros_like(gamma)
        self.running_var = np.ones_like(gamma)
        self.xn: np.ndarray | None = None
        self.std: np.ndarray | None = None

    def forward(self, x: np.ndarray, train: bool = False) -> np.ndarray:
        if not train:
            scale = self.gamma / np.sqrt(self.running_var + self.eps)
            out = x * scale
            out += self.beta - self.running_mean * scale
            return out
        mu = x.mean(axis=0)
        xc = x - mu
        var = np.mean(xc * xc, axis=0)
        std = np.sqrt(var + self.eps)
        xc /= std  # xc becomes xn
        self.xn, self.std = xc, std
        m = self.momentum
        self.running_mean *= m
        self.running_mean += (1.0 - m) * mu
        self.running_var *= m
        self.running_var += (1.0 - m) * var
        out = self.gamma * xc
        out += self.beta
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        xn = self.xn
        self.grads["beta"] = dout.sum(axis=0)
        self.grads["gamma"] = (xn * dout).sum(axis=0)
        dxn = dout * self.gamma
        # dx = (dxn - mean(dxn) - xn * mean(dxn * xn)) / std
        dx = dxn - dxn.mean(axis=0)
        dx -= xn * (dxn * xn).mean(axis=0)
        dx /= self.std
        return dx


class SoftmaxWithLoss:
    """Softmax followed by the mean cross-entropy against integer labels ``t``.

    The loss is computed as a log-sum-exp (no ``log(y + 1e-7)``), so it is exact and finite
    for any finite scores. ``backward`` returns ``dout * (softmax - onehot(t)) / batch``.
    """

    def __init__(self) -> None:
        self.y: np.ndarray | None = None
        self.t: np.ndarray | None = None

    def forward(self, x: np.ndarray, t: np.ndarray) -> float:
        n = x.shape[0]
        y = x - x.max(axis=1, keepdims=True)
        picked = y[np.arange(n), t]  # score of the label minus the row max
        np.exp(y, out=y)
        s = y.sum(axis=1, keepdims=True)
        y /= s
        self.y, self.t = y, t
        # mean of log(sum exp(x - max)) - (x[t] - max)
        return float((np.log(s).sum() - picked.sum()) / n)

    def backward(self, dout: float = 1.0) -> np.ndarray:
        n = self.y.shape[0]
        dx = self.y.copy()
        dx[np.arange(n), self.t] -= 1
        dx *= dout / n
        return dx
