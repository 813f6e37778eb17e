"""A trial's transactions as Core statements (hpo/db/statements.py) and the trials a worker
answers from memory (hpo/db/known.py), each checked against what Optuna's own RDBStorage reads
from the database in another process: the same rows, the same trials, and whatever another
process changed is seen."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.storages import RDBStorage
from optuna.trial import TrialState
from sqlalchemy import event

from hpo.db import optuna_private as oc
from hpo.db.writebehind import WriteBehindRDBStorage
from tests.conftest import fresh_pg_database, require_pg

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 's.db'}"
    return request.getfixturevalue("pg_url")


def _statements(storage: RDBStorage) -> list[str]:
    seen: list[str] = []
    event.listen(storage.engine, "before_cursor_execute",
                 lambda conn, cursor, statement, *a: seen.append(statement))
    return seen


def _same(a: optuna.trial.FrozenTrial, b: optuna.trial.FrozenTrial) -> bool:
    """Field by field, NaN equal to NaN (a report may be NaN)."""
    return repr(sorted(vars(a).items())) == repr(sorted(vars(b).items()))


def _rich(trial: optuna.Trial) -> float:
    """Every kind of row a trial has: parameters of three kinds, user attributes (a curve),
    a system attribute written through, reports (one infinite, one NaN), a value."""
    x = trial.suggest_float("x", 1e-6, 1e-2, log=True)
    n = trial.suggest_int("n", 1, 8)
    c = trial.suggest_categorical("c", ["relu", "tanh"])
    trial.set_user_attr("curve", [0.1 * i for i in range(50)])
    trial.set_user_attr("seed", trial.number)
    trial.storage.set_trial_system_attr(trial._trial_id, "mine", {"k": [1, 2]})
    for step in range(6):
        trial.report({3: float("inf"), 4: float("nan")}.get(step, x * step), step)
    return x * n + (c == "relu")


@pytest.mark.parametrize("end", ["complete", "pruned", "fail", "inf"])
def test_a_trial_finished_here_reads_back_as_optuna_reads_it(db: str, end: str) -> None:
    """What the worker answers from memory for a trial it finished (``get_trial``, the cache's
    reads) equals, field by field, what Optuna's RDBStorage reads from the database."""
    storage = WriteBehindRDBStorage(db, heartbeat_interval=60)
    study = optuna.create_study(storage=storage, sampler=optuna.samplers.RandomSampler(seed=1))

    def objective(trial: optuna.Trial) -> float:
        value = _rich(trial)
        if end == "pruned":
            raise optuna.TrialPruned()
        if end == "fail":
            raise ValueError("boom")
        return float("inf") if end == "inf" else value

    study.optimize(objective, n_trials=3, catch=(ValueError,))
    other = RDBStorage(db)
    for frozen in study.trials:  # through the cache and this process's memory
        stored = other.get_trial(oc.trial_id(frozen))
        assert storage.finished_copy(oc.trial_id(frozen)) is not None
        assert _same(storage.get_trial(oc.trial_id(frozen)), stored)
        assert _same(frozen, stored)
        assert math.isnan(stored.intermediate_values[4]) and stored.intermediate_values[3] > 1e308
    expected = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED,
                "fail": TrialState.FAIL, "inf": TrialState.COMPLETE}[end]
    assert {t.state for t in study.trials} == {expected}
    if end == "inf":
        assert all(math.isinf(t.value) for t in study.trials)


def test_reading_back_a_finished_trial_costs_no_statement(db: str) -> None:
    storage = WriteBehindRDBStorage(db)
    study = optuna.create_study(storage=storage)
    study.optimize(_rich, n_trials=2)
    last = oc.trial_id(study.trials[-1])
    seen = _statements(storage)
    trial = storage.get_trial(last)
    assert trial.state == TrialState.COMPLETE and seen == []


def test_the_incremental_read_sees_what_another_process_wrote(db: str) -> None:
    """Known trials come from memory, but the ids and states come from the database: a trial
    another process added, and this worker's own running trial that a sweeper failed, are
    read as the database holds them."""
    storage = WriteBehindRDBStorage(db)
    study = optuna.create_study(storage=storage, sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(_rich, n_trials=2)
    study.get_trials()  # the cache has read everything
    other = optuna.load_study(study_name=study.study_name, storage=RDBStorage(db))
    other.enqueue_trial({"x": 1e-3, "n": 2, "c": "tanh"})
    theirs = other.ask()
    theirs.set_user_attr("from", "elsewhere")
    other.tell(theirs, 0.5)
    mine = study.ask()
    mine.suggest_float("x", 1e-6, 1e-2, log=True)
    RDBStorage(db).set_trial_state_values(mine._trial_id, TrialState.FAIL)  # a sweeper
    seen = _statements(storage)
    trials = study.get_trials(deepcopy=False)
    by_id = {oc.trial_id(t): t for t in trials}
    reader = RDBStorage(db)
    assert by_id[theirs._trial_id] == reader.get_trial(theirs._trial_id)
    assert by_id[theirs._trial_id].user_attrs == {"from": "elsewhere"}
    assert by_id[mine._trial_id].state == TrialState.FAIL
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert any("trial_user_attributes" in s for s in seen)  # the unknown ones read in full
    with pytest.raises((ValueError, optuna.exceptions.UpdateFinishedTrialError)):
        study.tell(mine, 1.0)  # Optuna's "Cannot tell a FAIL trial"


def test_the_cache_reads_only_ids_and_states_when_it_knows_every_trial(db: str) -> None:
    storage = WriteBehindRDBStorage(db)
    study = optuna.create_study(storage=storage, sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(_rich, n_trials=3)
    study.get_trials()
    study.optimize(_rich, n_trials=1)
    seen = _statements(storage)
    assert len(study.get_trials()) == 4
    assert len(seen) == 1 and "trial_params" not in seen[0], seen


def _run_statements(spec: Path, url: str, n: int) -> int:
    """SQL statements of ``hpo run SPEC --n-trials n --workers 1`` (in this process), on a
    study made first."""
    from hpo.cli import main

    main(["init", str(spec), "--storage", url, "--n-trials", str(n)])
    seen: list[str] = []

    def count(conn, cursor, statement, *a) -> None:
        seen.append(statement)

    event.listen(sqlalchemy.engine.Engine, "before_cursor_execute", count)
    try:
        assert main(["run", str(spec), "--storage", url, "--n-trials", str(n), "--workers",
                     "1", "--quiet"]) == 0
    finally:
        event.remove(sqlalchemy.engine.Engine, "before_cursor_execute", count)
    return len(seen)


TPE_PRUNED = dict(sampler="tpe", sampler_options="n_startup_trials = 2",
                  extra="[pruner]\nname = \"median\"\nn_startup_trials = 1\n"
                        "n_warmup_steps = 1\ninterval_steps = 1\n")


@pytest.mark.parametrize("kind", ["random", "tpe-median"])
def test_a_trial_costs_a_bounded_number_of_statements(tiny_spec, kind: str) -> None:
    """One more finished trial of ``hpo run`` on PostgreSQL (the difference of a run of N and
    of 2N trials, each on a fresh database): at most 7 SQL statements (5 random, 6 TPE with
    the median pruner, measured; a heartbeat may add one), where Optuna's ORM writes made 19
    and 26."""
    require_pg()
    spec = tiny_spec(sampler="random") if kind == "random" else tiny_spec(**TPE_PRUNED)
    n = 4
    with fresh_pg_database() as url:
        small = _run_statements(spec, url, n)
    with fresh_pg_database() as url:
        large = _run_statements(spec, url, 2 * n)
    print(f"statements: {small} for {n} trials, {large} for {2 * n}: {(large - small) / n}")
    assert (large - small) / n <= 7, (small, large)


def test_copy_trial_is_a_deep_copy(db: str) -> None:
    """``copy_trial`` (what the worker hands out instead of ``copy.deepcopy``) equals a deep
    copy field by field, and a change to the copy's attributes, curve or reports leaves the
    trial it came from as it was."""
    import copy

    from hpo.db.held_writes import copy_trial

    storage = WriteBehindRDBStorage(db)
    study = optuna.create_study(storage=storage)
    study.optimize(_rich, n_trials=1)
    trial = storage.get_trial(oc.trial_id(study.trials[0]))
    twin = copy_trial(trial)
    assert _same(twin, copy.deepcopy(trial)) and twin is not trial
    twin.user_attrs["curve"].append(9.0)
    twin.system_attrs["mine"]["k"].append(3)
    twin.intermediate_values[0] = -1.0
    twin.params["x"] = -1.0
    assert trial.user_attrs["curve"][-1] != 9.0 and trial.system_attrs["mine"] == {"k": [1, 2]}
    assert trial.intermediate_values[0] != -1.0 and trial.params["x"] != -1.0
