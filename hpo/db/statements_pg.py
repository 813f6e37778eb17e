"""PostgreSQL: a trial's writes as one statement each (issue 26), for :mod:`hpo.db.statements`.

Each held table's rows travel as arrays and are inserted with ``unnest`` (one execution on the
server, where a batch of single-row inserts is one per row: a trial's 50 reports), and the
statements of one transaction are data-modifying CTEs of one statement: one round trip. A
CTE's inserts select from the CTE that finishes (or locks) the trial, so a trial that is no
longer RUNNING gets none of them, and the statement returns how many trials it matched (0 or
1). Table, column and enum type names are Optuna's own, read from its models.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Sequence
from typing import Any

import sqlalchemy
from optuna.distributions import distribution_to_json
from optuna.trial import TrialState

from hpo.db import optuna_private as oc
from hpo.db.held_writes import HeldWrites


def _held(source: str) -> str:
    """The CTEs that insert the held rows for the trial ``source`` (a CTE returning its
    ``trial_id``), each over its arrays."""
    m = oc.rdb_models()
    kind = m.TrialIntermediateValueModel.__table__.c.intermediate_value_type.type.name
    attrs = "".join(
        f", {cte} AS (INSERT INTO {table} (trial_id, key, value_json) "
        f"SELECT {source}.trial_id, u.k, u.v FROM {source}, "
        f"unnest(CAST(:{cte}_k AS text[]), CAST(:{cte}_v AS text[])) AS u(k, v) "
        "ON CONFLICT (trial_id, key) DO UPDATE SET value_json = excluded.value_json)"
        for cte, table in (("ua", m.TrialUserAttributeModel.__tablename__),
                           ("sa", m.TrialSystemAttributeModel.__tablename__)))
    return (
        f", pa AS (INSERT INTO {m.TrialParamModel.__tablename__} (trial_id, param_name, "
        f"param_value, distribution_json) SELECT {source}.trial_id, u.n, u.v, u.d FROM {source}, "
        "unnest(CAST(:pa_n AS text[]), CAST(:pa_v AS double precision[]), "
        "CAST(:pa_d AS text[])) AS u(n, v, d))" + attrs +
        f", iv AS (INSERT INTO {m.TrialIntermediateValueModel.__tablename__} (trial_id, step, "
        f"intermediate_value, intermediate_value_type) SELECT {source}.trial_id, u.s, u.v, "
        f"CAST(u.k AS {kind}) FROM {source}, unnest(CAST(:iv_s AS integer[]), "
        "CAST(:iv_v AS double precision[]), CAST(:iv_k AS text[])) AS u(s, v, k) "
        "ON CONFLICT (trial_id, step) DO UPDATE SET "
        "intermediate_value = excluded.intermediate_value, "
        "intermediate_value_type = excluded.intermediate_value_type)")


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _arrays(held: HeldWrites | None) -> dict[str, list[Any]]:
    """The bind parameters of :func:`_held`: each held table's rows as arrays."""
    params = held.params if held is not None else {}
    user = held.user if held is not None else {}
    system = held.system if held is not None else {}
    steps = held.steps if held is not None else {}
    stored = oc.rdb_models().TrialIntermediateValueModel.intermediate_value_to_stored_repr
    reports = [(step, *stored(value)) for step, value in steps.items()]
    return {
        "pa_n": list(params), "pa_v": [float(v) for v, _ in params.values()],
        "pa_d": [distribution_to_json(d) for _, d in params.values()],
        "ua_k": list(user), "ua_v": list(user.values()),
        "sa_k": list(system), "sa_v": list(system.values()),
        "iv_s": [int(r[0]) for r in reports], "iv_v": [_float(r[1]) for r in reports],
        "iv_k": [r[2].name for r in reports],
    }


@functools.cache
def _statement(name: str) -> Any:
    m = oc.rdb_models()
    trials = m.TrialModel.__tablename__
    state = m.TrialModel.__table__.c.state.type.name
    if name == "finish":
        vtype = m.TrialValueModel.__table__.c.value_type.type.name
        sql = (f"WITH f AS (UPDATE {trials} SET state = CAST(:state AS {state}), "
               "datetime_complete = :end WHERE trial_id = :tid AND state = 'RUNNING' "
               "RETURNING trial_id)" + _held("f") +
               f", tv AS (INSERT INTO {m.TrialValueModel.__tablename__} (trial_id, objective, "
               f"value, value_type) SELECT f.trial_id, u.o, u.v, CAST(u.t AS {vtype}) FROM f, "
               "unnest(CAST(:tv_o AS integer[]), CAST(:tv_v AS double precision[]), "
               "CAST(:tv_t AS text[])) AS u(o, v, t)) SELECT count(*) FROM f")
    elif name == "flush":
        sql = (f"WITH l AS (SELECT trial_id FROM {trials} WHERE trial_id = :tid AND "
               "state = 'RUNNING' FOR UPDATE)" + _held("l") + " SELECT count(*) FROM l")
    else:  # "insert": the trial and, with :beat, its first heartbeat
        sql = (f"WITH t AS (INSERT INTO {trials} (number, study_id, state, datetime_start) "
               f"VALUES (:number, :sid, CAST('RUNNING' AS {state}), :start) "
               f"RETURNING trial_id), h AS (INSERT INTO {m.TrialHeartbeatModel.__tablename__} "
               "(trial_id, heartbeat) SELECT trial_id, CURRENT_TIMESTAMP FROM t WHERE :beat) "
               "SELECT trial_id FROM t")
    return sqlalchemy.text(sql)


def finish(conn: sqlalchemy.Connection, trial_id: int, state: TrialState, end: dt.datetime,
           held: HeldWrites | None, values: Sequence[float] | None) -> int:
    """Finish the trial if it is RUNNING, with its held writes and values: 1, else 0 and
    nothing written."""
    stored = oc.rdb_models().TrialValueModel.value_to_stored_repr
    vals = [stored(v) for v in values or ()]
    return conn.execute(_statement("finish"), {
        "tid": trial_id, "state": state.name, "end": end, **_arrays(held),
        "tv_o": list(range(len(vals))), "tv_v": [_float(v) for v, _ in vals],
        "tv_t": [t.name for _, t in vals]}).scalar_one()


def flush(conn: sqlalchemy.Connection, trial_id: int, held: HeldWrites) -> int:
    """Lock the trial and, if it is RUNNING, write its held writes: 1, else 0 and nothing
    written."""
    return conn.execute(_statement("flush"), {"tid": trial_id, **_arrays(held)}).scalar_one()


def insert_trial(conn: sqlalchemy.Connection, study_id: int, number: int, start: dt.datetime,
                 heartbeat: bool) -> int:
    """A RUNNING trial (and with ``heartbeat`` its first heartbeat, the database's clock):
    its id."""
    return conn.execute(_statement("insert"), {"number": number, "sid": study_id,
                                               "start": start, "beat": heartbeat}).scalar_one()
