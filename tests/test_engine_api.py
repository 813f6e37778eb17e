"""hpo.run: the Python entry point runs a study through the same engine as ``hpo run``."""

from __future__ import annotations

import signal

import optuna
import pytest

import hpo
from hpo.errors import BadInput, RuntimeFailure

SPEC = {"name": "bowl", "seed": 0, "budget": {"n_trials": 12},
        "objective": {"direction": "minimize", "metric": "loss"},
        "sampler": {"name": "random"}}


def bowl(trial: optuna.Trial) -> float:
    """Importable (a module's top level): workers elsewhere can load it."""
    x = trial.suggest_float("x", -3.0, 3.0)
    kind = trial.suggest_categorical("kind", ["a", "b"])  # define-by-run
    return (x - 1.0) ** 2 + (0.5 if kind == "b" else 0.0)


def test_a_dict_spec_and_a_function_minimize_with_the_exact_budget(tmp_path):
    url = f"sqlite:///{tmp_path / 'api.db'}"
    study = hpo.run(SPEC, objective=bowl, storage=url)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(finished) == 12
    assert study.best_value == min(t.value for t in finished)
    assert set(study.best_params) == {"x", "kind"}
    # the study is hpo's: hpo best reads it, with the spec stored in it
    from hpo.db.storage import study_spec

    assert study_spec(study)["objective"]["function"] == f"{bowl.__module__}:bowl"


def test_two_forked_workers_keep_the_budget(tmp_path):
    url = f"sqlite:///{tmp_path / 'api.db'}"
    study = hpo.run({**SPEC, "budget": {"n_trials": 10}}, objective=bowl, storage=url,
                    workers=2, study_name="two")
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 10
    assert optuna.trial.TrialState.RUNNING not in states


def test_more_workers_need_an_importable_function_and_nothing_is_written(tmp_path):
    db = tmp_path / "api.db"

    def local(trial):
        return trial.suggest_float("x", 0, 1)

    with pytest.raises(BadInput, match="importable"):
        hpo.run(SPEC, objective=local, storage=f"sqlite:///{db}", workers=2)
    assert not db.exists()


@pytest.mark.parametrize("kwargs, flag", [({"workers": 0}, "workers"),
                                          ({"n_trials": 0}, "n_trials"),
                                          ({"seed": -1}, "seed"),
                                          ({"timeout": "5"}, "timeout"),
                                          ({"timeout": -1}, "timeout"),
                                          ({"timeout": float("inf")}, "timeout"),
                                          ({"study_name": "has space"}, "study_name"),
                                          ({"study_name": ""}, "study_name"),
                                          ({"study_name": 5}, "study_name")])
def test_bad_arguments_are_bad_input(tmp_path, kwargs, flag):
    db = tmp_path / "api.db"
    with pytest.raises(BadInput, match=flag):
        hpo.run(SPEC, objective=bowl, storage=f"sqlite:///{db}", **kwargs)
    assert not db.exists()


def test_a_bad_spec_is_one_line_naming_the_key(tmp_path):
    db = tmp_path / "api.db"
    with pytest.raises(BadInput, match="objective.direction"):
        hpo.run({**SPEC, "objective": {"direction": "up"}}, objective=bowl,
                storage=f"sqlite:///{db}")
    assert not db.exists()


def test_a_toml_path_takes_the_function_given_here(tmp_path):
    spec = tmp_path / "bowl.toml"
    spec.write_text('name = "bowl"\n[budget]\nn_trials = 5\n'
                    '[objective]\ndirection = "minimize"\n[sampler]\nname = "random"\n')
    study = hpo.run(spec, objective=bowl, storage=f"sqlite:///{tmp_path / 'api.db'}")
    assert len([t for t in study.trials if t.state.name == "COMPLETE"]) == 5
    with pytest.raises(BadInput, match="spec file not found"):
        hpo.run(tmp_path / "missing.toml", objective=bowl,
                storage=f"sqlite:///{tmp_path / 'other.db'}")
    assert not (tmp_path / "other.db").exists()


def test_a_bad_storage_argument_is_bad_input(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for storage in (123, "  "):
        with pytest.raises(BadInput, match="storage must be a database URL"):
            hpo.run(SPEC, objective=bowl, storage=storage)
    assert list(tmp_path.iterdir()) == []


def test_the_function_runs_as_a_specs_objective_does(tmp_path):
    """The spec's [search] bounds win, ``seed`` and ``config`` are passed, a trial that
    raises is FAIL with its reason and the worker goes on (it used to end hpo.run at once,
    with the function's own bounds and no seed or config)."""
    seen = []

    def fn(trial, seed, config):
        x = trial.suggest_float("x", -5.0, 5.0)
        seen.append((seed, config["scale"]))
        if trial.number == 1:
            raise ValueError("one bad trial")
        return config["scale"] * x

    spec = {**SPEC, "budget": {"n_trials": 4}, "search": {"x": {"low": 0.0, "high": 0.001}},
            "objective": {**SPEC["objective"], "config": {"scale": 2.0}}}
    study = hpo.run(spec, objective=fn, storage=f"sqlite:///{tmp_path / 'api.db'}")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 4 and all(0.0 <= t.params["x"] <= 0.001 for t in study.trials)
    assert all(t.value == pytest.approx(2.0 * t.params["x"]) for t in done)
    (failed,) = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert failed.number == 1 and failed.user_attrs["fail_reason"].startswith("ValueError")
    assert all(scale == 2.0 for _, scale in seen) and len({seed for seed, _ in seen}) == 5


def test_a_function_that_always_fails_stops_after_max_failures(tmp_path):
    url = f"sqlite:///{tmp_path / 'api.db'}"
    with pytest.raises(RuntimeFailure, match="failed 3 trials in a row"):
        hpo.run(SPEC, objective=lambda trial: float("nan"), storage=url)
    states = [t.state for t in optuna.load_study(study_name="bowl", storage=url).trials]
    assert states == [optuna.trial.TrialState.FAIL] * 3


def test_the_callers_signal_handlers_are_back_after_a_run(tmp_path):
    def mine(signum, frame):  # noqa: ARG001
        pass

    old = {s: signal.signal(s, mine) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        hpo.run({**SPEC, "budget": {"n_trials": 2}}, objective=bowl,
                storage=f"sqlite:///{tmp_path / 'api.db'}")
        assert signal.getsignal(signal.SIGTERM) is mine and signal.getsignal(signal.SIGINT) is mine
    finally:
        for s, h in old.items():
            signal.signal(s, h)
