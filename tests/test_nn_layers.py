"""Layers and the MLP: gradients against central differences (float64), weight decay, dropout,
dtypes, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from hpo.nn import MLP, Affine, BatchNorm, Dropout, Relu, SoftmaxWithLoss

EPS = 1e-6
TOL = 1e-6


def numerical_grad(f, a: np.ndarray, eps: float = EPS) -> np.ndarray:
    """Central differences of the scalar ``f()`` with respect to ``a`` (perturbed in place)."""
    g = np.zeros_like(a)
    it = np.nditer(a, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = a[i]
        a[i] = old + eps
        fp = f()
        a[i] = old - eps
        fm = f()
        a[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g


def rel_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    """Max abs difference over the larger max magnitude. The 1e-3 floor is for gradients that
    are exactly zero (a bias followed by BatchNorm), where only ~1e-10 of round-off is left."""
    num = np.abs(analytic - numeric).max()
    den = max(np.abs(analytic).max(), np.abs(numeric).max(), 1e-3)
    return float(num / den)


def check_layer(layer, x: np.ndarray, train: bool = True, before_forward=None) -> None:
    """Check dx and every parameter gradient of ``sum(layer.forward(x) * R)``."""
    rng = np.random.default_rng(0)
    R = rng.standard_normal(layer.forward(x.copy(), train).shape)

    def f() -> float:
        if before_forward is not None:
            before_forward()
        return float(np.sum(layer.forward(x.copy(), train) * R))

    f()  # the forward pass whose caches backward uses
    dx = layer.backward(R.copy())
    grads = {k: g.copy() for k, g in getattr(layer, "grads", {}).items()}
    assert rel_error(dx, numerical_grad(f, x)) < TOL
    for name, p in getattr(layer, "params", {}).items():
        assert rel_error(grads[name], numerical_grad(f, p)) < TOL, name


# --- layers ----------------------------------------------------------------------------------


def test_affine_gradients():
    rng = np.random.default_rng(1)
    layer = Affine(rng.standard_normal((6, 5)), rng.standard_normal(5))
    check_layer(layer, rng.standard_normal((4, 6)))
    assert set(layer.grads) == {"W", "b"}


def test_affine_without_dx_still_has_param_grads():
    rng = np.random.default_rng(1)
    layer = Affine(rng.standard_normal((6, 5)), rng.standard_normal(5))
    layer.need_dx = False
    x = rng.standard_normal((4, 6))
    dout = rng.standard_normal((4, 5))
    layer.forward(x, True)
    assert layer.backward(dout) is None
    np.testing.assert_allclose(layer.grads["W"], x.T @ dout)
    np.testing.assert_allclose(layer.grads["b"], dout.sum(axis=0))


def test_relu_gradient_and_values():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 7))
    x += np.sign(x) * 0.01  # keep away from the kink
    check_layer(Relu(), x)
    np.testing.assert_array_equal(Relu().forward(x, True), np.maximum(x, 0))


def test_relu_inplace_overwrites_input_only_when_asked():
    x = np.array([[-1.0, 2.0, -3.0]])
    Relu().forward(x, True)
    np.testing.assert_array_equal(x, [[-1.0, 2.0, -3.0]])
    out = Relu(inplace=True).forward(x, True)
    assert out is x
    np.testing.assert_array_equal(x, [[0.0, 2.0, 0.0]])


def test_batchnorm_gradients_train_mode():
    rng = np.random.default_rng(3)
    layer = BatchNorm(rng.uniform(0.5, 1.5, 5), rng.standard_normal(5))
    check_layer(layer, rng.standard_normal((8, 5)) * 2 + 1)


def test_batchnorm_normalizes_and_tracks_running_stats():
    rng = np.random.default_rng(4)
    layer = BatchNorm(np.ones(3), np.zeros(3), momentum=0.5)
    x = rng.normal(5.0, 3.0, (1000, 3))
    out = layer.forward(x, True)
    np.testing.assert_allclose(out.mean(axis=0), 0, atol=1e-10)
    np.testing.assert_allclose(out.std(axis=0), 1, atol=1e-6)
    for _ in range(60):
        layer.forward(x, True)
    np.testing.assert_allclose(layer.running_mean, x.mean(axis=0))
    np.testing.assert_allclose(layer.running_var, x.var(axis=0))
    # test mode with converged running stats gives the train-mode output
    np.testing.assert_allclose(layer.forward(x, False), out, atol=1e-6)


def test_dropout_gradient_with_seeded_rng():
    rng = np.random.default_rng(5)
    gen = np.random.default_rng(42)
    state = gen.bit_generator.state
    layer = Dropout(0.4, gen)

    def reset() -> None:
        gen.bit_generator.state = state

    reset()
    check_layer(layer, rng.standard_normal((6, 8)), before_forward=reset)


def test_dropout_is_inverted():
    ratio = 0.3
    layer = Dropout(ratio, np.random.default_rng(6))
    x = np.ones((400, 500), dtype=np.float32)
    out = layer.forward(x, True)
    assert out.dtype == np.float32
    dropped = np.mean(out == 0)
    assert abs(dropped - ratio) < 0.01
    np.testing.assert_allclose(out[out != 0], 1 / (1 - ratio), rtol=1e-6)
    assert abs(out.mean() - 1.0) < 0.02  # expected activation preserved at train time
    # backward uses the same mask
    np.testing.assert_array_equal(layer.backward(np.ones_like(x)), out)
    # identity at test time
    test_out = layer.forward(x, False)
    np.testing.assert_array_equal(test_out, x)
    np.testing.assert_array_equal(layer.backward(x), x)


def test_dropout_rejects_bad_ratio():
    with pytest.raises(ValueError):
        Dropout(1.0, np.random.default_rng(0))


def test_softmax_with_loss_gradient_and_value():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((6, 4)) * 3
    t = rng.integers(0, 4, 6)
    layer = SoftmaxWithLoss()
    loss = layer.forward(x, t)
    y = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
    assert loss == pytest.approx(-np.mean(np.log(y[np.arange(6), t])), rel=1e-12)
    dx = layer.backward(1.0)
    assert rel_error(dx, numerical_grad(lambda: layer.forward(x, t), x)) < TOL


def test_softmax_with_loss_is_finite_for_huge_scores():
    layer = SoftmaxWithLoss()
    x = np.array([[1e30, 0.0, -1e30], [0.0, 1e30, 0.0]], dtype=np.float32)
    loss = layer.forward(x, np.array([2, 1]))
    assert np.isfinite(loss) and loss > 1e29
    assert np.isfinite(layer.backward()).all()


# --- the whole network -----------------------------------------------------------------------


def small_problem(n: int = 7, seed: int = 8):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 6)), rng.integers(0, 3, n)


def check_net(net: MLP, x: np.ndarray, t: np.ndarray, reset=lambda: None) -> None:
    # Non-zero biases: with zero biases a fully dropped row puts a ReLU exactly on its kink.
    rng = np.random.default_rng(99)
    for name, p in net.params.items():
        if name.startswith("b"):
            p[...] = rng.uniform(-0.5, 0.5, p.shape)
    reset()
    grads = net.gradient(x, t)
    grads = {k: g.copy() for k, g in grads.items()}
    assert set(grads) == set(net.params)

    def f() -> float:
        reset()
        return net.loss(x, t, train=True)

    for name, p in net.params.items():
        assert rel_error(grads[name], numerical_grad(f, p)) < TOL, name


def test_mlp_gradients_with_weight_decay():
    x, t = small_problem()
    net = MLP([6, 5, 4, 3], weight_decay=0.1, dtype=np.float64, rng=np.random.default_rng(9))
    assert set(net.params) == {"W1", "b1", "W2", "b2", "W3", "b3"}
    check_net(net, x, t)


def test_mlp_gradients_with_batchnorm():
    x, t = small_problem()
    net = MLP(
        [6, 5, 4, 3],
        weight_decay=0.05,
        batchnorm=True,
        dtype=np.float64,
        rng=np.random.default_rng(10),
    )
    assert {"gamma1", "beta1", "gamma2", "beta2"} <= set(net.params)
    assert "gamma3" not in net.params
    # random BN parameters so their gradients are not trivially structured
    rng = np.random.default_rng(11)
    for name, p in net.params.items():
        if name.startswith(("gamma", "beta")):
            p[...] = rng.uniform(0.5, 1.5, p.shape)
    check_net(net, x, t)
    # a bias right before BatchNorm has no effect on the loss
    assert np.abs(net.gradient(x, t)["b1"]).max() < 1e-12


def test_mlp_gradients_with_dropout_same_rng_state():
    x, t = small_problem()
    gen = np.random.default_rng(12)
    net = MLP([6, 5, 4, 3], weight_decay=0.1, dropout=0.3, dtype=np.float64, rng=gen)
    state = gen.bit_generator.state

    def reset() -> None:
        gen.bit_generator.state = state

    check_net(net, x, t, reset)
    # the masks really drop something: another rng state gives another loss
    reset()
    a = net.loss(x, t)
    b = net.loss(x, t)
    assert a != b


def test_weight_decay_loss_and_gradient():
    x, t = small_problem()
    lam = 0.3
    net0 = MLP([6, 5, 4, 3], dtype=np.float64, batchnorm=True, rng=np.random.default_rng(13))
    net = MLP(
        [6, 5, 4, 3],
        weight_decay=lam,
        dtype=np.float64,
        batchnorm=True,
        rng=np.random.default_rng(13),
    )
    for name in net.params:
        np.testing.assert_array_equal(net.params[name], net0.params[name])
        net.params[name] += 0.1  # non-zero biases / BN params, which must not be decayed
        net0.params[name] += 0.1
    ce = net0.loss(x, t)
    sum_w2 = sum(np.sum(net.params[f"W{i}"] ** 2) for i in (1, 2, 3))
    assert net.loss(x, t) == pytest.approx(ce + lam / 2 * sum_w2, rel=1e-12)

    g0, g = net0.gradient(x, t), net.gradient(x, t)
    for name, p in net.params.items():
        expected = g0[name] + lam * p if name.startswith("W") else g0[name]
        np.testing.assert_allclose(g[name], expected, rtol=1e-12, atol=1e-14)


def test_first_affine_skips_dx():
    net = MLP([6, 5, 3], rng=np.random.default_rng(0))
    assert net.layers["Affine1"].need_dx is False
    assert net.layers["Affine2"].need_dx is True


def test_layer_order():
    net = MLP([6, 5, 4, 3], batchnorm=True, dropout=0.5, rng=np.random.default_rng(0))
    assert list(net.layers) == [
        "Affine1", "BatchNorm1", "Relu1", "Dropout1",
        "Affine2", "BatchNorm2", "Relu2", "Dropout2",
        "Affine3",
    ]  # fmt: skip


def test_init_scales():
    rng = np.random.default_rng(14)
    he = MLP([400, 300, 10], rng=rng, dtype=np.float64)
    xavier = MLP([400, 300, 10], init="xavier", rng=rng, dtype=np.float64)
    assert he.params["W1"].std() == pytest.approx(np.sqrt(2 / 400), rel=0.02)
    assert xavier.params["W1"].std() == pytest.approx(np.sqrt(1 / 400), rel=0.02)
    assert he.params["W2"].std() == pytest.approx(np.sqrt(2 / 300), rel=0.05)
    assert not he.params["b1"].any() and not he.params["b2"].any()


def test_dtype_float32_by_default_end_to_end():
    x, t = small_problem()  # float64 input
    net = MLP([6, 5, 4, 3], batchnorm=True, dropout=0.2, rng=np.random.default_rng(15))
    assert net.dtype == np.float32
    assert all(p.dtype == np.float32 for p in net.params.values())
    assert net.predict(x).dtype == np.float32
    grads = net.gradient(x, t)
    assert all(g.dtype == np.float32 for g in grads.values())
    for layer in net.layers.values():
        for attr in ("x", "out", "mask", "xn", "std", "running_mean", "running_var"):
            value = getattr(layer, attr, None)
            if isinstance(value, np.ndarray):
                assert value.dtype == np.float32, (type(layer).__name__, attr)
    assert net.last_layer.y.dtype == np.float32
    assert isinstance(net.loss(x, t), float)


def test_dtype_float64_when_asked():
    x, t = small_problem()
    net = MLP([6, 5, 3], dtype=np.float64, rng=np.random.default_rng(16))
    assert all(p.dtype == np.float64 for p in net.params.values())
    assert net.predict(x.astype(np.float32)).dtype == np.float64
    assert all(g.dtype == np.float64 for g in net.gradient(x, t).values())


def test_float32_and_float64_start_from_the_same_weights():
    a = MLP([6, 5, 3], rng=np.random.default_rng(17))
    b = MLP([6, 5, 3], dtype=np.float64, rng=np.random.default_rng(17))
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name].astype(np.float32))


def test_accuracy_in_batches_matches_whole():
    rng = np.random.default_rng(18)
    x, t = rng.standard_normal((53, 6)), rng.integers(0, 3, 53)
    net = MLP([6, 5, 3], rng=rng)
    whole = net.accuracy(x, t)
    assert whole == np.mean(net.predict(x).argmax(axis=1) == t)
    assert net.accuracy(x, t, batch_size=10) == whole


def test_unknown_init_names_allowed_values():
    with pytest.raises(ValueError, match="'he'.*'xavier'"):
        MLP([6, 5, 3], init="glorot", rng=np.random.default_rng(0))


def test_bad_constructor_arguments():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError):
        MLP([6], rng=rng)
    with pytest.raises(ValueError):
        MLP([6, 5, 3], dropout=1.0, rng=rng)
    with pytest.raises(ValueError):
        MLP([6, 5, 3], dtype=np.int32, rng=rng)
