"""The trial loop's budget, checked in the creating transaction of hpo's storage (PostgreSQL):
:func:`budget` sets it for a block, :func:`created_within_budget` and :func:`counts_after_trial`
read what the creation saw. :class:`BudgetFull` is raised by the creation when the study holds
its budget."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import optuna
from optuna.trial import TrialState

from hpo.db import optuna_private as oc
from hpo.db.writebehind import FINISHED, IN_FLIGHT, BudgetFull, WriteBehindRDBStorage

__all__ = ["BudgetFull", "budget", "counts_after_trial", "created_within_budget"]


def _backend(study: optuna.Study) -> WriteBehindRDBStorage | None:
    backend = oc.rdb_of(study)
    return backend if isinstance(backend, WriteBehindRDBStorage) else None


@contextlib.contextmanager
def budget(study: optuna.Study, n_trials: int) -> Iterator[None]:
    """Within the block, on PostgreSQL, a trial is created only while the study holds fewer
    than ``n_trials`` finished or in-flight trials (the count made in the creating transaction,
    the study row locked): else :class:`BudgetFull` and nothing is created. Elsewhere (SQLite,
    whose transactions do not lock a row; the proxy) nothing changes."""
    backend = _backend(study)
    if backend is None or backend.engine.name == "sqlite":
        yield
        return
    sid = oc.study_id(study)
    backend._wb_budget[sid] = n_trials
    try:
        yield
    finally:
        backend._wb_budget.pop(sid, None)


def created_within_budget(study: optuna.Study, trial: Any) -> bool:
    """Whether this process created ``trial`` inside :func:`budget` (it fits the budget)."""
    backend = _backend(study)
    if backend is None:
        return False
    with backend._wb_lock:
        counts = backend._wb_counts.get(oc.study_id(study))
        return counts is not None and counts[0] == oc.trial_id(trial)


def counts_after_trial(study: optuna.Study) -> tuple[int, int, int] | None:
    """(finished, in flight, of which WAITING) as the last trial created here inside
    :func:`budget` saw the others at its creation, plus its own end written here; ``None`` when
    unknown (no such trial, or not finished here). Taken once."""
    backend = _backend(study)
    if backend is None:
        return None
    with backend._wb_lock:
        counts = backend._wb_counts.pop(oc.study_id(study), None)
    if counts is None or counts[2] is None:
        return None
    others, state = counts[1], counts[2]
    done = sum(others.get(s, 0) for s in FINISHED) + (state in FINISHED)
    in_flight = sum(others.get(s, 0) for s in IN_FLIGHT)
    return done, in_flight, others.get(TrialState.WAITING, 0)
