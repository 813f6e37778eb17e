"""SQLAlchemy engine options per backend, and the ping of a pooled connection after idle
(:mod:`hpo.db.storage` opens storages with them)."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import event, exc

#: Seconds a PostgreSQL connection attempt may take.
CONNECT_TIMEOUT = 10


def engine_kwargs(url: str, idle_timeout: float) -> dict[str, Any]:
    """Engine options per backend.

    SQLite: a 60 s busy timeout so a few local workers queue instead of failing with "database is
    locked". PostgreSQL/MySQL: no ping per checkout (``pool_pre_ping`` was one more transaction
    for every transaction, about half of a worker's: ``benchmarks/RESULTS.md``, issue 26), but a
    ping of a connection that sat idle in the pool for :data:`IDLE_PING` seconds or more
    (:func:`ping_after_idle`); a pooled connection that a server restart or
    ``pg_terminate_backend`` killed meanwhile fails its first statement with a connection-level
    error, which :func:`hpo.db.retry.is_transient` classifies as transient: the caller retries
    within ``$HPO_DB_WAIT``, and SQLAlchemy invalidates the pool's older connections with it.
    At most 2 connections per worker process, both kept open: the trial's thread and
    its heartbeat thread each hold one. (With 1 + 1 overflow, the overflow connection was closed
    whenever the two were returned together and a new one opened at the next trial: a TCP
    connection and a server process per trial, about 5 ms on PostgreSQL.) On PostgreSQL a
    connection attempt gives up after 10 s (an unreachable host otherwise hangs for minutes in
    TCP retries): it is then retried like any outage.

    A worker cut off from PostgreSQL by the network (not dead, not told) must neither hang nor
    hold locks: its TCP connections give up on data the server does not acknowledge within
    30 s and probe an idle server with keepalives (``tcp_user_timeout``, ``keepalives``;
    then a connection error, retried), and the server ends any session of it that sits idle
    inside a transaction for ``idle_timeout`` seconds (``idle_in_transaction_session_timeout``;
    a worker's grace period): hpo's transactions last milliseconds, and a session cut off
    in the middle of one would otherwise keep its row locks, on which a sweeper failing the
    worker's trial waits, until the server's own keepalive notices (two hours by default).
    """
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 60}}
    kwargs: dict[str, Any] = {"pool_pre_ping": False, "pool_size": 2, "max_overflow": 0,
                              "pool_recycle": 300}
    if url.startswith("postgresql"):
        kwargs["connect_args"] = {
            "connect_timeout": CONNECT_TIMEOUT, "tcp_user_timeout": 30_000, "keepalives": 1,
            "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3,
            "options": "-c idle_in_transaction_session_timeout="
                       f"{max(1000, int(idle_timeout * 1000))}"}
    return kwargs


#: Seconds a pooled connection may sit idle before its next checkout pings it first.
IDLE_PING = 30.0


def ping_after_idle(engine: Any, idle: float = IDLE_PING) -> None:
    """Ping a pooled connection at checkout only when it was checked in ``idle`` seconds ago
    or more (a worker that waited at a stage boundary, a paused machine): a dead one is then
    replaced before the caller's statement instead of failing it. SQLAlchemy's pessimistic
    recipe: raising ``DisconnectionError`` in a checkout handler makes the pool discard the
    connection and check out another (a fresh one, up to three times)."""


    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_con, record) -> None:
        record.info["hpo_checkin"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_con, record, _proxy) -> None:
        since = record.info.get("hpo_checkin")
        if since is None or time.monotonic() - since < idle:
            return
        try:
            engine.dialect.do_ping(dbapi_con)
        except Exception as e:  # noqa: BLE001 - any failure: this connection is not usable
            raise exc.DisconnectionError(f"idle pooled connection is dead ({e})") from e
