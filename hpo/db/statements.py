"""The transactions of a trial hpo runs, as a few SQLAlchemy Core statements each (issue 26).

Optuna's ``RDBStorage`` writes through its ORM: 6-11 statements per transaction (the trial row
read again before each write, the study's earlier parameters looked up for each new one, a
flush per object), about 1 ms of Python each. :class:`hpo.db.writebehind.WriteBehindRDBStorage`
already makes a trial three transactions; here each is what the database needs and no more,
on Optuna's own tables (read from its models through :mod:`hpo.db.optuna_private`) and with
Optuna's stored representations, so that Optuna, optuna-dashboard and every reader see the
same rows as before:

* :func:`lock_and_count` and :func:`insert_trial` (PostgreSQL: the study row locked, as
  Optuna locks it): the trials counted by state, the trial inserted with its number (the
  count: nobody inserts into a locked study), its first heartbeat;
* :func:`flush_running` (a trial's parameters as the sampler has drawn them, a heartbeat's
  flush, a proxied worker's ``hpo:held``): the trial row locked, then one insert per table;
* :func:`finish_trial` (its end): one update that finishes the trial only if it is still
  RUNNING, then the held writes and the values, one insert per table;
* :func:`trial_states` (the cache's incremental read, :mod:`hpo.db.known`): ids and states.

On PostgreSQL the inserting and the locking or finishing are one statement
(:mod:`hpo.db.statements_pg`): a trial's creation is 3 statements, its parameters 1, its end 1.

Every function runs inside :func:`transaction`, which turns SQLAlchemy's errors into Optuna's
``StorageInternalError`` as Optuna's own session does (an ``IntegrityError`` stays itself), so
that hpo's retry and outage handling sees exactly what it saw before.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
from collections.abc import Iterator, Sequence
from typing import Any

import optuna
import sqlalchemy
import sqlalchemy.exc
from optuna.distributions import distribution_to_json
from optuna.trial import TrialState
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from hpo.db import optuna_private as oc
from hpo.db import statements_pg as pg
from hpo.db.held_writes import HeldWrites

#: Dialects whose upserts (``INSERT ... ON CONFLICT``) these statements use.
UPSERT_DIALECTS = ("postgresql", "sqlite")


@contextlib.contextmanager
def transaction(engine: sqlalchemy.Engine) -> Iterator[sqlalchemy.Connection]:
    """One transaction on a pooled connection: committed at the end, rolled back on an error;
    SQLAlchemy's errors but ``IntegrityError`` raised as Optuna's ``StorageInternalError``
    (``__cause__`` the original), as Optuna's ``_create_scoped_session`` does."""
    try:
        with engine.begin() as conn:
            yield conn
    except sqlalchemy.exc.IntegrityError:
        raise
    except sqlalchemy.exc.SQLAlchemyError as e:
        raise optuna.exceptions.StorageInternalError(
            "An exception is raised during the commit of a trial's transaction.") from e


def _tables() -> Any:
    models = oc.rdb_models()
    return (models.StudyModel.__table__, models.TrialModel.__table__,
            models.TrialHeartbeatModel.__table__)


def utc_now() -> tuple[dt.datetime, dt.datetime]:
    """(local naive, UTC naive) of now: what a ``FrozenTrial`` shows and what Optuna stores."""
    local = dt.datetime.now()
    return local, local.astimezone(dt.timezone.utc).replace(tzinfo=None)


@functools.cache
def _stmt(name: str) -> Any:
    """The hot statements, built once with bind parameters (their compiled forms are then
    cached by SQLAlchemy; building a statement costs more Python than running it)."""
    studies, trials, beats = _tables()
    b = sqlalchemy.bindparam
    return {
        "lock_study": sqlalchemy.select(studies.c.study_id)
        .where(studies.c.study_id == b("sid")).with_for_update(),
        "study": sqlalchemy.select(studies.c.study_id).where(studies.c.study_id == b("sid")),
        "counts": sqlalchemy.select(trials.c.state, sqlalchemy.func.count())
        .where(trials.c.study_id == b("sid")).group_by(trials.c.state),
        "insert": sqlalchemy.insert(trials).values(
            number=b("number"), study_id=b("sid"), state=TrialState.RUNNING,
            datetime_start=b("start"), datetime_complete=None).returning(trials.c.trial_id),
        "beat": sqlalchemy.insert(beats).values(trial_id=b("tid")),
        "lock_trial": sqlalchemy.select(trials.c.state)
        .where(trials.c.trial_id == b("tid")).with_for_update(),
        "number": sqlalchemy.select(trials.c.number).where(trials.c.trial_id == b("tid")),
        "finish": sqlalchemy.update(trials)
        .where(trials.c.trial_id == b("tid"), trials.c.state == TrialState.RUNNING)
        .values(state=b("state"), datetime_complete=b("end")),
        "states": sqlalchemy.select(trials.c.trial_id, trials.c.state)
        .where(trials.c.study_id == b("sid"), trials.c.trial_id > b("greater"))
        .order_by(trials.c.trial_id),
        "states_in": sqlalchemy.select(trials.c.trial_id, trials.c.state)
        .where(trials.c.study_id == b("sid"),
               sqlalchemy.or_(trials.c.trial_id.in_(b("ids", expanding=True)),
                              trials.c.trial_id > b("greater")))
        .order_by(trials.c.trial_id),
    }[name]


def lock_and_count(conn: sqlalchemy.Connection, study_id: int) -> dict[TrialState, int]:
    """Lock the study row (PostgreSQL; as Optuna's trial creation locks it: nobody else
    creates a trial in it until this transaction ends) and count its trials by state (a
    missing study: ``KeyError``)."""
    if conn.execute(_stmt("lock_study"), {"sid": study_id}).first() is None:
        raise KeyError(f"No study with study_id {study_id} exists.")
    rows = conn.execute(_stmt("counts"), {"sid": study_id})
    return {_state(s): int(k) for s, k in rows}


def insert_trial(conn: sqlalchemy.Connection, study_id: int, number: int, heartbeat: bool
                 ) -> tuple[int, dt.datetime]:
    """A RUNNING trial numbered ``number`` (the study's count of trials, made under
    :func:`lock_and_count`'s lock), with ``heartbeat`` its first heartbeat (the database's
    clock). Returns (its id, its start as a ``FrozenTrial`` shows it)."""
    local, utc = utc_now()
    if conn.dialect.name == "postgresql":
        return pg.insert_trial(conn, study_id, number, utc, heartbeat), local
    trial_id = conn.execute(_stmt("insert"), {"number": number, "sid": study_id,
                                              "start": utc}).scalar_one()
    if heartbeat:
        conn.execute(_stmt("beat"), {"tid": trial_id})
    return trial_id, local


def lock_running(conn: sqlalchemy.Connection, trial_id: int) -> bool:
    """Lock the trial row; whether the trial is RUNNING (a missing trial: ``KeyError``)."""
    state = conn.execute(_stmt("lock_trial"), {"tid": trial_id}).scalar()
    if state is None:
        raise KeyError(f"No trial with trial_id {trial_id} exists.")
    return _state(state) == TrialState.RUNNING


def _state(value: Any) -> TrialState:
    return value if isinstance(value, TrialState) else TrialState[value]


def trial_states(conn: sqlalchemy.Connection, study_id: int, included: set[int],
                 greater: int) -> list[tuple[int, TrialState]]:
    """(id, state) of the study's trials that ``RDBStorage._get_trials(study_id, None,
    included, greater)`` would return (an id in ``included`` up to ``greater``, or above
    ``greater``), in id order; a missing study: ``KeyError``."""
    wanted = sorted(i for i in included if i <= greater)
    params = {"sid": study_id, "greater": greater}
    if wanted:
        rows = conn.execute(_stmt("states_in"), {**params, "ids": wanted}).all()
    else:
        rows = conn.execute(_stmt("states"), params).all()
    if not rows and conn.execute(_stmt("study"), {"sid": study_id}).first() is None:
        raise KeyError(f"No study with study_id {study_id} exists.")
    return [(int(tid), _state(s)) for tid, s in rows]


def finish_trial(conn: sqlalchemy.Connection, trial_id: int, state: TrialState,
                 values: Sequence[float] | None, held: HeldWrites | None,
                 at: tuple[dt.datetime, dt.datetime] | None = None) -> dt.datetime:
    """Finish a RUNNING trial: its state and end time (one update, only while RUNNING: a trial
    finished meanwhile, by a sweeper, raises Optuna's ``UpdateFinishedTrialError`` and nothing
    is written), then what ``held`` keeps and the objective values. Returns its end time as a
    ``FrozenTrial`` shows it (``at``: that end time, (local, UTC), instead of now)."""
    local, utc = at or utc_now()
    if conn.dialect.name == "postgresql":
        done = pg.finish(conn, trial_id, state, utc, held, values)
    else:
        done = conn.execute(_stmt("finish"), {"tid": trial_id, "state": state,
                                              "end": utc}).rowcount
    if done != 1:
        row = conn.execute(_stmt("number"), {"tid": trial_id}).first()
        if row is None:
            raise KeyError(f"No trial with trial_id {trial_id} exists.")
        raise optuna.exceptions.UpdateFinishedTrialError(
            f"Trial#{row[0]} has already finished and can not be updated.")
    if conn.dialect.name == "postgresql":
        return local
    if held is not None:
        flush_held(conn, trial_id, held)
    if values:
        model = oc.rdb_models().TrialValueModel
        rows = []
        for objective, value in enumerate(values):
            stored, kind = model.value_to_stored_repr(value)
            rows.append({"trial_id": trial_id, "objective": objective, "value": stored,
                         "value_type": kind})
        conn.execute(sqlalchemy.insert(model.__table__), rows)
    return local


@functools.cache
def _upsert(table_name: str) -> Any:
    """SQLite: the upsert of one held row of ``table_name`` (built once; executed with a list
    of rows, the compiled statement cached). PostgreSQL has :mod:`hpo.db.statements_pg`."""
    models = oc.rdb_models()
    insert = sqlite_insert
    if table_name == "trial_intermediate_values":
        table = models.TrialIntermediateValueModel.__table__
        stmt = insert(table)
        return stmt.on_conflict_do_update(
            index_elements=[table.c.trial_id, table.c.step],
            set_={"intermediate_value": stmt.excluded.intermediate_value,
                  "intermediate_value_type": stmt.excluded.intermediate_value_type})
    table = {"trial_user_attributes": models.TrialUserAttributeModel,
             "trial_system_attributes": models.TrialSystemAttributeModel}[table_name].__table__
    stmt = insert(table)
    return stmt.on_conflict_do_update(index_elements=[table.c.trial_id, table.c.key],
                                      set_={"value_json": stmt.excluded.value_json})


def flush_held(conn: sqlalchemy.Connection, trial_id: int, held: HeldWrites) -> None:
    """Write what ``held`` keeps for the trial (not committed): its parameters (new rows:
    checked against the study's earlier ones as they were held), then one batch of upserts per
    table of user attributes, system attributes and intermediate values."""
    models = oc.rdb_models()
    if held.params:
        conn.execute(sqlalchemy.insert(models.TrialParamModel.__table__), [
            {"trial_id": trial_id, "param_name": name, "param_value": internal,
             "distribution_json": distribution_to_json(distribution)}
            for name, (internal, distribution) in held.params.items()])
    for table, attrs in (("trial_user_attributes", held.user),
                         ("trial_system_attributes", held.system)):
        if attrs:
            conn.execute(_upsert(table), [
                {"trial_id": trial_id, "key": k, "value_json": v} for k, v in attrs.items()])
    if held.steps:
        stored = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr
        rows = []
        for step, value in held.steps.items():
            v, kind = stored(value)
            rows.append({"trial_id": trial_id, "step": step, "intermediate_value": v,
                         "intermediate_value_type": kind})
        conn.execute(_upsert("trial_intermediate_values"), rows)


def flush_running(conn: sqlalchemy.Connection, trial_id: int, held: HeldWrites) -> bool:
    """Lock the trial row and, if it is RUNNING, write what ``held`` keeps (PostgreSQL: one
    statement, :mod:`hpo.db.statements_pg`); whether it was (a missing trial: ``KeyError``)."""
    if conn.dialect.name != "postgresql":
        running = lock_running(conn, trial_id)
        if running:
            flush_held(conn, trial_id, held)
        return running
    if pg.flush(conn, trial_id, held):
        return True
    if conn.execute(_stmt("number"), {"tid": trial_id}).first() is None:
        raise KeyError(f"No trial with trial_id {trial_id} exists.")
    return False


# -- elsewhere (MySQL: no upserts here): Optuna's own per-row writers ------------------------


def _orm_write(storage: Any, session: Any, row: Any, held: HeldWrites) -> None:
    models = oc.rdb_models()
    attrs = [(model, k, json.loads(text)) for model, kept in
             ((models.TrialUserAttributeModel, held.user),
              (models.TrialSystemAttributeModel, held.system)) for k, text in kept.items()]
    oc.write_without_commit(storage, session, row, params=held.params, attrs=attrs,
                            steps=dict(held.steps))


def orm_finish(storage: Any, trial_id: int, state: TrialState,
               values: Sequence[float] | None, held: HeldWrites) -> None:
    """:func:`finish_trial` through Optuna's ORM writers, one transaction."""
    with oc.rdb_session(storage) as session:
        row = oc.rdb_models().TrialModel.find_or_raise_by_id(trial_id, session, for_update=True)
        if row.state.is_finished():
            raise optuna.exceptions.UpdateFinishedTrialError(
                f"Trial#{row.number} has already finished and can not be updated.")
        _orm_write(storage, session, row, held)
        oc.write_without_commit(storage, session, row, values=list(values or ()))
        row.state = state
        row.datetime_complete = dt.datetime.now()


def flush_trial(storage: Any, trial_id: int, held: HeldWrites) -> bool:
    """:func:`flush_running` in a transaction of ``storage`` (an RDBStorage), or Optuna's
    writers where there are no upserts here: whether the trial was RUNNING."""
    if storage.engine.name not in UPSERT_DIALECTS:
        return orm_flush(storage, trial_id, held)
    with transaction(storage.engine) as conn:
        return flush_running(conn, trial_id, held)


def orm_flush(storage: Any, trial_id: int, held: HeldWrites) -> bool:
    """:func:`lock_running` then :func:`flush_held` through Optuna's ORM writers, one
    transaction; whether the trial was RUNNING (else nothing is written)."""
    with oc.rdb_session(storage) as session:
        row = oc.rdb_models().TrialModel.find_or_raise_by_id(trial_id, session, for_update=True)
        if row.state != TrialState.RUNNING:
            return False
        _orm_write(storage, session, row, held)
        return True
