"""Database errors sorted by hpo/db/retry.py, from real errors of real databases, and the bounded
retries built on them (what they say, how often, and what they end with)."""

from __future__ import annotations

import contextlib
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy

from hpo.db.retry import (
    Outage,
    bad_database,
    finished_elsewhere,
    is_creation_race,
    is_transient,
    reason,
    refused,
    sqlstate,
    with_retries,
)
from hpo.errors import RuntimeFailure, StorageError
from tests.conftest import free_port


def error_of(fn) -> BaseException:
    try:
        fn()
    except BaseException as e:  # noqa: BLE001 - the error is the point
        return e
    raise AssertionError("no error")


def refused_connection() -> BaseException:
    """A real connection refused: nothing listens on the port."""
    engine = sqlalchemy.create_engine(f"postgresql+psycopg://u@127.0.0.1:{free_port()}/x")
    return error_of(engine.connect)


def test_a_refused_connection_is_transient_and_reads_as_the_drivers_error():
    e = refused_connection()
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
        raise refused_connection()

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
    e = refused_connection()
    assert outage.failed("hpo worker", e, "retrying")
    assert not outage.failed("hpo worker", e, "retrying")  # the same outage
    outage.ok()
    assert outage.failed("hpo worker", e, "retrying")  # a new one
    assert len(capsys.readouterr().err.splitlines()) == 2


# --- errors by what they are, from real databases ------------------------------------------------


@contextlib.contextmanager
def role_without(url: str, *revoked: str) -> Iterator[str]:
    """A login role of the database at ``url`` with every right on its tables but the
    ``revoked`` ones (``"INSERT, UPDATE ON trial_values"``); its URL. Roles belong to the
    cluster: the role is dropped afterwards."""
    import psycopg

    role = f"hpo_role_{uuid.uuid4().hex[:8]}"
    plain = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as con:
        con.execute(f'CREATE ROLE "{role}" LOGIN')
        con.execute(f'GRANT ALL ON ALL TABLES IN SCHEMA public TO "{role}"')
        con.execute(f'GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO "{role}"')
        for what in revoked:
            con.execute(f'REVOKE {what} FROM "{role}"')
    try:
        yield url.replace("://postgres@", f"://{role}@")
    finally:
        with psycopg.connect(plain, autocommit=True) as con:
            con.execute(f'DROP OWNED BY "{role}"')
            con.execute(f'DROP ROLE "{role}"')


def pg_error(url: str, sql: str) -> BaseException:
    engine = sqlalchemy.create_engine(url)
    try:
        def run():
            with engine.begin() as conn:
                conn.execute(sqlalchemy.text(sql))
        return error_of(run)
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_postgres_errors_are_sorted_by_sqlstate(pg_url):
    """Each error the server answers with is refused (one attempt, exit 1), whatever wrapper
    it comes in; a session the server ends (57P01, as in a restart) is transient."""
    import psycopg

    engine = sqlalchemy.create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("CREATE TABLE t (k INTEGER PRIMARY KEY, s VARCHAR(3), "
                                     "n SMALLINT)"))
        conn.execute(sqlalchemy.text("INSERT INTO t VALUES (1, 'a', 1)"))
    engine.dispose()
    cases = {"22001": "INSERT INTO t VALUES (2, 'abcdef', 1)",  # too long
             "22003": "INSERT INTO t VALUES (3, 'a', 99999)",   # out of range
             "23505": "INSERT INTO t VALUES (1, 'a', 1)",       # constraint
             "42P01": "SELECT * FROM trial_values",             # no such table
             "42703": "SELECT nope FROM t"}                     # no such column
    for state, sql in cases.items():
        e = pg_error(pg_url, sql)
        assert sqlstate(e) == state, (state, e)
        assert not is_transient(e) and refused(e), (state, e)
        wrapped = error_of(lambda e=e: _storage_internal(e))
        assert not is_transient(wrapped) and refused(wrapped) == refused(e)
    with role_without(pg_url, "INSERT, UPDATE ON t") as url:
        e = pg_error(url, "INSERT INTO t VALUES (5, 'a', 1)")
        assert sqlstate(e) == "42501" and refused(e) and not is_transient(e)
        assert "InsufficientPrivilege: permission denied for table t" in reason(e)
    plain = pg_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as victim, \
            psycopg.connect(plain, autocommit=True) as killer:
        pid = victim.info.backend_pid
        killer.execute("SELECT pg_terminate_backend(%s)", (pid,))
        e = error_of(lambda: victim.execute("SELECT 1"))
    assert is_transient(e) and not refused(e), e
    ro = pg_error(pg_url, "SET TRANSACTION READ ONLY; INSERT INTO t VALUES (6, 'a', 1)")
    assert sqlstate(ro) == "25006" and refused(ro) and not is_transient(ro)
    with psycopg.connect(plain) as idle, psycopg.connect(plain, autocommit=True) as watcher:
        idle.execute("SET idle_in_transaction_session_timeout = '100ms'")
        idle.execute("SELECT 1")  # a transaction left open, as by a worker cut off mid-way
        pid = idle.info.backend_pid
        deadline = time.monotonic() + 60
        while watcher.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
                              (pid,)).fetchone()[0] and time.monotonic() < deadline:
            time.sleep(0.05)
        ended = error_of(lambda: idle.execute("SELECT 1"))
    assert is_transient(ended) and not refused(ended), (sqlstate(ended), ended)
    deadlock = _deadlock(plain)
    assert sqlstate(deadlock) == "40P01" and is_transient(deadlock) and not refused(deadlock)


def _deadlock(plain: str) -> BaseException:
    """A real deadlock: two sessions lock two rows in opposite orders (the server picks one
    to fail with 40P01 after its deadlock_timeout, 1 s)."""
    import threading

    import psycopg

    with psycopg.connect(plain, autocommit=True) as setup:
        setup.execute("INSERT INTO t VALUES (10, 'a', 1), (11, 'a', 1)")
    one, two = psycopg.connect(plain), psycopg.connect(plain)
    errors: list[BaseException] = []

    def second(con, key) -> None:
        try:
            con.execute("UPDATE t SET n = 2 WHERE k = %s", (key,))
        except psycopg.Error as e:
            errors.append(e)
        finally:
            con.rollback()

    try:
        one.execute("UPDATE t SET n = 2 WHERE k = 10")
        two.execute("UPDATE t SET n = 2 WHERE k = 11")
        threads = [threading.Thread(target=second, args=(one, 11)),
                   threading.Thread(target=second, args=(two, 10))]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=60)
    finally:
        one.close()
        two.close()
    (e,) = errors
    return e


def _storage_internal(e: BaseException) -> None:
    """``e`` as Optuna raises it from a failed commit."""
    raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") \
        from e


def test_sqlite_errors_are_sorted_by_code(tmp_path: Path):
    path = tmp_path / "s.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)")
    con.commit()
    con.close()
    ro = sqlalchemy.create_engine(f"sqlite:///file:{path}?mode=ro&uri=true")

    def write():
        with ro.begin() as conn:
            conn.execute(sqlalchemy.text("INSERT INTO t VALUES (1)"))
    e = error_of(write)
    assert "readonly database" in reason(e) and refused(e) and not is_transient(e)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        locked = error_of(lambda: sqlite3.connect(path, timeout=0).execute("SELECT * FROM t"))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert is_transient(locked) and not refused(locked), locked
    missing = error_of(lambda: sqlite3.connect(path).execute("SELECT * FROM trials"))
    assert refused(missing) and not is_transient(missing)


def test_the_outage_clock_restarts_only_after_a_write(capsys):
    """Reads that succeed between failed writes do not restart the outage's clock."""
    outage = Outage()
    e = refused_connection()
    outage.failed("hpo worker", e)
    since = outage.since
    outage.failed("hpo worker", e)  # a read went through meanwhile: nothing is said, no reset
    assert outage.since == since and outage.elapsed() > 0
    outage.ok()  # a write went through
    assert outage.since is None and outage.elapsed() == 0
    assert len(capsys.readouterr().err.splitlines()) == 1
