"""One background thread that commits a worker's trial writes while its next trial trains
(issue 26, step 4).

On PostgreSQL a trial of hpo is three transactions (:mod:`hpo.db.writebehind`): its creation,
its parameters, its end. Each is a round trip or two to the server plus a commit, 1-4 ms, and
a worker used to wait for all three: for a pruned TPE trial of 70 ms that alone was 10%. Only
the creation has to be waited for (it answers with the trial's id and number, and refuses a
trial beyond the budget). The parameters and the end are handed to a :class:`Behind` writer:
one thread, one queue, first in first out, so that a trial's parameters are committed before
its end, and its end before anything this worker writes later. A trial's end is queued once
the next trial's creation has committed (:meth:`Behind.defer`): the two would otherwise
compete for the server and the interpreter, and only the creation is waited for. A creation
that fails queues it at its first failed attempt, so that an outage retries both at once.

What it keeps:

* **The exact budget.** A trial whose end is queued is RUNNING in the database until the end
  commits, and the budget counts RUNNING trials, so no creation can take its slot. Every count
  the trial loop decides on (to stop, to wait, to close a retry) is made after
  :meth:`Behind.settle`: with nothing queued.
* **What the next trial's sampler and pruner see.** The trial is known here as it ended
  (:mod:`hpo.db.known`) from the moment it is told; the cache's reads answer it from there while
  its end is queued. Other workers see it a few milliseconds later, as if it had run that much
  longer.
* **Errors.** A write that fails is not lost silently. The end is written by the storage's own
  final write (a lost connection retried within ``$HPO_DB_WAIT``, a refusal failing the trial),
  and whatever that raises is kept and raised in the worker's thread at its next creation or
  :meth:`Behind.settle`, where the trial loop handles it as it handled a failed ``tell``: one
  line per outage, a trial a sweeper failed meanwhile said in one line, a refusal exit 1.
* **Nothing left RUNNING.** The trial loop writes what is queued on every way out (a signal
  included), within ``$HPO_DB_WAIT`` and 30 s more. A worker killed outright loses its queued
  end with its trial: the trial is RUNNING, its heartbeat stops, a sweeper fails it and its
  retry re-runs it, as for a worker killed while training.
"""

from __future__ import annotations

import contextlib
import functools
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import optuna
from optuna.trial import TrialState

from hpo.db import optuna_private as oc
from hpo.db import statements as st
from hpo.db.held_writes import HeldWrites


class EndRefused(optuna.exceptions.UpdateFinishedTrialError):
    """A queued end the database refused because the trial was finished elsewhere (a sweeper
    failed it as stale while this worker ran it or while its end was queued)."""

    def __init__(self, trial_id: int, message: str) -> None:
        super().__init__(message)
        self.trial_id = trial_id


class Behind:
    """A daemon thread running the jobs given to :meth:`submit` one by one, in order. A job
    that raises keeps its exception (the first one) for :meth:`check` to raise."""

    def __init__(self, name: str = "hpo-writer") -> None:
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._held: list[Callable[[], None]] = []  # deferred jobs, queued by :meth:`release`
        self._barrier: threading.Event | None = None  # set once the last trial's end has run
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job is None:
                    return
                job()
            except BaseException as e:  # noqa: BLE001 - kept for the worker's thread
                with self._lock:
                    if self._error is None:
                        self._error = e
            finally:
                self._jobs.task_done()

    def submit(self, job: Callable[[], None]) -> None:
        """Queue ``job`` behind every job submitted or deferred before it."""
        self.release()
        self._jobs.put(job)

    def defer(self, job: Callable[[], None]) -> None:
        """Hold ``job`` until :meth:`release` (or the next :meth:`submit` or :meth:`wait`):
        a trial's end waits until the next trial's creation has committed, so that the two do
        not compete for the server and the interpreter (a creation is waited for; the end is
        not)."""
        with self._lock:
            self._held.append(job)

    def release(self) -> None:
        """Queue the deferred jobs, in order."""
        with self._lock:
            held, self._held = self._held, []
        for job in held:
            self._jobs.put(job)

    def creating(self) -> None:
        """A trial is about to be created: the end of the trial before last (queued at the
        last creation) has been written first, and what it raised is raised here. So a write
        refused is known before a second trial starts after it; the wait is for a write made
        while a whole trial ran, over by now but on a stalled server."""
        if self._barrier is not None:
            self._barrier.wait()
        self.check()

    def created(self) -> None:
        """A trial's creation is over (committed or not): the last trial's end is queued."""
        self.release()
        self._barrier = threading.Event()
        self._jobs.put(self._barrier.set)

    def check(self) -> None:
        """Raise (once) the first exception a job raised since the last check."""
        with self._lock:
            error, self._error = self._error, None
        if error is not None:
            raise error

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every job submitted so far has run (at most ``timeout`` seconds);
        whether they all have."""
        done = threading.Event()

        def mark() -> None:
            done.set()

        self.submit(mark)
        return done.wait(timeout)

    def settle(self) -> None:
        """Wait for every queued job, then :meth:`check`."""
        self.wait()
        self.check()

    def close(self, timeout: float | None = None) -> bool:
        """Run what is queued (at most ``timeout`` seconds) and stop the thread; whether
        everything queued ran."""
        finished = self.wait(timeout)
        self._jobs.put(None)
        if finished:
            self._thread.join(timeout)
        return finished


class BehindWrites:
    """Mixin of :class:`hpo.db.writebehind.WriteBehindRDBStorage`: its trials' parameters and
    ends handed to its :class:`Behind` writer (``_wb_behind``, set by
    :func:`hpo.db.writebehind.overlapped`), and what it knows of them meanwhile."""

    _wb_behind: Behind | None
    _wb_queued: set[int]
    _wb_lock: Any
    _wb_running: dict[int, HeldWrites]

    def _behind_for(self, running: HeldWrites | None) -> bool:
        """Whether a write of ``running`` (a trial created here) goes to the writer."""
        return (self._wb_behind is not None and running is not None
                and running.trial is not None)

    def queued_end(self, trial_id: int) -> bool:
        return trial_id in self._wb_queued

    def final_write(self, write: Any, trial_id: int, state: TrialState) -> bool:
        """Run the write that finishes a trial (``write()``); subclasses retry it."""
        return write()

    def _end_behind(self, trial_id: int, state: TrialState, values: Sequence[float] | None,
                    running: HeldWrites) -> bool:
        """The trial's end, known here at once and queued for the writer (the lock held)."""
        assert self._wb_behind is not None
        at = st.utc_now()
        self._wb_running.pop(trial_id, None)
        self.remember_finished(running, state, values, at[0])
        self._wb_queued.add(trial_id)
        self._ended(trial_id, running, state)
        self._wb_behind.defer(functools.partial(self._write_end, trial_id, state,
                                                None if values is None else list(values),
                                                running, at))
        return True

    def _write_end(self, trial_id: int, state: TrialState, values: list[float] | None,
                   running: HeldWrites, at: tuple[Any, Any]) -> None:
        """(The writer's thread.) Commit a queued end; on any failure the trial is no longer
        known here as ended (it is read from the database) and the error is the writer's. An
        end refused because the trial was finished elsewhere (a sweeper failed it) is raised
        as :class:`EndRefused`, which names the trial: the trial loop says it once per trial,
        even when the trial's own objective met the refusal first."""
        try:
            if not self.final_write(lambda: self._finish(trial_id, state, values, running, at),
                                    trial_id, state):
                raise optuna.exceptions.StorageInternalError(
                    f"the end of trial {trial_id} was not written")
        except BaseException as e:
            with self._wb_lock:
                self.forget_finished(trial_id)
            if isinstance(e, optuna.exceptions.UpdateFinishedTrialError):
                raise EndRefused(trial_id, str(e)) from e
            raise
        finally:
            with self._wb_lock:
                self._wb_queued.discard(trial_id)

    def _flush_behind(self, trial_id: int, running: HeldWrites) -> None:
        """Queue what is held for a running trial (its parameters as drawn) for the writer
        (the lock held); shown here as written at once."""
        assert self._wb_behind is not None and running.trial is not None
        taken = running.take()
        taken.overlay(running.trial)
        self._wb_behind.submit(functools.partial(self._write_flush, trial_id, running, taken))

    def _write_flush(self, trial_id: int, running: HeldWrites, taken: HeldWrites) -> None:
        """(The writer's thread.) Write a queued flush. A failure gives the writes back to the
        trial's held writes, for its end or the next heartbeat's flush; a trial a sweeper
        failed meanwhile has its ``tell`` refused, as it would have."""
        try:
            st.flush_trial(self, trial_id, taken)
        except Exception:  # noqa: BLE001 - held again: written with the end
            with self._wb_lock:
                running.give_back(taken)


@contextlib.contextmanager
def overlapped(study: optuna.Study, wait: float) -> Iterator[None]:
    """Within the block, on PostgreSQL, the parameters and the end of each trial created
    here are committed by a writer thread (:mod:`hpo.db.behind`) while the next trial runs.
    On the way out, what is queued is written (within ``wait`` seconds). Elsewhere nothing
    changes."""
    backend = oc.rdb_of(study)
    if not isinstance(backend, BehindWrites) or backend.engine.name != "postgresql":
        yield
        return
    writer = Behind()
    backend._wb_behind = writer
    try:
        yield
    finally:
        backend._wb_behind = None
        writer.close(wait)


def settle(study: optuna.Study) -> None:
    """Inside :func:`overlapped`: wait until what is queued is committed, and raise what
    could not be written. Counts the trial loop decides on are made after this."""
    backend = oc.rdb_of(study)
    writer = backend._wb_behind if isinstance(backend, BehindWrites) else None
    if writer is not None:
        writer.settle()
