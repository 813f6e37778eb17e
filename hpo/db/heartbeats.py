"""Heartbeats on every path to the database: direct workers, workers behind ``hpo proxy``, and
the proxy's end of their beats.

* **Direct** (:func:`rdb_storage_class`): Optuna's ``RDBStorage`` heartbeat, except that a beat
  lost to a database outage is one line per outage and the next beat comes on time (Optuna's
  heartbeat thread dies on the first failed beat, with a traceback, and the trial runs on with
  no heartbeat).
* **The same storage's writes, sorted** (:func:`rdb_storage_class`): each successful write (a
  beat, a trial created, a trial finished) restarts the process's outage clock
  (:data:`hpo.db.retry.OUTAGE`); a trial's final write lost to a dropped connection is retried
  within ``$HPO_DB_WAIT`` with its held writes; an error the database answers with (permission
  denied, read-only, a full disk...) is one attempt, the trial failed, exit 1.
* **Through the proxy** (:func:`grpc_client`): Optuna's gRPC API has no heartbeat call, so the
  client is a ``GrpcStorageProxy`` that Optuna treats as a heartbeat storage
  (:func:`hpo.db.optuna_private.heartbeat_grpc_client`): ``Study.optimize`` runs its heartbeat
  thread around the objective as it does for a database, and each beat writes the trial system
  attribute ``hpo:beat`` through the proxy.
* **The proxy's end** (:func:`relay_storage_class`): ``hpo proxy`` serves an RDBStorage that
  turns each ``hpo:beat`` write into a heartbeat row (``record_heartbeat``: the database's
  clock, Optuna's own table) instead of storing the attribute. A proxied trial is then a trial
  like any other: the proxy's sweep, any direct worker and Optuna's ``fail_stale_trials`` fail
  it once its heartbeat is older than the grace period, and its retry (same params) runs on
  whichever worker is free. No clock of a worker's machine is ever compared with another's.
"""

from __future__ import annotations

import contextlib
import functools
import re
import sys
import time
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from hpo.db import optuna_private as oc
from hpo.db.held_proxy import HeldThroughProxy, write_held
from hpo.db.keys import BEAT_ATTR, HELD_ATTR
from hpo.db.retry import (
    OUTAGE,
    db_wait,
    env_seconds,
    finished_elsewhere,
    is_transient,
    reason,
    refused,
    sqlstate,
)
from hpo.db.writebehind import WriteBehindRDBStorage
from hpo.errors import RuntimeFailure, StorageError
from hpo.signals import check_stop

if TYPE_CHECKING:
    import optuna

#: Seconds a worker waits for ``hpo proxy`` to answer at start-up (``$HPO_GRPC_WAIT``).
GRPC_WAIT = 60.0


def beat_failed(e: BaseException) -> None:
    """A heartbeat (or a heartbeat's flush of held writes) that could not be recorded: a
    transient error is one line per outage (the heartbeat thread beats again next interval); a
    trial failed elsewhere is for its ``tell`` to notice; an error the database answered with
    (:func:`hpo.db.retry.refused`: permission denied, read-only...) ends the trial loop, whose one
    line says it (exit 1, :meth:`hpo.db.retry.Outage.check`); anything else is raised."""
    if finished_elsewhere(e):
        return
    if refused(e) is not None:
        OUTAGE.refuse(e)
        return
    if not is_transient(e):
        raise e
    OUTAGE.failed("hpo worker", e, "heartbeats and the trial loop retry until it is back")


@functools.cache
def rdb_storage_class() -> type:
    """``RDBStorage`` with a heartbeat that outlives database outages (module docstring), and
    a running trial's user attributes and intermediate values written with its end
    (:class:`hpo.db.writebehind.WriteBehindRDBStorage`)."""


    class HpoRDBStorage(WriteBehindRDBStorage):
        def record_heartbeat(self, trial_id: int) -> None:
            started = time.monotonic()
            try:
                wrote = super().record_heartbeat(trial_id)
            except Exception as e:  # noqa: BLE001 - sorted by beat_failed
                beat_failed(e)
            else:
                if wrote:  # a write went through: the outage's clock restarts
                    OUTAGE.ok(started)

        def flush_failed(self, trial_id: int, e: BaseException) -> None:
            beat_failed(e)  # the beat itself was recorded; the held writes wait

        def creation_failed(self, e: BaseException) -> None:
            if refused(e) is not None:  # not Optuna's five attempts: one
                raise RuntimeFailure(f"the database refused a write ({reason(e)})") from e
            # a lost server is one line per outage; SQLite's busy file and a deadlock or
            # serialization failure (SQLSTATE class 40) are contention, retried in silence
            if (self.engine.name != "sqlite" and is_transient(e)
                    and not (sqlstate(e) or "").startswith("40")):
                OUTAGE.failed("hpo worker", e, "retrying")

        def stale_found(self, study_id: int, trial_ids: list[int]) -> list[int]:
            grace = self.grace_period or 2 * (self.heartbeat_interval or 0)
            for trial_id in trial_ids:  # a dead peer's trial, retried: said in one line
                with contextlib.suppress(Exception):
                    number = self.get_trial(trial_id).number
                    print(f"hpo worker: trial {number} lost its worker (no heartbeat for "
                          f"{grace} s): failed, and re-run with the same params while its "
                          "retries last", file=sys.stderr, flush=True)
            return super().stale_found(study_id, trial_ids)

        def creation_done(self, started: float) -> None:
            OUTAGE.ok(started)  # an attempt begun after the outage was noticed ends it

        def set_trial_state_values(self, trial_id: int, state: TrialState,
                                   values: Any = None) -> bool:
            if not state.is_finished():
                return super().set_trial_state_values(trial_id, state, values)
            return _final_write(lambda: super(HpoRDBStorage, self).set_trial_state_values(
                trial_id, state, values), self, trial_id, state)

        def final_write(self, write: Any, trial_id: int, state: TrialState) -> bool:
            return _final_write(write, self, trial_id, state)  # an end the writer commits

    def _refused(storage: Any, trial_id: int, state: TrialState, why: str) -> None:
        """The final write was refused: the trial is failed without its held writes (they may
        be what was refused), one attempt, so that nothing is left RUNNING; then exit 1."""
        storage.drop_held(trial_id)
        if state != TrialState.FAIL:
            with contextlib.suppress(Exception):
                optuna.storages.RDBStorage.set_trial_state_values(storage, trial_id,
                                                                  TrialState.FAIL)
        raise RuntimeFailure(f"the database refused a write ({why})")

    def _final_write(write: Any, storage: Any, trial_id: int, state: TrialState) -> bool:
        """The write that finishes a trial (its ``tell``, with the held writes): a lost
        connection is retried within ``$HPO_DB_WAIT`` of the outage's start (the held writes
        are kept for each attempt); an error the database answers with fails the trial
        instead (one attempt, so that nothing is left RUNNING) and ends the command."""
        delay = 0.2
        attempts = 0
        while True:
            attempts += 1
            started = time.monotonic()
            try:
                done = write()
            except optuna.exceptions.UpdateFinishedTrialError:
                # (the database's word: a queued end is known here as ended already)
                if attempts > 1 and optuna.storages.RDBStorage.get_trial(
                        storage, trial_id).state == state:
                    return True  # the last attempt committed; only its answer was lost
                raise
            except Exception as e:  # noqa: BLE001 - sorted just below
                if refused(e) is not None:
                    _refused(storage, trial_id, state, reason(e))
                if not is_transient(e):
                    raise
                OUTAGE.failed("hpo worker", e, "the trial's result is kept and written when it "
                              f"is back (up to {db_wait():g} s, $HPO_DB_WAIT)")
                if OUTAGE.elapsed() > db_wait():
                    raise
                check_stop()
                time.sleep(delay)
                delay = min(2 * delay, 2.0)
            else:
                if not done:  # Optuna's answer to an IntegrityError: nothing was written
                    _refused(storage, trial_id, state, "a constraint of the trial's rows")
                OUTAGE.ok(started)
                return done

    return HpoRDBStorage


@functools.cache
def relay_storage_class() -> type:
    """``RDBStorage`` for ``hpo proxy``: a write of the trial system attribute ``hpo:beat`` is
    recorded as the trial's heartbeat, not stored. Errors go back to the worker, whose beat
    then fails (one line per outage there)."""

    class RelayRDBStorage(optuna.storages.RDBStorage):
        def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
            if key == BEAT_ATTR:
                self.record_heartbeat(trial_id)
            elif key == HELD_ATTR:  # a proxied worker's held writes: rows, one transaction
                write_held(self, trial_id, value)
            else:
                super().set_trial_system_attr(trial_id, key, value)

    return RelayRDBStorage


def grpc_client(url: str, interval: int | None, who: str) -> optuna.storages.BaseStorage:
    """The client of ``hpo proxy`` at ``grpc://HOST:PORT``, beating every ``interval`` seconds
    inside ``Study.optimize`` (no beats with ``None``). Waits for the proxy to answer, bounded
    by ``$HPO_GRPC_WAIT`` (60 s), saying so in one line; then exit 1."""

    m = re.fullmatch(r"grpc://([^:/]+):(\d+)/?", url)
    if not m or not 1 <= int(m.group(2)) <= 65535:
        raise StorageError(f"bad gRPC storage URL {url!r}: use grpc://HOST:PORT "
                           "(PORT in 1..65535)")
    wait = env_seconds("HPO_GRPC_WAIT", GRPC_WAIT)
    client = oc.heartbeat_grpc_client(m.group(1), int(m.group(2)), interval, BEAT_ATTR,
                                      on_beat_error=beat_failed, mixins=(HeldThroughProxy,))
    deadline = time.monotonic() + wait
    announced = False
    while True:
        check_stop()
        try:
            client.wait_server_ready(timeout=max(0.1, min(1.0, deadline - time.monotonic())))
            return client
        except Exception as e:  # noqa: BLE001 - grpc raises its own FutureTimeoutError
            if time.monotonic() >= deadline:
                client.close()
                raise RuntimeFailure(f"no hpo proxy answers at {url} after {wait:g} s "
                                     f"({type(e).__name__})") from None
        if not announced:
            announced = True
            print(f"{who}: no hpo proxy answers at {url} yet; waiting up to {wait:g} s "
                  "($HPO_GRPC_WAIT)", file=sys.stderr, flush=True)
