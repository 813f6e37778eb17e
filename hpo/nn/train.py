"""The training loop of one trial, with the book's ``Trainer`` semantics."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

import numpy as np

from hpo.nn.fast import kernels
from hpo.nn.net import MLP
from hpo.nn.optim import SGD

SAMPLINGS = ("replacement", "shuffle")
EVAL_CHUNK = 8192  # rows per evaluation forward pass (bounds memory on big sets)
# updates per compiled call (hpo.nn.fast): signal handlers run between calls, so this bounds
# how long Ctrl-C or SIGTERM waits (64 updates of the book's net: ~0.1 s)
FAST_CHUNK = 64


@dataclass
class TrainResult:
    """Accuracy after each epoch (train set, validation set) and how the run ended."""

    train_acc_curve: list[float]
    val_acc_curve: list[float]
    curve_epochs: list[int]  # the epoch of each curve entry (1, 2, ... when all are measured)
    train_acc: float  # last entry of train_acc_curve (nan if no epoch ran)
    val_acc: float  # last entry of val_acc_curve (nan if no epoch ran)
    epochs_run: int
    diverged: bool
    stopped_early: bool


def train(
    net: MLP,
    optimizer,
    x_train: np.ndarray,
    t_train: np.ndarray,
    x_val: np.ndarray,
    t_val: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    rng: np.random.Generator,
    iters_per_epoch: int | None = None,
    sampling: str = "replacement",
    callback: Callable[[int, float, float], bool | None] | None = None,
    eval_epochs: Collection[int] | None = None,
) -> TrainResult:
    """Train ``net`` with ``optimizer`` and return the accuracy curves.

    Each epoch runs ``iters_per_epoch`` updates (default ``max(n_train // batch_size, 1)``) on
    minibatches of ``batch_size`` drawn from ``rng``: with replacement (``"replacement"``, as the
    book's Trainer) or by walking a fresh permutation (``"shuffle"``). After each epoch the
    accuracy on the whole train and validation sets (test mode, one forward pass over both) is
    appended to the curves and ``callback(epoch, train_acc, val_acc)`` is called (epochs count
    from 1); if it returns True training stops (``stopped_early``). Exceptions from the callback
    propagate.

    ``eval_epochs`` (default: every epoch, as the book's Trainer) limits the evaluations, a third
    of a trial's work on the book's task, to those epochs plus the last one; the curves then hold
    only the evaluated epochs (``curve_epochs``) and ``callback`` is called only there. Training
    itself (the updates, the random draws, the final network) does not depend on it.

    If the scores become NaN or inf, training stops with ``diverged=True`` (the accuracies
    recorded are what the broken net predicts): at an evaluation, or at the end of any epoch
    whose last minibatch's scores are not finite (that epoch is then evaluated). Never raises
    for divergence; floating-point warnings are silenced.

    A plain net (no BatchNorm, no dropout, at least one hidden layer) under ``SGD`` itself (not
    a subclass) trains through ``hpo.nn.fast`` when numba is installed (the ``fast`` extra):
    compiled calls of up to ``FAST_CHUNK`` updates, the same minibatches and updates to
    round-off.
    """
    if sampling not in SAMPLINGS:
        raise ValueError(
            f"unknown sampling {sampling!r}; allowed: {', '.join(map(repr, SAMPLINGS))}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n_train, n_val = len(x_train), len(x_val)
    if n_train == 0 or n_val == 0:
        raise ValueError("x_train and x_val must not be empty")
    if iters_per_epoch is None:
        iters_per_epoch = max(n_train // batch_size, 1)

    # Train and validation rows in one array, cast once; x_train becomes a view of it.
    dtype = net.dtype
    x_all = np.empty((n_train + n_val, *np.shape(x_train)[1:]), dtype=dtype)
    x_all[:n_train] = x_train
    x_all[n_train:] = x_val
    t_all = np.concatenate([np.asarray(t_train), np.asarray(t_val)]).astype(np.intp)
    x_train, t_train = x_all[:n_train], t_all[:n_train]
    x_batch = np.empty((batch_size, *x_all.shape[1:]), dtype=dtype)
    t_batch = np.empty(batch_size, dtype=np.intp)
    per_epoch = iters_per_epoch * batch_size
    n_perms = -(-per_epoch // n_train)  # permutations needed per epoch when shuffling
    correct = np.empty(n_train + n_val, dtype=bool)  # per-row hits of an evaluation

    # The book's SGD on a plain net: compiled calls of FAST_CHUNK updates when numba is there
    # (hpo.nn.fast, the optional 'fast' extra); else NumPy, an update at a time.
    fast = fast_args = None
    if type(optimizer) is SGD and (fast_args := net.sgd_epoch_args(batch_size)) is not None:
        fast = kernels()
        net._fast_predict = fast is not None
    if fast is not None:
        scalars = (dtype.type(optimizer.lr), dtype.type(net.weight_decay),
                   dtype.type(1.0 / batch_size))

    train_curve: list[float] = []
    val_curve: list[float] = []
    curve_epochs: list[int] = []
    diverged = stopped_early = False
    epoch = 0
    with np.errstate(all="ignore"):
        for epoch in range(1, epochs + 1):
            if sampling == "replacement":
                order = rng.integers(0, n_train, size=per_epoch)
            else:
                order = np.concatenate([rng.permutation(n_train) for _ in range(n_perms)])
            if fast is not None:  # FAST_CHUNK updates a call: Ctrl-C / SIGTERM get through
                for start in range(0, per_epoch, FAST_CHUNK * batch_size):
                    chunk = order[start : min(start + FAST_CHUNK * batch_size, per_epoch)]
                    last_finite = fast.sgd_epoch(*fast_args, x_train, t_train, chunk, x_batch,
                                                 t_batch, *scalars)
            else:
                for start in range(0, per_epoch, batch_size):
                    idx = order[start : start + batch_size]
                    np.take(x_train, idx, axis=0, out=x_batch, mode="clip")
                    np.take(t_train, idx, out=t_batch, mode="clip")
                    grads = net.gradient(x_batch, t_batch)
                    optimizer.update(net.params, grads)
                last_finite = None  # looked at only when this epoch is not evaluated

            if (eval_epochs is not None and epoch not in eval_epochs and epoch != epochs
                    and (last_finite if last_finite is not None
                         else np.isfinite(net.last_layer.y).all())):
                continue
            finite = True
            for i in range(0, len(x_all), EVAL_CHUNK):
                scores = net.predict(x_all[i : i + EVAL_CHUNK], train=False)
                finite = finite and bool(np.isfinite(scores).all())
                np.equal(
                    scores.argmax(axis=1),
                    t_all[i : i + EVAL_CHUNK],
                    out=correct[i : i + EVAL_CHUNK],
                )
            train_acc = np.count_nonzero(correct[:n_train]) / n_train
            val_acc = np.count_nonzero(correct[n_train:]) / n_val
            train_curve.append(train_acc)
            val_curve.append(val_acc)
            curve_epochs.append(epoch)
            diverged = not finite
            if callback is not None and callback(epoch, train_acc, val_acc):
                stopped_early = True
            if diverged or stopped_early:
                break

    return TrainResult(
        train_acc_curve=train_curve,
        val_acc_curve=val_curve,
        curve_epochs=curve_epochs,
        train_acc=train_curve[-1] if train_curve else float("nan"),
        val_acc=val_curve[-1] if val_curve else float("nan"),
        epochs_run=curve_epochs[-1] if curve_epochs else 0,
        diverged=diverged,
        stopped_early=stopped_early,
    )
