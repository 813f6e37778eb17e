"""The trial loop and its budget: a worker runs trials until the study holds exactly N.

The budget is *exact*: a study of N trials ends with exactly N finished (COMPLETE or PRUNED)
trials however many workers share it and whichever of them die. Optuna's ``MaxTrialsCallback``
can overshoot by one per extra worker, so each worker runs this loop instead:

1. count finished and in-flight (RUNNING/WAITING) trials;
2. done when finished >= N; if finished + in-flight >= N, the in-flight trials may fill the quota:
   fail stale trials (heartbeat on: a dead worker's trial frees its slot, and its retry is
   enqueued WAITING), wait and look again;
3. otherwise run one trial with ``study.optimize(n_trials=1)`` (heartbeats work there, not with
   ask/tell; ``optimize`` itself fails stale trials before each trial). Two workers can pass
   step 2 at the same instant, so the trial *claims* its slot first: if N trials that are
   finished or in flight already precede it (trial numbers are handed out atomically by the
   storage), it is surplus and ends FAIL with ``hpo:surplus`` before sampling anything; the
   budget counts it nowhere.

Storage round trips are the overhead of a trial (each Optuna RDBStorage call is several SQL
queries; a ``study.get_trials`` is seven on PostgreSQL even when incremental), so on an
RDBStorage both counts are one ``SELECT state, COUNT(*) ... GROUP BY state`` query, the claim
costs nothing while the trial's number is below N (fewer than N trials precede it at all),
when the count saw no WAITING trial, ``ask()`` does not read the trials to look for one
(:func:`hpo.db.optuna_private.skip_waiting_lookup`), and when it saw no RUNNING trial,
``optimize`` does not query for stale ones (:func:`hpo.db.optuna_private.skip_first_stale_check`).
Other storages (in-memory, the gRPC proxy client) count with ``study.get_trials``. On
PostgreSQL the count is folded into the trial's creation (:func:`hpo.db.budget.budget`: the
creating transaction counts the study's trials with the study row locked and refuses a trial
beyond the budget, nothing created): after a trial, the counts its creation saw plus its own end
stand in for the next count while they leave room, so per trial the loop adds no transaction of
its own; it counts before it stops, waits or pops a WAITING trial. A trial's parameters and end
are committed there by a writer thread while the next trial runs (:mod:`hpo.db.behind`): the
loop settles it before each count and on every way out.

SIGTERM and Ctrl-C (:mod:`hpo.signals`): the running trial is marked FAIL by Optuna (its loop
catches KeyboardInterrupt), nothing is left RUNNING, and the process exits 143 / 130 with one
line (``hpo worker: terminated``): Optuna's own report of that failed trial, with its traceback,
is not printed (:class:`_QuietFailures`). A worker whose parent (``hpo run``, ``hpo compare``)
died stops the same way and first hands its trial back (:func:`hand_back`: re-queued with the
same params). A worker that finds the budget met while a retry is still WAITING closes it
(:func:`close_waiting`): the study ends with nothing WAITING or RUNNING.

A database restart (or a lost proxy) is one line per outage: the loop retries with backoff for
up to ``max_outage`` seconds, the heartbeat thread keeps beating (:mod:`hpo.db.heartbeats`), and a
trial whose ``tell`` was lost is failed once its heartbeat is stale and re-run with the same
params. A trial that a sweeper failed while this worker still ran it (it looked dead: a long
outage, a paused machine) cannot be told; the worker says so in one line and carries on, its
retry runs on whichever worker is free.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import optuna
from optuna.trial import TrialState

from hpo.db import behind
from hpo.db import budget as wb
from hpo.db import optuna_private as oc
from hpo.db.keys import CLOSED_ATTR, HANDED_BACK_ATTR, SURPLUS_ATTR
from hpo.db.retry import OUTAGE, chain, db_wait, finished_elsewhere, is_transient, reason, refused
from hpo.db.storage import MAX_RETRY, state_counts, sweep_stale_trials
from hpo.errors import RuntimeFailure, SpecError
from hpo.objectives.user import TooManyFailures, TrialFailed
from hpo.samplers import make_sampler
from hpo.samplers.pruners import make_pruner
from hpo.signals import Orphaned, check_stop, deferred, interruptible
from hpo.spec import Spec

__all__ = ["FINISHED", "IN_FLIGHT", "KEYED_SAMPLERS", "Surplus", "WorkerResult",
           "build_sampler_and_pruner", "close_waiting", "continue_sampling", "count",
           "count_states", "work"]

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
IN_FLIGHT = (TrialState.RUNNING, TrialState.WAITING)


class Surplus(Exception):
    """This trial would exceed the study's budget: it ends FAIL and is not counted."""


class _QuietFailures(logging.Filter):
    """Optuna logs every failed trial with its traceback, then its value, in two records. A
    trial failed because this worker was stopped (SIGTERM, Ctrl-C), because it was surplus,
    because the storage went away (one line per outage says so) or because a sweeper failed it
    first is routine, and the command says it in one line: both records are dropped. Any other
    failure (a bug in an objective) is logged as Optuna logs it."""

    def __init__(self) -> None:
        super().__init__()
        self._hidden: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        match = re.match(r"Trial (\d+) failed ", message)
        if match is None:
            return True
        number = match.group(1)
        if record.exc_info and record.exc_info[1] is not None:
            if _routine(record.exc_info[1]):
                self._hidden.add(number)
                return False
            return True
        if "Surplus(" in message:
            self._hidden.add(number)
            return False
        if message.startswith(f"Trial {number} failed with value"):
            if number in self._hidden:
                self._hidden.discard(number)
                return False
        return True


def _routine(e: BaseException) -> bool:
    return (isinstance(e, (KeyboardInterrupt, Surplus, TrialFailed, TooManyFailures))
            or finished_elsewhere(e)
            or is_transient(e))


logging.getLogger(oc.OPTIMIZE_LOGGER).addFilter(_QuietFailures())


def build_sampler_and_pruner(spec: Spec) -> tuple[optuna.samplers.BaseSampler,
                                                   optuna.pruners.BasePruner]:
    """The spec's sampler (seeded with its seed) and pruner, from its ready keyword arguments.
    The spec was validated against the catalog; what can still fail here is the machine (a
    sampler whose dependency is not installed): a one-line error naming the key."""
    try:
        sampler = make_sampler(spec.sampler, seed=spec.seed, options=spec.sampler_kwargs())
    except ValueError as e:
        raise SpecError(f"{spec.source}: sampler.name: {e}") from None
    try:
        pruner = make_pruner(spec.pruner, spec.pruner_options, spec.model.epochs)
    except ValueError as e:
        raise SpecError(f"{spec.source}: pruner: {e}") from None
    return sampler, pruner


#: Samplers whose draws are a function of (seed, trial number): the narrowing and random
#: samplers seed each draw by (seed, trial number, param), the QMC sampler takes point n of its
#: seeded sequence (:mod:`hpo.samplers.keyed`). They keep their seed in every worker process
#: and a resumed study needs no new seed.
KEYED_SAMPLERS = frozenset({"narrowing", "random", "qmc"})


def continue_sampling(study: optuna.Study, spec: Spec) -> bool:
    """Give ``study`` (just opened by this process) a sampler that draws new points.

    A TPE, CMA-ES or GP sampler is one random stream started from the spec's seed in
    each process: a study resumed with it (a higher ``--n-trials``, a run after Ctrl-C, a second
    ``hpo run`` joining) would draw its first points again, trial for trial. When the study
    already holds trials, the sampler is rebuilt from a seed derived from (the spec's seed, the
    number of trials held): new points, and still reproducible (the same study resumed at the
    same point draws the same). A fresh study keeps the spec's seed. True when reseeded."""
    if spec.sampler in KEYED_SAMPLERS:
        return False
    held = sum(state_counts(study).values())
    if not held:
        return False

    seed = int(np.random.SeedSequence([spec.seed, held]).generate_state(1)[0])
    study.sampler, _ = build_sampler_and_pruner(spec.replace(seed=seed))
    return True


def count_states(study: optuna.Study) -> tuple[int, int, int]:
    """(finished, in flight, of which WAITING) trials of the study, from one query."""
    counts = state_counts(study)
    done = sum(counts.get(s, 0) for s in FINISHED)
    in_flight = sum(counts.get(s, 0) for s in IN_FLIGHT)
    return done, in_flight, counts.get(TrialState.WAITING, 0)


def count(study: optuna.Study) -> tuple[int, int]:
    """(finished, in flight) trials of the study."""
    done, in_flight, _ = count_states(study)
    return done, in_flight


@dataclass
class WorkerResult:
    trials_run: int
    finished: int
    stopped_by: str  # "budget", "timeout", "n_trials"


def _claim(study: optuna.Study, trial: optuna.Trial, n_trials: int) -> None:
    """Fail ``trial`` as surplus when ``n_trials`` finished or in-flight trials precede it.

    Trial numbers are 0, 1, 2, ... in creation order, so a trial numbered below ``n_trials``
    has fewer than ``n_trials`` predecessors of any state: it always fits, no query needed."""
    if trial.number < n_trials or wb.created_within_budget(study, trial):
        return  # (the second: its creating transaction counted the others, the study locked)
    counts = state_counts(study, below=trial.number)
    ahead = sum(counts.get(s, 0) for s in FINISHED + IN_FLIGHT)
    if ahead >= n_trials:
        oc.set_trial_system_attr(study, trial, SURPLUS_ATTR, True)
        raise Surplus(f"trial {trial.number} is beyond the budget of {n_trials}")


def close_waiting(study: optuna.Study) -> int:
    """Fail the WAITING trials of a study that holds its budget; returns how many.

    A retry is enqueued WAITING when a stale trial is failed (Optuna's heartbeat callback, the
    loop's sweep). When the study fills its budget meanwhile (the stale trial's slot was not
    needed after all: another trial finished first), nobody will ever run it: every worker
    leaves at the budget, and a worker that popped it would fail its claim. Each worker leaving
    at the budget closes what is left, so the study ends with nothing WAITING (it never has a
    retry left behind by the worker that enqueued it: that worker counts again before it
    leaves). A trial is taken first (WAITING -> RUNNING, which only one process can win), then
    failed with ``hpo:closed``: one that a worker took meanwhile is that worker's."""
    storage = oc.storage_of(study)
    closed = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        tid = oc.trial_id(t)
        if not storage.set_trial_state_values(tid, TrialState.RUNNING):
            continue
        storage.set_trial_system_attr(tid, CLOSED_ATTR, "the study already holds its budget")
        storage.set_trial_state_values(tid, TrialState.FAIL)
        closed += 1
    return closed


def hand_back(study: optuna.Study, trial: optuna.Trial) -> None:
    """Re-queue ``trial`` (same params, WAITING, as Optuna's retry of a dead worker's trial
    does) and mark it with the reason; Optuna then fails it as the worker stops. For a worker
    whose parent died (:class:`hpo.signals.Orphaned`): its trial runs again on whichever
    worker is free, at once, instead of after a grace period. A trial with no params yet is
    only failed: a new one is drawn in its place. Within a retry limit like any retry."""
    with deferred():
        frozen = oc.storage_of(study).get_trial(oc.trial_id(trial))
        if not frozen.params:
            return
        oc.set_trial_system_attr(study, trial, HANDED_BACK_ATTR,
                                 "its worker stopped: its parent process died")
        if len(frozen.system_attrs.get("retry_history", [])) >= MAX_RETRY:
            what = f"not re-queued: retried {MAX_RETRY} times already"
        else:
            optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(study, frozen)
            what = "re-queued with the same params"
        print(f"hpo worker: its parent process died; trial {trial.number} handed back ({what}) "
              f"and the worker stops", file=sys.stderr, flush=True)


def work(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    *,
    n_trials: int,
    timeout: float | None = None,
    max_runs: int | None = None,
    poll: float = 0.5,
    max_outage: float | None = None,
    on_trial: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
) -> WorkerResult:
    """Run trials of ``study`` until it holds ``n_trials`` finished trials (or ``timeout`` seconds
    pass, or this worker ran ``max_runs`` trials).

    Connection-level storage errors (a database restart, a dropped proxy) are retried with
    backoff for up to ``max_outage`` seconds (default ``$HPO_DB_WAIT``) from the outage's
    start, a clock that only a successful write restarts (:data:`hpo.db.retry.OUTAGE`, shared with
    the heartbeat and the trial's final write); a trial whose ``tell`` was lost stays RUNNING
    until its heartbeat goes stale, then is failed and re-run with the same params. An error
    the database answers with (:func:`hpo.db.retry.refused`: permission denied, read-only, ...)
    ends the loop at once: one line, exit 1."""
    max_outage = db_wait() if max_outage is None else max_outage
    heartbeat = oc.heartbeat_enabled(oc.storage_of(study))
    start = time.monotonic()
    runs = 0

    # the trial each optimize() call ran (None until it is created), and the trials this
    # worker has said were failed elsewhere: one line per trial, whichever write met it first
    # (the objective's own, or its end queued behind, hpo.db.behind.EndRefused)
    current: int | None = None
    dropped: set[int] = set()

    def claimed(trial: optuna.Trial) -> float:
        nonlocal runs, current
        current = oc.trial_id(trial)
        OUTAGE.check()  # a write the heartbeat thread saw refused
        _claim(study, trial, n_trials)
        runs += 1  # a surplus claim ran nothing: only trials that fit count toward max_runs
        check_stop()  # a signal during ask: this trial fails now, inside Optuna's handler
        try:
            with interruptible():
                return objective(trial)
        except Orphaned:
            hand_back(study, trial)
            raise

    callbacks = [on_trial] if on_trial else None
    OUTAGE.reset()  # a new loop: no outage, no refusal (tests run several in one process)
    delay = 0.5
    # (finished, in flight, WAITING) as this worker's last trial found the others at its
    # creation (on PostgreSQL: hpo.db.budget.budget), plus its own end: used instead of a
    # count when it leaves room for a trial (a stale figure only means the next creation is
    # refused, BudgetFull, and the loop counts); the decision to stop is always a count
    est: tuple[int, int, int] | None = None
    # optimize() looks for stale trials (one query) before each trial while others are in
    # flight: at most once per heartbeat interval here (a dead worker's trial is failed at most
    # an interval later while the budget has room; the sweep at a full budget is unchanged)
    interval = oc.heartbeat_interval(oc.storage_of(study)) or 0.0
    looked = float("-inf")
    # a trial's parameters and end are committed while the next one runs (PostgreSQL);
    # what is queued is written on every way out
    with behind.overlapped(study, wait=max_outage + 30.0):
        while True:
            check_stop()
            OUTAGE.check()
            try:
                stopping = ((timeout is not None and time.monotonic() - start >= timeout)
                            or (max_runs is not None and runs >= max_runs))
                if est is None or stopping:
                    behind.settle(study)  # a count decided on sees every end this worker has told
                    done, in_flight, waiting = count_states(study)
                else:
                    done, in_flight, waiting = est
                est = None
                if OUTAGE.since is None:  # a write went through since the last failure
                    delay = 0.5
                if done >= n_trials:
                    if waiting:  # a retry nobody needs any more: close it, leave nothing WAITING
                        close_waiting(study)
                    return WorkerResult(runs, done, "budget")
                if timeout is not None and time.monotonic() - start >= timeout:
                    return WorkerResult(runs, done, "timeout")
                if max_runs is not None and runs >= max_runs:
                    return WorkerResult(runs, done, "n_trials")
                # a WAITING trial (the retry of a dead worker's trial) fills no slot until a worker
                # runs it: optimize() pops it first and its claim decides whether it still fits
                if done + in_flight >= n_trials and not waiting:
                    # Only now do stale trials matter: a dead worker's trial holds a slot until
                    # it is failed (its retry then comes back WAITING). optimize() fails stale
                    # trials itself before every trial, so the loop does not when it is about to
                    # run one.
                    if heartbeat:
                        sweep_stale_trials(study)
                    time.sleep(poll)
                    continue
                # no RUNNING trial a moment ago: none can be stale, optimize() need not look
                no_look = in_flight == waiting or time.monotonic() - looked < interval
                if not no_look:
                    looked = time.monotonic()
                began = time.monotonic()
                current = None
                with (oc.skip_waiting_lookup(study, skip=not waiting),
                      oc.skip_first_stale_check(study, skip=no_look),
                      wb.budget(study, n_trials)):
                    study.optimize(claimed, n_trials=1, catch=(Surplus, TrialFailed),
                                   callbacks=callbacks,
                                   gc_after_trial=False)
                # the trial was created and told: a write went through (one that began before
                # an outage the heartbeat or the writer thread met meanwhile does not end it)
                OUTAGE.ok(began)
                delay = 0.5  # the next outage (a pooled connection killed meanwhile) starts over
                est = wb.counts_after_trial(study)
                if est is not None and (est[0] + est[1] >= n_trials or est[2]):
                    est = None  # no room, or a retry WAITING: count
            except wb.BudgetFull:
                continue  # another worker filled the last slot since: count again
            except Exception as e:  # noqa: BLE001 - filtered just below
                if finished_elsewhere(e):
                    # a sweeper failed this trial while it ran: its retry runs elsewhere
                    which = next((x.trial_id for x in chain(e)
                                  if isinstance(x, behind.EndRefused)), current)
                    if which in dropped:
                        continue  # said when the trial's objective met it
                    if which is not None:
                        dropped.add(which)
                    print("hpo worker: a trial of this worker was failed by another process (its "
                          "heartbeat looked stale) and will be re-run; its result here is dropped; "
                          "carrying on", file=sys.stderr, flush=True)
                    continue
                failure = next((x for x in chain(e) if isinstance(x, RuntimeFailure)), None)
                if failure is not None:  # said by the final write (Optuna may mask it)
                    raise failure from None
                if (why := refused(e)) is not None:
                    raise RuntimeFailure(f"the database refused a write ({why})") from None
                if not is_transient(e):
                    raise
                OUTAGE.failed("hpo worker", e, f"retrying for up to {max_outage:g} s "
                              "($HPO_DB_WAIT)")
                if OUTAGE.elapsed() > max_outage:
                    raise RuntimeFailure(f"storage unavailable for {OUTAGE.elapsed():.0f} s "
                                         f"({reason(e)})") from None
                time.sleep(delay)
                delay = min(delay * 2, 15.0)
