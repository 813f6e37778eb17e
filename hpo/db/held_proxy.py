"""Writes held back behind ``hpo proxy`` too (issue 26): a proxied worker's running trial costs
the database a few transactions, not one per attribute and report.

Optuna's gRPC API has one call per write, and each is a transaction on the proxy's database: a
trial of the book's task (50 reports, four user attributes) cost 118-163 transactions through
the proxy against 3 direct. As :class:`hpo.db.writebehind.WriteBehindRDBStorage` does on a
direct connection, a proxied worker keeps its running trial's user attributes and reports
(nobody else reads them before the trial ends) and sends them in one call, the trial system
attribute ``hpo:held`` (:data:`hpo.db.keys.HELD_ATTR`), right before the trial's ``tell`` (and
with a heartbeat once the trial has run for an interval). ``hpo proxy`` never stores that
attribute: it writes its rows in one transaction, into a trial still RUNNING only (else
``UpdateFinishedTrialError``, nothing written), as the beat attribute becomes a heartbeat row.

* :class:`HeldThroughProxy`: the worker's end, a mixin of the gRPC client
  (:func:`hpo.db.optuna_private.heartbeat_grpc_client`), with public Optuna names only;
* :func:`write_held`: the proxy's end.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.db import statements as st
from hpo.db.held_writes import HeldWrites
from hpo.db.keys import HELD_ATTR


class HeldThroughProxy:
    """Mixin of a ``GrpcStorageProxy``: the user attributes and reports of the trials this
    process runs are held, overlaid on what it reads, and sent as one ``hpo:held`` write before
    the trial finishes (or after a heartbeat once it has run for an interval)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._held_lock = threading.RLock()
        self._held: dict[int, HeldWrites] = {}
        super().__init__(*args, **kwargs)

    def after_beat(self, trial_id: int, interval: float | None) -> None:
        """After a heartbeat: what is held, once the trial has run for an interval."""
        self.send_held(trial_id, interval or 0.0)

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        trial_id = super().create_new_trial(study_id, template_trial)  # type: ignore[misc]
        if template_trial is None:
            with self._held_lock:
                self._held[trial_id] = HeldWrites(None)
        return trial_id

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        text = json.dumps(value)  # an unserialisable value fails here, as it did
        with self._held_lock:
            held = self._held.get(trial_id)
            if held is not None:
                held.user[key] = text
                return
        super().set_trial_user_attr(trial_id, key, value)  # type: ignore[misc]

    def set_trial_intermediate_value(self, trial_id: int, step: int, value: float) -> None:
        with self._held_lock:
            held = self._held.get(trial_id)
            if held is not None:
                held.steps[step] = float(value)
                return
        super().set_trial_intermediate_value(trial_id, step, value)  # type: ignore[misc]

    def get_trial(self, trial_id: int) -> FrozenTrial:
        trial = super().get_trial(trial_id)  # type: ignore[misc]
        with self._held_lock:
            held = self._held.get(trial_id)
            if held is not None and trial.state == TrialState.RUNNING:
                held.overlay(trial)
        return trial

    def set_trial_state_values(self, trial_id: int, state: TrialState,
                               values: Any = None) -> bool:
        if state.is_finished():
            with self._held_lock:
                try:
                    self.send_held(trial_id)
                except optuna.exceptions.UpdateFinishedTrialError:
                    self._held.pop(trial_id, None)  # a sweeper's word stands
                    raise
        ok = super().set_trial_state_values(trial_id, state, values)  # type: ignore[misc]
        with self._held_lock:
            if ok and state == TrialState.RUNNING:  # a WAITING trial this process now runs
                self._held.setdefault(trial_id, HeldWrites(None))
            elif ok and state.is_finished():
                self._held.pop(trial_id, None)
        return ok

    def send_held(self, trial_id: int, interval: float | None = None) -> None:
        """Send what is held for the trial as one ``hpo:held`` write (with ``interval``: only
        once the trial has run that long); a failed send keeps it held."""
        with self._held_lock:
            held = self._held.get(trial_id)
            if held is None or not held.pending():
                return
            if interval is not None and time.monotonic() - held.since < interval:
                return
            payload = {"user": dict(held.user), "steps": [[s, v] for s, v in held.steps.items()]}
            super().set_trial_system_attr(trial_id, HELD_ATTR, payload)  # type: ignore[misc]
            held.user.clear()
            held.steps.clear()


def write_held(storage: Any, trial_id: int, payload: Any) -> None:
    """``hpo proxy``'s end of an ``hpo:held`` write: its rows in one transaction of
    ``storage`` (an RDBStorage), into a trial still RUNNING only."""
    if not isinstance(payload, dict):
        raise ValueError(f"{HELD_ATTR} must be an object, got {type(payload).__name__}")
    held = HeldWrites(None)
    held.user = {str(k): v for k, v in dict(payload.get("user") or {}).items()}
    if not all(isinstance(v, str) for v in held.user.values()):
        raise ValueError(f"{HELD_ATTR} user attributes must be JSON texts")
    held.steps = {int(s): float(v) for s, v in payload.get("steps") or []}
    if not st.flush_trial(storage, trial_id, held):
        raise optuna.exceptions.UpdateFinishedTrialError(
            f"Trial {trial_id} has already finished and can not be updated.")
