"""Every private Optuna name hpo relies on, in one place (Optuna 5, pinned ``<6``).

Optuna's public API hides the ids a storage call needs (``Study._storage``, ``_study_id``,
``Trial._trial_id``), the RDBStorage inside its cache, whether a storage beats hearts, and the
per-trial cache of trials. hpo needs them for its one-query counts, its stale-trial sweep and
its samplers and pruners, so each use goes through a function here, and
``tests/test_optuna_compat.py`` pins the behaviour each one relies on: a new Optuna release that
moves a name fails those tests, not a user's study.
"""

from __future__ import annotations

import contextlib
import copy
import json
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import FrozenTrial, TrialState

from hpo.db.held_writes import HeldWrites

#: The logger Optuna's ``study.optimize`` reports a failed trial on (with its traceback).
OPTIMIZE_LOGGER = "optuna.study._optimize"


def storage_of(study: optuna.Study) -> BaseStorage:
    """The storage a study reads and writes (an RDB storage comes wrapped in Optuna's cache)."""
    return study._storage


def study_id(study: Any) -> int:
    """The storage's id of a :class:`~optuna.Study` or :class:`~optuna.study.FrozenStudy`."""
    return study._study_id


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The storage's id of a trial (live or frozen)."""
    return trial._trial_id


def rdb_backend(storage: BaseStorage | None) -> RDBStorage | None:
    """The RDBStorage that ``storage`` is or wraps, else ``None`` (in-memory storage, the gRPC
    proxy client)."""
    storage = getattr(storage, "_backend", storage)
    return storage if isinstance(storage, RDBStorage) else None


def rdb_of(study: optuna.Study) -> RDBStorage | None:
    """The RDBStorage under a study, else ``None``."""
    return rdb_backend(storage_of(study))


def heartbeat_enabled(storage: BaseStorage) -> bool:
    """Whether the storage records heartbeats and fails stale trials (an RDBStorage made with a
    ``heartbeat_interval``)."""
    from optuna.storages._heartbeat import is_heartbeat_enabled

    return is_heartbeat_enabled(storage)


def heartbeat_interval(storage: BaseStorage) -> float | None:
    """The storage's heartbeat interval in seconds, or ``None`` without heartbeats."""
    if not heartbeat_enabled(storage):
        return None
    return float(storage.get_heartbeat_interval())  # type: ignore[attr-defined]


def all_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Every trial of the study, sorted by number, read from its storage (not a filtered view:
    under ``HyperbandPruner`` samplers get a per-bracket study whose ``get_trials`` hides the
    other brackets' trials)."""
    return storage_of(study).get_all_trials(study_id(study), deepcopy=False)


def cached_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The trials the study has read for the current trial (Optuna's per-trial cache, reset by
    ``ask``), reading them once if it has not."""
    return study._get_trials(deepcopy=False, use_cache=True)


def set_trial_system_attr(study: optuna.Study, trial: Any, key: str, value: Any) -> None:
    """Write a system attribute of a (running) trial."""
    storage_of(study).set_trial_system_attr(trial_id(trial), key, value)


def record_heartbeat(study: optuna.Study, trial: Any) -> None:
    """Record one heartbeat of a running trial (heartbeat storages only)."""
    storage_of(study).record_heartbeat(trial_id(trial))  # type: ignore[attr-defined]


def study_system_attrs(study: optuna.Study) -> dict[str, Any]:
    """The study's system attributes."""
    return storage_of(study).get_study_system_attrs(study_id(study))


def set_study_system_attr(study: optuna.Study, key: str, value: Any) -> None:
    """Write a system attribute of the study (optuna-dashboard reads its artifacts there)."""
    storage_of(study).set_study_system_attr(study_id(study), key, value)


class WriteBehindRDBStorage(RDBStorage):
    """``RDBStorage`` that holds back the writes nobody else reads while a trial runs, and
    commits them with the trial's end (hpo's storage class: :mod:`hpo.db.heartbeats`).

    Each ``RDBStorage`` call is its own transaction: a pooled connection checked out,
    the trial row read, the write, a commit; 3-15 ms on PostgreSQL on a busy machine.
    For the trials this process runs (created here RUNNING, or a WAITING trial it started):

    * **user attributes and intermediate values are written behind**, and the system
      attributes a caller marks so (:func:`set_trial_system_attr_behind`): kept here, and
      written in the transaction that finishes the trial (``set_trial_state_values``), as one
      multi-row upsert per table; so a trial's ``train_acc``, curves and ``model_seed`` and its
      pruner reports cost no round trip of their own. No other process reads them while the
      trial runs (Optuna's median/percentile pruners read COMPLETE trials only; successive
      halving reads system attributes, written through), and this process sees its own:
      ``get_trial`` overlays them. With heartbeats on, each beat once the trial has run for an
      interval also writes what is pending, so a long trial's curve still shows up in
      optuna-dashboard while it runs (one interval behind). A worker that dies loses what was
      pending with the trial, which a sweeper then fails.
    * **its trial is not read back**: ``get_trial`` (``Trial.__init__``, and ``tell``'s) answers
      from the trial as created (or as read once, for a WAITING trial) plus this process's
      writes. Nobody else writes to a RUNNING trial but a sweeper failing it, and that is seen
      where it always mattered: the finishing transaction locks the trial row and refuses a
      finished trial (UpdateFinishedTrialError, nothing written).

    Parameters and other system attributes are written through, as before: other workers'
    samplers read the parameters of RUNNING trials.

    With heartbeats on, **a trial created RUNNING gets its heartbeat row in the transaction that
    creates it** (``_get_prepared_new_trial``: the database's clock, what ``record_heartbeat``
    writes), and the beat Optuna's heartbeat thread makes at once is skipped (within an
    interval of the creation): one transaction fewer per trial, and no RUNNING trial of this
    storage without a heartbeat row.

    Relies on Optuna's private ``RDBStorage._create_new_trial``, ``_get_prepared_new_trial``
    and ``_set_trial_param`` (what
    ``_CachedStorage`` calls), ``_set_trial_value_without_commit`` and the per-row writers,
    ``_create_scoped_session`` and the ORM models: the end of a trial with pending writes is
    Optuna's state change redone in one transaction with them (:meth:`_finish`). Never nest
    ``_create_scoped_session``: it is one thread-local session, and the inner block commits and
    closes it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._wb_init()
        super().__init__(*args, **kwargs)

    def _wb_init(self) -> None:
        self._wb_lock = threading.RLock()
        self._wb_running: dict[int, HeldWrites] = {}

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        for key in ("_wb_lock", "_wb_running"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        self._wb_init()
        super().__setstate__(state)

    def _create_new_trial(self, study_id: int,
                          template_trial: FrozenTrial | None = None) -> FrozenTrial:
        frozen = super()._create_new_trial(study_id, template_trial)
        if frozen.state == TrialState.RUNNING and template_trial is None:
            with self._wb_lock:
                self._wb_running[frozen._trial_id] = HeldWrites(
                    copy.deepcopy(frozen), beaten=self.heartbeat_interval is not None)
        return frozen

    def _get_prepared_new_trial(self, study_id: int, template_trial: FrozenTrial | None,
                                session: Any) -> Any:
        # Optuna retries a trial's creation five times, up to 2 s apart, whatever the error
        # (it means deadlocks): ``creation_failed`` may replace an error no retry can mend by
        # one that is not Optuna's StorageInternalError, which ends the loop at once.
        from optuna.storages._rdb import models

        try:
            trial = super()._get_prepared_new_trial(study_id, template_trial, session)
        except Exception as e:
            self.creation_failed(e)
            raise
        if (self.heartbeat_interval is not None and template_trial is None
                and trial.state == TrialState.RUNNING):
            # the trial's first heartbeat, in the transaction that creates it (the row Optuna's
            # ``record_heartbeat`` would insert a moment later, with the database's clock): one
            # transaction fewer per trial, and never a RUNNING trial without a heartbeat row
            session.add(models.TrialHeartbeatModel(trial_id=trial.trial_id))
        return trial

    def creation_failed(self, e: BaseException) -> None:
        """A trial could not be created; subclasses may raise what to end with instead."""

    def get_trial(self, trial_id: int) -> FrozenTrial:
        with self._wb_lock:
            running = self._wb_running.get(trial_id)
            known = running is not None and running.trial is not None
            if known:
                trial = copy.deepcopy(running.trial)
        if not known:
            trial = super().get_trial(trial_id)
            with self._wb_lock:
                if trial.state.is_finished():  # told, or failed by a sweeper
                    self._wb_running.pop(trial_id, None)
                running = self._wb_running.get(trial_id)
                if running is None:
                    return trial
                running.trial = copy.deepcopy(trial)
        with self._wb_lock:
            running.overlay(trial)
        return trial

    def _set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                         distribution: Any, previous_distribution: Any) -> None:
        super()._set_trial_param(trial_id, param_name, param_value_internal, distribution,
                                 previous_distribution)
        with self._wb_lock:
            running = self._wb_running.get(trial_id)
            if running is not None and running.trial is not None:
                running.trial.params[param_name] = distribution.to_external_repr(
                    param_value_internal)
                running.trial.distributions[param_name] = distribution

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        super().set_trial_system_attr(trial_id, key, value)
        with self._wb_lock:
            running = self._wb_running.get(trial_id)
            if running is not None and running.trial is not None:
                running.trial.system_attrs[key] = json.loads(json.dumps(value))

    def _hold(self, trial_id: int, field: str, key: Any, value: Any) -> bool:
        """Keep a write to ``running.<field>[key]`` for a trial this process runs; False when
        it runs elsewhere (the caller writes through)."""
        with self._wb_lock:
            running = self._wb_running.get(trial_id)
            if running is None:
                return False
            getattr(running, field)[key] = value
            return True

    def set_trial_system_attr_behind(self, trial_id: int, key: str, value: Any) -> None:
        """A system attribute nobody needs before the trial ends: written with its end (or
        the next heartbeat) when this process runs the trial, else at once."""
        if not self._hold(trial_id, "system", key, json.dumps(value)):
            super().set_trial_system_attr(trial_id, key, value)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        # json.dumps first: an unserialisable value fails here, as it did
        if not self._hold(trial_id, "user", key, json.dumps(value)):
            super().set_trial_user_attr(trial_id, key, value)

    def set_trial_intermediate_value(self, trial_id: int, step: int,
                                     intermediate_value: float) -> None:
        if not self._hold(trial_id, "steps", step, float(intermediate_value)):
            super().set_trial_intermediate_value(trial_id, step, intermediate_value)

    def set_trial_state_values(self, trial_id: int, state: TrialState,
                               values: Sequence[float] | None = None) -> bool:
        if not state.is_finished():
            ok = super().set_trial_state_values(trial_id, state, values)
            if ok and state == TrialState.RUNNING:  # a WAITING trial this process now runs
                with self._wb_lock:
                    self._wb_running.setdefault(trial_id, HeldWrites(None))
            return ok
        # the lock is held through the write: a heartbeat's flush cannot interleave. The held
        # writes are let go only once the trial is finished (here or elsewhere): a final write
        # that failed (a lost connection) keeps them for the caller's retry of this call.
        with self._wb_lock:
            running = self._wb_running.get(trial_id)
            try:
                ok = self._finish(trial_id, state, values, running)
            except optuna.exceptions.UpdateFinishedTrialError:
                self._wb_running.pop(trial_id, None)  # a sweeper's word stands: drop them
                raise
            if ok:  # False: nothing was written (a constraint); the trial is still RUNNING
                self._wb_running.pop(trial_id, None)
            return ok

    def drop_held(self, trial_id: int) -> None:
        """Forget what is held for a trial (it will not be written)."""
        with self._wb_lock:
            self._wb_running.pop(trial_id, None)

    def _finish(self, trial_id: int, state: TrialState, values: Sequence[float] | None,
                running: HeldWrites | None) -> bool:
        """``RDBStorage.set_trial_state_values`` for a finished state, with the pending writes
        in the same transaction: all committed, or none (a trial a sweeper failed meanwhile
        raises UpdateFinishedTrialError and nothing is written)."""
        from datetime import datetime

        import sqlalchemy.exc
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        if running is None or not running.pending():
            return super().set_trial_state_values(trial_id, state, values)
        try:
            with _create_scoped_session(self.scoped_session) as session:
                trial = models.TrialModel.find_or_raise_by_id(trial_id, session, for_update=True)
                if trial.state.is_finished():
                    raise optuna.exceptions.UpdateFinishedTrialError(
                        f"Trial#{trial.number} has already finished and can not be updated.")
                self._wb_write(session, trial_id, running)
                for objective, value in enumerate(values or ()):
                    self._set_trial_value_without_commit(session, trial, objective, value)
                trial.state = state
                trial.datetime_complete = datetime.now()
        except sqlalchemy.exc.IntegrityError:
            return False
        return True

    def record_heartbeat(self, trial_id: int) -> None:
        # the beat a trial starts with (Optuna's heartbeat thread beats at once, right after
        # ``ask``) was written with the trial's creation: skipped, once, within an interval
        with self._wb_lock:
            running = self._wb_running.get(trial_id)
            if running is not None and running.beaten:
                running.beaten = False
                if time.monotonic() - running.since < (self.heartbeat_interval or 0):
                    return
        # the beat first, and whatever happens to the held writes: a flush that fails (they
        # stay held for the next beat or the trial's end) never costs the trial its heartbeat
        super().record_heartbeat(trial_id)
        # not at the beat a trial starts with: only a trial that has run for an interval
        with self._wb_lock:
            running = self._wb_running.get(trial_id)
            due = running is not None and running.pending() and (
                time.monotonic() - running.since >= (self.heartbeat_interval or 0))
        if due:
            try:
                self.flush_trial(trial_id)
            except Exception as e:  # noqa: BLE001 - the beat is recorded; the writes wait
                self.flush_failed(trial_id, e)

    def flush_failed(self, trial_id: int, e: BaseException) -> None:
        """A heartbeat's flush of held writes failed; they stay held. Subclasses report it."""

    def flush_trial(self, trial_id: int) -> None:
        """Write what is pending for a trial that goes on running (its own transaction), into
        a trial still RUNNING only: the trial row is locked and read first, and a trial that a
        sweeper finished meanwhile gets none of them: they are dropped (the trial's ``tell`` is
        then refused, and the trial loop says so in one line)."""
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        with self._wb_lock:
            running = self._wb_running.get(trial_id)
            if running is None or not running.pending():
                return
            with _create_scoped_session(self.scoped_session) as session:
                row = models.TrialModel.find_or_raise_by_id(trial_id, session, for_update=True)
                still_running = row.state == TrialState.RUNNING
                if still_running:
                    self._wb_write(session, trial_id, running)
            if not still_running:
                self._wb_running.pop(trial_id, None)
                return
            trial = running.trial
            if trial is not None:  # written: now part of the trial as stored
                running.overlay(trial)
            running.user.clear()
            running.system.clear()
            running.steps.clear()

    def _wb_write(self, session: Any, trial_id: int, running: HeldWrites) -> None:
        """Upsert the pending writes of a trial in ``session`` (not committed): one statement
        per table on PostgreSQL and SQLite, Optuna's per-row writes elsewhere."""
        import sqlite3

        from optuna.storages._rdb import models

        user, system = models.TrialUserAttributeModel, models.TrialSystemAttributeModel
        inter = models.TrialIntermediateValueModel
        dialect = self.engine.name
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        elif dialect == "sqlite" and sqlite3.sqlite_version_info >= (3, 24, 0):
            from sqlalchemy.dialects.sqlite import insert
        else:
            for model, attrs in ((user, running.user), (system, running.system)):
                for key, text in attrs.items():
                    self._set_trial_attr_without_commit(session, model, trial_id, key,
                                                        json.loads(text))
            for step, value in running.steps.items():
                self._set_trial_intermediate_value_without_commit(session, trial_id, step,
                                                                  value)
            return
        for model, attrs in ((user, running.user), (system, running.system)):
            if attrs:
                stmt = insert(model).values([{"trial_id": trial_id, "key": k, "value_json": v}
                                             for k, v in attrs.items()])
                session.execute(stmt.on_conflict_do_update(
                    index_elements=[model.trial_id, model.key],
                    set_={"value_json": stmt.excluded.value_json}))
        if running.steps:
            rows = []
            for step, value in running.steps.items():
                stored, kind = inter.intermediate_value_to_stored_repr(value)
                rows.append({"trial_id": trial_id, "step": step, "intermediate_value": stored,
                             "intermediate_value_type": kind})
            stmt = insert(inter).values(rows)
            session.execute(stmt.on_conflict_do_update(
                index_elements=[inter.trial_id, inter.step],
                set_={"intermediate_value": stmt.excluded.intermediate_value,
                      "intermediate_value_type": stmt.excluded.intermediate_value_type}))


def set_trial_system_attr_behind(study: optuna.Study, trial: Any, key: str, value: Any) -> None:
    """Write a system attribute of a running trial that nobody reads before the trial ends:
    with a :class:`WriteBehindRDBStorage`, committed with the trial's end; elsewhere at once."""
    backend = rdb_of(study)
    if isinstance(backend, WriteBehindRDBStorage):
        backend.set_trial_system_attr_behind(trial_id(trial), key, value)
    else:
        set_trial_system_attr(study, trial, key, value)


@contextlib.contextmanager
def skip_waiting_lookup(study: optuna.Study, skip: bool = True) -> Iterator[None]:
    """With ``skip``, ``study.ask()`` creates a new trial without first reading the trials to
    look for a WAITING one (one ``get_trials`` fewer: seven queries on PostgreSQL). Callers use
    it only right after counting no WAITING trial. An instance attribute shadows Optuna's
    ``Study._pop_waiting_trial_id`` for the duration."""
    if not skip or not hasattr(study, "_pop_waiting_trial_id"):
        yield
        return
    study._pop_waiting_trial_id = lambda: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        del study._pop_waiting_trial_id


@contextlib.contextmanager
def skip_first_stale_check(study: optuna.Study, skip: bool = True) -> Iterator[None]:
    """With ``skip``, the first stale-trial lookup on the study's storage (the one
    ``Study.optimize`` makes before each trial, a query of the RUNNING trials and their
    heartbeats) finds none without asking the database; later lookups (a narrowing stage wait's
    sweep) ask as usual. Callers use it only right after counting no RUNNING trial: a trial
    started since cannot be stale yet. An instance attribute shadows Optuna's
    ``_get_stale_trial_ids`` until it is used once or the block ends."""
    storage = storage_of(study)
    if not skip or not hasattr(storage, "_get_stale_trial_ids"):
        yield
        return

    def once(_study_id: int) -> list[int]:
        storage.__dict__.pop("_get_stale_trial_ids", None)
        return []

    storage._get_stale_trial_ids = once  # type: ignore[attr-defined]
    try:
        yield
    finally:
        storage.__dict__.pop("_get_stale_trial_ids", None)


def heartbeat_grpc_client(host: str, port: int, interval: int | None, beat_attr: str,
                          on_beat_error: Any = None) -> BaseStorage:
    """A gRPC storage proxy client (``GrpcStorageProxy``) that Optuna treats as a heartbeat
    storage when ``interval`` is given: ``Study.optimize`` then runs its heartbeat thread around
    the objective, as it does for an RDBStorage, and each beat writes the trial system attribute
    ``beat_attr`` through the proxy (the gRPC API has no heartbeat call; ``hpo proxy`` turns
    that write into a heartbeat row, with the database's clock). Stale trials are the proxy's
    to fail: this client reports none (``_get_stale_trial_ids``) and has no stale-trial
    callback. ``on_beat_error(exc)``: called instead of raising when a beat fails (the
    heartbeat thread would die on it); it may re-raise.

    Relies on Optuna's private ``optuna.storages._heartbeat.BaseHeartbeat`` (what
    ``is_heartbeat_enabled`` checks) and on ``HeartbeatThread`` beating at once, then every
    interval."""
    from optuna.storages import GrpcStorageProxy
    from optuna.storages._heartbeat import BaseHeartbeat

    class HeartbeatGrpcStorageProxy(GrpcStorageProxy, BaseHeartbeat):
        def record_heartbeat(self, trial_id: int) -> None:
            try:
                self.set_trial_system_attr(trial_id, beat_attr, True)
            except Exception as e:  # noqa: BLE001 - handed to on_beat_error
                if on_beat_error is None:
                    raise
                on_beat_error(e)

        def _get_stale_trial_ids(self, study_id: int) -> list[int]:
            return []

        def get_heartbeat_interval(self) -> int | None:
            return interval

        def get_heartbeat_stale_trial_callback(self) -> None:
            return None

    return HeartbeatGrpcStorageProxy(host=host, port=port)

