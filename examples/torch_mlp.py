"""A small PyTorch model on the CPU: a multilayer perceptron on scikit-learn's 8x8 digits.

Needs PyTorch and scikit-learn, neither of them an hpo dependency::

    pip install torch==2.13.0 scikit-learn

The learning rate comes from the spec's [search]; the width, the depth and the dropout are
define-by-run. Each epoch's validation accuracy is reported, so the spec's pruner can stop a
poor trial early (``trial.should_prune()``). ``seed`` (hpo passes the trial's seed because the
signature asks for it) fixes the initial weights and the batch order: ``hpo confirm`` can re-run
a configuration with fresh seeds.
"""

from functools import lru_cache

import optuna
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn


@lru_cache(maxsize=2)
def splits(split_seed):
    x, y = load_digits(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(x / 16.0, y, test_size=0.25,
                                                      random_state=split_seed, stratify=y)

    def tensors(a, b):
        return torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.long)

    return tensors(x_train, y_train), tensors(x_val, y_val)


def objective(trial, seed, config):
    lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    width = trial.suggest_int("width", 16, 128, log=True)
    depth = trial.suggest_int("depth", 1, 3)
    dropout = trial.suggest_float("dropout", 0.0, 0.5)

    torch.manual_seed(seed)
    torch.set_num_threads(1)  # one thread per worker process, as hpo pins BLAS
    layers, n_in = [], 64
    for _ in range(depth):
        layers += [nn.Linear(n_in, width), nn.ReLU(), nn.Dropout(dropout)]
        n_in = width
    model = nn.Sequential(*layers, nn.Linear(n_in, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    (x_train, y_train), (x_val, y_val) = splits(config["split_seed"])
    generator = torch.Generator().manual_seed(seed)

    accuracy = 0.0
    for epoch in range(1, config["epochs"] + 1):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        for start in range(0, len(order), config["batch_size"]):
            batch = order[start:start + config["batch_size"]]
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x_train[batch]), y_train[batch])
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            accuracy = (model(x_val).argmax(1) == y_val).float().mean().item()
        trial.report(accuracy, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch}")
    return accuracy
