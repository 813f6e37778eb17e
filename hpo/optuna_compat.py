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
from collections.abc import Iterator
from typing import Any

import optuna
from optuna.storages import BaseStorage, RDBStorage
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

