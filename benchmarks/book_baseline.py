"""The book's chapter-6 training code, reproduced as the benchmark baseline.

Follows "Deep Learning from Scratch" ``common/layers.py``, ``common/functions.py``,
``common/multi_layer_net.py`` (``MultiLayerNet``), ``common/optimizer.py`` (``SGD``) and
``common/trainer.py`` (``Trainer``) line for line, in float64, with one change: random draws come
from a seeded ``numpy.random.Generator`` passed in (``rng.standard_normal`` for ``np.random.randn``,
``rng.choice`` for ``np.random.choice``) instead of the global RNG. Labels are class indices.

Kept as the book has them, on purpose (they are what the benchmark measures):
  * every Affine layer computes ``dx``, the first one included;
  * ``Trainer.train_step`` runs an extra ``network.loss(x_batch, t_batch)`` forward pass after each
    update to log the loss;
  * the accuracy is evaluated on the whole train and test (validation) sets, separately, when
    ``current_iter % iter_per_epoch == 0``, i.e. after updates 1, 1 + ipe, 1 + 2 ipe, ...
    (``epochs`` evaluations in all), plus one final test accuracy after the last update.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np


def softmax(x):
    x = x - np.max(x, axis=-1, keepdims=True)
    return np.exp(x) / np.sum(np.exp(x), axis=-1, keepdims=True)


def cross_entropy_error(y, t):
    if y.ndim == 1:
        t = t.reshape(1, t.size)
        y = y.reshape(1, y.size)
    if t.size == y.size:
        t = t.argmax(axis=1)
    batch_size = y.shape[0]
    return -np.sum(np.log(y[np.arange(batch_size), t] + 1e-7)) / batch_size


class Relu:
    def __init__(self):
        self.mask = None

    def forward(self, x):
        self.mask = x <= 0
        out = x.copy()
        out[self.mask] = 0
        return out

    def backward(self, dout):
        dout[self.mask] = 0
        dx = dout
        return dx


class Affine:
    def __init__(self, W, b):
        self.W = W
        self.b = b
        self.x = None
        self.original_x_shape = None
        self.dW = None
        self.db = None

    def forward(self, x):
        self.original_x_shape = x.shape
        x = x.reshape(x.shape[0], -1)
        self.x = x
        out = np.dot(self.x, self.W) + self.b
        return out

    def backward(self, dout):
        dx = np.dot(dout, self.W.T)
        self.dW = np.dot(self.x.T, dout)
        self.db = np.sum(dout, axis=0)
        dx = dx.reshape(*self.original_x_shape)
        return dx


class SoftmaxWithLoss:
    def __init__(self):
        self.loss = None
        self.y = None
        self.t = None

    def forward(self, x, t):
        self.t = t
        self.y = softmax(x)
        self.loss = cross_entropy_error(self.y, self.t)
        return self.loss

    def backward(self, dout=1):
        batch_size = self.t.shape[0]
        if self.t.size == self.y.size:
            dx = (self.y - self.t) / batch_size
        else:
            dx = self.y.copy()
            dx[np.arange(batch_size), self.t] -= 1
            dx = dx / batch_size
        return dx


class MultiLayerNet:
    """The book's ``MultiLayerNet`` with ReLU and He ("relu") init."""

    def __init__(
        self,
        input_size,
        hidden_size_list,
        output_size,
        rng,
        weight_init_std="relu",
        weight_decay_lambda=0,
    ):
        self.input_size = input_size
        self.output_size = output_size
        self.hidden_size_list = hidden_size_list
        self.hidden_layer_num = len(hidden_size_list)
        self.weight_decay_lambda = weight_decay_lambda
        self.params = {}
        self.__init_weight(weight_init_std, rng)

        self.layers = OrderedDict()
        for idx in range(1, self.hidden_layer_num + 1):
            self.layers["Affine" + str(idx)] = Affine(
                self.params["W" + str(idx)], self.params["b" + str(idx)]
            )
            self.layers["Activation_function" + str(idx)] = Relu()
        idx = self.hidden_layer_num + 1
        self.layers["Affine" + str(idx)] = Affine(
            self.params["W" + str(idx)], self.params["b" + str(idx)]
        )
        self.last_layer = SoftmaxWithLoss()

    def __init_weight(self, weight_init_std, rng):
        all_size_list = [self.input_size] + self.hidden_size_list + [self.output_size]
        for idx in range(1, len(all_size_list)):
            scale = weight_init_std
            if str(weight_init_std).lower() in ("relu", "he"):
                scale = np.sqrt(2.0 / all_size_list[idx - 1])
            elif str(weight_init_std).lower() in ("sigmoid", "xavier"):
                scale = np.sqrt(1.0 / all_size_list[idx - 1])
            self.params["W" + str(idx)] = scale * rng.standard_normal(
                (all_size_list[idx - 1], all_size_list[idx])
            )
            self.params["b" + str(idx)] = np.zeros(all_size_list[idx])

    def predict(self, x):
        for layer in self.layers.values():
            x = layer.forward(x)
        return x

    def loss(self, x, t):
        y = self.predict(x)
        weight_decay = 0
        for idx in range(1, self.hidden_layer_num + 2):
            W = self.params["W" + str(idx)]
            weight_decay += 0.5 * self.weight_decay_lambda * np.sum(W**2)
        return self.last_layer.forward(y, t) + weight_decay

    def accuracy(self, x, t):
        y = self.predict(x)
        y = np.argmax(y, axis=1)
        if t.ndim != 1:
            t = np.argmax(t, axis=1)
        accuracy = np.sum(y == t) / float(x.shape[0])
        return accuracy

    def gradient(self, x, t):
        self.loss(x, t)
        dout = 1
        dout = self.last_layer.backward(dout)
        layers = list(self.layers.values())
        layers.reverse()
        for layer in layers:
            dout = layer.backward(dout)
        grads = {}
        for idx in range(1, self.hidden_layer_num + 2):
            grads["W" + str(idx)] = (
                self.layers["Affine" + str(idx)].dW
                + self.weight_decay_lambda * self.layers["Affine" + str(idx)].W
            )
            grads["b" + str(idx)] = self.layers["Affine" + str(idx)].db
        return grads


class SGD:
    def __init__(self, lr=0.01):
        self.lr = lr

    def update(self, params, grads):
        for key in params.keys():
            params[key] -= self.lr * grads[key]


class Trainer:
    """The book's ``Trainer`` (SGD only, ``verbose=False``, whole-set evaluation)."""

    def __init__(
        self,
        network,
        x_train,
        t_train,
        x_test,
        t_test,
        rng,
        epochs=20,
        mini_batch_size=100,
        lr=0.01,
    ):
        self.network = network
        self.rng = rng
        self.x_train = x_train
        self.t_train = t_train
        self.x_test = x_test
        self.t_test = t_test
        self.epochs = epochs
        self.batch_size = mini_batch_size
        self.optimizer = SGD(lr=lr)
        self.train_size = x_train.shape[0]
        self.iter_per_epoch = max(self.train_size / mini_batch_size, 1)
        self.max_iter = int(epochs * self.iter_per_epoch)
        self.current_iter = 0
        self.current_epoch = 0
        self.train_loss_list = []
        self.train_acc_list = []
        self.test_acc_list = []

    def train_step(self):
        batch_mask = self.rng.choice(self.train_size, self.batch_size)
        x_batch = self.x_train[batch_mask]
        t_batch = self.t_train[batch_mask]

        grads = self.network.gradient(x_batch, t_batch)
        self.optimizer.update(self.network.params, grads)

        loss = self.network.loss(x_batch, t_batch)
        self.train_loss_list.append(loss)

        if self.current_iter % self.iter_per_epoch == 0:
            self.current_epoch += 1
            train_acc = self.network.accuracy(self.x_train, self.t_train)
            test_acc = self.network.accuracy(self.x_test, self.t_test)
            self.train_acc_list.append(train_acc)
            self.test_acc_list.append(test_acc)
        self.current_iter += 1

    def train(self):
        for _ in range(self.max_iter):
            self.train_step()
        self.test_acc = self.network.accuracy(self.x_test, self.t_test)


def book_trial(x_train, t_train, x_val, t_val, *, lr, weight_decay, rng, epochs=50):
    """One trial of the book's ``hyperparameter_optimization.py``: returns (val_acc_list,
    train_acc_list) as its ``__train`` does."""
    network = MultiLayerNet(
        input_size=784,
        hidden_size_list=[100, 100, 100, 100, 100, 100],
        output_size=10,
        rng=rng,
        weight_decay_lambda=weight_decay,
    )
    trainer = Trainer(
        network, x_train, t_train, x_val, t_val, rng, epochs=epochs, mini_batch_size=100, lr=lr
    )
    trainer.train()
    return trainer.test_acc_list, trainer.train_acc_list
