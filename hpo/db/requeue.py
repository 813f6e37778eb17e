"""A stale trial failed and its retry queued in one transaction (issue 26).

Optuna's ``fail_stale_trials`` fails a dead worker's trial in one transaction and queues its
retry (``RetryFailedTrialCallback``: the same parameters, WAITING) in another. In between the
study holds one trial fewer: a worker that counts then sees a free slot and creates a fresh
trial in it, and the retry, queued a moment later, is beyond the budget (surplus) once it is
popped. The budget stays exact, but the dead worker's parameters are never re-run.

:class:`Requeue` does both in the transaction that creates the retry (Optuna's own creation
from a template, the study row locked): the stale trial is failed there, only if it is still
RUNNING (another sweeper may have failed it first: then nothing is created). The retry is
built exactly as Optuna's callback builds it (``failed_trial``, ``retry_history``, its
``max_retry``). A trial past its retries is failed as Optuna fails it. Other callbacks, and
MySQL, keep Optuna's two steps.
"""

from __future__ import annotations

from typing import Any

import optuna
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState

from hpo.db import optuna_private as oc
from hpo.db import statements as st


class _FailedMeanwhile(Exception):
    """The stale trial is no longer RUNNING: its retry is not created here."""


class Requeue:
    """Mixin of :class:`hpo.db.writebehind.WriteBehindRDBStorage` (before its other hooks)."""

    _requeue_failing: int | None = None

    def stale_found(self, study_id: int, trial_ids: list[int]) -> list[int]:
        callback = self.get_heartbeat_stale_trial_callback()  # type: ignore[attr-defined]
        ours, max_retry = oc.retry_limit(callback)
        if not ours or self.engine.name not in st.UPSERT_DIALECTS:  # type: ignore[attr-defined]
            return trial_ids
        for trial_id in trial_ids:
            self._fail_and_requeue(study_id, trial_id, max_retry)
        return []

    def _fail_and_requeue(self, study_id: int, trial_id: int, max_retry: int | None) -> None:
        trial: FrozenTrial = self.get_trial(trial_id)  # type: ignore[attr-defined]
        if trial.state != TrialState.RUNNING:
            return
        system_attrs: dict[str, Any] = {"failed_trial": trial.number, "retry_history": [],
                                        **trial.system_attrs}
        system_attrs["retry_history"] = [*system_attrs["retry_history"], trial.number]
        if max_retry is not None and max_retry < len(system_attrs["retry_history"]):
            try:  # no retry: failed as Optuna fails it
                self.set_trial_state_values(trial_id, TrialState.FAIL)  # type: ignore[attr-defined]
            except optuna.exceptions.UpdateFinishedTrialError:
                pass
            return
        template = optuna.trial.create_trial(
            state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
            user_attrs=trial.user_attrs, system_attrs=system_attrs)
        self._requeue_failing = trial_id
        try:
            self.create_new_trial(study_id, template_trial=template)  # type: ignore[attr-defined]
        except _FailedMeanwhile:
            pass
        finally:
            self._requeue_failing = None

    def before_creation(self, study_id: int, template: FrozenTrial | None, session: Any) -> None:
        failing = self._requeue_failing
        if template is not None and failing is not None:
            # in the retry's creating transaction: the stale trial failed, if still RUNNING
            table = oc.rdb_models().TrialModel.__table__
            done = session.execute(
                sqlalchemy.update(table)
                .where(table.c.trial_id == failing, table.c.state == TrialState.RUNNING)
                .values(state=TrialState.FAIL, datetime_complete=st.utc_now()[1])).rowcount
            if done != 1:
                raise _FailedMeanwhile(f"trial {failing} is no longer RUNNING")
        super().before_creation(study_id, template, session)  # type: ignore[misc]
