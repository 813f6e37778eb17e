"""The numba path of training (hpo/nn/fast.py, the optional ``fast`` extra) against the NumPy path.

Same seed, same data: both paths must draw the same minibatches and make the same updates, so
the parameters agree to round-off and the accuracy curves are the same. Skipped without numba
(CI installs ``.[test,fast]`` and runs the nn tests again: .ci/run).
"""

from __future__ import annotations

import importlib
import warnings

import numpy as np
import pytest

from hpo.nn import MLP, SGD, Momentum, train
from hpo.nn import fast as nn_fast
from tests.test_nn_train import blobs as train_blobs

pytest.importorskip("numba")


@pytest.fixture(scope="module", autouse=True)
def compiled():
    """Compile (or load from numba's on-disk cache) the kernels for the nets below once, before
    the tests: a first compile takes ~5-10 s per dtype on a fresh install, then it is cached."""
    for dtype in (np.float32, np.float64):
        net = MLP([2, 3, 3, 2], dtype=dtype, rng=np.random.default_rng(0))
        x = np.zeros((4, 2))
        t = np.zeros(4, dtype=int)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("HPO_NN_FAST", "1")
            train(net, SGD(0.1), x, t, x, t, epochs=1, batch_size=2, rng=np.random.default_rng(0))
        assert net._fast_predict


def blobs():
    return train_blobs(dim=20, classes=4)


def run(fast: bool, monkeypatch, *, dtype=np.float32, opt=None, sizes=(20, 32, 32, 4),
        epochs: int = 6, **kw):
    monkeypatch.setenv("HPO_NN_FAST", "1" if fast else "0")
    net_kw = {k: kw.pop(k) for k in ("weight_decay", "batchnorm", "dropout") if k in kw}
    net_kw.setdefault("weight_decay", 1e-3)
    net = MLP(list(sizes), dtype=dtype, rng=np.random.default_rng(7), **net_kw)
    res = train(net, opt or SGD(0.1), *blobs(), epochs=epochs, batch_size=25,
                rng=np.random.default_rng(8), **kw)
    return net, res


@pytest.mark.parametrize(("dtype", "rtol"), [(np.float32, 1e-4), (np.float64, 1e-12)])
@pytest.mark.parametrize("sampling", ["replacement", "shuffle"])
def test_numba_path_trains_like_the_numpy_path(dtype, rtol, sampling, monkeypatch):
    fast_net, fast_res = run(True, monkeypatch, dtype=dtype, sampling=sampling)
    slow_net, slow_res = run(False, monkeypatch, dtype=dtype, sampling=sampling)
    assert fast_net._fast_predict and not slow_net._fast_predict  # each took its own path
    scale = max(float(np.abs(slow_net._flat).max()), 1.0)
    for name, p in slow_net.params.items():
        assert fast_net.params[name].dtype == dtype
        np.testing.assert_allclose(fast_net.params[name], p, rtol=0, atol=rtol * scale,
                                   err_msg=name)
    assert fast_res.train_acc_curve == slow_res.train_acc_curve
    assert fast_res.val_acc_curve == slow_res.val_acc_curve
    assert fast_res.epochs_run == slow_res.epochs_run == 6 and not fast_res.diverged
    x_val = blobs()[2]
    np.testing.assert_allclose(fast_net.predict(x_val), slow_net.predict(x_val),
                               rtol=0, atol=100 * rtol * scale)


def test_numba_path_without_weight_decay_and_deterministic(monkeypatch):
    nets = [run(True, monkeypatch, weight_decay=0.0)[0] for _ in range(2)]
    np.testing.assert_array_equal(nets[0]._flat, nets[1]._flat)  # same seed, same numbers
    slow = run(False, monkeypatch, weight_decay=0.0)[0]
    np.testing.assert_allclose(nets[0]._flat, slow._flat, rtol=0, atol=1e-4)


def test_an_epoch_in_chunks_trains_the_same(monkeypatch):
    """train() hands the compiled loop at most FAST_CHUNK updates a call (so signals get
    through between calls): cutting an epoch of 9 updates into calls of 2 changes nothing."""
    train_mod = importlib.import_module("hpo.nn.train")  # hpo.nn.train is also the function
    whole = run(True, monkeypatch, epochs=3)[0]
    monkeypatch.setattr(train_mod, "FAST_CHUNK", 2)
    chunked = run(True, monkeypatch, epochs=3)[0]
    np.testing.assert_array_equal(chunked._flat, whole._flat)


def test_numba_path_reports_divergence(monkeypatch):
    for eval_epochs in (None, ()):  # measured every epoch, or only the last
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            net, res = run(True, monkeypatch, opt=SGD(1e6), epochs=40, eval_epochs=eval_epochs)
        assert net._fast_predict
        assert res.diverged and res.epochs_run < 40, eval_epochs
        assert len(res.val_acc_curve) == len(res.curve_epochs) and 0.0 <= res.val_acc <= 1.0


def test_numba_path_only_for_plain_nets_under_plain_sgd(monkeypatch):
    """Other optimizers, SGD subclasses (they may override update), BatchNorm or dropout nets
    and nets without a hidden layer train on NumPy as before."""

    class MySGD(SGD):
        pass

    cases = [
        {"opt": Momentum(0.05)},
        {"opt": MySGD(0.1)},
        {"batchnorm": True},
        {"dropout": 0.2},
        {"sizes": (20, 4)},
    ]
    for kw in cases:
        net, res = run(True, monkeypatch, epochs=2, **kw)
        assert not net._fast_predict, kw
        assert res.epochs_run == 2


def test_hpo_nn_fast_0_turns_it_off(monkeypatch):
    assert nn_fast.kernels() is not None
    monkeypatch.setenv("HPO_NN_FAST", "0")
    assert nn_fast.kernels() is None
    net, _ = run(False, monkeypatch, epochs=1)
    assert not net._fast_predict
