"""Seconds per trial of the book's hyperparameter-search configuration: hpo.nn vs the book's code.

One trial (the book's ``hyperparameter_optimization.py``): 400 train + 100 validation samples,
784-100x6-10 ReLU net, He init, SGD lr 0.01, weight decay 1e-6, 50 epochs of 4 minibatches of
100 drawn with replacement, accuracy on the whole train and validation sets after every epoch.

Contenders, all under ``threadpool_limits(1)`` and interleaved round by round:
  * ``book``        benchmarks/book_baseline.py: the book's MultiLayerNet + Trainer, float64;
  * ``hpo.nn f64``  hpo.nn in float64 (the algorithmic savings alone), NumPy path;
  * ``hpo.nn f32, NumPy``  hpo.nn in float32 on NumPy (``HPO_NN_FAST=0``; the path without the
    ``fast`` extra, and the code before it: the base of the ratio);
  * ``hpo.nn f32, numba``  hpo.nn in float32 as trials run it with the ``fast`` extra
    (hpo/nn/fast.py; left out when numba is not installed);
  * ``matmuls only`` just hpo.nn's matrix products of one trial (same shapes and counts, no
    other work): the floor for any implementation doing that work on this BLAS.

Each run is timed twice: wall clock and the thread's CPU time (``time.thread_time``); on a
shared, loaded machine the CPU time leaves out the time other processes held the core, so its
ratios are the steadier ones.

FLOPs counted: 2*m*n*k for each matrix product each implementation performs (forward, dW,
dx where it computes it, the evaluation passes; element-wise work not counted):
  * hpo.nn: per update forward + dW for every layer + dx for layers 2..L (none for layer 1);
    per epoch one forward over train+validation (500 rows);
  * book: per update forward + dW + dx for every layer + the Trainer's extra loss forward;
    per epoch a forward over the train set and one over the validation set; plus the Trainer's
    final test-accuracy forward (100 rows).

Run: ``.venv/bin/python benchmarks/bench_mlp.py [--repeats 5] [--data auto|random|mnist5k]``
(``pip install -e '.[fast]'`` first for the numba contender).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from book_baseline import MultiLayerNet, Trainer, book_trial  # noqa: E402

from hpo.nn import MLP, make_optimizer, train  # noqa: E402

SIZES = [784] + [100] * 6 + [10]
N_TRAIN, N_VAL, BATCH, EPOCHS, LR, WD = 400, 100, 100, 50, 0.01, 1e-6
ITERS = EPOCHS * (N_TRAIN // BATCH)


def load_data(kind: str):
    """(x_train, t_train, x_val, t_val, description); pixels float32 in [0, 1]."""
    if kind in ("auto", "mnist5k"):
        try:
            from hpo.nn.data import load_search

            d = load_search("mnist5k", train_size=N_TRAIN + N_VAL, validation_rate=0.2, seed=0)
            return d.x_train, d.t_train, d.x_val, d.t_val, "mnist5k (real digits, hpo.nn.data)"
        except Exception as e:  # noqa: BLE001 - fall back to random data
            if kind == "mnist5k":
                raise
            print(f"(mnist5k unavailable: {e!r}; using random data)")
    rng = np.random.default_rng(0)
    x = (rng.integers(0, 256, (N_TRAIN + N_VAL, 784), dtype=np.uint8) / 255).astype(np.float32)
    t = rng.integers(0, 10, N_TRAIN + N_VAL)
    return x[:N_TRAIN], t[:N_TRAIN], x[N_TRAIN:], t[N_TRAIN:], "random uint8 pixels / 255"


def matmul_flops(rows: int, dx_first: bool = True, dx: bool = False) -> int:
    """FLOPs of one forward (``dx=False``) or one dx pass over ``rows`` rows."""
    pairs = list(zip(SIZES[:-1], SIZES[1:], strict=True))
    if dx and not dx_first:
        pairs = pairs[1:]
    return sum(2 * rows * a * b for a, b in pairs)


def flops_hpo() -> int:
    per_update = 2 * matmul_flops(BATCH) + matmul_flops(BATCH, dx_first=False, dx=True)
    return ITERS * per_update + EPOCHS * matmul_flops(N_TRAIN + N_VAL)


def flops_book() -> int:
    # gradient (forward + dW + dx everywhere) + the Trainer's loss forward
    per_update = 3 * matmul_flops(BATCH) + matmul_flops(BATCH, dx=True)
    return ITERS * per_update + EPOCHS * matmul_flops(N_TRAIN + N_VAL) + matmul_flops(N_VAL)


def run_book(data) -> tuple[float, float, float]:
    x, t, xv, tv = data
    t0 = time.perf_counter()
    val_curve, train_curve = book_trial(
        x, t, xv, tv, lr=LR, weight_decay=WD, rng=np.random.default_rng(1), epochs=EPOCHS
    )
    return time.perf_counter() - t0, train_curve[-1], val_curve[-1]


def run_hpo(data, dtype, fast: bool = False) -> tuple[float, float, float]:
    x, t, xv, tv = data
    os.environ["HPO_NN_FAST"] = "1" if fast else "0"
    t0 = time.perf_counter()
    rng = np.random.default_rng(1)
    net = MLP(SIZES, init="he", weight_decay=WD, dtype=dtype, rng=rng)
    res = train(
        net, make_optimizer("sgd", LR), x, t, xv, tv, epochs=EPOCHS, batch_size=BATCH, rng=rng
    )
    assert res.epochs_run == EPOCHS
    assert net._fast_predict == fast, "the numba path did not run" if fast else "numba ran"
    return time.perf_counter() - t0, res.train_acc, res.val_acc


def same_updates(data, fast: bool = False) -> float:
    """Train the book's net and hpo.nn in float64 from the same seed (same initial weights and
    the same minibatch draws) and return the largest relative parameter difference at the end:
    round-off level means both performed the same 200 updates."""
    x, t, xv, tv = data
    os.environ["HPO_NN_FAST"] = "1" if fast else "0"
    rng = np.random.default_rng(1)
    book = MultiLayerNet(784, SIZES[1:-1], 10, rng=rng, weight_decay_lambda=WD)
    Trainer(book, x, t, xv, tv, rng, epochs=EPOCHS, mini_batch_size=BATCH, lr=LR).train()
    rng = np.random.default_rng(1)
    net = MLP(SIZES, weight_decay=WD, dtype=np.float64, rng=rng)
    train(net, make_optimizer("sgd", LR), x, t, xv, tv, epochs=EPOCHS, batch_size=BATCH, rng=rng)
    return max(
        float(np.abs(book.params[k] - net.params[k]).max() / np.abs(book.params[k]).max())
        for k in book.params
    )


def run_matmul_floor(dtype) -> tuple[float, float, float]:
    """Only the matrix products hpo.nn performs in one trial (same shapes and counts, outputs
    preallocated): the floor of any implementation doing this work with this BLAS."""
    rng = np.random.default_rng(0)
    pairs = list(zip(SIZES[:-1], SIZES[1:], strict=True))
    Ws = [rng.standard_normal((a, b)).astype(dtype) for a, b in pairs]
    xs = [rng.standard_normal((BATCH, a)).astype(dtype) for a, _ in pairs]
    ds = [rng.standard_normal((BATCH, b)).astype(dtype) for _, b in pairs]
    outs = [np.empty((BATCH, b), dtype) for _, b in pairs]
    dWs = [np.empty_like(W) for W in Ws]
    dxs = [np.empty((BATCH, a), dtype) for a, _ in pairs]
    xe = [rng.standard_normal((N_TRAIN + N_VAL, a)).astype(dtype) for a, _ in pairs]
    oe = [np.empty((N_TRAIN + N_VAL, b), dtype) for _, b in pairs]
    layers = range(len(Ws))
    t0 = time.perf_counter()
    for it in range(ITERS):
        for i in layers:
            np.matmul(xs[i], Ws[i], out=outs[i])
        for i in layers:
            np.matmul(xs[i].T, ds[i], out=dWs[i])
            if i:
                np.matmul(ds[i], Ws[i].T, out=dxs[i])
        if (it + 1) % (ITERS // EPOCHS) == 0:
            for i in layers:
                np.matmul(xe[i], Ws[i], out=oe[i])
    return time.perf_counter() - t0, float("nan"), float("nan")


def machine_line() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    blas_s = ", ".join(
        f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture')} kernel, "
        f"{i.get('num_threads')} threads by default)"
        for i in blas
    )
    env = ", ".join(
        f"{k}={os.environ.get(k, '(unset)')}" for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
    )
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return (
        f"{model}, {os.cpu_count()} cores; Python {platform.python_version()}, numpy "
        f"{np.__version__}, BLAS {blas_s}; {env}; load average {load}; "
        f"{dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}"
    )


def numba_available() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def ceiling_line(name: str, t: dict[str, list[float]], c: dict[str, list[float]]) -> str:
    """``name``'s time over the ceiling's, CPU and wall, median to median and per round."""
    med, lo = statistics.median, min
    per_round = sorted(a / b for a, b in zip(t["cpu"], c["cpu"], strict=True))
    return (
        f"{name} / matmuls only: CPU {med(t['cpu']) / med(c['cpu']):.3f} median to median, "
        f"{lo(t['cpu']) / lo(c['cpu']):.3f} min to min (per round "
        f"{', '.join(f'{r:.3f}' for r in per_round)}); wall "
        f"{med(t['wall']) / med(c['wall']):.3f} median, {lo(t['wall']) / lo(c['wall']):.3f} min"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--data", choices=("auto", "random", "mnist5k"), default="auto")
    args = ap.parse_args()

    *arrays, data_desc = load_data(args.data)
    book_data = [a.astype(np.float64) if a.dtype.kind == "f" else a for a in arrays]
    numpy32, numba32, ceiling = "hpo.nn float32, NumPy", "hpo.nn float32, numba", "matmuls only"
    contenders = {
        "book (float64)": (lambda: run_book(book_data), flops_book()),
        "hpo.nn float64, NumPy": (lambda: run_hpo(arrays, np.float64), flops_hpo()),
        numpy32: (lambda: run_hpo(arrays, np.float32), flops_hpo()),
        numba32: (lambda: run_hpo(arrays, np.float32, fast=True), flops_hpo()),
        ceiling + ", float32": (lambda: run_matmul_floor(np.float32), flops_hpo()),
    }
    if not numba_available():
        print("(numba not installed: no numba contender; pip install -e '.[fast]')")
        del contenders[numba32]
    times: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": []} for k in contenders}
    accs: dict[str, tuple[float, float]] = {}
    print(f"machine: {machine_line()}")
    print(f"data: {data_desc}; {args.repeats} repeats after one warm-up, interleaved\n")
    with threadpool_limits(1):
        for fn, _ in contenders.values():  # warm-up (and numba's compile or cache load)
            fn()
        for _ in range(args.repeats):
            for k, (fn, _) in contenders.items():
                w0, c0 = time.perf_counter(), time.thread_time()
                _, tr, va = fn()
                times[k]["cpu"].append(time.thread_time() - c0)
                times[k]["wall"].append(time.perf_counter() - w0)
                accs[k] = (tr, va)

    med = statistics.median
    base = med(times["book (float64)"]["cpu"])
    print(
        "| implementation | CPU s/trial median | CPU s/trial min | wall s/trial median "
        "| book / this (CPU median) | GFLOP per trial | GFLOP/s (CPU median) "
        "| final train / val acc |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for k, (_, flops) in contenders.items():
        cpu, wall = times[k]["cpu"], times[k]["wall"]
        tr, va = accs[k]
        acc = "-" if np.isnan(tr) else f"{tr:.3f} / {va:.3f}"
        print(
            f"| {k} | {med(cpu):.3f} | {min(cpu):.3f} | {med(wall):.3f} | {base / med(cpu):.2f}x "
            f"| {flops / 1e9:.2f} | {flops / med(cpu) / 1e9:.1f} | {acc} |"
        )
    ceil_t = times[ceiling + ", float32"]
    print()
    for name in (numpy32, numba32):
        if name in times:
            print(ceiling_line(name, times[name], ceil_t))
    if numba32 in times:
        print(
            f"numba / NumPy (float32, CPU median): "
            f"{med(times[numba32]['cpu']) / med(times[numpy32]['cpu']):.3f}"
        )
    print(
        "\nhpo.nn float64 vs book after the same seed: max relative parameter difference "
        f"{same_updates(book_data):.1e} NumPy"
        + (f", {same_updates(book_data, fast=True):.1e} numba" if numba32 in times else "")
        + " (round-off: the same updates)"
    )
    print(f"machine at end: load average {', '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
