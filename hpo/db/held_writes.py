"""What a process knows of one of the trials it runs while the write-behind storage
(:class:`hpo.db.writebehind.WriteBehindRDBStorage`) holds back its writes."""

from __future__ import annotations

import json
import time
from typing import Any

from optuna.trial import FrozenTrial

from hpo.db import optuna_private as oc


def _json_copy(value: Any) -> Any:
    """A copy of a JSON value (dicts and lists copied, the rest immutable)."""
    if isinstance(value, dict):
        return {k: _json_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_copy(v) for v in value]
    return value


def copy_trial(trial: FrozenTrial) -> FrozenTrial:
    """A copy of a trial that shares nothing a caller may change with it (its dicts, lists and
    attribute values copied; parameter values, distributions and dates are not changed in
    place by anyone): what ``copy.deepcopy`` gives, at a fraction of its cost for a trial
    that carries its curves."""
    values = trial.values
    return FrozenTrial(
        number=trial.number, state=trial.state, value=None,
        values=list(values) if values is not None else None,
        datetime_start=trial.datetime_start, datetime_complete=trial.datetime_complete,
        params=dict(trial.params), distributions=dict(trial.distributions),
        user_attrs=_json_copy(trial.user_attrs), system_attrs=_json_copy(trial.system_attrs),
        intermediate_values=dict(trial.intermediate_values), trial_id=oc.trial_id(trial))


class HeldWrites:
    """What this process knows of one of its running trials: the trial as stored plus the
    write-through writes made here since (``trial``), and the writes held back."""

    __slots__ = ("trial", "user", "system", "steps", "params", "sampling", "since", "beaten")

    def __init__(self, trial: FrozenTrial | None, beaten: bool = False) -> None:
        self.trial = trial
        self.since = time.monotonic()
        self.beaten = beaten  # its first heartbeat was written with its creation
        self.user: dict[str, str] = {}  # key -> JSON text
        self.system: dict[str, str] = {}
        self.steps: dict[int, float] = {}
        self.params: dict[str, tuple[float, Any]] = {}  # name -> (internal value, distribution)
        # still drawing its parameters: they and the sampler's system attributes are held
        # until the last one expected is drawn (then written together), see writebehind.py
        self.sampling = False

    def pending(self) -> bool:
        return bool(self.user or self.system or self.steps or self.params)

    def take(self) -> HeldWrites:
        """What is held, moved into a new ``HeldWrites`` (this one then holds nothing)."""
        taken = HeldWrites(None)
        taken.user, self.user = self.user, {}
        taken.system, self.system = self.system, {}
        taken.steps, self.steps = self.steps, {}
        taken.params, self.params = self.params, {}
        return taken

    def give_back(self, taken: HeldWrites) -> None:
        """Hold again what :meth:`take` took and was not written (newer writes win)."""
        for mine, theirs in ((self.user, taken.user), (self.system, taken.system),
                             (self.steps, taken.steps), (self.params, taken.params)):
            for k, v in theirs.items():
                mine.setdefault(k, v)

    def overlay(self, trial: FrozenTrial) -> None:
        """Apply the held-back writes to ``trial`` (a copy this process hands out or keeps)."""
        trial.user_attrs.update({k: json.loads(v) for k, v in self.user.items()})
        trial.system_attrs.update({k: json.loads(v) for k, v in self.system.items()})
        trial.intermediate_values.update(self.steps)
