"""Faults of the machine around a study, for real: the storage's side of them (first part,
fast, in the default run) and whole fault classes (``-m faults``, in CI: a worker cut off from
PostgreSQL by the network, the disk filling under SQLite, PostgreSQL killed -9 and restarted).

Every test waits on states it can see (the database's rows, files, exit codes), never on a sleep
sized to the machine; each fault-class test prints its figures (time to recover, trials lost),
the numbers in docs/faults.md."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from hpo import optuna_compat as oc
from hpo.retry import OUTAGE
from hpo.storage import get_storage, sweep_stale_trials

optuna.logging.set_verbosity(optuna.logging.WARNING)


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(params=["sqlite", "postgresql"])
def any_url(request, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'f.db'}"
    return request.getfixturevalue("pg_url")


# --- the storage's side ---------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_stale_age_is_the_databases_clock_only(any_url: str) -> None:
    """Two trials that never beat, made by workers whose clocks are a day behind and a day
    ahead (their ``datetime_start``): neither clock counts. A sweep gives each a heartbeat row
    stamped by the database; one grace period later on the database's clock both are failed
    and their retries enqueued."""
    grace = 2
    storage = get_storage(any_url, heartbeat=True, heartbeat_interval=1, grace_period=grace,
                          create_schema=True)
    study = optuna.create_study(storage=storage, study_name="clock")
    behind, ahead = study.ask(), study.ask()  # ask() starts no heartbeat thread: no rows
    rdb = oc.rdb_of(study)
    with rdb.engine.begin() as conn:
        for trial, skew in ((behind, -1), (ahead, 1)):
            start = oc.storage_of(study).get_trial(oc.trial_id(trial)).datetime_start
            conn.execute(sqlalchemy.text("UPDATE trials SET datetime_start = :s WHERE "
                                         "trial_id = :t"),
                         {"s": start + timedelta(days=skew), "t": oc.trial_id(trial)})
    sweep_stale_trials(study)
    states = {t.number: t.state for t in study.get_trials()}
    assert states == {0: TrialState.RUNNING, 1: TrialState.RUNNING}  # not failed at once
    with rdb.engine.connect() as conn:
        assert conn.execute(sqlalchemy.text("SELECT count(*) FROM trial_heartbeats")
                            ).scalar_one() == 2

    def both_failed() -> bool:
        sweep_stale_trials(study)
        return [t.state for t in study.get_trials()[:2]] == [TrialState.FAIL] * 2

    began = time.monotonic()
    wait_until(both_failed, 60, "the adopted trials to go stale")
    assert time.monotonic() - began >= grace - 1  # one grace period (the DB clock's seconds)
    retries = [t for t in study.get_trials() if t.state == TrialState.WAITING]
    assert sorted(t.system_attrs["failed_trial"] for t in retries) == [0, 1]


def test_a_final_write_lost_to_a_locked_database_is_retried_with_its_held_writes(
        tmp_path: Path, capsys) -> None:
    """The trial's final write meets a database another process holds (SQLite busy, a
    transient error): hpo's storage says so in one line and retries it within ``$HPO_DB_WAIT``,
    and the write that goes through stores COMPLETE with the held ``model_seed``."""
    url = f"sqlite:///{tmp_path / 'l.db'}"
    storage = get_storage(url, create_schema=True, engine={"connect_args": {"timeout": 0.05}})
    study = optuna.create_study(storage=storage, study_name="locked", direction="maximize")
    trial = study.ask()
    tid = oc.trial_id(trial)
    trial.set_user_attr("model_seed", 11)
    OUTAGE.reset()
    holder = sqlite3.connect(tmp_path / "l.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    result: list = []
    writer = threading.Thread(target=lambda: result.append(
        storage.set_trial_state_values(tid, TrialState.COMPLETE, [0.5])))
    try:
        writer.start()
        wait_until(lambda: OUTAGE.since is not None, 60, "the final write to fail once")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    writer.join(timeout=60)
    assert result == [True]
    (line,) = capsys.readouterr().err.splitlines()
    assert "storage unavailable (OperationalError: database is locked)" in line, line
    done = optuna.load_study(study_name="locked", storage=url).trials[0]
    assert done.state == TrialState.COMPLETE and done.user_attrs == {"model_seed": 11}
    assert OUTAGE.since is None  # the write restarted the clock
