"""numba kernels of ``hpo.nn.fast`` (imported only through ``hpo.nn.fast.kernels()``: this
module imports numba). Module-level functions, so ``cache=True`` finds them again in the next
process."""

import numba
import numpy as np

# 'contract' lets LLVM fuse a*b + c into one FMA, as BLAS axpy does on the NumPy path;
# no other fast-math (NaN and inf must behave as in NumPy: a diverged net stays diverged).
jit = numba.njit(cache=True, fastmath={"contract"}, nogil=True)


@jit
def bias_relu(h, b):
    """h = max(h + b, 0) in place, NaN kept (as np.maximum)."""
    n, m = h.shape
    for i in range(n):
        for j in range(m):
            v = h[i, j] + b[j]
            h[i, j] = 0.0 if v <= 0.0 else v


@jit
def relu_grad(dx, h, db):
    """dx *= (h > 0) in place; db = column sums of the result (the bias gradient below)."""
    n, m = dx.shape
    for j in range(m):
        db[j] = 0.0
    for i in range(n):
        for j in range(m):
            v = dx[i, j] if h[i, j] > 0.0 else 0.0
            dx[i, j] = v
            db[j] += v


@jit
def softmax_grad(s, t, b, db, inv):
    """s (scores before the bias) becomes dL/dscores = (softmax(s + b) - onehot(t)) * inv
    (inv = 1 / batch); db = its column sums. Returns whether every score was finite."""
    n, c = s.shape
    finite = True
    for j in range(c):
        db[j] = 0.0
    for i in range(n):
        mx = s[i, 0] + b[0]
        for j in range(c):
            v = s[i, j] + b[j]
            s[i, j] = v
            if not np.isfinite(v):
                finite = False
            if v > mx:
                mx = v
        tot = 0.0
        for j in range(c):
            e = np.exp(s[i, j] - mx)
            s[i, j] = e
            tot += e
        for j in range(c):
            y = s[i, j] / tot
            if j == t[i]:
                y -= 1.0
            y *= inv
            s[i, j] = y
            db[j] += y
    return finite


@jit
def sgd_update(w, g, lr):
    """w -= lr * g over 1-D arrays."""
    for k in range(w.size):
        w[k] -= lr * g[k]


@jit
def sgd_decay_update(w, g, lr, wd):
    """w -= lr * (g + wd * w) over 1-D arrays: the book's weight decay, then SGD."""
    for k in range(w.size):
        w[k] -= lr * (g[k] + wd * w[k])


@jit
def sgd_epoch(Ws, bs, gWs, gbs, hidden, dxs, scores, x, t, order, xb, tb, lr, wd, inv):
    """The updates on minibatches ``order[k*B:(k+1)*B]`` (B = len(xb)) of rows of ``x`` /
    ``t``, in turn (``train`` passes an epoch's draws a chunk at a time). ``lr``, ``wd`` and
    ``inv = 1 / B`` come in the arrays' dtype (float32 arithmetic, as NumPy's). Returns
    whether the last minibatch's scores were finite."""
    batch = xb.shape[0]
    last = len(Ws) - 1
    finite = True
    for start in range(0, order.size, batch):
        for r in range(batch):
            k = order[start + r]
            tb[r] = t[k]
            xb[r, :] = x[k, :]
        h = xb
        for i in range(last):
            np.dot(h, Ws[i], hidden[i])
            bias_relu(hidden[i], bs[i])
            h = hidden[i]
        np.dot(h, Ws[last], scores)
        finite = softmax_grad(scores, tb, bs[last], gbs[last], inv)
        dout = scores
        for i in range(last, -1, -1):
            hin = hidden[i - 1] if i > 0 else xb
            np.dot(hin.T, dout, gWs[i])
            if i > 0:
                np.dot(dout, Ws[i].T, dxs[i - 1])  # with W before its update
                relu_grad(dxs[i - 1], hin, gbs[i - 1])
            if wd != 0:
                sgd_decay_update(Ws[i].reshape(-1), gWs[i].reshape(-1), lr, wd)
            else:
                sgd_update(Ws[i].reshape(-1), gWs[i].reshape(-1), lr)
            sgd_update(bs[i], gbs[i], lr)
            if i > 0:
                dout = dxs[i - 1]
    return finite

