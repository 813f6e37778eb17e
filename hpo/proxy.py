"""``hpo proxy``: Optuna's gRPC storage proxy in front of the database.

Workers started with ``--storage grpc://HOST:PORT`` talk to this process, which holds at most
``--pool-size`` database connections for all of them (a direct worker holds about two, and
PostgreSQL refuses clients beyond ``max_connections``). The proxy does not create the schema:
``hpo init`` / ``hpo run`` must have made it, as for direct workers.

**Heartbeats do not cross the proxy (Optuna 5.0, checked).** ``GrpcStorageProxy`` is not a
heartbeat storage and the gRPC API has no heartbeat call, so a worker behind the proxy records no
heartbeat and fails no stale trials. Optuna only fails RUNNING trials that *have* a heartbeat
record, so nothing can tell a dead proxied worker from a live one: **a trial whose proxied worker
was killed (SIGKILL, OOM, lost machine) stays RUNNING**, and since the exact-budget loop counts
in-flight trials, the other workers wait for it (until their ``--timeout``) instead of finishing
the budget. Fail such a trial by hand (``set_trial_state_values(trial_id, TrialState.FAIL)`` on
an ``RDBStorage``; docs/compose.md has the command) and they carry on.
SIGTERM and Ctrl-C are fine: the worker fails its own trial before it exits.

What the proxy *does* do: its own storage has heartbeats on (interval and grace period from
``$HPO_HEARTBEAT_INTERVAL`` / ``$HPO_GRACE_PERIOD``, else hpo's defaults) and a background thread
runs Optuna's ``fail_stale_trials`` on every study every interval. That covers the trials of
*direct* workers sharing the database (the compose ``worker`` service next to
``worker-proxied``): when they all die, their stale trials are still failed and re-queued (with
``RetryHeartbeatStaleTrialCallback``), and proxied workers pick the retries up. Trials created
through the proxy have no heartbeat record, so the sweep never touches them. The sweep applies
the *proxy's* grace period to every study in the database: it must not be shorter than the
``--heartbeat-interval`` of any direct worker there, or the proxy fails their live trials (keep
it equal to the workers' ``--grace-period``; both default to 60 s).
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import warnings
from typing import Any

from hpo.errors import UsageError

ENV_INTERVAL = "HPO_HEARTBEAT_INTERVAL"
ENV_GRACE = "HPO_GRACE_PERIOD"


def heartbeat_settings() -> tuple[int, int]:
    """(interval, grace period) in seconds for the proxy's own storage, from the environment or
    hpo's defaults; the grace period must be longer than the interval."""
    from hpo.storage import GRACE_PERIOD, HEARTBEAT_INTERVAL

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
    """The proxy's RDBStorage (``pool_size`` connections, no overflow, pre-ping, heartbeats with
    retries), wrapped in Optuna's cache as ``run_grpc_proxy_server`` recommends."""
    import optuna
    import sqlalchemy.exc

    from hpo.storage import MAX_RETRY, StorageError, mask_url, require_existing_sqlite

    require_existing_sqlite(url)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    engine: dict[str, Any] = {"pool_size": pool_size, "max_overflow": 0, "pool_pre_ping": True}
    if url.startswith("sqlite"):
        engine["connect_args"] = {"timeout": 60}
    try:
        rdb = optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine,
            skip_table_creation=True,  # the schema is made once by `hpo init` / `hpo run`
            heartbeat_interval=interval,
            grace_period=grace,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=MAX_RETRY
            ),
        )
    except optuna.exceptions.StorageInternalError as e:
        # Optuna wraps *every* database error of its schema check in StorageInternalError: only
        # a missing version_info table means "no schema"; "too many clients", a refused
        # connection or an unknown database must be reported as what they are.
        cause = e.__cause__ or e
        if "version_info" in str(cause):
            raise StorageError(
                f"storage {mask_url(url)} has no Optuna schema: create the study first with "
                "`hpo init SPEC` (compose: the init service) or `hpo run SPEC`"
            ) from None
        raise StorageError(f"cannot use storage {mask_url(url)}: {_first_line(cause)}") from None
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as e:
        raise StorageError(f"cannot use storage {mask_url(url)}: {_first_line(e)}") from None
    return optuna.storages.get_storage(rdb)


def _first_line(e: BaseException) -> str:
    from hpo.storage import mask_url

    text = str(e).strip()
    return mask_url(text.splitlines()[0]) if text else type(e).__name__


def sweep_once(storage: Any) -> int:
    """Fail the heartbeat-stale trials of every study (re-queueing them per the retry callback);
    return how many trials this call failed."""
    import optuna
    from optuna.trial import TrialState

    failed = 0
    for frozen in storage.get_all_studies():
        study = optuna.load_study(study_name=frozen.study_name, storage=storage,
                                  sampler=optuna.samplers.RandomSampler())
        running = {t.number for t in study.get_trials(deepcopy=False,
                                                       states=(TrialState.RUNNING,))}
        if not running:
            continue
        optuna.storages.fail_stale_trials(study)
        failed += sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                      if t.number in running and "hpo:surplus" not in t.system_attrs)
    return failed


def sweeper(storage: Any, every: float, stop: threading.Event) -> None:
    """Background loop around :func:`sweep_once` (run it in a daemon thread); database errors
    are reported, never fatal."""
    while not stop.wait(every):
        try:
            n = sweep_once(storage)
        except Exception as e:  # noqa: BLE001 - a database outage must not stop the proxy
            print(f"hpo proxy: stale-trial sweep failed ({type(e).__name__}: "
                  f"{_first_line(e)[:200]}); retrying in {every:g} s", file=sys.stderr,
                  flush=True)
            continue
        if n:
            print(f"hpo proxy: failed {n} stale trial(s) (re-queued up to the retry limit)",
                  file=sys.stderr, flush=True)


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
