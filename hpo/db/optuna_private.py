"""Every private Optuna name hpo relies on, in one place (Optuna 5, pinned ``<6``).

Optuna's public API hides the ids a storage call needs (``Study._storage``, ``_study_id``,
``Trial._trial_id``), the RDBStorage inside its cache, whether a storage beats hearts, and the
per-trial cache of trials. hpo needs them for its one-query counts, its stale-trial sweep and
its samplers and pruners, so each use goes through a function here, and
``tests/test_db_optuna_private.py`` pins the behaviour each one relies on: a new Optuna release that
moves a name fails those tests, not a user's study.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

import optuna
import sqlalchemy
import sqlalchemy.orm as orm
from optuna.storages import BaseStorage, GrpcStorageProxy, RDBStorage
from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import FrozenTrial

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


class RDBHooks(RDBStorage):
    """``RDBStorage`` whose private entry points (what ``_CachedStorage`` calls) hand over to
    hooks with public names, so that :class:`hpo.db.writebehind.WriteBehindRDBStorage` holds
    no private Optuna name. Each hook does nothing here.

    * ``_create_new_trial`` -> :meth:`create_trial` (a new trial made here, else ``None``:
      Optuna's creation), then :meth:`trial_created` (the frozen trial as created);
    * ``_get_prepared_new_trial`` (inside the creating transaction, the study row locked) ->
      :meth:`before_creation` (may raise: nothing is created), :meth:`creation_failed`,
      :meth:`after_creation` (the new trial's id and number known);
    * ``_set_trial_param`` -> :meth:`hold_param` (True: kept, not written now), then
      :meth:`param_set`;
    * ``_get_trials`` (the cache's incremental read) -> :meth:`answer_read` (a list: answered
      without the database), else :meth:`read_new_trials` (a list) or Optuna's read, then
      :meth:`trials_read`;
    * ``_get_stale_trial_ids`` (``fail_stale_trials``) -> :meth:`stale_found`.
    """

    def create_trial(self, study_id: int) -> FrozenTrial | None:
        """A new RUNNING trial (no template) created and committed here, else ``None``."""
        return None

    def trial_created(self, frozen: FrozenTrial, template: FrozenTrial | None) -> None:
        """A trial was created (committed)."""

    def before_creation(self, study_id: int, template: FrozenTrial | None, session: Any) -> None:
        """In the creating transaction, before the new trial is added."""

    def after_creation(self, study_id: int, template: FrozenTrial | None, session: Any,
                       new_id: int, number: int) -> None:
        """In the creating transaction, the new trial added (not committed)."""

    def creation_failed(self, e: BaseException) -> None:
        """A trial could not be created; subclasses may raise what to end with instead."""

    def creation_done(self, started: float) -> None:
        """A trial's creation committed; ``started``: when its attempt began (monotonic)."""

    def hold_param(self, trial_id: int, name: str, internal: float, distribution: Any,
                   previous: Any) -> bool:
        """True when the parameter is kept to be written later (:func:`write_params`)."""
        return False

    def param_set(self, trial_id: int, name: str, internal: float, distribution: Any) -> None:
        """A parameter was written or kept."""

    def answer_read(self, study_id: int, included: set[int], greater: int) -> Any:
        """The cache's incremental read answered here (a list of trials), else ``None``."""
        return None

    def read_new_trials(self, study_id: int, included: set[int], greater: int) -> Any:
        """The cache's incremental read, made here (a list of trials), else ``None``:
        Optuna's."""
        return None

    def trials_read(self, study_id: int, included: set[int], greater: int,
                    trials: list[FrozenTrial]) -> None:
        """The cache's incremental read went to the database and returned ``trials``."""

    def stale_found(self, study_id: int, trial_ids: list[int]) -> list[int]:
        """The stale trials Optuna's ``fail_stale_trials`` found; returns those it should
        still fail itself (and hand to the stale-trial callback)."""
        return trial_ids

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return self.stale_found(study_id, super()._get_stale_trial_ids(study_id))

    def _create_new_trial(self, study_id: int,
                          template_trial: FrozenTrial | None = None) -> FrozenTrial:
        frozen = self.create_trial(study_id) if template_trial is None else None
        if frozen is None:
            started = time.monotonic()
            frozen = super()._create_new_trial(study_id, template_trial)
            self.creation_done(started)
        self.trial_created(frozen, template_trial)
        return frozen

    def _get_prepared_new_trial(self, study_id: int, template_trial: FrozenTrial | None,
                                session: Any) -> Any:
        # Optuna retries a trial's creation five times, up to 2 s apart, whatever the error
        # (it means deadlocks): ``creation_failed`` may replace an error no retry can mend by
        # one that is not Optuna's StorageInternalError, which ends the loop at once; so does
        # what ``before_creation`` raises.
        self.before_creation(study_id, template_trial, session)
        try:
            trial = super()._get_prepared_new_trial(study_id, template_trial, session)
        except Exception as e:
            self.creation_failed(e)
            raise
        self.after_creation(study_id, template_trial, session, trial.trial_id, trial.number)
        return trial

    def _set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                         distribution: Any, previous_distribution: Any) -> None:
        if not self.hold_param(trial_id, param_name, param_value_internal, distribution,
                               previous_distribution):
            super()._set_trial_param(trial_id, param_name, param_value_internal, distribution,
                                     previous_distribution)
        self.param_set(trial_id, param_name, param_value_internal, distribution)

    def _get_trials(self, study_id: int, states: Any, included_trial_ids: set[int],
                    trial_id_greater_than: int) -> list[FrozenTrial]:
        if states is None:
            answer = self.answer_read(study_id, set(included_trial_ids), trial_id_greater_than)
            if answer is not None:
                return answer
            trials = self.read_new_trials(study_id, set(included_trial_ids),
                                          trial_id_greater_than)
            if trials is None:
                trials = super()._get_trials(study_id, states, included_trial_ids,
                                             trial_id_greater_than)
            self.trials_read(study_id, set(included_trial_ids), trial_id_greater_than, trials)
            return trials
        return super()._get_trials(study_id, states, included_trial_ids, trial_id_greater_than)


def rdb_models() -> Any:
    """Optuna's ORM models of an RDB storage (``optuna.storages._rdb.models``)."""

    return models


@contextlib.contextmanager
def rdb_session(storage: RDBStorage) -> Iterator[Any]:
    """One transaction of ``storage`` (Optuna's ``_create_scoped_session``: committed at the
    end, rolled back on an error). Never nested: it is one thread-local session."""

    with _create_scoped_session(storage.scoped_session) as session:
        yield session


def write_without_commit(storage: RDBStorage, session: Any, trial: Any, *,
                         params: dict[str, tuple[float, Any]] | None = None,
                         values: Sequence[float] = (),
                         attrs: Sequence[tuple[Any, str, Any]] = (),
                         steps: dict[int, float] | None = None) -> None:
    """Optuna's own per-row writers, in ``session`` (not committed): ``params`` name ->
    (internal value, distribution), ``values`` of the objectives into the trial row ``trial``,
    ``attrs`` (model, key, value), ``steps`` intermediate values."""
    tid = trial.trial_id
    for name, (internal, distribution) in (params or {}).items():
        storage._set_trial_param_without_commit(session, tid, name, internal, distribution)
    for objective, value in enumerate(values):
        storage._set_trial_value_without_commit(session, trial, objective, value)
    for model, key, value in attrs:
        storage._set_trial_attr_without_commit(session, model, tid, key, value)
    for step, value in (steps or {}).items():
        storage._set_trial_intermediate_value_without_commit(session, tid, step, value)


def read_trials_in(storage: RDBStorage, session: Any, study_id: int, included: set[int],
                   greater: int) -> list[FrozenTrial]:
    """What ``RDBStorage._get_trials(study_id, None, included, greater)`` returns (the cache's
    incremental read: the trials with an id in ``included``, at most ``greater``, or above
    ``greater``), read in ``session``, an open transaction."""

    models = rdb_models()
    included = {i for i in included if i <= greater}
    query = session.query(models.TrialModel).filter(models.TrialModel.study_id == study_id)
    for rel in ("params", "values", "user_attributes", "system_attributes",
                "intermediate_values"):
        query = query.options(orm.selectinload(getattr(models.TrialModel, rel)))
    if included and greater > -1:
        query = query.filter(sqlalchemy.or_(models.TrialModel.trial_id.in_(included),
                                            models.TrialModel.trial_id > greater))
    elif greater > -1:
        query = query.filter(models.TrialModel.trial_id > greater)
    rows = query.order_by(models.TrialModel.trial_id).all()
    return [storage._build_frozen_trial_from_trial_model(r) for r in rows]


def set_trial_system_attr_behind(study: optuna.Study, trial: Any, key: str, value: Any) -> None:
    """Write a system attribute of a running trial that nobody reads before the trial ends:
    with a :class:`hpo.db.writebehind.WriteBehindRDBStorage`, committed with the trial's end;
    elsewhere at once."""
    behind = getattr(rdb_of(study), "set_trial_system_attr_behind", None)
    if behind is not None:  # a hpo.db.writebehind.WriteBehindRDBStorage
        behind(trial_id(trial), key, value)
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


def retry_limit(callback: Any) -> tuple[bool, int | None]:
    """Whether ``callback`` is Optuna's retry of a failed or stale trial that does not carry
    its intermediate values over, and its ``max_retry`` (``None``: unlimited)."""
    kinds = (optuna.storages.RetryFailedTrialCallback,
             optuna.storages.RetryHeartbeatStaleTrialCallback)
    if not isinstance(callback, kinds) or callback._inherit_intermediate_values:
        return False, None
    return True, callback._max_retry


def heartbeat_grpc_client(host: str, port: int, interval: int | None, beat_attr: str,
                          on_beat_error: Any = None, mixins: tuple[type, ...] = ()
                          ) -> BaseStorage:
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

    class HeartbeatGrpcStorageProxy(*mixins, GrpcStorageProxy, BaseHeartbeat):  # type: ignore[misc]
        def record_heartbeat(self, trial_id: int) -> None:
            try:
                self.set_trial_system_attr(trial_id, beat_attr, True)
                after = getattr(self, "after_beat", None)
                if after is not None:
                    after(trial_id, interval)
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

