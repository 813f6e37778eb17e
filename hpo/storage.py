"""Storage URLs, engine options, schema initialisation, study creation, and the storage side
of liveness: trial counts by state, heartbeats and the stale-trial sweep, transient errors.

One rule drives this module: the schema and the study are created **once, before any worker
starts**. Several processes calling ``create_study(load_if_exists=True)`` on an empty database race
on schema creation and crash (Optuna 5, SQLite and PostgreSQL alike), so ``hpo run`` and the
compose ``init`` service call :func:`create_or_load_study` first, and workers only ever *load*.
"""

from __future__ import annotations

import os
import re
import sqlite3
import warnings
from typing import TYPE_CHECKING, Any

from hpo.errors import StorageError

if TYPE_CHECKING:
    import optuna
    from optuna.trial import TrialState

    from hpo.spec import Spec

DEFAULT_URL = "sqlite:///hpo.db"
SPEC_ATTR = "hpo:spec"
METRIC_NAME = "val_acc"
# Heartbeats: a trial of the book's task takes ~0.1-1 s, but a slow machine or a big spec can take
# minutes, and a heartbeat that is too short fails live trials (seen at 1 s with 16 workers).
HEARTBEAT_INTERVAL = 10
GRACE_PERIOD = 60
MAX_RETRY = 3


def resolve_url(url: str | None) -> str:
    """``--storage URL``, else ``$HPO_STORAGE``, else ``sqlite:///hpo.db`` in the current
    directory."""
    return url or os.environ.get("HPO_STORAGE") or DEFAULT_URL


def mask_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (safe for messages and logs)."""
    return re.sub(r"(://[^/:@]+:)[^/@]*@", r"\1***@", url)


def engine_kwargs(url: str) -> dict[str, Any]:
    """Engine options per backend.

    SQLite: a 60 s busy timeout so a few local workers queue instead of failing with "database is
    locked". PostgreSQL/MySQL: ``pool_pre_ping`` (the first query after a server restart otherwise
    fails) and at most 2 connections per worker process, both kept open: the trial's thread and
    its heartbeat thread each hold one. (With 1 + 1 overflow, the overflow connection was closed
    whenever the two were returned together and a new one opened at the next trial: a TCP
    connection and a server process per trial, about 5 ms on PostgreSQL.)
    """
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 60}}
    return {"pool_pre_ping": True, "pool_size": 2, "max_overflow": 0, "pool_recycle": 300}


def _prepare_sqlite(url: str) -> None:
    """Put a SQLite file in WAL mode (persistent in the file): readers stop blocking the writer."""
    path = url.split("sqlite:///", 1)[1] if url.startswith("sqlite:///") else ""
    if not path or path == ":memory:" or "?" in path:
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
    except sqlite3.Error as e:
        raise StorageError(f"cannot open {url}: {e}") from None


def require_existing_sqlite(url: str) -> None:
    """A SQLite URL that must name an existing file (opening it would create an empty one)."""
    if not url.startswith("sqlite:///"):
        return
    path = url.split("sqlite:///", 1)[1]
    if path and path != ":memory:" and "?" not in path and not os.path.exists(path):
        raise StorageError(f"storage {url} does not exist: create the study first with "
                           "`hpo run SPEC`")


def get_storage(
    url: str | None = None,
    *,
    heartbeat: bool = False,  # ignored for grpc:// (the proxy has no heartbeat)
    heartbeat_interval: int = HEARTBEAT_INTERVAL,
    grace_period: int = GRACE_PERIOD,
    max_retry: int = MAX_RETRY,
    create_schema: bool = False,
) -> optuna.storages.BaseStorage:
    """An RDBStorage for ``url`` with hpo's engine options (a gRPC proxy client for
    ``grpc://HOST:PORT``).

    ``create_schema=False`` (workers) skips table creation: the tables must exist, made by a call
    with ``create_schema=True`` (``hpo run``, compose ``init``) before any worker starts.
    ``heartbeat=True`` turns on Optuna's heartbeat: a trial whose worker died is failed after
    ``grace_period`` seconds and re-queued with the same params, at most ``max_retry`` times.
    """
    import optuna
    import sqlalchemy.exc

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # hpo prints its own progress
    url = resolve_url(url)
    if url.startswith("grpc://"):
        return _grpc_proxy(url)
    if url.startswith("sqlite") and create_schema:
        _prepare_sqlite(url)
    elif not create_schema:
        require_existing_sqlite(url)
    kwargs: dict[str, Any] = {}
    if heartbeat:
        kwargs = dict(
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=max_retry
            ),
        )
    try:
        storage = optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine_kwargs(url),
            skip_table_creation=not create_schema,
            **kwargs,
        )
    except optuna.exceptions.StorageInternalError as e:
        # Optuna wraps every database error of its schema check in StorageInternalError: only a
        # missing version_info table means "no schema"
        cause = e.__cause__ or e
        if "version_info" not in str(cause):
            text = str(cause).strip()
            first = text.splitlines()[0] if text else type(cause).__name__
            raise StorageError(f"cannot use storage {mask_url(url)}: {mask_url(first)}") from None
        raise StorageError(
            f"storage {mask_url(url)} has no Optuna schema: create the study first with "
            "`hpo run SPEC` or the compose `init` service"
        ) from None
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise StorageError(f"cannot use storage {mask_url(url)}: {mask_url(first)}") from None
    if url.startswith("sqlite"):
        _sqlite_synchronous_normal(storage.engine)
    return storage


def _sqlite_synchronous_normal(engine: Any) -> None:
    """``PRAGMA synchronous=NORMAL`` on every connection to a WAL-mode SQLite file.

    With the default (FULL) every commit waits for an fsync, and a trial commits about a dozen
    times (params, attributes, state, heartbeat; more with a pruner). In WAL mode NORMAL syncs
    at checkpoints only: still safe from corruption; a power cut (not a crash of the process)
    can lose the last commits.
    """
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _synchronous_normal(dbapi_con, _record) -> None:
        if dbapi_con.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
            dbapi_con.execute("PRAGMA synchronous=NORMAL")

    engine.dispose()  # connections opened before the listener existed


def _grpc_proxy(url: str) -> optuna.storages.BaseStorage:
    """``grpc://host:port``: a worker behind ``hpo proxy`` (Optuna's gRPC storage proxy), which
    holds the few real database connections for any number of workers."""
    import optuna

    m = re.fullmatch(r"grpc://([^:/]+):(\d+)/?", url)
    if not m:
        raise StorageError(f"bad gRPC storage URL {url!r}: use grpc://HOST:PORT")
    proxy = optuna.storages.GrpcStorageProxy(host=m.group(1), port=int(m.group(2)))
    try:
        proxy.wait_server_ready(timeout=float(os.environ.get("HPO_GRPC_WAIT", "60")))
    except Exception as e:  # noqa: BLE001 - grpc raises its own FutureTimeoutError
        raise StorageError(f"no hpo proxy answers at {url}: {type(e).__name__}") from None
    return proxy


def check_schema(storage: optuna.storages.RDBStorage, url: str) -> None:
    """Fail clearly when a worker's database has no hpo/Optuna schema (nobody ran init)."""
    import sqlalchemy.exc

    try:
        storage.get_all_studies()
    except sqlalchemy.exc.SQLAlchemyError:
        raise StorageError(
            f"storage {mask_url(url)} has no studies table: create the study first with "
            "`hpo run SPEC` or the compose `init` service"
        ) from None


def create_or_load_study(
    storage: optuna.storages.BaseStorage,
    spec: Spec,
    study_name: str | None = None,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> optuna.Study:
    """Create the study for ``spec`` (recording the spec in its user attributes and the metric
    name ``val_acc``) or load it when it exists with the same spec. A different budget is not a
    different spec: resuming with ``--n-trials`` records the new budget."""
    import optuna

    name = study_name or spec.name
    try:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler,
                                  pruner=pruner)
    except KeyError:
        study = optuna.create_study(
            study_name=name, storage=storage, sampler=sampler, pruner=pruner,
            direction="maximize", load_if_exists=True,
        )
        study.set_metric_names([METRIC_NAME])
        study.set_user_attr(SPEC_ATTR, spec.to_dict())
        return study
    stored = study.user_attrs.get(SPEC_ATTR)
    if stored is None:
        raise StorageError(f"study {name!r} exists but was not made by hpo (no spec recorded)")
    wanted = spec.to_dict()
    if {k: v for k, v in stored.items() if k != "budget"} != {
        k: v for k, v in wanted.items() if k != "budget"
    }:
        raise StorageError(
            f"study {name!r} exists with a different spec: pick another --study name, or resume "
            f"it with `hpo worker --study {name}`"
        )
    if stored.get("budget") != wanted["budget"]:
        study.set_user_attr(SPEC_ATTR, wanted)
    return study


def load_study_spec(storage: optuna.storages.BaseStorage, study_name: str) -> Spec:
    """The spec stored in an hpo study (``hpo worker`` needs nothing but the storage)."""
    from hpo.spec import from_dict

    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        names = sorted(s.study_name for s in storage.get_all_studies())
        hint = f"; studies here: {', '.join(names[:10])}" if names else "; this storage is empty"
        raise StorageError(f"no study named {study_name!r}{hint}") from None
    attrs = storage.get_study_user_attrs(study_id)
    if SPEC_ATTR not in attrs:
        raise StorageError(f"study {study_name!r} was not made by hpo (no spec recorded)")
    return from_dict(attrs[SPEC_ATTR], source=f"study {study_name!r}")


# --- counting and liveness ---------------------------------------------------------------------


def state_counts(study: optuna.Study, below: int | None = None) -> dict[TrialState, int]:
    """Number of trials per state (of those numbered below ``below``, when given).

    On an RDBStorage this is one SQL query on Optuna's ``trials`` table, not a
    ``study.get_trials`` (which reads and rebuilds the trials, seven queries when incremental);
    other storages read the trials. Connection errors propagate (:func:`is_transient`)."""
    from collections import Counter

    import sqlalchemy
    from optuna.trial import TrialState

    from hpo import optuna_compat as oc

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


def fail_trials_without_heartbeat(study: optuna.Study) -> list[int]:
    """Fail the RUNNING trials that never recorded a heartbeat and started more than the grace
    period ago, and hand each to the storage's stale-trial callback (the retry), as Optuna's
    ``fail_stale_trials`` does for trials whose heartbeat stopped. Returns their numbers.

    Optuna never counts a trial without a heartbeat row as stale. A worker that loses the
    database just after creating a trial leaves one: the heartbeat thread dies on its first beat,
    the ``tell`` fails too, and the trial would hold its slot of the budget forever (seen about
    once in 20 PostgreSQL restarts under two workers). RDB storages with heartbeats only."""
    import copy
    from datetime import datetime, timedelta

    import optuna
    import sqlalchemy
    from optuna.trial import TrialState

    from hpo import optuna_compat as oc

    rdb = oc.rdb_of(study)
    interval = rdb.get_heartbeat_interval() if rdb is not None else None
    if interval is None:
        return []
    grace = rdb.grace_period or 2 * interval
    cutoff = datetime.now() - timedelta(seconds=grace)  # datetime_start is the worker's local time
    sql = sqlalchemy.text(
        "SELECT t.trial_id FROM trials t LEFT JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
        "WHERE t.study_id = :study_id AND t.state = 'RUNNING' AND h.trial_id IS NULL "
        "AND t.datetime_start < :cutoff")
    with rdb.engine.connect() as conn:
        ids = [r[0] for r in conn.execute(sql, {"study_id": oc.study_id(study),
                                                "cutoff": cutoff})]
    storage = oc.storage_of(study)
    callback = rdb.get_heartbeat_stale_trial_callback()
    failed = []
    for trial_id in ids:
        try:
            if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:  # told or failed meanwhile
            continue
        trial = copy.deepcopy(storage.get_trial(trial_id))
        failed.append(trial.number)
        if callback is not None:
            callback(study, trial)
    return failed


def sweep_stale_trials(study: optuna.Study) -> None:
    """Fail the study's stale RUNNING trials (heartbeat stopped, or never beat past the grace
    period) and re-queue them through the retry callback. Nothing without heartbeats."""
    import optuna

    from hpo import optuna_compat as oc

    if not oc.heartbeat_enabled(oc.storage_of(study)):
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    fail_trials_without_heartbeat(study)


def keep_alive(study: optuna.Study, trial: Any) -> None:
    """For a trial that waits outside ``Study.optimize``'s own loop (a narrowing stage
    boundary): record its heartbeat, and fail the stale trials it may be waiting for."""
    from hpo import optuna_compat as oc

    if oc.heartbeat_enabled(oc.storage_of(study)):
        oc.record_heartbeat(study, trial)
        sweep_stale_trials(study)


def root_cause(e: BaseException) -> BaseException:
    """The innermost exception of a chain (Optuna masks database errors in ``tell``)."""
    seen = set()
    while id(e) not in seen:
        seen.add(id(e))
        nxt = e.__cause__ or e.__context__
        if nxt is None:
            break
        e = nxt
    return e


def is_transient(e: BaseException) -> bool:
    """True when the exception chain holds a connection-level database error: the server went
    away or restarted. Optuna 5 surfaces these as ``UnboundLocalError``/``AssertionError`` from
    ``tell``, so the whole ``__cause__``/``__context__`` chain is searched."""
    import optuna
    import sqlalchemy.exc

    transient: tuple[type[BaseException], ...] = (
        sqlalchemy.exc.OperationalError,
        sqlalchemy.exc.InterfaceError,
        optuna.exceptions.StorageInternalError,
        ConnectionError,
    )
    try:
        import grpc

        transient += (grpc.RpcError,)
    except ImportError:  # pragma: no cover
        pass
    seen = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, transient):
            return True
        cur = cur.__cause__ or cur.__context__
    return False
