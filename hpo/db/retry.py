"""Database errors sorted into what they mean, bounded retries, and one line per outage.

A storage error is one of five things, and each gets its own answer:

* **bad input** (:func:`bad_database`): the database does not exist, the role or password is
  wrong, the file is not an SQLite database. Exit 2 at once, one line naming the storage.
* **transient** (:func:`is_transient`): a connection-level failure, sorted by the driver's own
  error under SQLAlchemy's and Optuna's wrappers: refused, reset or timed out, the server
  shutting down or restarting (PostgreSQL SQLSTATE class 08, 57P01-57P03, "too many clients"
  53300), a deadlock or serialization failure the server asks to retry (class 40), the SQLite
  file busy or locked, the gRPC proxy unavailable. Retried with backoff
  for ``$HPO_DB_WAIT`` seconds, saying so in one line; then a runtime failure (exit 1,
  :class:`~hpo.errors.RuntimeFailure`). The clock of an outage restarts only after a
  successful *write* (:meth:`Outage.ok`): a database that answers reads but not writes is
  still out.
* **refused** (:func:`refused`): the database answered, with an error no retry can mend:
  permission denied (42501), a read-only database (25006, SQLite's "attempt to write a
  readonly database"), a value out of range or too long (22xxx), a constraint (23xxx), a
  missing table or column (42P01, 42703), a full disk. One attempt, then one line and exit 1.
* **a creation race** (:func:`is_creation_race`): two processes created the same table, type or
  row at the same moment on an empty database. Retried: the loser finds the winner's work.
* **a trial finished elsewhere** (:func:`finished_elsewhere`): a sweeper failed this worker's
  trial while it still ran (it looked dead). The trial's retry runs elsewhere; the worker
  carries on.

Nothing here imports Optuna or SQLAlchemy at module level.
"""

from __future__ import annotations

import os
import random
import re
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import optuna
import sqlalchemy.exc

from hpo.errors import RuntimeFailure, UsageError
from hpo.signals import check_stop

T = TypeVar("T")

#: Seconds a command keeps retrying a database that refuses or drops connections at start-up.
DB_WAIT_ENV = "HPO_DB_WAIT"
DB_WAIT = 30.0

# Messages of connection errors that no retry can mend (PostgreSQL reports these at connect
# time without an SQLSTATE through psycopg; SQLite's own wording for a file it cannot use).
_BAD_DATABASE = re.compile(
    r'(database|role) "[^"]*" does not exist'   # PostgreSQL, at connect time
    r"|authentication failed"                    # password authentication failed for user "x"
    r"|no pg_hba\.conf entry"
    r"|file is not a database"                   # SQLite: a file of something else
    r"|unable to open database file"
    r"|invalid dsn|invalid connection option|invalid integer value")
# Errors of two processes creating the same schema objects at once (PostgreSQL, SQLite).
_RACE = ("already exists", "duplicate key value", "unique constraint failed",
         "pg_type_typname_nsp_index", "tuple concurrently updated", "deadlock detected")


def db_wait() -> float:
    """Seconds to keep retrying an unreachable database at start-up: ``$HPO_DB_WAIT`` or 30."""
    return env_seconds(DB_WAIT_ENV, DB_WAIT)


def env_seconds(name: str, default: float, high: float = 86400) -> float:
    """A wait in seconds from ``$name`` (``default`` when unset or blank): a finite number in
    0..``high``, else bad input naming the variable."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"${name} must be a number of seconds, got {raw!r}") from None
    if not 0 <= value <= high:  # NaN and inf fail too
        raise UsageError(f"${name} must be in 0..{high:g} seconds, got {raw}")
    return value


def chain(e: BaseException) -> list[BaseException]:
    """``e`` and every exception behind it (``__cause__``, else ``__context__``), outermost
    first. Optuna masks database errors (a lost ``tell`` surfaces as ``UnboundLocalError`` or
    ``AssertionError``), so the chain is what tells them apart."""
    out: list[BaseException] = []
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def root_cause(e: BaseException) -> BaseException:
    """The innermost exception of a chain."""
    return chain(e)[-1]


def reason(e: BaseException) -> str:
    """One short line saying what went wrong: the database driver's error (the first in the
    chain), else the gRPC status, else the innermost error; its type and first line."""
    cause = _telling(e)
    if callable(getattr(cause, "code", None)) and callable(getattr(cause, "details", None)):
        try:  # a gRPC error: its status and details
            return f"gRPC {cause.code().name}: {(cause.details() or '')[:160]}"
        except Exception:  # noqa: BLE001, S110 - fall back to its text
            pass
    text = str(cause).strip()
    first = text.splitlines()[0] if text else ""
    if first.startswith("connection failed: "):
        first = first[len("connection failed: "):]
    first = first[:160]
    return f"{type(cause).__name__}: {first}" if first else type(cause).__name__


def _telling(e: BaseException) -> BaseException:
    """The exception of a chain that says most about a storage failure."""

    for x in chain(e):
        if isinstance(x, sqlalchemy.exc.DBAPIError) and x.orig is not None:
            return x.orig
        if type(x).__module__.startswith(("psycopg", "sqlite3", "pymysql", "grpc")):
            return x
    return root_cause(e)


def _messages(e: BaseException) -> str:
    return " | ".join(str(x) for x in chain(e)).lower()


def bad_database(e: BaseException) -> str | None:
    """The reason, when ``e`` says the storage itself is wrong (unknown database or role, bad
    password, not an SQLite file); else ``None``."""
    return reason(e) if _BAD_DATABASE.search(_messages(e)) else None


#: SQLSTATEs of a connection that failed or went away, besides class 08 (connection
#: exception): the server shutting down, crashed, or still starting (57P01-57P03), a session the
#: server ended for sitting idle (in a transaction 25P03, or at all 57P05: what it does to a
#: worker cut off by the network, storage.engine_kwargs), and "too many clients" (53300, a
#: server full for a moment).
_TRANSIENT_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "25P03", "57P05", "53300"})
#: gRPC status codes of a proxy that does not answer or drops a call (the rest are answers).
_TRANSIENT_GRPC = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "ABORTED",
                             "RESOURCE_EXHAUSTED", "UNKNOWN"})
#: SQLite result codes of a file another connection holds for a moment.
_TRANSIENT_SQLITE = frozenset({"SQLITE_BUSY", "SQLITE_LOCKED"})


def _driver_error(e: BaseException) -> BaseException | None:
    """The database driver's own error in the chain (psycopg, sqlite3, ...): what SQLAlchemy's
    ``DBAPIError`` wraps as ``.orig`` and Optuna's ``StorageInternalError`` as ``__cause__``."""

    for x in chain(e):
        if isinstance(x, sqlalchemy.exc.DBAPIError) and x.orig is not None:
            return x.orig
        if type(x).__module__.startswith(("psycopg", "sqlite3", "pymysql", "MySQLdb")):
            return x
    return None


def sqlstate(e: BaseException) -> str | None:
    """The SQLSTATE of the driver's error in the chain (PostgreSQL), else ``None``."""
    driver = _driver_error(e)
    return getattr(driver, "sqlstate", None) or getattr(driver, "pgcode", None)


def _transient_driver_error(driver: BaseException) -> bool:
    """A driver error is transient when it is about the connection, not about the statement."""

    if isinstance(driver, sqlite3.Error):
        name = getattr(driver, "sqlite_errorname", "")
        if name:
            return name.split("_SNAPSHOT")[0] in _TRANSIENT_SQLITE or name.startswith(
                ("SQLITE_BUSY", "SQLITE_LOCKED"))
        text = str(driver).lower()
        return "database is locked" in text or "database table is locked" in text
    state = getattr(driver, "sqlstate", None) or getattr(driver, "pgcode", None)
    if state:  # class 40: a deadlock or serialization failure, the server asks for a retry
        return state.startswith(("08", "40")) or state in _TRANSIENT_SQLSTATES
    # no SQLSTATE: psycopg's own errors of a connection that could not be made or was lost
    # (refused, reset, timed out, "server closed the connection unexpectedly")
    return type(driver).__name__ in ("OperationalError", "InterfaceError")


def is_transient(e: BaseException) -> bool:
    """True when the chain says the connection failed, not the statement: refused, reset or
    timed out, the server shutting down or restarting (SQLSTATE class 08, 57P01-57P03, "too
    many clients" 53300), SQLite busy or locked, the gRPC proxy unavailable. A database that
    answered with an error (permission denied, read-only, a value the column cannot hold, a
    constraint, a missing table or column, a full disk) is not transient: :func:`refused`."""

    if bad_database(e) is not None or _missing_schema(e):
        return False
    driver = _driver_error(e)
    if driver is not None:
        return _transient_driver_error(driver)
    for x in chain(e):
        if isinstance(x, sqlalchemy.exc.DBAPIError) and x.connection_invalidated:
            return True
        if isinstance(x, (sqlalchemy.exc.TimeoutError, ConnectionError, TimeoutError)):
            return True  # the pool had no connection to give, a socket timed out
        if isinstance(x, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
            return True
        code = getattr(x, "code", None)
        if callable(code) and type(x).__module__.startswith("grpc"):
            try:
                return code().name in _TRANSIENT_GRPC
            except Exception:  # noqa: BLE001 - not a call's error after all
                return False
    return False


def refused(e: BaseException) -> str | None:
    """The reason, when the database answered ``e`` with an error that no retry can mend
    (permission denied 42501, read-only 25006 or SQLite's "readonly database", a value out of
    range or too long 22xxx, a constraint 23xxx, a missing table or column 42P01/42703, a full
    disk); else ``None``. Such an error ends a command after one attempt: one line, exit 1."""
    if is_transient(e) or bad_database(e) is not None or _missing_schema(e):
        return None
    driver = _driver_error(e)
    if driver is None:
        return None
    name = getattr(driver, "sqlite_errorname", "")
    if name.startswith(("SQLITE_FULL", "SQLITE_IOERR")):  # ENOSPC, EFBIG (ulimit -f), EIO
        return f"{reason(e)}: is the disk full?"
    return reason(e)


def _missing_schema(e: BaseException) -> bool:
    text = _messages(e)
    return "version_info" in text and ("no such table" in text or "does not exist" in text
                                       or "undefined" in text)


def is_creation_race(e: BaseException) -> bool:
    """True for the errors of two processes creating the same schema object or row at once."""

    if any(isinstance(x, sqlalchemy.exc.IntegrityError) for x in chain(e)):
        return True
    text = _messages(e)
    return any(pattern in text for pattern in _RACE)


def finished_elsewhere(e: BaseException) -> bool:
    """True when this worker's trial was finished (failed as stale) by someone else while it
    ran: Optuna then refuses the ``tell`` or an attribute write."""

    for x in chain(e):
        if isinstance(x, optuna.exceptions.UpdateFinishedTrialError):
            return True
        if isinstance(x, ValueError) and str(x).startswith("Cannot tell a "):
            return True
    return False


class Outage:
    """One line per outage: the first failure of a run of storage errors is reported, the
    next ones are not, until an operation succeeds again. Shared by every thread of the
    process (the trial loop, Optuna's heartbeat thread, a supervisor's progress)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.since: float | None = None
        self.count = 0
        self.refusal: str | None = None

    def failed(self, who: str, e: BaseException, what: str = "retrying") -> bool:
        """Note a transient failure; print one line if it starts an outage. True if it did."""
        with self._lock:
            if self.since is not None:
                return False
            self.since = time.monotonic()
            self.count += 1
        print(f"{who}: storage unavailable ({reason(e)}); {what}", file=sys.stderr, flush=True)
        return True

    def ok(self, started: float | None = None) -> None:
        """A write succeeded: the outage, if any, is over and its clock restarts. Only a
        write says so: a database that answers reads but refuses or drops writes is still
        out (the bound of ``$HPO_DB_WAIT`` is reached), so callers call this after a write.
        ``started``: when the write began (``time.monotonic()``); a write that began before
        the outage was noticed (another thread's, committed just before the server went
        away) does not end it."""
        if self.since is not None:
            with self._lock:
                if self.since is not None and (started is None or started >= self.since):
                    self.since = None

    def reset(self) -> None:
        """Forget any outage and refusal (a new trial loop)."""
        with self._lock:
            self.since = None
            self.refusal = None

    def refuse(self, e: BaseException) -> None:
        """Note an error no retry can mend, seen where it cannot be raised to the command (the
        heartbeat thread): :meth:`check` ends the trial loop with it, and the command says it
        in its one line."""
        with self._lock:
            if self.refusal is None:
                self.refusal = f"the database refused a write ({reason(e)})"

    def check(self) -> None:
        """Raise the refusal noted by :meth:`refuse`, if any (a runtime failure, exit 1)."""
        if self.refusal is not None:
            raise RuntimeFailure(self.refusal)

    def elapsed(self) -> float:
        """Seconds since the current outage began (0 when there is none)."""
        since = self.since
        return 0.0 if since is None else time.monotonic() - since


#: The process's outage reporter.
OUTAGE = Outage()


def with_retries(attempt: Callable[[], T], *, who: str, what: str, wait: float | None = None,
                 races: bool = False, still_missing: Callable[[BaseException], bool]
                 | None = None, missing_wait: float = 0.0) -> T:
    """Call ``attempt`` until it succeeds; ``what`` names the storage in messages.

    * an error the database answered with (:func:`refused`) ends it at once: one line, exit 1;
    * transient errors are retried with backoff for ``wait`` seconds (default :func:`db_wait`),
      saying so in one line; then one line and exit 1 (:class:`~hpo.errors.RuntimeFailure`);
    * with ``races``, creation races are retried too (bounded), saying so in one line;
    * ``still_missing(e)``: errors that mean "not created yet" (a process started at the same
      moment may be creating it), retried silently for ``missing_wait`` seconds and then raised
      as they are (bad input: one line); one line when the wait was not in vain.

    A SIGTERM or Ctrl-C ends the wait (:func:`hpo.signals.check_stop`)."""
    wait = db_wait() if wait is None else wait
    start = time.monotonic()
    delay = 0.1
    down: float | None = None  # when the first transient failure happened
    said: set[str] = set()

    def say(kind: str, line: str) -> None:
        if kind not in said:
            said.add(kind)
            print(f"{who}: {line}", file=sys.stderr, flush=True)

    while True:
        check_stop()
        try:
            result = attempt()
        except Exception as e:  # noqa: BLE001 - sorted just below
            elapsed = time.monotonic() - start
            if races and is_creation_race(e):
                if elapsed > max(wait, 10.0):  # never bad input: a runtime failure
                    raise RuntimeFailure(f"{what} kept being changed by other processes for "
                                         f"{elapsed:.0f} s ({reason(e)})") from None
                say("race", f"{what} was being created by another process at the same moment "
                            f"({reason(e)}); retrying")
            elif still_missing is not None and still_missing(e):
                if elapsed > missing_wait:
                    raise
                said.add("missing")
            elif is_transient(e):
                # the wait counts from the first failure (a slow first attempt, on a loaded
                # machine, does not eat it), and is always announced
                down = down or time.monotonic()
                if "transient" in said and time.monotonic() - down > wait:
                    raise RuntimeFailure(f"{what} is still unavailable after "
                                         f"{time.monotonic() - down:.0f} s ({reason(e)})") from None
                say("transient", f"{what} is unavailable ({reason(e)}); retrying for up to "
                                 f"{wait:g} s (${DB_WAIT_ENV})")
            elif (why := refused(e)) is not None:  # one attempt: no retry mends it
                raise RuntimeFailure(f"the database refused an operation on {what} ({why})"
                                     ) from None
            else:
                raise
        else:
            if "missing" in said:
                say("found", f"waited {time.monotonic() - start:.1f} s for {what} to be made "
                             "by another process started at the same moment")
            return result
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 2.0)
