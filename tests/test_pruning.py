"""Pruning: hopeless trials stop early, report only where the pruner can act."""

import optuna
import pytest

from hpo.objective import Objective, make_pruner, report_steps
from hpo.report import listing
from hpo.spec import load_spec
from tests.conftest import STUDIES, hpo

PRUNER = '''
[pruner]
name = "median"
n_startup_trials = 2
n_warmup_steps = 2
interval_steps = 2
'''


def test_report_steps():
    assert report_steps("none", {}, 50) == frozenset()
    assert report_steps("median", {}, 50) == frozenset(range(5, 51, 5))
    assert report_steps("median", {"n_warmup_steps": 2, "interval_steps": 3}, 10) == {2, 5, 8}
    assert report_steps("successive-halving", {"min_resource": 2, "reduction_factor": 3},
                        50) == {2, 6, 18}
    assert report_steps("hyperband", {}, 50) == {5, 15, 45}


def test_hopeless_trial_is_pruned_and_its_last_value_stored(tiny_spec):
    spec = load_spec(tiny_spec(epochs=8, extra=PRUNER))
    pruner = make_pruner(spec.pruner, spec.pruner_options, spec.model.epochs)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for _ in range(2):
        study.enqueue_trial({"lr": 0.3, "weight_decay": 1e-6})  # learns well
    study.enqueue_trial({"lr": 1e-3, "weight_decay": 1e-6})  # barely moves in 8 epochs
    study.optimize(Objective(spec), n_trials=3)
    good, _, hopeless = study.trials
    assert good.state.name == "COMPLETE"
    assert set(good.intermediate_values) == {2, 4, 6, 8}  # only the pruner's steps
    assert hopeless.state.name == "PRUNED"
    last_step = max(hopeless.intermediate_values)
    assert last_step < 8
    assert hopeless.intermediate_values[last_step] < good.intermediate_values[last_step]
    assert "model_seed" in hopeless.user_attrs


def test_no_pruner_reports_nothing(tiny_spec):
    spec = load_spec(tiny_spec(epochs=4))
    study = optuna.create_study(direction="maximize")
    study.optimize(Objective(spec), n_trials=2)
    assert all(not t.intermediate_values for t in study.trials)


def test_pruned_study_lists_best(tiny_spec, sqlite_url):
    spec = tiny_spec(n_trials=12, epochs=8, extra=PRUNER, sampler="tpe")
    r = hpo("run", str(spec), "--storage", sqlite_url, "--quiet")
    assert r.returncode == 0, r.stderr
    study = optuna.load_study(study_name="tiny", storage=sqlite_url)
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") + states.count("PRUNED") == 12
    assert r.stdout.startswith("Best-1(val acc:")
    assert listing(study).count("Best-") == states.count("COMPLETE")


def test_bad_pruner_option(tiny_spec, sqlite_url):
    spec = tiny_spec(extra='[pruner]\nname = "median"\npatience = 3\n')
    r = hpo("run", str(spec), "--storage", sqlite_url)
    assert r.returncode == 2 and "pruner 'median' has no option 'patience'" in r.stderr


@pytest.mark.parametrize("name", ["tpe-pruned.toml"])
def test_shipped_pruned_spec_builds(name):
    spec = load_spec(STUDIES / name)
    assert spec.pruner == "median"
    assert make_pruner(spec.pruner, spec.pruner_options, spec.model.epochs)
