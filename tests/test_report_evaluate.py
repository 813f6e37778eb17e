"""`hpo test`: the test split is read once, by the final evaluation only."""

import json

import optuna
import pytest

from hpo.nn import data as hpo_data
from hpo.objectives.book import Objective
from hpo.report.evaluate import TEST_ATTR, AlreadyTested, choose_trial, evaluate_on_test
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


@pytest.mark.slow  # about 7-22 s on a 2-core machine: CI's slow step
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


def test_confirm_ranks_by_mean_over_fresh_seeds(tiny_spec, sqlite_url, monkeypatch):
    import numpy as np

    from hpo.nn.data import load_search
    from hpo.objectives.book import fit, make_config
    from hpo.report.evaluate import CONFIRM_ATTR, confirm, confirm_seed

    r = hpo("run", str(tiny_spec(n_trials=6)), "--storage", sqlite_url, "--quiet")
    assert r.returncode == 0, r.stderr

    def forbidden(*a, **k):
        raise AssertionError("confirm read the test split")

    monkeypatch.setattr(hpo_data, "load_test", forbidden)
    study = optuna.load_study(study_name="tiny", storage=sqlite_url)
    record = confirm(study, top=3, seeds=3)
    assert optuna.load_study(study_name="tiny", storage=sqlite_url).user_attrs[CONFIRM_ATTR] \
        == record
    spec = load_spec(tiny_spec(n_trials=6))
    data = load_search("digits", train_size=300, validation_rate=0.2, seed=0)
    means = [row["mean"] for row in record["rows"]]
    assert means == sorted(means, reverse=True) and record["winner"] == record["rows"][0]["trial"]
    top3 = sorted(study.trials, key=lambda t: (-t.value, t.number))[:3]
    assert {row["trial"] for row in record["rows"]} == {t.number for t in top3}
    for row in record["rows"]:
        trial = study.trials[row["trial"]]
        assert row["seeds"] == [confirm_seed(spec.seed, trial.number, j) for j in range(3)]
        assert trial.user_attrs["model_seed"] not in row["seeds"]  # fresh seeds only
        config = make_config(spec.model, trial.params, data.n_features, data.n_classes)
        accs = [float(fit(config, data, s)[1].val_acc) for s in row["seeds"]]
        assert row["val_accs"] == pytest.approx(accs)
        assert row["mean"] == pytest.approx(np.mean(accs))
        assert row["sem"] == pytest.approx(np.std(accs, ddof=1) / np.sqrt(3))


@pytest.mark.slow  # about 7-22 s on a 2-core machine: CI's slow step
def test_test_uses_the_confirmed_winner(tiny_spec, sqlite_url):
    assert hpo("run", str(tiny_spec(n_trials=5)), "--storage", sqlite_url,
               "--quiet").returncode == 0
    r = hpo("confirm", "tiny", "--storage", sqlite_url, "--top", "3", "--seeds", "2", "--json")
    assert r.returncode == 0, r.stderr
    winner = json.loads(r.stdout)["winner"]
    r = hpo("test", "tiny", "--storage", sqlite_url, "--json")
    assert json.loads(r.stdout)["trial"] == winner
    r = hpo("best", "tiny", "--storage", sqlite_url)
    assert "Confirmed-1(val acc:" in r.stdout and "Test (once," in r.stdout
    assert "at 5 finished trials" in r.stdout and "STALE" not in r.stdout


@pytest.mark.slow
def test_results_made_before_new_trials_are_marked_stale(tiny_spec, sqlite_url):
    """Confirm and test results are stored with the number of finished trials they were made at;
    once the study holds more, every listing marks them STALE (text and JSON), and `hpo test`
    says that the confirmation it follows is stale."""
    spec = str(tiny_spec(n_trials=4))
    assert hpo("run", spec, "--storage", sqlite_url, "--quiet").returncode == 0
    assert hpo("confirm", "tiny", "--storage", sqlite_url, "--top", "2", "--seeds", "2"
               ).returncode == 0
    assert hpo("test", "tiny", "--storage", sqlite_url).returncode == 0
    current = hpo("best", "tiny", "--storage", sqlite_url)
    assert "STALE" not in current.stdout and current.stdout.count("at 4 finished trials") == 2
    assert hpo("run", spec, "--storage", sqlite_url, "--n-trials", "6", "--quiet"
               ).returncode == 0
    moved = hpo("best", "tiny", "--storage", sqlite_url).stdout.splitlines()
    assert ("STALE: this confirmation was made at 4 finished trials; the study now holds 6: "
            "run `hpo confirm` again to include the new trials") in moved
    assert ("STALE: this test result was made at 4 finished trials; the study now holds 6: "
            "run `hpo test --force` again to include the new trials") in moved
    data = json.loads(hpo("best", "tiny", "--storage", sqlite_url, "--json").stdout)
    assert data["confirm"]["stale"] is True and data["test"]["stale"] is True
    assert data["confirm"]["n_finished"] == data["test"]["n_finished"] == 4
    again = hpo("test", "tiny", "--storage", sqlite_url, "--force")
    assert again.returncode == 0, again.stderr
    assert "hpo test: warning: the confirmation was made at 4 finished trials" in again.stderr
    after = hpo("best", "tiny", "--storage", sqlite_url).stdout
    assert after.count("STALE") == 1 and "at 6 finished trials" in after  # the new test result


def test_confirm_refuses_one_seed(tiny_spec, sqlite_url):
    assert hpo("run", str(tiny_spec(n_trials=1)), "--storage", sqlite_url,
               "--quiet").returncode == 0
    r = hpo("confirm", "tiny", "--storage", sqlite_url, "--seeds", "1")
    assert r.returncode == 2 and "--seeds must be >= 2" in r.stderr
