"""Optimizers and the training loop: learning, sampling, determinism, divergence, callback."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from hpo.nn import MLP, SGD, AdaGrad, Adam, Momentum, TrainResult, make_optimizer, train


def blobs(n: int = 300, dim: int = 8, classes: int = 3, seed: int = 0):
    """Gaussian blobs, well separated: (x_train, t_train, x_val, t_val)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 2.0, (classes, dim))
    t = rng.integers(0, classes, n)
    x = centers[t] + rng.normal(0.0, 1.0, (n, dim))
    k = n * 4 // 5
    return x[:k], t[:k], x[k:], t[k:]


def run(seed: int = 0, *, opt: str = "sgd", lr: float = 0.1, epochs: int = 5, **kw) -> tuple:
    x, t, xv, tv = blobs()
    net_kw = {k: kw.pop(k) for k in ("weight_decay", "dropout", "batchnorm", "dtype") if k in kw}
    net = MLP([8, 16, 16, 3], rng=np.random.default_rng(seed), **net_kw)
    res = train(
        net, make_optimizer(opt, lr), x, t, xv, tv,
        epochs=epochs, batch_size=20, rng=np.random.default_rng(seed + 1000), **kw,
    )  # fmt: skip
    return net, res


class CountingSGD(SGD):
    def __init__(self, lr: float) -> None:
        super().__init__(lr)
        self.calls = 0

    def update(self, params, grads) -> None:
        self.calls += 1
        super().update(params, grads)


# --- optimizers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cls", "lr"),
    [
        ("sgd", SGD, 0.1),
        ("momentum", Momentum, 0.05),
        ("adagrad", AdaGrad, 0.1),
        ("adam", Adam, 0.01),
    ],
)
def test_each_optimizer_learns(name, cls, lr):
    x, t, xv, tv = blobs()
    net = MLP([8, 16, 16, 3], rng=np.random.default_rng(1))
    loss_before = net.loss(x, t)
    opt = make_optimizer(name, lr)
    assert isinstance(opt, cls)
    res = train(net, opt, x, t, xv, tv, epochs=15, batch_size=20, rng=np.random.default_rng(2))
    assert net.loss(x, t) < 0.5 * loss_before
    assert res.train_acc > 0.9 and res.val_acc > 0.9
    assert res.train_acc_curve[-1] > res.train_acc_curve[0] or res.train_acc_curve[0] > 0.95


def test_optimizer_updates_in_place_with_book_rules():
    p = {"w": np.array([1.0, -2.0])}
    g = {"w": np.array([0.5, 0.25])}
    w = p["w"]
    SGD(0.1).update(p, g)
    assert p["w"] is w
    np.testing.assert_allclose(w, [0.95, -2.025])

    p = {"w": np.zeros(2)}
    m = Momentum(0.1, momentum=0.5)
    m.update(p, g)
    m.update(p, g)  # v = -lr g, then 0.5 v - lr g = -1.5 lr g; w = -2.5 lr g
    np.testing.assert_allclose(p["w"], [-0.125, -0.0625])

    p = {"w": np.zeros(2)}
    AdaGrad(0.1).update(p, g)  # first step: -lr * g / (|g| + 1e-7) ~ -lr * sign(g)
    np.testing.assert_allclose(p["w"], [-0.1, -0.1], rtol=1e-6)

    p = {"w": np.zeros(2)}
    Adam(0.1).update(p, g)  # first step: lr_t = lr sqrt(1 - b2) / (1 - b1), m = 0.1 g, v = 1e-3 g^2
    lr_t = 0.1 * np.sqrt(1e-3) / 0.1
    np.testing.assert_allclose(p["w"], -lr_t * 0.1 * g["w"] / (np.sqrt(1e-3) * g["w"] + 1e-7))


def test_optimizer_state_keeps_float32():
    for name in ("momentum", "adagrad", "adam"):
        p = {"w": np.ones(3, dtype=np.float32)}
        opt = make_optimizer(name, np.float64(0.1))
        opt.update(p, {"w": np.full(3, 0.5, dtype=np.float32)})
        assert p["w"].dtype == np.float32


def test_make_optimizer_passes_keywords_and_ignores_case():
    opt = make_optimizer("Momentum", 0.1, momentum=0.5)
    assert isinstance(opt, Momentum) and opt.momentum == 0.5 and opt.lr == 0.1
    adam = make_optimizer("adam", 0.01, beta1=0.8, beta2=0.99)
    assert (adam.beta1, adam.beta2) == (0.8, 0.99)


def test_unknown_optimizer_names_allowed_values():
    with pytest.raises(ValueError, match="'sgd'.*'momentum'.*'adagrad'.*'adam'"):
        make_optimizer("rmsprop", 0.1)


# --- train -----------------------------------------------------------------------------------


def test_training_lowers_the_loss():
    x, t, xv, tv = blobs()
    net = MLP([8, 16, 16, 3], weight_decay=1e-3, rng=np.random.default_rng(3))
    before = net.loss(x, t)
    train(net, SGD(0.1), x, t, xv, tv, epochs=5, batch_size=20, rng=np.random.default_rng(4))
    assert net.loss(x, t) < 0.5 * before


def test_result_fields_and_whole_set_evaluation():
    net, res = run(epochs=4)
    assert isinstance(res, TrainResult)
    assert res.epochs_run == 4 and len(res.train_acc_curve) == len(res.val_acc_curve) == 4
    assert not res.diverged and not res.stopped_early
    assert res.train_acc == res.train_acc_curve[-1] and res.val_acc == res.val_acc_curve[-1]
    x, t, xv, tv = blobs()
    assert res.train_acc == net.accuracy(x, t)  # the WHOLE train set, test mode
    assert res.val_acc == net.accuracy(xv, tv)


def test_iterations_per_epoch():
    x, t, xv, tv = blobs()  # 240 train rows
    net = MLP([8, 4, 3], rng=np.random.default_rng(0))
    opt = CountingSGD(0.1)
    train(net, opt, x, t, xv, tv, epochs=3, batch_size=50, rng=np.random.default_rng(0))
    assert opt.calls == 3 * (240 // 50)
    opt = CountingSGD(0.1)
    train(net, opt, x, t, xv, tv, epochs=2, batch_size=500, rng=np.random.default_rng(0))
    assert opt.calls == 2  # max(240 // 500, 1)
    opt = CountingSGD(0.1)
    train(
        net, opt, x, t, xv, tv, epochs=2, batch_size=50, iters_per_epoch=7,
        rng=np.random.default_rng(0),
    )  # fmt: skip
    assert opt.calls == 14


def spy_batches(sampling: str, n: int = 60, batch_size: int = 20, epochs: int = 2):
    """Row ids of every minibatch, read from column 0 of the data."""
    x = np.zeros((n, 3))
    x[:, 0] = np.arange(n)
    t = np.zeros(n, dtype=int)
    net = MLP([3, 2], rng=np.random.default_rng(0), dtype=np.float64)
    seen = []
    gradient = net.gradient

    def spy(xb, tb):
        seen.append(xb[:, 0].astype(int).copy())
        return gradient(xb, tb)

    net.gradient = spy
    train(
        net, SGD(0.0), x, t, x[:5], t[:5], epochs=epochs, batch_size=batch_size,
        rng=np.random.default_rng(1), sampling=sampling,
    )  # fmt: skip
    return seen


def test_shuffle_walks_a_permutation_each_epoch():
    seen = spy_batches("shuffle")
    assert len(seen) == 6 and all(len(b) == 20 for b in seen)
    for epoch in (seen[:3], seen[3:]):
        assert sorted(np.concatenate(epoch)) == list(range(60))
    assert not np.array_equal(np.concatenate(seen[:3]), np.concatenate(seen[3:]))


def test_replacement_sampling_draws_with_replacement():
    seen = spy_batches("replacement", epochs=10)
    rows = np.concatenate(seen)
    assert rows.min() >= 0 and rows.max() < 60
    # 600 draws from 60 rows: with replacement some epoch repeats a row
    assert any(len(np.unique(np.concatenate(seen[i : i + 3]))) < 60 for i in range(0, 30, 3))


def test_unknown_sampling():
    with pytest.raises(ValueError, match="'replacement'.*'shuffle'"):
        run(sampling="random")


def test_same_seed_is_bit_identical_different_seed_differs():
    a0 = MLP([8, 16, 16, 3], rng=np.random.default_rng(5))
    b0 = MLP([8, 16, 16, 3], rng=np.random.default_rng(5))
    c0 = MLP([8, 16, 16, 3], rng=np.random.default_rng(6))
    for name in a0.params:
        np.testing.assert_array_equal(a0.params[name], b0.params[name])
    assert not np.array_equal(a0.params["W1"], c0.params["W1"])

    for kw in ({}, {"dropout": 0.2, "batchnorm": True, "sampling": "shuffle"}):
        net_a, a = run(seed=5, **kw)
        net_b, b = run(seed=5, **kw)
        net_c, c = run(seed=6, **kw)
        assert a == b
        for name in net_a.params:
            np.testing.assert_array_equal(net_a.params[name], net_b.params[name])
        assert not np.array_equal(net_a.params["W1"], net_c.params["W1"])


def test_float32_training_keeps_float32_and_float64_when_asked():
    net, _ = run(epochs=1, opt="adam", lr=0.01, batchnorm=True)
    assert all(p.dtype == np.float32 for p in net.params.values())
    net, _ = run(epochs=1, dtype=np.float64)
    assert all(p.dtype == np.float64 for p in net.params.values())


def test_divergence_is_reported_not_raised():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any numpy overflow warning that escapes fails the test
        net, res = run(lr=1e6, epochs=20)
    assert res.diverged
    assert res.epochs_run < 20 and len(res.val_acc_curve) == res.epochs_run
    assert 0.0 <= res.val_acc <= 1.0 and 0.0 <= res.train_acc <= 1.0


def test_callback_gets_each_epoch_with_the_right_numbers():
    x, t, xv, tv = blobs()
    net = MLP([8, 16, 3], rng=np.random.default_rng(7))
    calls = []

    def callback(epoch, train_acc, val_acc):
        calls.append((epoch, train_acc, val_acc))
        assert train_acc == net.accuracy(x, t) and val_acc == net.accuracy(xv, tv)

    res = train(
        net, SGD(0.1), x, t, xv, tv, epochs=4, batch_size=20, rng=np.random.default_rng(8),
        callback=callback,
    )  # fmt: skip
    assert calls == list(zip(range(1, 5), res.train_acc_curve, res.val_acc_curve, strict=True))
    assert not res.stopped_early


def test_callback_returning_true_stops_early():
    stop_at = 3
    _, res = run(epochs=10, callback=lambda epoch, tr, va: epoch == stop_at)
    assert res.stopped_early and not res.diverged
    assert res.epochs_run == stop_at and len(res.train_acc_curve) == stop_at


def test_callback_exception_propagates():
    class Pruned(Exception):
        pass

    def callback(epoch, tr, va):
        if epoch == 2:
            raise Pruned

    with pytest.raises(Pruned):
        run(epochs=5, callback=callback)


def test_float64_reproduces_the_books_updates():
    """Same seed: the book's MultiLayerNet + Trainer (benchmarks/book_baseline.py) and hpo.nn
    draw the same initial weights and the same minibatches, so after the same updates the
    parameters agree to round-off."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "book_baseline.py"
    spec = importlib.util.spec_from_file_location("book_baseline", path)
    book_mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(book_mod)

    x, t, xv, tv = blobs()
    rng = np.random.default_rng(3)
    book = book_mod.MultiLayerNet(8, [16, 16], 3, rng=rng, weight_decay_lambda=0.01)
    trainer = book_mod.Trainer(book, x, t, xv, tv, rng, epochs=3, mini_batch_size=20, lr=0.1)
    trainer.train()
    rng = np.random.default_rng(3)
    net = MLP([8, 16, 16, 3], weight_decay=0.01, dtype=np.float64, rng=rng)
    train(net, SGD(0.1), x, t, xv, tv, epochs=3, batch_size=20, rng=rng)
    assert set(net.params) == set(book.params)
    for name, p in book.params.items():
        np.testing.assert_allclose(net.params[name], p, rtol=1e-12, atol=1e-12, err_msg=name)


def test_measuring_fewer_epochs_trains_the_same_network():
    """eval_epochs skips evaluations only: same updates, same final net and accuracies, and the
    curves and the callback cover exactly the measured epochs plus the last one."""
    net_all, every = run(epochs=9)
    calls = []
    net_some, some = run(epochs=9, eval_epochs={3, 6},
                         callback=lambda epoch, tr, va: calls.append((epoch, tr, va)))
    for name in net_all.params:
        np.testing.assert_array_equal(net_all.params[name], net_some.params[name])
    assert some.curve_epochs == [3, 6, 9] and every.curve_epochs == list(range(1, 10))
    assert some.val_acc_curve == [every.val_acc_curve[e - 1] for e in (3, 6, 9)]
    assert some.train_acc_curve == [every.train_acc_curve[e - 1] for e in (3, 6, 9)]
    assert (some.val_acc, some.train_acc, some.epochs_run) == (every.val_acc, every.train_acc, 9)
    assert [c[0] for c in calls] == [3, 6, 9]
    _, last_only = run(epochs=4, eval_epochs=())
    assert last_only.curve_epochs == [4] and len(last_only.val_acc_curve) == 1


def test_divergence_between_measured_epochs_still_stops_training():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, res = run(lr=1e6, epochs=40, eval_epochs=())  # only the last epoch is measured
    assert res.diverged and res.epochs_run < 40
    assert res.curve_epochs == [res.epochs_run] and 0.0 <= res.val_acc <= 1.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_plain_net_loop_matches_the_layers_bit_for_bit(dtype, monkeypatch):
    """A plain net (no BatchNorm, no dropout) runs its passes in one loop over its arrays; run
    layer by layer instead, it trains to exactly the same parameters and scores. (NumPy's plain
    loop; numba's fused one agrees to round-off: tests/test_nn_fast.py.)"""
    monkeypatch.setenv("HPO_NN_FAST", "0")
    x, t, xv, tv = blobs()
    nets = []
    for plain in (True, False):
        net = MLP([8, 16, 16, 3], weight_decay=0.01, dtype=dtype, rng=np.random.default_rng(5))
        net._plain = plain
        train(net, SGD(0.1), x, t, xv, tv, epochs=3, batch_size=20, rng=np.random.default_rng(6))
        nets.append(net)
    for name in nets[0].params:
        np.testing.assert_array_equal(nets[0].params[name], nets[1].params[name], err_msg=name)
    np.testing.assert_array_equal(nets[0].predict(xv), nets[1].predict(xv))


def test_sgd_uses_blas_on_the_flat_arrays_and_numpy_elsewhere():
    """SciPy's BLAS axpy is found (a SciPy that moved it would silently cost speed, not
    correctness); SGD updates an MLP's parameters in one call and any other arrays one by one,
    non-contiguous ones included, with the book's rule."""
    from hpo.nn.layers import _AXPY
    from hpo.nn.optim import flat_pair

    assert set(_AXPY) == {np.dtype(np.float32), np.dtype(np.float64)}
    net = MLP([8, 16, 3], weight_decay=0.01, rng=np.random.default_rng(0))
    assert flat_pair(net.params, net.gradient(*blobs()[:2])) is not None
    p = {"w": np.arange(12.0).reshape(3, 4)[:, ::2], "v": np.ones(3, dtype=np.float32)}
    g = {"w": np.ones((3, 2)), "v": np.full(3, 2.0, dtype=np.float32)}
    assert flat_pair(p, g) is None
    w_before = p["w"].copy()
    SGD(0.5).update(p, g)
    np.testing.assert_array_equal(p["w"], w_before - 0.5)
    np.testing.assert_array_equal(p["v"], np.zeros(3, dtype=np.float32))
