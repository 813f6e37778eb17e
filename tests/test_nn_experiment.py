"""Section 6.4: the book's overfitting experiment and its two cures, at the book's settings."""

import re

import pytest

from hpo.nn.experiment import run_experiment
from tests.conftest import hpo

pytestmark = pytest.mark.slow


def test_overfit_command_prints_and_plots(tmp_path):
    r = hpo("experiment", "overfit", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    m = re.match(r"overfit: train acc ([\d.]+), test acc ([\d.]+), gap \+([\d.]+) \(201 epochs\)",
                 r.stdout)
    assert m, r.stdout
    train, test, gap = map(float, m.groups())
    assert train >= 0.99 and gap >= 0.15  # the book's picture: ~100% train, test lags
    png = tmp_path / "overfit.png"
    assert png.exists() and png.stat().st_size > 10_000


def test_weight_decay_and_dropout_shrink_the_gap():
    plain = run_experiment("overfit")
    decayed = run_experiment("weight-decay")
    dropped = run_experiment("dropout")
    assert len(plain.train_curve) == 201 and len(dropped.train_curve) == 301
    assert decayed.gap < plain.gap and decayed.train_acc < plain.train_acc
    assert dropped.gap < plain.gap


def test_bad_epochs(tmp_path):
    r = hpo("experiment", "overfit", "--epochs", "0", "--out", str(tmp_path))
    assert r.returncode == 2 and "--epochs must be >= 1" in r.stderr
