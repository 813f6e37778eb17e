"""`hpo test`: the test split is read once, by the final evaluation only."""

import json

import optuna
import pytest

from hpo import data as hpo_data
from hpo.evaluate import TEST_ATTR, AlreadyTested, choose_trial, evaluate_on_test
from hpo.objective import Objective
from hpo.spec import load_spec
from tests.conftest import hpo


def test_objective_never_reads_test_data(tiny_spec, monkeypatch):
    def forbidden(*a, **k):
        raise AssertionError("the objective read the test split")

    monkeypatch.setattr(hpo_data, "load_test", forbidden)
    spec = load_spec(tiny_spec())
    study = optuna.create_study(direction="maximize")
    study.optimize(Objective(spec), n_trials=3)
    assert all(t.state.name == "COMPLETE" for t in study.trials)


def test_evaluate_reproduces_the_trial_and_reads_test_once(tiny_spec, sqlite_url, monkeypatch):
    r = hpo("run", str(tiny_spec(n_trials=4)), "--storage", sqlite_url, "--quiet")
    assert r.returncode == 0, r.stderr
    calls = []
    real = hpo_data.load_test

    def counting(*a, **k):
        calls.append(a)
        return real(*a, **k)

    monkeypatch.setattr(hpo_data, "load_test", counting)
    study = optuna.load_study(study_name="tiny", storage=sqlite_url)
    trial = choose_trial(study)
    assert trial.value == max(t.value for t in study.trials)
    record = evaluate_on_test(study, trial)
    assert len(calls) == 1
    assert record["reproduced"] and record["retrained_val_acc"] == pytest.approx(trial.value)
    assert 0.0 <= record["test_acc"] <= 1.0 and record["trial"] == trial.number
    assert optuna.load_study(study_name="tiny", storage=sqlite_url).user_attrs[TEST_ATTR] == record
    with pytest.raises(AlreadyTested, match="already evaluated on the test split at"):
        evaluate_on_test(study, trial)
    assert len(calls) == 1  # the refusal did not read the test split


def test_cli_test_once_then_refuse_then_force(tiny_spec, sqlite_url):
    r = hpo("run", str(tiny_spec(n_trials=3)), "--storage", sqlite_url, "--quiet")
    assert r.returncode == 0, r.stderr
    r = hpo("test", "tiny", "--storage", sqlite_url, "--json")
    assert r.returncode == 0, r.stderr
    first = json.loads(r.stdout)
    r = hpo("test", "tiny", "--storage", sqlite_url)
    assert r.returncode == 2 and "already evaluated" in r.stderr and first["at"] in r.stderr
    r = hpo("test", "tiny", "--storage", sqlite_url, "--force", "--json", "--trial", "0")
    assert r.returncode == 0, r.stderr
    again = json.loads(r.stdout)
    assert again["trial"] == 0 and again["runs"] == 2
    r = hpo("test", "tiny", "--storage", sqlite_url, "--force", "--trial", "99")
    assert r.returncode == 2 and "has no trial 99" in r.stderr
