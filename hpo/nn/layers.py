"""Layers of the MLP, after the book's ``common/layers.py``.

Each layer is a small class: ``forward`` keeps what ``backward`` needs, ``backward(dout)``
returns the gradient with respect to the layer's input. Layers with parameters expose them in
``.params`` (name -> array, updated in place by the optimizers) and, after ``backward``, their
gradients in ``.grads`` (same names). Arrays keep the dtype they come in with (float32 or
float64); nothing here upcasts.

Inputs are 2-D: ``(batch, features)``. Labels ``t`` are integer class indices.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys

import numpy as np


def _blas_axpy() -> dict:
    """SciPy's BLAS ``saxpy`` / ``daxpy`` by dtype, or {} (then ``axpy`` uses NumPy).

    They are loaded straight from SciPy's wrapper module: ``import scipy.linalg`` costs ~0.3 s
    at every start, the wrappers alone ~0.03 s. Loading happens at import, before any
    ``threadpool_limits``, so limits set later cover the BLAS SciPy brings as well.
    """
    name = "scipy.linalg._fblas"
    try:
        mod = sys.modules.get(name)
        if mod is None:
            import scipy

            folder = os.path.join(os.path.dirname(scipy.__file__), "linalg")
            found = importlib.machinery.PathFinder.find_spec("_fblas", [folder])
            spec = importlib.util.spec_from_file_location(name, found.origin)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
        return {np.dtype(np.float32): mod.saxpy, np.dtype(np.float64): mod.daxpy}
    except Exception:  # noqa: BLE001 - any failure: NumPy does the work, a little slower
        return {}


_AXPY = _blas_axpy()


def axpy(a: float, x: np.ndarray, y: np.ndarray) -> None:
    """``y += a * x`` in place, in one pass over the arrays (BLAS) when they are contiguous and
    of one float dtype; else with NumPy (two passes and a temporary)."""
    f = _AXPY.get(y.dtype)
    if f is not None and x.dtype == y.dtype and x.shape == y.shape and x.flags.c_contiguous \
            and y.flags.c_contiguous and y.size:
        f(x.reshape(-1), y.reshape(-1), a=a)
    else:
        y += a * x


class Affine:
    """``out = x @ W + b``.

    ``need_dx = False`` skips the input gradient in ``backward`` (returns ``None``): the network
    sets it on its first layer, whose input is the data.

    ``backward`` writes the gradients into arrays the layer keeps (``grads["W"]``,
    ``grads["b"]``, and its dx per batch size): a trial makes 200 updates of the same shapes, so
    nothing is allocated per update. They are valid until the next ``backward``.

    ``reuse_out = True`` makes ``forward`` write into an array kept per batch size too, valid
    until the next ``forward`` of that size (the network sets it on its hidden layers, whose
    outputs only it sees).
    """

    def __init__(self, W: np.ndarray, b: np.ndarray) -> None:
        self.W = W
        self.b = b
        self.params = {"W": W, "b": b}
        self.grads: dict[str, np.ndarray] = {"W": np.empty_like(W), "b": np.empty_like(b)}
        self.need_dx = True
        self.reuse_out = False
        self._out: dict[int, np.ndarray] = {}
        self.x: np.ndarray | None = None
        self._ones: np.ndarray = np.ones(0, dtype=W.dtype)
        self._dx: np.ndarray | None = None

    def forward(self, x: np.ndarray, train: bool = False) -> np.ndarray:
        self.x = x
        if self.reuse_out:
            out = self._out.get(x.shape[0])
            if out is None:
                if len(self._out) > 3:  # e.g. an evaluation's last, shorter chunk
                    self._out.clear()
                out = self._out[x.shape[0]] = np.empty((x.shape[0], self.W.shape[1]), self.W.dtype)
            np.matmul(x, self.W, out=out)
        else:
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
        self._mask: np.ndarray | None = None

    def forward(self, x: np.ndarray, train: bool = False) -> np.ndarray:
        # np.maximum against a zeros array of the same shape runs numpy's SIMD loop; against the
        # scalar 0 it is ~3x slower. The zeros are kept (for the largest batch seen) and sliced.
        z = self._zeros
        if z is None or z.shape[0] < x.shape[0] or z.shape[1:] != x.shape[1:] or z.dtype != x.dtype:
            z = self._zeros = np.zeros_like(x)
        self.out = np.maximum(x, z[: x.shape[0]], out=x if self.inplace else None)
        return self.out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        # out > 0 exactly where x > 0; the bool mask (kept, per shape) multiplies as 0/1.
        mask = self._mask
        if mask is None or mask.shape != dout.shape:
            mask = self._mask = np.empty(dout.shape, dtype=bool)
        np.multiply(dout, np.greater(self.out, 0, out=mask), out=dout)
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
        self.grads: dict[str, np.ndarray] = {"gamma": np.empty_like(gamma),
                                             "beta": np.empty_like(beta)}  # written in place
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
        np.sum(dout, axis=0, out=self.grads["beta"])
        np.sum(xn * dout, axis=0, out=self.grads["gamma"])
        dxn = dout * self.gamma
        # dx = (dxn - mean(dxn) - xn * mean(dxn * xn)) / std
        dx = dxn - dxn.mean(axis=0)
        dx -= xn * (dxn * xn).mean(axis=0)
        dx /= self.std
        return dx


class SoftmaxWithLoss:
    """Softmax followed by the mean cross-entropy against integer labels ``t``.

    The loss is computed as a log-sum-exp (no ``log(y + 1e-7)``), so it is exact and finite
    for any finite scores. ``backward`` returns ``dout * (softmax - onehot(t)) / batch``, in an
    array the layer keeps (valid until the next ``backward``).
    """

    def __init__(self) -> None:
        self.y: np.ndarray | None = None
        self.t: np.ndarray | None = None
        self._dx: np.ndarray | None = None
        self._rows: np.ndarray = np.zeros(0, dtype=np.intp)  # row i starts at y.flat[rows[i]]
        self._ones: np.ndarray = np.ones(0)
        self._at: np.ndarray | None = None  # flat index of each row's label in y

    def forward(self, x: np.ndarray, t: np.ndarray, loss: bool = True) -> float | None:
        """The mean loss; with ``loss=False`` only the softmax (for ``backward``), returns None."""
        n, c = x.shape
        y = x - x.max(axis=1, keepdims=True)
        if self._rows.shape[0] != n or self._ones.shape[0] != c or self._ones.dtype != y.dtype:
            self._rows, self._ones = np.arange(n) * c, np.ones(c, dtype=y.dtype)
        self._at = at = self._rows + t
        picked = y.reshape(-1).take(at) if loss else None  # score of the label minus the row max
        np.exp(y, out=y)
        s = y @ self._ones  # the row sums, as one BLAS call
        y /= s[:, None]
        self.y, self.t = y, t
        if not loss:
            return None
        # mean of log(sum exp(x - max)) - (x[t] - max)
        return float((np.log(s).sum() - picked.sum()) / n)

    def backward(self, dout: float = 1.0) -> np.ndarray:
        y = self.y
        dx = self._dx
        if dx is None or dx.shape != y.shape or dx.dtype != y.dtype:
            dx = self._dx = np.empty_like(y)
        np.copyto(dx, y)
        dx.reshape(-1)[self._at] -= 1
        dx *= dout / y.shape[0]
        return dx
