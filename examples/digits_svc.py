"""A scikit-learn model on a dataset that ships with scikit-learn: a support-vector classifier on
the 8x8 digits (``pip install 'hpo-book[digits]'`` installs scikit-learn).

``C`` comes from the spec's [search] (log scale); the kernel and, for the RBF kernel only, its
``gamma`` are define-by-run: the function asks for them itself. The validation split is fixed
by ``[objective.config] split_seed``; the test split is never seen by the search, only by
``test`` (``[objective] test``), which scores a configuration on it.
"""

from functools import lru_cache

from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.svm import SVC


@lru_cache(maxsize=4)
def splits(split_seed):
    """(train, validation, test) splits of the digits: 60 / 20 / 20 %."""
    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=0.2,
                                                      random_state=split_seed, stratify=y)
    x_train, x_val, y_train, y_val = train_test_split(x_rest, y_rest, test_size=0.25,
                                                      random_state=split_seed, stratify=y_rest)
    return (x_train, y_train), (x_val, y_val), (x_test, y_test)


def model(trial):
    c = trial.suggest_float("C", 1e-3, 1e3, log=True)
    kernel = trial.suggest_categorical("kernel", ["rbf", "linear"])
    gamma = trial.suggest_float("gamma", 1e-4, 1e1, log=True) if kernel == "rbf" else "scale"
    return SVC(C=c, kernel=kernel, gamma=gamma)


def objective(trial, config):
    """Validation accuracy of the trial's SVC."""
    (x_train, y_train), (x_val, y_val), _ = splits(config["split_seed"])
    return model(trial).fit(x_train, y_train).score(x_val, y_val)


def test(trial, config):
    """Test accuracy of a configuration (``trial`` holds its params), trained on train +
    validation."""
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = splits(config["split_seed"])
    import numpy as np

    clf = model(trial).fit(np.vstack([x_train, x_val]), np.concatenate([y_train, y_val]))
    return clf.score(x_test, y_test)
