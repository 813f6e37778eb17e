"""Storage URLs, opening a storage (engine options: :mod:`hpo.db.connect`), schema and
study creation, and the storage side of liveness: trial counts by state, heartbeats and the
stale-trial sweep.

**Any number of processes may start together on an empty database** (``hpo run``, ``hpo init``,
``hpo worker``, the dashboard). Optuna 5 alone crashes there: concurrent
``create_study(load_if_exists=True)`` race on schema creation (``UniqueViolation`` on
``pg_type``, ``table ... already exists``). Here:

* on PostgreSQL every opening of the storage (schema creation included) holds a session
  advisory lock (:func:`creation_lock`), so one process at a time creates or checks the schema;
* on every backend, creation races (a table, type or row created twice at the same moment:
  SQLite, MySQL, or a process without the lock) are retried, bounded
  (:func:`hpo.db.retry.with_retries`);
* a study is created by ``create_new_study``, which exactly one process wins; only the winner
  records the spec and the metric name, and the others wait (bounded) until the spec is there;
* a process that only *joins* (``hpo worker``, the dashboard) and finds the storage empty (no
  SQLite file, no schema, no study in it yet, a study without its spec yet) waits up to
  ``join_wait`` seconds for a creator started at the same moment, then reports what is missing
  (exit 2); a study missing from a storage that holds others is reported at once (a typo);
* a database that refuses connections (down, starting up, "too many clients") is retried with
  backoff for ``$HPO_DB_WAIT`` seconds (30) with one line, then exit 1; one that cannot be used
  (unknown database or role, a file that is not SQLite) is bad input at once (exit 2).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sqlite3
import warnings
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import optuna
import sqlalchemy
from optuna.study import StudyDirection
from optuna.trial import TrialState
from sqlalchemy import event
from sqlalchemy.pool import NullPool

from hpo.db import optuna_private as oc
from hpo.db.connect import CONNECT_TIMEOUT, engine_kwargs, ping_after_idle
from hpo.db.heartbeats import grpc_client, rdb_storage_class
from hpo.db.keys import METRIC_NAME, SPEC_ATTR, SPEC_KEY_ATTR
from hpo.db.retry import OUTAGE, bad_database, chain, reason, with_retries
from hpo.errors import BadInput, RuntimeFailure, StorageError
from hpo.spec import from_dict

if TYPE_CHECKING:
    import optuna
    from optuna.trial import TrialState

    from hpo.spec import Spec

DEFAULT_URL = "sqlite:///hpo.db"
# Heartbeats: a trial of the book's task takes ~0.1-1 s, but a slow machine or a big spec can take
# minutes, and a heartbeat that is too short fails live trials (seen at 1 s with 16 workers).
HEARTBEAT_INTERVAL = 10
GRACE_PERIOD = 60
MAX_RETRY = 3
#: Seconds a joining process waits for a creator started at the same moment (see above).
JOIN_WAIT = 10.0
#: PostgreSQL advisory lock key held while a process opens the storage ("hpo_lock").
LOCK_KEY = 0x68706F5F6C6F636B


def resolve_url(url: str | None) -> str:
    """``--storage URL``, else ``$HPO_STORAGE``, else ``$OPTUNA_STORAGE`` (what Optuna's own
    CLI reads), else ``sqlite:///hpo.db`` in the current directory."""
    return (url or os.environ.get("HPO_STORAGE") or os.environ.get("OPTUNA_STORAGE")
            or DEFAULT_URL)


def mask_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (safe for messages and logs)."""
    return re.sub(r"(://[^/:@]+:)[^/@]*@", r"\1***@", url)


def sqlite_path(url: str) -> str:
    """The file of a ``sqlite:///PATH`` URL ("" for in-memory and URLs with options)."""
    path = url.split("sqlite:///", 1)[1] if url.startswith("sqlite:///") else ""
    return "" if path == ":memory:" or "?" in path else path


def _in_memory(url: str) -> bool:
    """``sqlite://``, ``sqlite:///:memory:`` and SQLite URI memory databases."""
    if not url.startswith("sqlite:"):
        return False
    rest = url.split("://", 1)[-1].split("?", 1)
    return rest[0] in ("", "/", "/:memory:") or (len(rest) > 1 and "mode=memory" in rest[1])


def _prepare_sqlite(url: str) -> None:
    """Put a SQLite file in WAL mode (persistent in the file): readers stop blocking the writer."""
    path = sqlite_path(url)
    if not path:
        return
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise StorageError(f"cannot open {url}: directory {directory} does not exist")
    try:
        con = sqlite3.connect(path, timeout=60)
        try:
            con.execute("PRAGMA journal_mode=WAL")
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        if "not a database" in str(e):
            raise StorageError(f"{path} is not an SQLite database (--storage {url})") from None
        raise StorageError(f"cannot open {url}: {e}") from None


@contextlib.contextmanager
def creation_lock(url: str) -> Iterator[None]:
    """On PostgreSQL, hold a session advisory lock (on its own connection, closed afterwards:
    a dead holder's lock goes with its session) so that processes opening the same empty
    database create the schema one at a time; waits at most 60 s (``lock_timeout``). A database
    whose schema is complete (Optuna's version row and Alembic's stamp, the creator's last
    writes) needs no lock: many workers started together no longer queue behind each other's
    opening (16 at once on a loaded 2-core machine waited past 60 s). Elsewhere nothing."""
    if not url.startswith("postgresql"):
        yield
        return

    engine = sqlalchemy.create_engine(url, poolclass=NullPool,
                                      connect_args={"connect_timeout": CONNECT_TIMEOUT})
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            try:
                ready = conn.execute(sqlalchemy.text(
                    "SELECT EXISTS (SELECT 1 FROM version_info) "
                    "AND EXISTS (SELECT 1 FROM alembic_version)")).scalar()
            except sqlalchemy.exc.ProgrammingError:  # no schema yet
                ready = False
            if ready:
                yield
                return
            conn.execute(sqlalchemy.text("SET lock_timeout = '60s'"))
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": LOCK_KEY})
            yield
    finally:
        engine.dispose()


class _NotYet(StorageError):
    """Something a creator started at the same moment may still be making (the SQLite file,
    the schema, the study, its spec)."""


def get_storage(
    url: str | None = None,
    *,
    heartbeat: bool = False,
    heartbeat_interval: int = HEARTBEAT_INTERVAL,
    grace_period: int = GRACE_PERIOD,
    max_retry: int = MAX_RETRY,
    create_schema: bool = False,
    join_wait: float = 0.0,
    who: str = "hpo",
    storage_class: type | None = None,
    engine: dict[str, Any] | None = None,
) -> optuna.storages.BaseStorage:
    """An RDBStorage for ``url`` with hpo's engine options (a gRPC proxy client for
    ``grpc://HOST:PORT``), opened as the module docstring says.

    ``create_schema=False`` (workers, reports) only opens: the tables must exist.
    ``join_wait``: seconds to wait for an empty storage to be created by a process started at
    the same moment. ``heartbeat=True`` turns on Optuna's heartbeat: a trial whose worker died
    is failed after ``grace_period`` seconds and re-queued with the same params, at most
    ``max_retry`` times; through the gRPC proxy the worker's beats go to ``hpo proxy``, which
    fails its stale trials. ``storage_class`` / ``engine``: another RDBStorage subclass and
    engine options (the proxy's).
    """

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # hpo prints its own progress
    url = resolve_url(url)
    if _in_memory(url):
        raise StorageError(f"{url} is an in-memory SQLite database, gone when the command ends "
                           "and unseen by any other worker: use a file, sqlite:///FILE")
    if url.startswith("grpc://"):
        return grpc_client(url, heartbeat_interval if heartbeat else None, who)
    kwargs: dict[str, Any] = {}
    if heartbeat:
        kwargs = dict(
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=max_retry
            ),
        )
    path = sqlite_path(url)
    cls = storage_class or rdb_storage_class()
    options = engine or engine_kwargs(url, grace_period)

    def attempt() -> Any:
        if create_schema and url.startswith("sqlite"):
            _prepare_sqlite(url)
        elif path and not os.path.exists(path):
            raise _NotYet(f"storage {url} does not exist: create the study first with "
                          "`hpo run SPEC` or `hpo init SPEC`")
        with creation_lock(url):
            return cls(url, engine_kwargs=options,
                       skip_table_creation=not create_schema, **kwargs)

    def not_yet(e: BaseException) -> bool:
        return isinstance(e, _NotYet) or (not create_schema and _no_schema(e))

    try:
        storage = with_retries(attempt, who=who, what=f"the storage {mask_url(url)}",
                               races=True, still_missing=not_yet, missing_wait=join_wait)
    except (BadInput, RuntimeFailure):
        raise
    except Exception as e:  # noqa: BLE001 - one line for whatever is left
        raise _storage_error(url, path, e) from None
    if url.startswith("sqlite"):
        _sqlite_synchronous_normal(storage.engine)
    elif not options.get("pool_pre_ping"):
        ping_after_idle(storage.engine)
    return storage


def _no_schema(e: BaseException) -> bool:
    """Whether opening failed because the database has no Optuna schema (no ``version_info``
    table), and not because it is not a database at all."""

    if bad_database(e):
        return False
    text = " | ".join(str(x) for x in chain(e)).lower()
    return "version_info" in text and ("no such table" in text or "does not exist" in text
                                       or "undefinedtable" in text)


def _storage_error(url: str, path: str, e: BaseException) -> StorageError:
    """The one line for a storage that cannot be used as asked."""
    bad = bad_database(e)
    if path and bad and "not a database" in bad:
        return StorageError(f"{path} is not an SQLite database (--storage {url})")
    if _no_schema(e):
        return StorageError(f"storage {mask_url(url)} has no Optuna schema: create the study "
                            "first with `hpo run SPEC` or `hpo init SPEC`")
    return StorageError(f"cannot use storage {mask_url(url)}: {mask_url(bad or reason(e))}")


def _first_difference(a: Any, b: Any, key: str = "") -> tuple[str, Any, Any]:
    """The first dotted key where two specs (plain data) differ, and its two values."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{key}.{k}" if key else k)
    return key or "(the spec)", a, b


def _short(value: Any) -> str:
    text = "not set" if value is None else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _sqlite_synchronous_normal(engine: Any) -> None:
    """``PRAGMA synchronous=NORMAL`` on every connection to a WAL-mode SQLite file.

    With the default (FULL) every commit waits for an fsync, and a trial commits about a dozen
    times (params, attributes, state, heartbeat; more with a pruner). In WAL mode NORMAL syncs
    at checkpoints only: still safe from corruption; a power cut (not a crash of the process)
    can lose the last commits.
    """

    @event.listens_for(engine, "connect")
    def _synchronous_normal(dbapi_con, _record) -> None:
        if dbapi_con.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
            dbapi_con.execute("PRAGMA synchronous=NORMAL")

    engine.dispose()  # connections opened before the listener existed


def check_schema(storage: optuna.storages.BaseStorage, url: str) -> None:
    """Fail clearly when the database has no hpo/Optuna schema (nobody ran init)."""
    try:
        with_retries(storage.get_all_studies, who="hpo", what=f"the storage {mask_url(url)}")
    except (BadInput, RuntimeFailure):
        raise
    except Exception:  # noqa: BLE001 - what is left is a missing table
        raise StorageError(
            f"storage {mask_url(url)} has no studies table: create the study first with "
            "`hpo run SPEC` or `hpo init SPEC`"
        ) from None


def create_or_load_study(
    storage: optuna.storages.BaseStorage,
    spec: Spec,
    study_name: str | None = None,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
    *,
    wait: float = JOIN_WAIT,
) -> optuna.Study:
    """Create the study for ``spec`` (recording the spec in its user attributes and the metric
    name ``val_acc``) or load it when it exists with the same spec. A different budget is not a
    different spec: resuming with ``--n-trials`` records the new budget.

    Any number of processes may call this at once for the same new study: ``create_new_study``
    lets exactly one of them create it, and only that one records the spec; the others wait up
    to ``wait`` seconds for it. Connection errors are retried (:func:`hpo.db.retry.with_retries`).
    """

    name = study_name or spec.name
    wanted = spec.to_dict()
    created = False

    def attempt() -> optuna.Study:
        nonlocal created
        try:
            storage.get_study_id_from_name(name)
        except KeyError:
            try:
                storage.create_new_study([StudyDirection[spec.direction.upper()]], name)
                created = True
            except optuna.exceptions.DuplicatedStudyError:
                pass  # another process created it a moment ago
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler,
                                  pruner=pruner)
        sid = storage.get_study_id_from_name(name)
        if created:
            if spec_of(storage, sid) is None:
                study.set_metric_names([spec.objective.metric if spec.objective else METRIC_NAME])
                store_spec(storage, sid, wanted)
            return study
        stored = spec_of(storage, sid)
        if stored is None:
            raise _NotYet(f"study {name!r} exists but was not made by hpo (no spec recorded)")
        if _without_budget(stored) != _without_budget(wanted):
            key, theirs, ours = _first_difference(_without_budget(stored), _without_budget(wanted))
            raise StorageError(
                f"study {name!r} exists with a different spec ({spec.source}: {key} is "
                f"{_short(ours)}, the study's is {_short(theirs)}): pick another --study name, "
                f"or resume it with `hpo worker --study {name}`"
            )
        if any(stored.get(k) != wanted.get(k) for k in _NOT_THE_SEARCH):
            store_spec(storage, sid, wanted)
        return study

    return with_retries(attempt, who="hpo", what=f"the study {name!r}", races=True,
                        still_missing=lambda e: isinstance(e, _NotYet), missing_wait=wait)


#: Spec tables a resumed study may change: its budget, where its trials are also logged.
_NOT_THE_SEARCH = ("budget", "tracking")


def spec_key(spec: dict[str, Any]) -> str:
    """The short key of a spec: 12 hex digits of the SHA-256 of its canonical JSON."""
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def store_spec(storage: optuna.storages.BaseStorage, study_id: int, spec: dict[str, Any]) -> None:
    """The JSON as system attribute :data:`SPEC_ATTR`, its key as :data:`SPEC_KEY_ATTR`."""
    storage.set_study_system_attr(study_id, SPEC_ATTR, spec)
    storage.set_study_user_attr(study_id, SPEC_KEY_ATTR, spec_key(spec))


def stored_spec(system_attrs: dict[str, Any], user_attrs: dict[str, Any]) -> dict[str, Any] | None:
    """The spec in a study's attributes (system, else a former study's user); None: not hpo's."""
    spec = system_attrs.get(SPEC_ATTR, user_attrs.get(SPEC_ATTR))
    return spec if isinstance(spec, dict) else None


def spec_of(storage: optuna.storages.BaseStorage, study_id: int) -> dict[str, Any] | None:
    return stored_spec(storage.get_study_system_attrs(study_id),
                       storage.get_study_user_attrs(study_id))


def study_spec(study: optuna.Study) -> dict[str, Any] | None:  # stored_spec of a loaded study
    return spec_of(oc.storage_of(study), oc.study_id(study))


def _without_budget(spec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if k not in _NOT_THE_SEARCH}


def load_study_spec(storage: optuna.storages.BaseStorage, study_name: str,
                    wait: float = 0.0) -> Spec:
    """The spec stored in an hpo study (``hpo worker`` needs nothing but the storage). With
    ``wait``, a storage that holds no study yet, or a study whose creator has not recorded its
    spec yet, is waited for that many seconds (a creator may have started at the same moment)."""

    def attempt() -> dict[str, Any]:
        try:
            study_id = storage.get_study_id_from_name(study_name)
        except KeyError:
            names = sorted(s.study_name for s in storage.get_all_studies())
            if not names:
                raise _NotYet(f"no study named {study_name!r}; this storage is empty") from None
            if study_name not in names:
                raise StorageError(f"no study named {study_name!r}; studies here: "
                                   f"{', '.join(names[:10])}") from None
            # made by a creator between the two reads (a crowded start): it is there now
            study_id = storage.get_study_id_from_name(study_name)
        spec = spec_of(storage, study_id)
        if spec is None:
            raise _NotYet(f"study {study_name!r} was not made by hpo (no spec recorded)")
        return spec

    stored = with_retries(attempt, who="hpo", what=f"the study {study_name!r}",
                          still_missing=lambda e: isinstance(e, _NotYet), missing_wait=wait)
    return from_dict(stored, source=f"study {study_name!r}", stored=True)


# --- counting and liveness ---------------------------------------------------------------------


def state_counts(study: optuna.Study, below: int | None = None) -> dict[TrialState, int]:
    """Number of trials per state (of those numbered below ``below``, when given).

    On an RDBStorage this is one SQL query on Optuna's ``trials`` table, not a
    ``study.get_trials`` (which reads and rebuilds the trials, seven queries when incremental);
    other storages read the trials. Connection errors propagate (:func:`is_transient`)."""



    rdb = oc.rdb_of(study)
    if rdb is None:
        return dict(Counter(
            t.state for t in study.get_trials(deepcopy=False)
            if below is None or t.number < below
        ))
    sql = "SELECT state, COUNT(*) FROM trials WHERE study_id = :study_id"
    params = {"study_id": oc.study_id(study)}
    if below is not None:
        sql += " AND number < :below"
        params["below"] = below
    with rdb.engine.connect() as conn:
        rows = conn.execute(sqlalchemy.text(sql + " GROUP BY state"), params).all()
    # the column is an Enum of TrialState names ('COMPLETE', ...); a native enum on PostgreSQL
    return {TrialState[getattr(state, "name", state)]: int(n) for state, n in rows}


def adopt_trials_without_heartbeat(study: optuna.Study) -> int:
    """Give each RUNNING trial of the study that has no heartbeat row one, stamped with the
    database's clock (``CURRENT_TIMESTAMP``, what Optuna's own heartbeats use). Returns how many.

    Optuna never counts a trial without a heartbeat row as stale. A worker that loses the
    database just after creating a trial leaves one: the heartbeat thread's first beat fails,
    the ``tell`` fails too, and the trial would hold its slot of the budget forever (seen about
    once in 20 PostgreSQL restarts under two workers). Adopted, it is a trial like any other:
    if its worker beats, the beats update the row; if not, Optuna's ``fail_stale_trials`` fails
    it one grace period later and its retry is enqueued. Every age is the database's clock
    against a time the database wrote (never a worker's clock, which ``datetime_start`` is,
    against the sweeper's). RDB storages with heartbeats only."""


    rdb = oc.rdb_of(study)
    if rdb is None or rdb.get_heartbeat_interval() is None:
        return 0
    sql = sqlalchemy.text(
        "INSERT INTO trial_heartbeats (trial_id, heartbeat) "
        "SELECT t.trial_id, CURRENT_TIMESTAMP FROM trials t "
        "LEFT JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
        "WHERE t.study_id = :study_id AND t.state = 'RUNNING' AND h.trial_id IS NULL "
        "ON CONFLICT (trial_id) DO NOTHING")
    if rdb.engine.name not in ("postgresql", "sqlite"):
        return 0  # MySQL has no ON CONFLICT; hpo tests PostgreSQL and SQLite
    with rdb.engine.begin() as conn:
        return conn.execute(sql, {"study_id": oc.study_id(study)}).rowcount or 0


def sweep_stale_trials(study: optuna.Study) -> None:
    """Fail the study's stale RUNNING trials (heartbeat older than the grace period on the
    database's clock; a trial that never beat is given a heartbeat row first,
    :func:`adopt_trials_without_heartbeat`) and re-queue them through the retry callback.
    Nothing without heartbeats."""


    if not oc.heartbeat_enabled(oc.storage_of(study)):
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    adopt_trials_without_heartbeat(study)
    OUTAGE.ok()  # a write went through (the adoption's INSERT, even of no row)


def keep_alive(study: optuna.Study, trial: Any) -> None:
    """For a trial that waits outside ``Study.optimize``'s own loop (a narrowing stage
    boundary): record its heartbeat, and fail the stale trials it may be waiting for."""

    if oc.heartbeat_enabled(oc.storage_of(study)):
        oc.record_heartbeat(study, trial)
        sweep_stale_trials(study)
