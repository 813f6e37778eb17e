"""Section 6.4 reproduced: overfitting, and weight decay and dropout as its cures.

The book's settings: the first 300 training samples, a 784-100x6-10 ReLU net, SGD with lr 0.01,
minibatches of 100 drawn with replacement, 201 epochs (weight decay lambda = 0.1), or 301 epochs
with dropout 0.2. Train and test accuracy are measured after every epoch over the whole sets; this
section of the book is about the train-test gap, so it reads the test split (the search never does).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from hpo import catalog
from hpo.nn import MLP, make_optimizer, train
from hpo.nn.data import load_test, load_training

EXPERIMENTS = {
    # name: (weight_decay, dropout, epochs)
    "overfit": (0.0, 0.0, 201),
    "weight-decay": (0.1, 0.0, 201),
    "dropout": (0.0, 0.2, 301),
}
TRAIN_SIZE = 300


@dataclass(frozen=True)
class Outcome:
    name: str
    train_acc: float
    test_acc: float
    train_curve: list[float]
    test_curve: list[float]

    @property
    def gap(self) -> float:
        return self.train_acc - self.test_acc


def run_experiment(name: str, *, dataset: str = catalog.DEFAULT_DATASET,
                   epochs: int | None = None, seed: int = 0,
                   data_dir: str | None = None,
                   callback: Callable[[int, float, float], None] | None = None) -> Outcome:
    """Run experiment ``name``; ``callback(epoch, train_acc, test_acc)`` after each epoch."""

    weight_decay, dropout, book_epochs = EXPERIMENTS[name]
    x, t = load_training(dataset, n=TRAIN_SIZE, seed=seed, data_dir=data_dir)
    test = load_test(dataset, seed=seed, data_dir=data_dir)
    rng = np.random.default_rng(seed)
    net = MLP([x.shape[1], *[100] * 6, 10], weight_decay=weight_decay, dropout=dropout, rng=rng)
    result = train(net, make_optimizer("sgd", 0.01), x, t, test.x_test, test.t_test,
                   epochs=epochs or book_epochs, batch_size=100, rng=rng, callback=callback)
    return Outcome(name, float(result.train_acc), float(result.val_acc),
                   list(result.train_acc_curve), list(result.val_acc_curve))


def plot(outcome: Outcome, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    epochs = np.arange(1, len(outcome.train_curve) + 1)
    ax.plot(epochs, outcome.train_curve, label="train", color="tab:blue")
    ax.plot(epochs, outcome.test_curve, label="test", color="tab:orange")
    wd, dr, _ = EXPERIMENTS[outcome.name]
    what = {"overfit": "no regularization", "weight-decay": f"weight decay λ={wd}",
            "dropout": f"dropout ratio {dr}"}[outcome.name]
    ax.set_title(f"{what}: train {outcome.train_acc:.3f}, test {outcome.test_acc:.3f}")
    ax.set_xlabel("epochs")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
