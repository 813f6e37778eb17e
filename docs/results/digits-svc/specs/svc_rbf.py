"""An RBF support-vector classifier on scikit-learn's 8x8 digits: two log-uniform
hyperparameters, ``C`` and ``gamma``, like the book's lr and weight decay (needs scikit-learn:
``pip install 'hpo-book[digits]'``). The same splits as ``examples/digits_svc.py``: 60 / 20 / 20 %
train / validation / test, fixed by ``[objective.config] split_seed``; the search sees only the
validation score."""

from functools import lru_cache

from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.svm import SVC


@lru_cache(maxsize=4)
def splits(split_seed):
    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=0.2,
                                                      random_state=split_seed, stratify=y)
    x_train, x_val, y_train, y_val = train_test_split(x_rest, y_rest, test_size=0.25,
                                                      random_state=split_seed, stratify=y_rest)
    return (x_train, y_train), (x_val, y_val), (x_test, y_test)


def objective(trial, config):
    """Validation accuracy of an RBF SVC with the trial's C and gamma."""
    (x_train, y_train), (x_val, y_val), _ = splits(config["split_seed"])
    c = trial.suggest_float("C", 1e-5, 1e5, log=True)
    gamma = trial.suggest_float("gamma", 1e-7, 1e3, log=True)
    return SVC(C=c, gamma=gamma).fit(x_train, y_train).score(x_val, y_val)
