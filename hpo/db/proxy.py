"""``hpo proxy``: Optuna's gRPC storage proxy in front of the database.

Workers started with ``--storage grpc://HOST:PORT`` talk to this process, which holds at most
``--pool-size`` database connections for all of them (a direct worker holds about two, and
PostgreSQL refuses clients beyond ``max_connections``). The proxy does not create the schema:
``hpo init`` / ``hpo run`` make it (the compose ``proxy`` service starts after ``init``).

**Heartbeats cross the proxy.** Optuna 5's gRPC API has no heartbeat call, so a proxied worker
beats by writing the trial system attribute ``hpo:beat`` every ``--heartbeat-interval``
(:mod:`hpo.db.heartbeats`), and the proxy's storage records each such write as the trial's
heartbeat row instead (:func:`hpo.db.heartbeats.relay_storage_class`): the database's clock, in
Optuna's own table. A proxied trial is then like a direct worker's: when its worker dies
(SIGKILL, OOM, a lost machine), its heartbeat goes stale.

**The sweep.** A background thread fails, every heartbeat interval, the stale RUNNING trials of
every hpo study (those whose heartbeat is older than the grace period, and those that never
beat and started more than the grace period ago) and re-queues each with the same params
(``RetryHeartbeatStaleTrialCallback``); proxied workers, which cannot sweep through the gRPC
API, pick the retries up. Its first sweep waits one grace period, so that after a restart of
the proxy every live worker has beaten again before anything is judged stale. The interval and
grace period come from ``$HPO_HEARTBEAT_INTERVAL`` / ``$HPO_GRACE_PERIOD`` (else 10 s / 60 s)
and apply to every hpo study in the database: keep the grace period longer than the
``--heartbeat-interval`` of every worker (direct or proxied), or their live trials are failed;
the workers' own ``--grace-period`` should match it. Studies not made by hpo are left alone.
SIGTERM and Ctrl-C of a worker are fine as before: it fails its own trial before it exits.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from typing import Any

import optuna
from optuna.trial import TrialState

from hpo.db.heartbeats import relay_storage_class
from hpo.db.keys import SURPLUS_ATTR
from hpo.db.retry import OUTAGE, is_transient, reason
from hpo.db.storage import (
    CONNECT_TIMEOUT,
    GRACE_PERIOD,
    HEARTBEAT_INTERVAL,
    get_storage,
    stored_spec,
    sweep_stale_trials,
)
from hpo.errors import UsageError

ENV_INTERVAL = "HPO_HEARTBEAT_INTERVAL"
ENV_GRACE = "HPO_GRACE_PERIOD"


def heartbeat_settings() -> tuple[int, int]:
    """(interval, grace period) in seconds for the proxy's own storage, from the environment or
    hpo's defaults; the grace period must be longer than the interval."""

    def read(name: str, default: int | None) -> int | None:
        raw = os.environ.get(name, "").strip()
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise UsageError(f"${name} must be a whole number of seconds, got {raw!r}") from None
        if value <= 0:
            raise UsageError(f"${name} must be >= 1, got {value}")
        return value

    interval = read(ENV_INTERVAL, HEARTBEAT_INTERVAL)
    assert interval is not None
    grace = read(ENV_GRACE, None) or max(GRACE_PERIOD, 2 * interval)
    if grace <= interval:
        raise UsageError(f"${ENV_GRACE} ({grace}) must be longer than ${ENV_INTERVAL} "
                         f"({interval})")
    return interval, grace


def make_storage(url: str, pool_size: int, interval: int, grace: int) -> Any:
    """The proxy's storage: ``pool_size`` connections, no overflow, pre-ping, heartbeats with
    retries, ``hpo:beat`` writes recorded as heartbeats; opened like any hpo storage (a
    database that refuses connections is waited for, ``$HPO_DB_WAIT``; the schema must exist),
    and wrapped in Optuna's cache as ``run_grpc_proxy_server`` recommends."""


    engine: dict[str, Any] = {"pool_size": pool_size, "max_overflow": 0, "pool_pre_ping": True}
    if url.startswith("sqlite"):
        engine["connect_args"] = {"timeout": 60}
    elif url.startswith("postgresql"):
        engine["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT}
    rdb = get_storage(url, heartbeat=True, heartbeat_interval=interval, grace_period=grace,
                      who="hpo proxy", storage_class=relay_storage_class(),
                      engine=engine)
    return optuna.storages.get_storage(rdb)


def sweep_once(storage: Any) -> int:
    """Fail the stale trials of every hpo study (heartbeat stale, or never beat past the grace
    period), re-queueing them per the retry callback; return how many this call failed."""


    failed = 0
    for frozen in storage.get_all_studies():
        if stored_spec(frozen.system_attrs, frozen.user_attrs) is None:
            continue  # not an hpo study: its workers may not beat at all
        study = optuna.load_study(study_name=frozen.study_name, storage=storage,
                                  sampler=optuna.samplers.RandomSampler())
        running = {t.number for t in study.get_trials(deepcopy=False,
                                                       states=(TrialState.RUNNING,))}
        if not running:
            continue
        sweep_stale_trials(study)
        failed += sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                      if t.number in running and SURPLUS_ATTR not in t.system_attrs)
    return failed


def sweeper(storage: Any, every: float, stop: threading.Event, first: float = 0.0) -> None:
    """Background loop around :func:`sweep_once` (run it in a daemon thread): the first sweep
    after ``first`` seconds, then every ``every``; database errors are reported, never
    fatal."""
    if stop.wait(first):
        return

    while True:
        try:
            n = sweep_once(storage)
        except Exception as e:  # noqa: BLE001 - a database outage must not stop the proxy
            if is_transient(e):
                OUTAGE.failed("hpo proxy", e, f"the stale-trial sweep retries every {every:g} s")
            else:
                print(f"hpo proxy: stale-trial sweep failed ({reason(e)}); retrying in "
                      f"{every:g} s", file=sys.stderr, flush=True)
        else:
            OUTAGE.ok()
            if n:
                print(f"hpo proxy: failed {n} stale trial(s) (re-queued up to the retry "
                      "limit)", file=sys.stderr, flush=True)
        if stop.wait(every):
            return


def check_port_free(host: str, port: int) -> None:
    """gRPC binds with SO_REUSEPORT, so a second proxy on a busy port would silently share it:
    refuse a port that anything already listens on."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            raise UsageError(f"cannot listen on {host}:{port}: {e.strerror}") from None
