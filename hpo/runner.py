"""run / worker: the trial loop, processes, BLAS thread pinning, signals, stop conditions.

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
costs nothing while the trial's number is below N (fewer than N trials precede it at all), and
when the count saw no WAITING trial, ``ask()`` does not read the trials to look for one
(:func:`_no_waiting_lookup`). Other storages (in-memory, the gRPC proxy client) count with
``study.get_trials``. Per trial the loop itself thus adds one count query and no trial read.

SIGTERM and Ctrl-C: the running trial is marked FAIL by Optuna (its loop catches
KeyboardInterrupt), nothing is left RUNNING, and the process exits 143 / 130.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import optuna
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import TrialState

from hpo.storage import mask_url

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
IN_FLIGHT = (TrialState.RUNNING, TrialState.WAITING)
BLAS_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is so that Optuna fails the running trial cleanly."""


class Surplus(Exception):
    """This trial would exceed the study's budget: it ends FAIL and is not counted."""


class _HideSurplus(logging.Filter):
    """Optuna logs every FAIL with a traceback; a surplus trial is routine, not an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Surplus(" not in record.getMessage()


logging.getLogger("optuna.study._optimize").addFilter(_HideSurplus())


def pin_blas_threads() -> None:
    """One BLAS thread per worker process: two workers with two OpenBLAS threads each on two
    cores run several times slower."""
    os.environ.update(BLAS_ENV)
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


class _StopState:
    """Where the process is when a signal comes. Inside the objective the signal raises at once
    (Optuna fails the trial and re-raises); anywhere else, e.g. in the middle of a storage write,
    raising could leave a trial RUNNING, so the signal is only noted and the loop stops at its
    next safe point (:func:`check_stop`)."""

    signum: int | None = None
    in_objective: bool = False


_STOP = _StopState()


def _interrupt(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def install_signal_handlers() -> None:
    """SIGTERM and SIGINT stop the worker cleanly (see :class:`_StopState`)."""

    def on_signal(signum, frame):  # noqa: ARG001
        _STOP.signum = signum
        if _STOP.in_objective:
            _STOP.in_objective = False
            raise _interrupt(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def check_stop() -> None:
    """Raise the pending SIGTERM/SIGINT, if any: call only at safe points."""
    if _STOP.signum is not None:
        raise _interrupt(_STOP.signum)


def _rdb_backend(storage: optuna.storages.BaseStorage | None) -> optuna.storages.RDBStorage | None:
    """The RDBStorage ``storage`` is or wraps (Optuna wraps it in ``_CachedStorage``), else
    ``None`` (in-memory storage, gRPC proxy client)."""
    storage = getattr(storage, "_backend", storage)
    return storage if isinstance(storage, optuna.storages.RDBStorage) else None


def _rdb_storage(study: optuna.Study) -> optuna.storages.RDBStorage | None:
    """The RDBStorage under the study, else ``None``."""
    return _rdb_backend(study._storage)


def state_counts(study: optuna.Study, below: int | None = None) -> dict[TrialState, int]:
    """Number of trials per state (of those numbered below ``below``, when given).

    On an RDBStorage this is one SQL query on Optuna's ``trials`` table, not a
    ``study.get_trials`` (which reads and rebuilds the trials, seven queries when incremental);
    other storages read the trials. Connection errors propagate (:func:`is_transient`)."""
    rdb = _rdb_storage(study)
    if rdb is None:
        return dict(Counter(
            t.state for t in study.get_trials(deepcopy=False)
            if below is None or t.number < below
        ))
    import sqlalchemy

    sql = "SELECT state, COUNT(*) FROM trials WHERE study_id = :study_id"
    params = {"study_id": study._study_id}
    if below is not None:
        sql += " AND number < :below"
        params["below"] = below
    with rdb.engine.connect() as conn:
        rows = conn.execute(sqlalchemy.text(sql + " GROUP BY state"), params).all()
    # the column is an Enum of TrialState names ('COMPLETE', ...); a native enum on PostgreSQL
    return {TrialState[getattr(state, "name", state)]: int(n) for state, n in rows}


def fail_trials_without_heartbeat(study: optuna.Study) -> list[int]:
    """Fail the RUNNING trials that never recorded a heartbeat and started more than the grace
    period ago, and hand each to the storage's stale-trial callback (the retry), as Optuna's
    ``fail_stale_trials`` does for trials whose heartbeat stopped. Returns their numbers.

    Optuna never counts a trial without a heartbeat row as stale. A worker that loses the
    database just after creating a trial leaves one: the heartbeat thread dies on its first beat,
    the ``tell`` fails too, and the trial would hold its slot of the budget forever (seen about
    once in 20 PostgreSQL restarts under two workers). RDB storages with heartbeats only."""
    import copy
    from datetime import datetime, timedelta

    import sqlalchemy

    rdb = _rdb_storage(study)
    interval = rdb.get_heartbeat_interval() if rdb is not None else None
    if interval is None:
        return []
    grace = rdb.grace_period or 2 * interval
    cutoff = datetime.now() - timedelta(seconds=grace)  # datetime_start is the worker's local time
    sql = sqlalchemy.text(
        "SELECT t.trial_id FROM trials t LEFT JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
        "WHERE t.study_id = :study_id AND t.state = 'RUNNING' AND h.trial_id IS NULL "
        "AND t.datetime_start < :cutoff")
    with rdb.engine.connect() as conn:
        ids = [r[0] for r in conn.execute(sql, {"study_id": study._study_id, "cutoff": cutoff})]
    callback = rdb.get_heartbeat_stale_trial_callback()
    failed = []
    for trial_id in ids:
        try:
            if not study._storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:  # told or failed meanwhile
            continue
        trial = copy.deepcopy(study._storage.get_trial(trial_id))
        failed.append(trial.number)
        if callback is not None:
            callback(study, trial)
    return failed


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
    if trial.number < n_trials:
        return
    counts = state_counts(study, below=trial.number)
    ahead = sum(counts.get(s, 0) for s in FINISHED + IN_FLIGHT)
    if ahead >= n_trials:
        trial.storage.set_trial_system_attr(trial._trial_id, "hpo:surplus", True)
        raise Surplus(f"trial {trial.number} is beyond the budget of {n_trials}")


@contextlib.contextmanager
def _no_waiting_lookup(study: optuna.Study, skip: bool) -> Iterator[None]:
    """With ``skip``, ``study.ask()`` creates a new trial without first looking for a WAITING one.

    ``ask()`` reads the study's trials for WAITING ones before creating a trial (a
    ``get_trials``: seven queries on PostgreSQL). The loop has just counted the WAITING trials
    with one query; when there were none, that read is skipped for this trial (an instance
    attribute shadows Optuna's ``Study._pop_waiting_trial_id``). A trial enqueued in between is
    run by the next pass of the loop, which counts it."""
    if not skip or not hasattr(study, "_pop_waiting_trial_id"):
        yield
        return
    study._pop_waiting_trial_id = lambda: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        del study._pop_waiting_trial_id


def work(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    *,
    n_trials: int,
    timeout: float | None = None,
    max_runs: int | None = None,
    poll: float = 0.5,
    max_outage: float = 300.0,
    on_trial: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
) -> WorkerResult:
    """Run trials of ``study`` until it holds ``n_trials`` finished trials (or ``timeout`` seconds
    pass, or this worker ran ``max_runs`` trials).

    Connection-level storage errors (a database restart, a dropped proxy) are retried with
    backoff for up to ``max_outage`` seconds; a trial whose ``tell`` was lost stays RUNNING until
    its heartbeat goes stale, then is failed and re-run with the same params."""
    heartbeat = is_heartbeat_enabled(study._storage)
    start = time.monotonic()
    runs = 0

    def claimed(trial: optuna.Trial) -> float:
        _claim(study, trial, n_trials)
        check_stop()  # a signal during ask: this trial fails now, inside Optuna's handler
        _STOP.in_objective = True
        try:
            return objective(trial)
        finally:
            _STOP.in_objective = False

    callbacks = [on_trial] if on_trial else None
    outage: float | None = None  # when the current run of storage errors began
    delay = 0.5
    while True:
        check_stop()
        try:
            done, in_flight, waiting = count_states(study)
            outage, delay = None, 0.5
            if done >= n_trials:
                return WorkerResult(runs, done, "budget")
            if timeout is not None and time.monotonic() - start >= timeout:
                return WorkerResult(runs, done, "timeout")
            if max_runs is not None and runs >= max_runs:
                return WorkerResult(runs, done, "n_trials")
            # a WAITING trial (the retry of a dead worker's trial) fills no slot until a worker
            # runs it: optimize() pops it first and its claim decides whether it still fits
            if done + in_flight >= n_trials and not waiting:
                # Only now do stale trials matter: a dead worker's trial holds a slot until it is
                # failed (its retry then comes back WAITING). optimize() fails stale trials
                # itself before every trial, so the loop does not when it is about to run one.
                if heartbeat:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                        optuna.storages.fail_stale_trials(study)
                    fail_trials_without_heartbeat(study)
                time.sleep(poll)
                continue
            runs += 1
            with _no_waiting_lookup(study, skip=not waiting):
                study.optimize(claimed, n_trials=1, catch=(Surplus,), callbacks=callbacks,
                               gc_after_trial=False)
        except Exception as e:  # noqa: BLE001 - filtered just below
            if not is_transient(e):
                raise
            now = time.monotonic()
            outage = outage or now
            if now - outage > max_outage:
                raise
            print(f"hpo worker: storage unavailable ({type(root_cause(e)).__name__}); "
                  f"retrying in {delay:.1f} s", file=sys.stderr, flush=True)
            time.sleep(delay)
            delay = min(delay * 2, 15.0)


def root_cause(e: BaseException) -> BaseException:
    """The innermost exception of a chain (Optuna masks database errors in ``tell``)."""
    seen = set()
    while id(e) not in seen:
        seen.add(id(e))
        nxt = e.__cause__ or e.__context__
        if nxt is None:
            break
        e = nxt
    return e


def is_transient(e: BaseException) -> bool:
    """True when the exception chain holds a connection-level database error: the server went
    away or restarted. Optuna 5 surfaces these as ``UnboundLocalError``/``AssertionError`` from
    ``tell``, so the whole ``__cause__``/``__context__`` chain is searched."""
    import sqlalchemy.exc

    transient: tuple[type[BaseException], ...] = (
        sqlalchemy.exc.OperationalError,
        sqlalchemy.exc.InterfaceError,
        optuna.exceptions.StorageInternalError,
        ConnectionError,
    )
    try:
        import grpc

        transient += (grpc.RpcError,)
    except ImportError:  # pragma: no cover
        pass
    seen = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, transient):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def spawn_workers(
    n: int, study_name: str, url: str, n_trials: int, timeout: float | None, log_dir: str | None,
    storage: optuna.storages.BaseStorage | None = None,
) -> list:
    """Start ``n`` ``hpo worker`` processes on an existing study, one BLAS thread each.

    They are forked from this process (:mod:`hpo.procs`: no second interpreter start-up and
    imports, ~0.9 s before the first trial), except for ``grpc://`` storages, which get fresh
    interpreters. ``storage``: this process's storage, whose pooled connections are closed
    before forking. Returns Popen-like objects (``poll``, ``wait``, ``send_signal``,
    ``returncode``)."""
    from hpo.procs import can_fork, fork_worker

    env = {**os.environ, **BLAS_ENV, "HPO_STORAGE": url}
    argv = ["worker", "--study", study_name, "--n-trials", str(n_trials), "--quiet"]
    if timeout:
        argv += ["--timeout", str(timeout)]
    logs = [os.path.join(log_dir, f"worker-{i}.log") if log_dir else None for i in range(n)]
    if can_fork(url):
        rdb = _rdb_backend(storage)
        engines = [rdb.engine] if rdb is not None else []
        return [fork_worker(argv, env, log, dispose=engines) for log in logs]
    procs = []
    for log in logs:
        cmd = [sys.executable, "-m", "hpo", *argv]
        with open(log or os.devnull, "w") as out:
            procs.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT))
    return procs


# --- commands ---------------------------------------------------------------------------------


def _build_sampler_and_pruner(spec):
    from hpo.objective import make_pruner
    from hpo.samplers import make_sampler
    from hpo.spec import SpecError

    options = dict(spec.sampler_options)
    if spec.sampler == "narrowing" and options.get("bounds"):
        # The objective asks for the bounds (Spec.suggest_space); stage 0 draws from [search].
        options["initial"] = {
            p.name: (p.low, p.high) for p in spec.search if p.type != "categorical"
        }
    try:
        sampler = make_sampler(spec.sampler, seed=spec.seed, options=options)
    except ValueError as e:
        raise SpecError(f"{spec.name}: sampler: {e}") from None
    try:
        pruner = make_pruner(spec.pruner, spec.pruner_options, spec.model.epochs)
    except ValueError as e:
        raise SpecError(f"{spec.name}: pruner: {e}") from None
    return sampler, pruner


def _storage_for(args, create_schema: bool):
    from hpo.storage import GRACE_PERIOD, HEARTBEAT_INTERVAL, get_storage

    interval = getattr(args, "heartbeat_interval", None) or HEARTBEAT_INTERVAL
    grace = getattr(args, "grace_period", None) or max(GRACE_PERIOD, 2 * interval)
    if grace <= interval:
        from hpo.cli import UsageError

        raise UsageError(f"--grace-period ({grace}) must be longer than --heartbeat-interval "
                         f"({interval})")
    return get_storage(args.storage, heartbeat=True, heartbeat_interval=interval,
                       grace_period=grace, create_schema=create_schema)


class _Progress:
    """A progress bar over the study's finished trials with the best value so far (stderr)."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="trial", file=sys.stderr,
                            dynamic_ncols=True, leave=True)
        self.n = initial
        self._last = 0.0

    def update(self, done: int, best: float | None) -> None:
        if self.bar is None:
            return
        if done > self.n:
            self.bar.update(min(done, self.bar.total) - self.n)
            self.n = done
        if best is not None:
            self.bar.set_postfix_str(f"best val acc {best:.3f}", refresh=False)
        self.bar.refresh()

    def on_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """After each trial: the count and the best value are two storage reads, so they are
        re-read at most every 0.5 s (:meth:`refresh` brings the bar up to date at the end)."""
        now = time.monotonic()
        if now - self._last >= 0.5:
            self._last = now
            self.refresh(study)

    def refresh(self, study: optuna.Study) -> None:
        if self.bar is not None:
            self.update(count(study)[0], _best_value(study))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _best_value(study: optuna.Study) -> float | None:
    try:
        return study.best_value
    except ValueError:
        return None


def run(args) -> int:
    """``hpo run SPEC``: create or resume the study, run W workers, print Best-N."""
    from hpo.cli import UsageError
    from hpo.objective import Objective
    from hpo.report import listing
    from hpo.spec import load_spec
    from hpo.storage import create_or_load_study, resolve_url

    spec = load_spec(args.spec)
    if args.n_trials is not None:
        if args.n_trials <= 0:
            raise UsageError(f"--n-trials must be >= 1, got {args.n_trials}")
        spec = spec.replace(n_trials=args.n_trials)
    if args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    if args.timeout is not None and args.timeout <= 0:
        raise UsageError(f"--timeout must be > 0, got {args.timeout}")
    suffix = ""
    if args.data_seed is not None:
        if args.data_seed < 0:
            raise UsageError(f"--data-seed must be >= 0, got {args.data_seed}")
        from dataclasses import replace

        spec = spec.replace(data=replace(spec.data, seed=args.data_seed))
        suffix += f"/data{args.data_seed}"
    if args.seed is not None:
        if args.seed < 0:
            raise UsageError(f"--seed must be >= 0, got {args.seed}")
        spec = spec.replace(seed=args.seed)
        suffix += f"/seed{args.seed}"
    study_name = args.study or spec.name + suffix
    timeout = args.timeout if args.timeout is not None else spec.timeout
    sampler, pruner = _build_sampler_and_pruner(spec)
    objective = Objective(spec)  # loads the data: a data error stops us before any write
    url = resolve_url(args.storage)
    storage = _storage_for(args, create_schema=True)
    study = create_or_load_study(storage, spec, study_name, sampler=sampler, pruner=pruner)
    install_signal_handlers()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(f"study {study_name!r} on {mask_url(url)}: {spec.n_trials} trials, sampler "
          f"{spec.sampler}, pruner {spec.pruner}, {args.workers} worker(s)", file=sys.stderr)
    done, _ = count(study)
    progress = _Progress(spec.n_trials, done, enabled=not args.quiet)
    failed = 0
    try:
        if args.workers == 1:
            pin_blas_threads()
            work(study, objective, n_trials=spec.n_trials, timeout=timeout,
                 on_trial=progress.on_trial if progress.bar is not None else None)
            progress.refresh(study)
        else:
            failed = _supervise(study, study_name, url, spec.n_trials, timeout, args.workers,
                                progress)
    finally:
        progress.close()
    print(listing(study, args.top))
    return 1 if failed else 0


def _supervise(study, study_name, url, n_trials, timeout, n_workers, progress) -> int:
    """Run worker processes and show progress until they exit; forward SIGTERM/Ctrl-C.
    Returns the number of workers that failed (their log's last lines go to stderr)."""
    import tempfile

    log_dir = tempfile.mkdtemp(prefix="hpo-workers-")
    procs = spawn_workers(n_workers, study_name, url, n_trials, timeout, log_dir=log_dir,
                          storage=study._storage)
    try:
        while any(p.poll() is None for p in procs):
            time.sleep(0.5)
            check_stop()
            progress.update(count(study)[0], _best_value(study))
        progress.update(count(study)[0], _best_value(study))
    except KeyboardInterrupt:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=60)
        raise
    bad = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode != 0]
    for i, code in bad:
        path = os.path.join(log_dir, f"worker-{i}.log")
        with open(path, errors="replace") as fh:
            tail = fh.read().splitlines()[-5:]
        print(f"hpo run: worker {i} exited with code {code}; last lines of {path}:",
              *(f"  {line}" for line in tail), sep="\n", file=sys.stderr)
    if not bad:
        import shutil

        shutil.rmtree(log_dir, ignore_errors=True)
    return len(bad)


def worker(args) -> int:
    """``hpo worker --study NAME``: join an existing study with the spec stored in it."""
    from hpo.cli import UsageError
    from hpo.objective import Objective
    from hpo.storage import check_schema, load_study_spec, resolve_url

    if args.n_trials is not None and args.n_trials <= 0:
        raise UsageError(f"--n-trials must be >= 1, got {args.n_trials}")
    url = resolve_url(args.storage)
    storage = _storage_for(args, create_schema=False)
    check_schema(storage, url)
    spec = load_study_spec(storage, args.study)
    sampler, pruner = _build_sampler_and_pruner(spec)
    if spec.sampler != "narrowing":
        # Every worker builds its sampler from the spec's seed; without this, W workers of a
        # random or TPE study would draw the same points. The narrowing sampler seeds each draw
        # by (seed, trial number) and stays reproducible whatever the number of workers.
        sampler.reseed_rng()
    objective = Objective(spec)
    study = optuna.load_study(study_name=args.study, storage=storage, sampler=sampler,
                              pruner=pruner)
    pin_blas_threads()
    install_signal_handlers()
    n_trials = args.n_trials or spec.n_trials
    timeout = args.timeout if args.timeout is not None else spec.timeout
    quiet = args.quiet

    def on_trial(s: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
        if not quiet:
            value = "-" if t.value is None else f"{t.value:.3f}"
            print(f"trial {t.number} {t.state.name} val_acc={value} params={t.params}",
                  flush=True)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # with a callback, optimize() reads the finished trial back (a get_trial: six queries)
    result = work(study, objective, n_trials=n_trials, timeout=timeout,
                  on_trial=None if quiet else on_trial)
    print(f"worker done: ran {result.trials_run} trial(s); study holds {result.finished} "
          f"finished ({result.stopped_by})", file=sys.stderr)
    return 0
