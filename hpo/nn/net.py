"""A fully connected network, after the book's ``MultiLayerNet`` / ``MultiLayerNetExtend``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hpo.nn.fast import kernels
from hpo.nn.layers import Affine, BatchNorm, Dropout, Relu, SoftmaxWithLoss, axpy

INITS = ("he", "xavier")
DTYPES = (np.float32, np.float64)


class MLP:
    """Multi-layer perceptron: hidden layers ``Affine -> (BatchNorm) -> Relu -> (Dropout)``, then
    a last ``Affine`` and ``SoftmaxWithLoss``.

    ``sizes`` is ``[input, hidden..., output]``. Weights are drawn from ``rng`` with std
    ``sqrt(2 / fan_in)`` (``init="he"``) or ``sqrt(1 / fan_in)`` (``"xavier"``), drawn in float64
    and then cast, so float32 and float64 nets with the same seed start from the same weights
    (rounded). Biases start at 0, BatchNorm's gamma at 1 and beta at 0. Dropout layers draw their
    masks from the same ``rng``.

    ``weight_decay`` is the book's L2 decay: ``loss`` adds ``weight_decay / 2 * sum(W**2)`` over
    the weights only (not biases nor BatchNorm parameters), and ``gradient`` adds
    ``weight_decay * W`` to each weight's gradient.

    Everything runs in ``dtype`` (float32 by default); inputs are cast once on entry.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        *,
        init: str = "he",
        weight_decay: float = 0.0,
        dropout: float = 0.0,
        batchnorm: bool = False,
        dtype: type | np.dtype = np.float32,
        rng: np.random.Generator,
    ) -> None:
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2 or min(sizes) < 1:
            raise ValueError(f"sizes must be [input, hidden..., output] of positive ints: {sizes}")
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; allowed: {', '.join(map(repr, INITS))}")
        self.dtype = np.dtype(dtype)
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")

        self.sizes = sizes
        self.init = init
        self.weight_decay = float(weight_decay)
        self.dropout = float(dropout)
        self.batchnorm = bool(batchnorm)

        gain = 2.0 if init == "he" else 1.0
        n_affine = len(sizes) - 1
        pairs = list(zip(sizes[:-1], sizes[1:], strict=True))
        # Every parameter is a view into one flat array and its gradient the view at the same
        # offset into another, weights first: SGD updates all parameters in one BLAS call and
        # weight decay is one call over the weights.
        n_weights = sum(a * b for a, b in pairs)
        n_other = sum(sizes[1:]) + (2 * sum(sizes[1:-1]) if batchnorm else 0)
        self._flat = np.zeros(n_weights + n_other, dtype=self.dtype)
        self._flat_grad = np.zeros_like(self._flat)
        self._n_weights = n_weights
        offsets = [0, n_weights]  # next free weight, next free other

        def views(shape: tuple[int, ...], weight: bool) -> tuple[np.ndarray, np.ndarray]:
            at = offsets[0 if weight else 1]
            offsets[0 if weight else 1] = end = at + int(np.prod(shape))
            return self._flat[at:end].reshape(shape), self._flat_grad[at:end].reshape(shape)

        self.params: dict[str, np.ndarray] = {}
        self._grads: dict[str, np.ndarray] = {}  # views of _flat_grad, keyed like params
        self.layers: dict[str, object] = {}
        for i, (fan_in, fan_out) in enumerate(pairs, start=1):
            (W, gW), (b, gb) = views((fan_in, fan_out), True), views((fan_out,), False)
            W[...] = np.sqrt(gain / fan_in) * rng.standard_normal((fan_in, fan_out))
            affine = Affine(W, b)
            affine.grads = {"W": gW, "b": gb}
            self.layers[f"Affine{i}"] = affine
            self.params[f"W{i}"], self.params[f"b{i}"] = W, b
            self._grads[f"W{i}"], self._grads[f"b{i}"] = gW, gb
            if i == n_affine:
                break
            affine.reuse_out = True  # its output feeds the next layers only
            if batchnorm:
                (gamma, g_gamma), (beta, g_beta) = (views((fan_out,), False) for _ in "gb")
                gamma[...] = 1.0
                bn = BatchNorm(gamma, beta)
                bn.grads = {"gamma": g_gamma, "beta": g_beta}
                self.layers[f"BatchNorm{i}"] = bn
                self.params[f"gamma{i}"], self.params[f"beta{i}"] = gamma, beta
                self._grads[f"gamma{i}"], self._grads[f"beta{i}"] = g_gamma, g_beta
            self.layers[f"Relu{i}"] = Relu(inplace=True)
            if dropout > 0:
                self.layers[f"Dropout{i}"] = Dropout(dropout, rng)
        self.layers["Affine1"].need_dx = False  # its input is the data: nobody needs dx
        self.last_layer = SoftmaxWithLoss()
        self._forward_order = list(self.layers.values())
        self._backward_order = self._forward_order[::-1]
        self._weights = [self.params[f"W{i}"] for i in range(1, n_affine + 1)]
        # A plain net (Affine -> Relu only: the book's search) runs its passes in one loop over
        # its arrays, not layer by layer: the same NumPy operations in the same order, so the
        # same numbers bit for bit, without ~30 method calls and their checks per update.
        self._plain = not batchnorm and not dropout
        self._affines = [self.layers[f"Affine{i}"] for i in range(1, n_affine + 1)]
        self._buffers: dict[int, list] = {}  # rows -> the plain passes' arrays for that many
        # train() sets this when it trains with hpo.nn.fast: predict then fuses bias and ReLU
        # too (numba is imported by then; a net only predicting never imports it)
        self._fast_predict = False

    def _plain_buffers(self, n: int, backward: bool = False) -> list:
        b = self._buffers.get(n)
        if b is None:
            if len(self._buffers) > 3:  # e.g. an evaluation's last, shorter chunk
                self._buffers.clear()
            hidden = [np.empty((n, a.W.shape[1]), self.dtype) for a in self._affines[:-1]]
            zeros: dict[tuple, np.ndarray] = {}  # np.maximum(h, zeros) runs the SIMD loop
            for h in hidden:
                zeros.setdefault(h.shape, np.zeros(h.shape, self.dtype))
            # each hidden Affine's output (then its ReLU in place), and zeros of its shape
            b = self._buffers[n] = [hidden, [zeros[h.shape] for h in hidden]]
        if backward and len(b) == 2:  # only for batch sizes that train
            b += [[np.empty(h.shape, dtype=bool) for h in b[0]],  # ReLU masks
                  [np.empty_like(h) for h in b[0]],  # dx of Affine2, 3, ...
                  np.ones(n, dtype=self.dtype)]  # db = ones @ dout, one BLAS call
        return b

    def sgd_epoch_args(self, batch_size: int) -> tuple | None:
        """The arrays ``hpo.nn.fast``'s ``sgd_epoch`` works on for minibatches of
        ``batch_size`` (parameters, gradients and the plain passes' buffers, as tuples), or
        None when it cannot run this net (not plain, or no hidden layer)."""
        if not self._plain or len(self._affines) < 2:
            return None
        hidden, _, _, dxs, _ = self._plain_buffers(batch_size, backward=True)
        a = self._affines
        scores = np.empty((batch_size, a[-1].W.shape[1]), self.dtype)
        return (tuple(x.W for x in a), tuple(x.b for x in a), tuple(x.grads["W"] for x in a),
                tuple(x.grads["b"] for x in a), tuple(hidden), tuple(dxs), scores)

    def predict(self, x: np.ndarray, train: bool = False) -> np.ndarray:
        """Scores (before softmax), shape ``(batch, output)``."""
        x = np.asarray(x, dtype=self.dtype)
        if self._plain:
            hidden, zeros = self._plain_buffers(x.shape[0])[:2]
            fast = kernels() if self._fast_predict else None
            for a, h, z in zip(self._affines, hidden, zeros, strict=False):  # all but the last
                np.matmul(x, a.W, out=h)
                if fast is not None:  # the same two roundings in one pass
                    fast.bias_relu(h, a.b)
                    x = h
                    continue
                h += a.b
                x = np.maximum(h, z, out=h)
            last = self._affines[-1]
            out = x @ last.W
            out += last.b
            return out
        for layer in self._forward_order:
            x = layer.forward(x, train)
        return x

    def loss(self, x: np.ndarray, t: np.ndarray, train: bool = True) -> float:
        """Mean cross-entropy plus ``weight_decay / 2 * sum(W**2)`` over the weights."""
        loss = self.last_layer.forward(self.predict(x, train), t)
        if self.weight_decay:
            loss += 0.5 * self.weight_decay * sum(float(np.vdot(W, W)) for W in self._weights)
        return loss

    def gradient(self, x: np.ndarray, t: np.ndarray) -> dict[str, np.ndarray]:
        """Backprop gradients of ``loss(x, t, train=True)``, keyed like ``params``.

        The dict and its arrays are the network's own, overwritten by the next call.
        """
        x = np.asarray(x, dtype=self.dtype)
        self.last_layer.forward(self.predict(x, train=True), t, loss=False)
        dout = self.last_layer.backward(1.0)
        if self._plain:  # what Affine.backward and Relu.backward do, in one loop
            hidden, _, masks, dxs, ones = self._plain_buffers(x.shape[0], backward=True)
            for i in range(len(self._affines) - 1, -1, -1):
                a = self._affines[i]
                h = hidden[i - 1] if i else x
                np.matmul(h.T, dout, out=a.grads["W"])
                np.matmul(ones, dout, out=a.grads["b"])
                if i:
                    dout = np.matmul(dout, a.W.T, out=dxs[i - 1])
                    np.multiply(dout, np.greater(h, 0, out=masks[i - 1]), out=dout)
        else:
            for layer in self._backward_order:
                dout = layer.backward(dout)  # Affine1 returns None, last in the loop
        if self.weight_decay:  # dW += weight_decay * W for every weight, in one BLAS call
            n = self._n_weights
            axpy(self.weight_decay, self._flat[:n], self._flat_grad[:n])
        return self._grads

    def accuracy(self, x: np.ndarray, t: np.ndarray, batch_size: int | None = None) -> float:
        """Fraction of rows whose top score is the label (test mode), ``batch_size`` rows a pass."""
        n = len(x)
        if n == 0:
            raise ValueError("accuracy of an empty set")
        step = n if batch_size is None else int(batch_size)
        correct = 0
        for i in range(0, n, step):
            scores = self.predict(x[i : i + step], train=False)
            correct += int(np.count_nonzero(scores.argmax(axis=1) == t[i : i + step]))
        return correct / n
