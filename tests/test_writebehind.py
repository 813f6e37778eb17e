"""The write-behind storage's transaction savings (issue 26), each checked against what another
process sees in the database: a trial's parameters written together, TPE's reads as a trial
starts answered from its creation, and the trial loop's budget checked as a trial is created."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from hpo.db import budget as wb
from hpo.db import optuna_private as oc
from hpo.db.writebehind import BudgetFull, WriteBehindRDBStorage

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(params=["sqlite", "postgresql"])
def wb_db(request, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'w.db'}"
    return request.getfixturevalue("pg_url")


def _xy(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", 0, 1) + trial.suggest_float("y", 0, 1)


def _commits(storage: RDBStorage) -> list[int]:
    from sqlalchemy import event

    seen: list[int] = []
    event.listen(storage.engine, "commit", lambda _c: seen.append(1))
    return seen


def test_params_are_written_together_once_the_expected_set_is_drawn(wb_db: str) -> None:
    """The first trial of a process writes each parameter as Optuna does; the next one holds
    them until it has drawn every parameter the first drew, then writes them in one
    transaction, before ``suggest`` returns: another process sees none, then both."""
    storage = WriteBehindRDBStorage(wb_db)
    study = optuna.create_study(storage=storage, sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(_xy, n_trials=1)
    other = RDBStorage(wb_db)
    trial = study.ask()
    commits = _commits(storage)
    x = trial.suggest_float("x", 0, 1)
    assert other.get_trial(oc.trial_id(trial)).params == {}  # held
    assert trial.params == {"x": x}  # this process sees it
    y = trial.suggest_float("y", 0, 1)
    assert other.get_trial(oc.trial_id(trial)).params == {"x": x, "y": y}
    assert len(commits) == 1
    study.tell(trial, x + y)
    assert other.get_trial(oc.trial_id(trial)).state == TrialState.COMPLETE


def test_a_trial_drawing_fewer_params_writes_them_with_its_end(wb_db: str) -> None:
    """A conditional space: a trial that does not draw the whole set keeps them held until its
    end (or a heartbeat's flush), then they are written with it; a stale retry of such a trial
    would draw anew (documented)."""
    storage = WriteBehindRDBStorage(wb_db)
    study = optuna.create_study(storage=storage, sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(_xy, n_trials=1)
    other = RDBStorage(wb_db)
    trial = study.ask()
    x = trial.suggest_float("x", 0, 1)
    assert other.get_trial(oc.trial_id(trial)).params == {}
    study.tell(trial, x)
    frozen = other.get_trial(oc.trial_id(trial))
    assert frozen.params == {"x": x} and frozen.state == TrialState.COMPLETE


def test_an_incompatible_distribution_is_refused_as_optuna_does(wb_db: str) -> None:
    storage = WriteBehindRDBStorage(wb_db)
    study = optuna.create_study(storage=storage, sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(_xy, n_trials=1)
    trial = study.ask()
    with pytest.raises(ValueError):
        trial.suggest_int("x", 0, 3)


def test_hpo_attrs_are_written_at_once_while_a_trial_draws(wb_db: str) -> None:
    storage = WriteBehindRDBStorage(wb_db)
    study = optuna.create_study(storage=storage, sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(_xy, n_trials=1)
    other = RDBStorage(wb_db)
    trial = study.ask()
    oc.set_trial_system_attr(study, trial, "hpo:surplus", True)
    oc.set_trial_system_attr(study, trial, "sampler:thing", 1)
    seen = other.get_trial(oc.trial_id(trial)).system_attrs
    assert seen == {"hpo:surplus": True}  # the sampler's waits for the params
    trial.suggest_float("x", 0, 1)
    trial.suggest_float("y", 0, 1)
    assert other.get_trial(oc.trial_id(trial)).system_attrs == {"hpo:surplus": True,
                                                                 "sampler:thing": 1}


def test_tpe_reads_as_a_trial_starts_cost_no_transaction(wb_db: str) -> None:
    """TPE (multivariate, constant liar, as hpo builds it) reads the study's trials twice as a
    trial starts; from the second trial of a process on, both are answered from the
    transaction that created the trial, and its draws are those of plain Optuna's storage."""
    def run(storage) -> tuple[list[dict], list[int]]:
        sampler = optuna.samplers.TPESampler(seed=3, n_startup_trials=2, multivariate=True,
                                             constant_liar=True)
        study = optuna.create_study(storage=storage, sampler=sampler)
        per_trial = []
        backend = oc.rdb_of(study)
        for _ in range(6):
            commits = _commits(backend)
            with oc.skip_waiting_lookup(study):  # as the trial loop does (no WAITING trial)
                study.optimize(_xy, n_trials=1)
            per_trial.append(len(commits))
        return [t.params for t in study.trials], per_trial

    params, per_trial = run(WriteBehindRDBStorage(wb_db))
    assert per_trial[3:] == [3, 3, 3], per_trial  # create, params (+ liar attr), end
    other_db = wb_db.replace("w.db", "p.db") if wb_db.startswith("sqlite") else None
    if other_db is not None:  # the same draws without the write-behind storage
        plain, _ = run(RDBStorage(other_db))
        assert plain == params


def test_budget_refuses_a_trial_once_the_study_holds_it(pg_url: str) -> None:
    """Inside ``budget`` on PostgreSQL, the creating transaction counts finished and in-flight
    trials (the study row locked): a full study gets no new trial, nothing is written; the counts
    tell the loop what it would have counted."""
    storage = WriteBehindRDBStorage(pg_url)
    study = optuna.create_study(storage=storage, sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(_xy, n_trials=1)
    running = study.ask()  # another worker's trial, in flight
    with wb.budget(study, 3):
        study.optimize(_xy, n_trials=1)
        assert wb.counts_after_trial(study) == (2, 1, 0)
        with pytest.raises(BudgetFull):
            study.ask()
    assert len(study.trials) == 3
    study.tell(running, state=TrialState.FAIL)  # that worker died: a slot is free
    with wb.budget(study, 3):
        study.optimize(_xy, n_trials=1)
    assert [t.state for t in study.trials].count(TrialState.COMPLETE) == 3
    study.ask()  # outside the block, nothing is checked
