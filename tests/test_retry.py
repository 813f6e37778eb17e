"""Database errors sorted by hpo/retry.py, from real errors of real databases, and the bounded
retries built on them (what they say, how often, and what they end with)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import optuna
import pytest
import sqlalchemy

from hpo.errors import RuntimeFailure, StorageError
from hpo.retry import (
    Outage,
    bad_database,
    finished_elsewhere,
    is_creation_race,
    is_transient,
    reason,
    with_retries,
)
from tests.conftest import free_port


def error_of(fn) -> BaseException:
    try:
        fn()
    except BaseException as e:  # noqa: BLE001 - the error is the point
        return e
    raise AssertionError("no error")


def refused() -> BaseException:
    """A real connection refused: nothing listens on the port."""
    engine = sqlalchemy.create_engine(f"postgresql+psycopg://u@127.0.0.1:{free_port()}/x")
    return error_of(engine.connect)


def test_a_refused_connection_is_transient_and_reads_as_the_drivers_error():
    e = refused()
    assert is_transient(e) and not bad_database(e) and not is_creation_race(e)
    assert reason(e).startswith("OperationalError: connection to server at")
    # Optuna wraps it in StorageInternalError: the chain still tells
    wrapped = error_of(lambda: optuna.storages.RDBStorage(
        f"postgresql+psycopg://u@127.0.0.1:{free_port()}/x", skip_table_creation=True))
    assert is_transient(wrapped) and "Connection refused" in reason(wrapped)


def test_a_file_that_is_not_a_database_is_bad_input(tmp_path: Path):
    path = tmp_path / "notes.db"
    path.write_text("not a database\n" * 100)
    e = error_of(lambda: sqlite3.connect(path).execute("SELECT * FROM studies"))
    assert bad_database(e) and not is_transient(e)


def test_two_creators_of_one_table_are_a_race(tmp_path: Path):
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'r.db'}")
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("CREATE TABLE t (k INTEGER PRIMARY KEY)"))
        conn.execute(sqlalchemy.text("INSERT INTO t VALUES (1)"))
    for sql in ("CREATE TABLE t (k INTEGER)", "INSERT INTO t VALUES (1)"):
        def run(sql=sql):
            with engine.begin() as conn:
                conn.execute(sqlalchemy.text(sql))
        e = error_of(run)
        assert is_creation_race(e), e


def test_a_trial_finished_elsewhere_is_recognised(tmp_path: Path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'f.db'}")
    trial = study.ask()
    study.tell(trial, 1.0)
    assert finished_elsewhere(error_of(lambda: study.tell(trial, 2.0)))
    assert finished_elsewhere(error_of(lambda: trial.set_user_attr("k", 1)))
    assert not finished_elsewhere(ValueError("something else"))


def test_a_transient_error_is_retried_for_the_wait_then_one_line_exit_1(capsys):
    calls = []

    def attempt():
        calls.append(1)
        raise refused()

    with pytest.raises(RuntimeFailure, match="still unavailable after"):
        with_retries(attempt, who="hpo x", what="the storage S", wait=0.5)
    err = capsys.readouterr().err.splitlines()
    assert len(calls) >= 2 and len(err) == 1, err  # retried, said once
    assert err[0].startswith("hpo x: the storage S is unavailable (OperationalError")


def test_bad_input_is_not_retried(capsys):
    calls = []

    def attempt():
        calls.append(1)
        raise StorageError("no study named 'x'")

    with pytest.raises(StorageError):
        with_retries(attempt, who="hpo x", what="the storage S", wait=5)
    assert calls == [1] and capsys.readouterr().err == ""


def test_something_not_made_yet_is_waited_for_silently_then_reported(capsys):
    class NotYet(StorageError):
        pass

    calls = []

    def late():
        calls.append(1)
        if len(calls) < 3:
            raise NotYet("not yet")
        return "made"

    assert with_retries(late, who="hpo x", what="the study 'y'", still_missing=lambda e:
                        isinstance(e, NotYet), missing_wait=30) == "made"
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("hpo x: waited") and "the study 'y'" in line

    def never():
        raise NotYet("no study named 'y'; this storage is empty")

    with pytest.raises(NotYet):
        with_retries(never, who="hpo x", what="the study 'y'", still_missing=lambda e:
                     isinstance(e, NotYet), missing_wait=0.3)
    assert capsys.readouterr().err == ""  # bad input in the end: its one line is the caller's


def test_one_line_per_outage(capsys):
    outage = Outage()
    e = refused()
    assert outage.failed("hpo worker", e, "retrying")
    assert not outage.failed("hpo worker", e, "retrying")  # the same outage
    outage.ok()
    assert outage.failed("hpo worker", e, "retrying")  # a new one
    assert len(capsys.readouterr().err.splitlines()) == 2
