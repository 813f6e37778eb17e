"""Trials a worker knows exactly, so that reading them back costs no query (issue 26).

A trial this process finished through :mod:`hpo.db.statements` is, as stored, exactly what the
process wrote: the trial as created, its parameters and attributes, its held writes, its state,
values and end time. Finished trials never change. Optuna reads them back all the same: its
``study.optimize`` asks for the trial it has just told (``get_trial``), and its cache's
incremental read (what TPE and the median pruner see) asks for the trials new or unfinished
since its last read, which on a worker are mostly its own. Each such read is 6 statements
and the Python to build the trial from ORM rows.

:class:`KnownTrials` keeps the last :data:`KEEP` trials finished here. Its incremental read
asks the database only for the ids and states of the trials wanted (one statement), answers
those it knows in the same state from memory (a finished trial of its own; its running trial,
when nothing of it is held unwritten), and reads the others in full. Whatever another process
wrote, or a sweeper changed, has another state or an id not known here, and is read."""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy
import sqlalchemy.orm
from optuna.trial import FrozenTrial, TrialState

from hpo.db import optuna_private as oc
from hpo.db import statements as st
from hpo.db.held_writes import HeldWrites, copy_trial

#: How many trials finished here are kept (a worker reads back its last one or two).
KEEP = 64


class KnownTrials:
    """Mixin of :class:`hpo.db.writebehind.WriteBehindRDBStorage`: the trials finished here,
    and the incremental read that answers known trials from memory."""

    def _known_init(self) -> None:
        self._known: collections.OrderedDict[int, FrozenTrial] = collections.OrderedDict()
        # trials answered here as finished whose end was then not written: the next read
        # returns them as the database holds them, so that the caller's cache corrects itself
        self._reread: set[int] = set()

    def remember_finished(self, running: HeldWrites, state: TrialState,
                          values: Sequence[float] | None, completed: datetime) -> None:
        """The trial ``running`` as its end (committed) stored it."""
        if running.trial is None:
            return
        final = copy_trial(running.trial)
        running.overlay(final)
        for name, (internal, distribution) in running.params.items():
            final.params[name] = distribution.to_external_repr(internal)
            final.distributions[name] = distribution
        final.state = state
        final.values = list(values) if values else None
        final.datetime_complete = completed
        self._known[oc.trial_id(final)] = final
        while len(self._known) > KEEP:
            self._known.popitem(last=False)

    def forget_finished(self, trial_id: int) -> None:
        """No longer answer ``trial_id`` from memory (its end was not written as known), and
        return it with the next read."""
        self._known.pop(trial_id, None)
        self._reread.add(trial_id)

    def queued_end(self, trial_id: int) -> bool:
        """Whether the trial's end is known here but not yet committed (subclass)."""
        return False

    def finished_copy(self, trial_id: int) -> FrozenTrial | None:
        """A copy of a trial finished here, else ``None``."""
        known = self._known.get(trial_id)
        return None if known is None else copy_trial(known)

    def running_copy(self, trial_id: int) -> FrozenTrial | None:
        """A copy of a trial running here as the database holds it, else ``None``
        (subclass)."""
        return None

    def read_known(self, conn: sqlalchemy.Connection, study_id: int, included: set[int],
                   greater: int, lock: Any,
                   extra: Callable[[int], FrozenTrial | None] | None = None
                   ) -> list[FrozenTrial]:
        """What ``RDBStorage._get_trials(study_id, None, included, greater)`` returns, in
        ``conn``'s transaction: the ids and states read, known trials from memory (``extra``:
        one more source, e.g. the trial being created), the rest read in full."""
        with lock:
            again = set(self._reread)
        rows = st.trial_states(conn, study_id, included | again, greater)
        out: dict[int, FrozenTrial] = {}
        unknown = []
        with lock:
            self._reread -= {tid for tid, _ in rows}
            for tid, state in rows:
                known = self.finished_copy(tid)
                if known is None and state == TrialState.RUNNING:
                    known = self.running_copy(tid) or (extra(tid) if extra else None)
                # a trial whose end is queued here is RUNNING in the database until it commits
                if known is not None and (known.state == state or (
                        state == TrialState.RUNNING and self.queued_end(tid))):
                    out[tid] = known
                else:
                    unknown.append(tid)
        if unknown:
            with sqlalchemy.orm.Session(bind=conn) as session:
                for trial in oc.read_trials_in(self, session, study_id, set(unknown),
                                               max(unknown)):
                    out[oc.trial_id(trial)] = trial
        return [out[k] for k in sorted(out)]
