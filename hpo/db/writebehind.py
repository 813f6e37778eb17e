"""hpo's RDB storage, :class:`WriteBehindRDBStorage`: a trial costs three transactions (issue
26). Optuna's private names are reached through :mod:`hpo.db.optuna_private` (``RDBHooks``);
the trial loop sets and reads the budget it checks through :mod:`hpo.db.budget`."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Sequence
from typing import Any

import optuna
import sqlalchemy
import sqlalchemy.exc
from optuna.distributions import check_distribution_compatibility
from optuna.trial import FrozenTrial, TrialState

from hpo.db import optuna_private as oc
from hpo.db import statements as st
from hpo.db.behind import Behind, BehindWrites
from hpo.db.held_writes import HeldWrites, copy_trial
from hpo.db.known import KnownTrials
from hpo.db.requeue import Requeue

#: How many of the cache's reads one creation's snapshot answers (TPE makes two as a trial
#: starts: its search space and its constant liar's trials); a sampler polling for news
#: (a narrowing stage wait) gets the database from the third on.
SNAPSHOT_READS = 2

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
IN_FLIGHT = (TrialState.RUNNING, TrialState.WAITING)


class BudgetFull(Exception):
    """The study holds its budget (finished + in-flight trials): no trial was created."""


class WriteBehindRDBStorage(Requeue, BehindWrites, KnownTrials, oc.RDBHooks):
    """``RDBStorage`` that holds back the writes nobody else reads while a trial runs, and
    commits them with the trial's end (hpo's storage class: :mod:`hpo.db.heartbeats`). For the
    trials this process runs (created here RUNNING, or a WAITING trial it started):

    * **written behind**: user attributes, intermediate values and the system attributes a
      caller marks so (:meth:`set_trial_system_attr_behind`) are kept here and written with the
      trial's end (or a heartbeat once the trial has run for an interval). Nobody else reads
      them while it runs (the median/percentile pruners read finished trials; successive
      halving reads system attributes, written through); ``get_trial`` overlays them here. A
      worker that dies loses them with its trial, which a sweeper fails.
    * **parameters together**: once a trial of the study has finished here, the next one's
      parameters (and its sampler's system attributes: TPE's constant liar) are held until it
      has drawn every parameter the last one drew, then written in one transaction before
      ``suggest`` returns (fewer drawn: with the next flush or the end).
    * **not read back**: ``get_trial`` answers from the trial as created plus this process's
      writes, and a trial finished here from what was written (:mod:`hpo.db.known`); the
      finishing write refuses a trial a sweeper failed meanwhile (UpdateFinishedTrialError).
    * **reads as a trial starts answered from its creation**: the creating transaction also
      reads what Optuna's cache asks next, and its next :data:`SNAPSHOT_READS` reads before the
      first parameter are answered from that.
    * **the first heartbeat with the creation**, and **the loop's budget** (:func:`budget`): on
      PostgreSQL the creating transaction, holding the study row's lock, counts the trials by
      state; a full study gets no trial (:class:`BudgetFull`, nothing written).

    On PostgreSQL and SQLite the three transactions are a few Core statements each
    (:mod:`hpo.db.statements`). Never nest :func:`hpo.db.optuna_private.rdb_session`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._wb_init()
        super().__init__(*args, **kwargs)

    def _wb_init(self) -> None:
        self._known_init()
        self._wb_lock = threading.RLock()
        self._wb_running: dict[int, HeldWrites] = {}
        self._wb_study_of: dict[int, int] = {}  # trial id -> study id (trials created here)
        self._wb_space: dict[int, frozenset[str]] = {}  # study -> params its last trial drew
        self._wb_budget: dict[int, int] = {}  # study -> n_trials (inside ``budget``)
        self._wb_counting: tuple[int, dict[TrialState, int]] | None = None
        # study -> (trial id, counts of the other trials at its creation, its final state)
        self._wb_counts: dict[int, list[Any]] = {}
        self._wb_mirror: dict[int, tuple[int, frozenset[int]]] = {}  # the cache's next read
        self._wb_snap: dict[int, list[Any]] = {}  # study -> [greater, included, trials, uses]
        self._wb_starting: dict[int, int] = {}  # study -> its trial created here, no param yet
        self._wb_start_reads: set[int] = set()  # studies whose last trial read as it started
        self._wb_behind: Behind | None = None  # the trial loop's writer (:func:`overlapped`)
        self._wb_queued: set[int] = set()  # trials whose end is queued there, not committed

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        for key in [k for k in state if k.startswith("_wb_")]:
            state.pop(key)
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        self._wb_init()
        super().__setstate__(state)

    # -- creation ----------------------------------------------------------------------------

    def before_creation(self, study_id: int, template: FrozenTrial | None, session: Any) -> None:
        super().before_creation(study_id, template, session)  # a retry's stale trial failed
        self._wb_counting = None
        n = self._wb_budget.get(study_id)
        if template is not None or n is None:
            return

        model = oc.rdb_models().TrialModel
        rows = (session.query(model.state, sqlalchemy.func.count(model.trial_id))
                .filter(model.study_id == study_id).group_by(model.state).all())
        counts = {TrialState(state): int(k) for state, k in rows}
        if sum(counts.get(s, 0) for s in FINISHED + IN_FLIGHT) >= n:
            raise BudgetFull(f"the study holds its budget of {n} trials")
        self._wb_counting = (study_id, counts)

    def after_creation(self, study_id: int, template: FrozenTrial | None, session: Any,
                       new_id: int, number: int) -> None:
        if template is not None:
            return
        if self.heartbeat_interval is not None:
            # the trial's first heartbeat, in the transaction that creates it (the row Optuna's
            # ``record_heartbeat`` would insert a moment later, with the database's clock)
            session.add(oc.rdb_models().TrialHeartbeatModel(trial_id=new_id))
        session.flush()  # the trial's number and heartbeat, seen by the start's read
        self._registered(study_id, new_id, session.connection())

    def _registered(self, study_id: int, new_id: int, conn: sqlalchemy.Connection,
                    created: FrozenTrial | None = None) -> None:
        """A trial created here (``created``, when known) in ``conn``'s transaction, not yet
        committed: its study and counts kept, and where wanted the start's read made."""
        with self._wb_lock:
            self._wb_study_of[new_id] = study_id
            counting, self._wb_counting = self._wb_counting, None
            if counting is not None and counting[0] == study_id:
                self._wb_counts[study_id] = [new_id, counting[1], None]
            mirror = self._wb_mirror.get(study_id)
            # only where the last trial's start read the trials (TPE), not for every sampler
            wanted = study_id in self._wb_start_reads
            self._wb_start_reads.discard(study_id)
            self._wb_starting[study_id] = new_id
            self._wb_snap.pop(study_id, None)
        if mirror is not None and wanted:
            greater, included = mirror
            trials = self.read_known(
                conn, study_id, set(included), greater, self._wb_lock,
                lambda tid: copy_trial(created) if created and tid == new_id else None)
            self._wb_snap[study_id] = [greater, included, trials, 0]

    def create_trial(self, study_id: int) -> FrozenTrial | None:
        """A new RUNNING trial in one transaction of a few Core statements
        (:mod:`hpo.db.statements`) on PostgreSQL, with what :meth:`before_creation` and
        :meth:`after_creation` do in Optuna's; ``None`` elsewhere (Optuna's creation, hooked).
        Retried as Optuna retries a creation: five attempts, up to 2 s apart; the last trial's
        end, held until this creation is done, is queued at its first failed attempt. First,
        what the writer of :func:`overlapped` failed to write is raised here."""
        writer = self._wb_behind
        if writer is not None:
            writer.creating()
        if self.engine.name != "postgresql":
            return None
        try:
            for attempt in range(1, 6):
                begun = time.monotonic()
                try:
                    with st.transaction(self.engine) as conn:
                        frozen = self._create_in(conn, study_id)
                    self.creation_done(begun)
                    return frozen
                except optuna.exceptions.StorageInternalError as e:
                    self.creation_failed(e)
                    if writer is not None:  # the last trial's end waits no more: the writer
                        writer.release()    # retries it while this creation is retried
                    if attempt == 5:
                        raise
                time.sleep(random.random() * 2.0)
            raise AssertionError("not reached")
        finally:
            if writer is not None:
                writer.created()  # the last trial's end, held until this creation is done

    def _create_in(self, conn: sqlalchemy.Connection, study_id: int) -> FrozenTrial:
        self._wb_counting = None
        counts = st.lock_and_count(conn, study_id)
        n = self._wb_budget.get(study_id)
        if n is not None:
            if sum(counts.get(s, 0) for s in FINISHED + IN_FLIGHT) >= n:
                raise BudgetFull(f"the study holds its budget of {n} trials")
            self._wb_counting = (study_id, counts)
        number = sum(counts.values())
        new_id, start = st.insert_trial(conn, study_id, number, self.heartbeat_interval is not None)
        created = FrozenTrial(number=number, state=TrialState.RUNNING, value=None, values=None,
                              datetime_start=start, datetime_complete=None, params={},
                              distributions={}, user_attrs={}, system_attrs={},
                              intermediate_values={}, trial_id=new_id)
        self._registered(study_id, new_id, conn, created)
        return created

    def read_new_trials(self, study_id: int, included: set[int], greater: int) -> Any:
        if self.engine.name not in st.UPSERT_DIALECTS:
            return None
        with st.transaction(self.engine) as conn:
            return self.read_known(conn, study_id, included, greater, self._wb_lock)

    def running_copy(self, trial_id: int) -> FrozenTrial | None:
        running = self._wb_running.get(trial_id)
        if running is None or running.trial is None or running.params:
            return None  # unknown, or parameters held: not as the database holds it
        return copy_trial(running.trial)

    def trial_created(self, frozen: FrozenTrial, template: FrozenTrial | None) -> None:
        if frozen.state != TrialState.RUNNING or template is not None:
            return
        tid = oc.trial_id(frozen)
        with self._wb_lock:
            running = HeldWrites(copy_trial(frozen), beaten=self.heartbeat_interval is not None)
            running.sampling = bool(self._wb_space.get(self._wb_study_of.get(tid, -1)))
            self._wb_running[tid] = running

    # -- reads -------------------------------------------------------------------------------

    def answer_read(self, study_id: int, included: set[int], greater: int) -> Any:
        with self._wb_lock:
            snap = self._wb_snap.get(study_id)
            if snap is None or snap[3] >= SNAPSHOT_READS or greater < snap[0]:
                return None
            g0, inc0, trials, _ = snap
            wanted = {i for i in included if i <= greater}
            if not all(i in inc0 or i > g0 for i in wanted):
                return None
            snap[3] += 1
            answer = [copy_trial(t) for t in trials
                      if oc.trial_id(t) in wanted or oc.trial_id(t) > greater]
        self.trials_read(study_id, included, greater, answer)
        return answer

    def trials_read(self, study_id: int, included: set[int], greater: int,
                    trials: list[FrozenTrial]) -> None:
        # what Optuna's cache asks next: it keeps the ids of the unfinished trials it has seen
        # and the highest id of a finished one
        finished = {oc.trial_id(t) for t in trials if t.state.is_finished()}
        unfinished = {oc.trial_id(t) for t in trials} - finished
        with self._wb_lock:
            if study_id in self._wb_starting:
                self._wb_start_reads.add(study_id)
            self._wb_mirror[study_id] = (max([greater, *finished]),
                                         frozenset((included | unfinished) - finished))

    # -- writes of a running trial -----------------------------------------------------------

    def get_trial(self, trial_id: int) -> FrozenTrial:
        with self._wb_lock:
            done = self.finished_copy(trial_id)
            if done is not None:
                return done
            running = self._wb_running.get(trial_id)
            known = running is not None and running.trial is not None
            if known:
                trial = copy_trial(running.trial)
        if not known:
            trial = super().get_trial(trial_id)
            with self._wb_lock:
                if trial.state.is_finished():  # told, or failed by a sweeper
                    self._wb_running.pop(trial_id, None)
                running = self._wb_running.get(trial_id)
                if running is None:
                    return trial
                running.trial = copy_trial(trial)
        with self._wb_lock:
            running.overlay(trial)
        return trial

    def hold_param(self, trial_id: int, name: str, internal: float, distribution: Any,
                   previous: Any) -> bool:
        with self._wb_lock:
            running = self._wb_running.get(trial_id)
            if (running is None or running.trial is None or not running.sampling
                    or previous is None):
                return False
            check_distribution_compatibility(previous, distribution)  # as Optuna's write does
            running.params[name] = (internal, distribution)
            return True

    def param_set(self, trial_id: int, name: str, internal: float, distribution: Any) -> None:
        with self._wb_lock:
            study = self._wb_study_of.get(trial_id, -1)
            self._wb_snap.pop(study, None)  # its start is over
            self._wb_starting.pop(study, None)
            running = self._wb_running.get(trial_id)
            if running is None or running.trial is None:
                return
            running.trial.params[name] = distribution.to_external_repr(internal)
            running.trial.distributions[name] = distribution
            space = self._wb_space.get(self._wb_study_of.get(trial_id, -1), frozenset())
            due = running.sampling and space <= running.trial.params.keys()
            if due:  # every parameter expected is drawn: written now, in one transaction
                running.sampling = False
                if self._behind_for(running):
                    self._flush_behind(trial_id, running)
                else:
                    self.flush_trial(trial_id)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        # while a trial draws its parameters, the system attributes its sampler writes (TPE's
        # constant-liar parameters) are held and written with them; hpo's own (``hpo:``: a
        # surplus claim, a hand-back) are written at once
        if not key.startswith("hpo:") and self._hold(trial_id, "system", key,
                                                      json.dumps(value), sampling=True):
            return
        super().set_trial_system_attr(trial_id, key, value)
        with self._wb_lock:
            running = self._wb_running.get(trial_id)
            if running is not None and running.trial is not None:
                running.trial.system_attrs[key] = json.loads(json.dumps(value))

    def _hold(self, trial_id: int, field: str, key: Any, value: Any,
              sampling: bool = False) -> bool:
        """Keep a write to ``running.<field>[key]`` for a trial this process runs (with
        ``sampling``: only while it draws its parameters); False when the caller writes
        through."""
        with self._wb_lock:
            running = self._wb_running.get(trial_id)
            if running is None or (sampling and not running.sampling):
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

    # -- the end -----------------------------------------------------------------------------

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
            if self._behind_for(running):
                return self._end_behind(trial_id, state, values, running)
            try:
                ok = self._finish(trial_id, state, values, running)
            except optuna.exceptions.UpdateFinishedTrialError:
                self._wb_running.pop(trial_id, None)  # a sweeper's word stands: drop them
                self._ended(trial_id, None, None)
                raise
            if ok:  # False: nothing was written (a constraint); the trial is still RUNNING
                self._wb_running.pop(trial_id, None)
                self._ended(trial_id, running, state)
            return ok

    def _ended(self, trial_id: int, running: HeldWrites | None, state: TrialState | None) -> None:
        study = self._wb_study_of.pop(trial_id, None)
        if study is None:
            return
        self._wb_snap.pop(study, None)
        self._wb_starting.pop(study, None)
        if running is not None and running.trial is not None and running.trial.params:
            self._wb_space[study] = frozenset(running.trial.params)
        counts = self._wb_counts.get(study)
        if counts is not None and counts[0] == trial_id:
            counts[2] = state

    def drop_held(self, trial_id: int) -> None:
        """Forget what is held for a trial (it will not be written)."""
        with self._wb_lock:
            self._wb_running.pop(trial_id, None)

    def _finish(self, trial_id: int, state: TrialState, values: Sequence[float] | None,
                running: HeldWrites | None, at: tuple[Any, Any] | None = None) -> bool:
        """``RDBStorage.set_trial_state_values`` for a finished state, with the pending writes
        in the same transaction: all committed, or none (a trial a sweeper failed meanwhile
        raises UpdateFinishedTrialError and nothing is written). ``at``: the end time (local,
        UTC) of a trial already known here as ended (:meth:`_end_behind`)."""
        if running is None:
            return super().set_trial_state_values(trial_id, state, values)
        try:
            if self.engine.name not in st.UPSERT_DIALECTS:  # Optuna's writers (MySQL)
                st.orm_finish(self, trial_id, state, values, running)
                return True
            with st.transaction(self.engine) as conn:
                completed = st.finish_trial(conn, trial_id, state, values,
                                            running if running.pending() else None, at)
        except sqlalchemy.exc.IntegrityError:
            return False
        if at is None:
            self.remember_finished(running, state, values, completed)
        return True

    def record_heartbeat(self, trial_id: int) -> bool:  # type: ignore[override]
        """Whether a beat was written: the beat a trial starts with (Optuna's heartbeat thread
        beats at once, after ``ask``) was written with its creation; skipped, once."""
        with self._wb_lock:
            running = self._wb_running.get(trial_id)
            if running is not None and running.beaten:
                running.beaten = False
                if time.monotonic() - running.since < (self.heartbeat_interval or 0):
                    return False
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
        return True

    def flush_failed(self, trial_id: int, e: BaseException) -> None:
        """A heartbeat's flush of held writes failed; they stay held. Subclasses report it."""

    def flush_trial(self, trial_id: int) -> None:
        """Write what is pending for a trial that goes on running (its own transaction), into
        a trial still RUNNING only: the trial row is locked and read first, and a trial that a
        sweeper finished meanwhile gets none of them: they are dropped (the trial's ``tell`` is
        then refused, and the trial loop says so in one line)."""
        with self._wb_lock:
            running = self._wb_running.get(trial_id)
            if running is None or not running.pending():
                return
            still_running = st.flush_trial(self, trial_id, running)
            if not still_running:
                self._wb_running.pop(trial_id, None)
                return
            trial = running.trial
            if trial is not None:  # written: now part of the trial as stored
                running.overlay(trial)
            running.user.clear()
            running.system.clear()
            running.steps.clear()
            running.params.clear()

