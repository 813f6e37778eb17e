"""The one engine that runs a study: ``hpo run``, ``hpo worker``, each cell of ``hpo compare``
and ``hpo.run()`` all call :func:`run_study`; nothing else orchestrates trials.

A :class:`RunRequest` says what to run: a spec to create or resume a study from (``hpo run``), or
a study to join with the spec stored in it (``join=True``: ``hpo worker``), and how (workers,
caps, heartbeats, callbacks). :func:`run_study` opens the storage, creates or joins the study,
builds and seeds the sampler and pruner, makes the objective, runs the trial loop
(:func:`hpo.engine.loop.work`: exact budget, heartbeats, signals, failures) in this process or in
W worker processes, and returns an :class:`Outcome`. Printing the listing is the caller's.

The seeding policy lives here alone: a study opened by this process continues with new points
(:func:`~hpo.engine.loop.continue_sampling`) and a joining worker reseeds a sampler that is one
random stream (TPE, CMA-ES, GP); the keyed samplers (narrowing, random, QMC) keep their seed.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna

from hpo import logs
from hpo.db import optuna_private as oc
from hpo.db.retry import OUTAGE, is_transient, with_retries
from hpo.db.storage import (
    GRACE_PERIOD,
    HEARTBEAT_INTERVAL,
    JOIN_WAIT,
    check_schema,
    create_or_load_study,
    get_storage,
    load_study_spec,
    mask_url,
)
from hpo.engine.loop import (
    KEYED_SAMPLERS,
    build_sampler_and_pruner,
    close_waiting,
    continue_sampling,
    count,
    count_states,
    work,
)
from hpo.engine.procs import WorkerJob, failures, pin_blas_threads, start_workers, supervise
from hpo.engine.progress import Progress
from hpo.engine.tracking import mlflow_callback
from hpo.engine.warmstart import WARM_TOP, best_configs, describe, warm_start
from hpo.errors import UsageError
from hpo.objectives import make_objective
from hpo.objectives.user import UserObjective
from hpo.signals import install_signal_handlers, watch_parent
from hpo.spec import Spec

log = logging.getLogger("hpo.run")

Callback = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]


@dataclass
class RunRequest:
    """What to run. ``spec`` (with the command's flags applied) creates or resumes the study
    ``study_name``; with ``join`` the study must exist and its stored spec is used."""

    study_name: str
    url: str
    spec: Spec | None = None
    join: bool = False
    workers: int = 1
    #: this process's own cap of trials (a worker's ``--n-trials``); the budget is the study's
    max_runs: int | None = None
    timeout: float | None = None
    heartbeat_interval: int | None = None
    grace_period: int | None = None
    data_dir: str | None = None
    #: the split, loaded already (the cells of a comparison share one)
    data: Any = None
    mlflow_uri: str | None = None
    #: an earlier study whose best ``warm_top`` configurations begin this one (``--warm-start``)
    warm_start: str | None = None
    warm_top: int = WARM_TOP
    log_level: int = logging.INFO
    #: one ``hpo.trial`` log record per finished trial
    trial_lines: bool = False
    progress: bool = True
    #: the one-line announcement and the "nothing to run" warning (``hpo compare``: off)
    announce: bool = True
    on_trial: Callback | None = None
    #: a user's objective (``hpo.run``); None: the spec's (:func:`hpo.objectives.make_objective`)
    objective: Callable[..., float] | None = None
    #: where a spec's own objective may be loaded from (a joining worker's ``--code-dir``);
    #: None: the folder of the spec file given on the command line
    code_dirs: list[str] | None = None
    #: consecutive failed trials of a user's objective before this worker stops
    max_failures: int | None = None
    #: each failed trial's traceback on stderr too (``--debug``)
    debug: bool = False
    who: str = "hpo run"
    #: how this run's workers start (``hpo run --workers N``): :func:`worker_job` by default
    worker_job: Callable[[], WorkerJob] | None = field(default=None, repr=False)

    def heartbeats(self) -> tuple[int, int]:
        """(interval, grace period) in seconds: :func:`heartbeat_pair`."""
        return heartbeat_pair(self.heartbeat_interval, self.grace_period)


def heartbeat_pair(interval: int | None, grace: int | None) -> tuple[int, int]:
    """(interval, grace period) in seconds from ``--heartbeat-interval`` / ``--grace-period``,
    else hpo's defaults; the grace period must be longer than the interval (bad input)."""
    interval = interval or HEARTBEAT_INTERVAL
    grace = grace or max(GRACE_PERIOD, 2 * interval)
    if grace <= interval:
        raise UsageError(f"--grace-period ({grace}) must be longer than "
                         f"--heartbeat-interval ({interval})")
    return interval, grace


@dataclass
class Outcome:
    """What a run did: the study, its spec, finished trials, this process's own trials, why it
    stopped (``budget``, ``timeout``, ``n_trials``, ``nothing to run``, ``workers``) and how many
    worker processes failed."""

    study: optuna.Study
    spec: Spec
    finished: int
    trials_run: int = 0
    stopped_by: str = "budget"
    failed_workers: int = 0

    @property
    def short(self) -> bool:
        """Workers failed and the study holds fewer finished trials than its budget."""
        return bool(self.failed_workers) and self.finished < self.spec.n_trials


def prepare(req: RunRequest, tracking: bool = True) -> tuple:
    """Everything that can refuse bad input, made before anything is written: the sampler and
    pruner, the objective (its data is loaded now) and the MLflow callback (or None)."""
    assert req.spec is not None
    sampler, pruner = build_sampler_and_pruner(req.spec)
    if req.objective is not None and req.spec.objective is not None:
        # hpo.run's function, run as a spec's [objective] function is: the spec's [search]
        # params first, seed and config, a failed trial FAIL, max failures
        objective: Callable[..., float] = UserObjective(
            req.spec, req.objective, max_failures=req.max_failures, debug=req.debug)
    else:
        objective = req.objective or make_objective(
            req.spec, data=req.data, data_dir=req.data_dir, code_dirs=req.code_dirs,
            max_failures=req.max_failures, debug=req.debug)
    callback = None
    if tracking:
        callback = mlflow_callback(req.mlflow_uri, req.spec.mlflow, req.study_name)
    return sampler, pruner, objective, callback


def open_study(req: RunRequest, *, heartbeat: bool = True, tracking: bool = True) -> tuple:
    """Create (or resume) the study of ``req.spec``: everything that can refuse bad input is
    made first (sampler, pruner, the objective and its data, the warm start's configurations,
    MLflow), then the schema and the study are written. Returns the study, the objective, the
    MLflow callback and the warm start's configurations (None: no warm start)."""
    spec = req.spec
    assert spec is not None
    interval, grace = req.heartbeats()
    sampler, pruner, objective, callback = prepare(req, tracking)
    configs = warm_configs(req) if req.warm_start else None
    install_signal_handlers()  # a SIGTERM while waiting for the database ends the wait
    storage = get_storage(req.url, heartbeat=heartbeat, heartbeat_interval=interval,
                          grace_period=grace, create_schema=True)
    study = create_or_load_study(storage, spec, req.study_name, sampler=sampler, pruner=pruner)
    return study, objective, callback, configs


def warm_configs(req: RunRequest) -> list:
    """The best ``warm_top`` configurations of the study ``warm_start`` in the same storage,
    read before anything is written (bad input: no such study, or nothing finished in it)."""
    source = req.warm_start
    if source == req.study_name:
        raise UsageError(f"--warm-start {source}: name another study than the one being run")
    storage = get_storage(req.url)
    load_study_spec(storage, source)  # a clear error for an unknown or foreign study
    configs = best_configs(optuna.load_study(study_name=source, storage=storage), req.warm_top)
    if not configs:
        raise UsageError(f"--warm-start {source}: the study has no COMPLETE trial to start from")
    return configs


def run_study(req: RunRequest, opened: tuple | None = None) -> Outcome:
    """Run ``req``: create or join its study and run trials until the study holds its budget of
    finished trials (or a cap or the timeout stops this process). ``opened``: what
    :func:`open_study` returned for ``req`` already (``hpo compare`` opens every cell first)."""
    if req.join:
        return _join(req)
    spec = req.spec
    assert spec is not None
    interval, grace = req.heartbeats()
    study, objective, tracking, configs = opened or open_study(req)
    # a resumed or joined study: new points, not the first ones again (before the warm start)
    retry = _retrying(req)
    retry(lambda: continue_sampling(study, spec))
    logs.configure_optuna(req.log_level)
    done, _, waiting = retry(lambda: count_states(study))
    if done >= spec.n_trials:  # the budget just recorded is already met: say so, run nothing
        if waiting:
            retry(lambda: close_waiting(study))
        if req.announce:
            log.warning("%s: nothing to run: study %r already has %d finished trials of its "
                        "budget %d", req.who, req.study_name, done, spec.n_trials)
        return Outcome(study, spec, done, stopped_by="nothing to run")
    if req.announce:
        log.info("study %r on %s: %d trials, sampler %s, pruner %s, %d worker(s)",
                 req.study_name, mask_url(req.url), spec.n_trials, spec.sampler, spec.pruner,
                 req.workers)
    if configs is not None:
        _warm_start(study, spec, req.warm_start, configs, req.study_name)
    progress = Progress(spec.n_trials, done, enabled=req.progress)
    timeout = req.timeout if req.timeout is not None else spec.timeout
    try:
        if req.workers == 1:
            pin_blas_threads()
            result = work(study, objective, n_trials=spec.n_trials, timeout=timeout,
                          max_runs=req.max_runs,
                          on_trial=callbacks(progress.on_trial if progress.enabled else None,
                                             logs.log_trial if req.trial_lines else None,
                                             tracking, req.on_trial))
            progress.refresh(study)
            return Outcome(study, spec, result.finished, result.trials_run, result.stopped_by)
        job = (req.worker_job or (lambda: worker_job(
            req.study_name, req.url, timeout, interval, grace, trial_lines=req.trial_lines,
            data_dir=req.data_dir, mlflow_uri=req.mlflow_uri, objective=req.objective,
            code_dirs=req.code_dirs or ([spec.objective.base] if spec.objective else None),
            max_failures=req.max_failures, debug=req.debug)))()
        failed = _run_workers(study, job, req.workers, progress, req.trial_lines, req.who,
                              req.on_trial)
    finally:
        progress.close()
    finished = retry(lambda: count(study)[0])
    return Outcome(study, spec, finished, stopped_by="workers", failed_workers=failed)


def _join(req: RunRequest) -> Outcome:
    """``hpo worker``: join an existing study with the spec stored in it."""
    interval, grace = req.heartbeats()
    install_signal_handlers()  # a SIGTERM while waiting for the database ends the wait
    watch_parent()  # started by `hpo run` / `hpo compare`: stop when it dies
    storage = get_storage(req.url, heartbeat=True, heartbeat_interval=interval,
                          grace_period=grace, join_wait=JOIN_WAIT, who=req.who)
    check_schema(storage, req.url)
    spec = load_study_spec(storage, req.study_name, wait=JOIN_WAIT)
    req.spec = spec
    sampler, pruner, objective, tracking = prepare(req)
    if spec.sampler not in KEYED_SAMPLERS:
        # Every worker builds its sampler from the spec's seed; without this, W workers of a
        # TPE, CMA-ES or GP study would draw the same points. The narrowing, random and QMC
        # samplers key each draw by (seed, trial number) and stay reproducible whatever the
        # number of workers.
        sampler.reseed_rng()
    study = _retrying(req)(lambda: optuna.load_study(
        study_name=req.study_name, storage=storage, sampler=sampler, pruner=pruner))
    pin_blas_threads()
    timeout = req.timeout if req.timeout is not None else spec.timeout
    logs.configure_optuna(req.log_level)
    # with a callback, optimize() reads the finished trial back (a get_trial: six queries)
    result = work(study, objective, n_trials=spec.n_trials, timeout=timeout,
                  max_runs=req.max_runs,
                  on_trial=callbacks(logs.log_trial if req.trial_lines else None, tracking,
                                     req.on_trial))
    logging.getLogger("hpo.worker").info(
        "worker done: ran %d trial(s); study holds %d finished of its budget %d (%s)",
        result.trials_run, result.finished, spec.n_trials, result.stopped_by)
    return Outcome(study, spec, result.finished, result.trials_run, result.stopped_by)


def _retrying(req: RunRequest) -> Callable[[Callable[[], Any]], Any]:
    def retry(attempt: Callable[[], Any]) -> Any:
        return with_retries(attempt, who=req.who, what=f"the study {req.study_name!r}")
    return retry


def _warm_start(study: optuna.Study, spec: Spec, source: str | None, configs: list,
                study_name: str) -> None:
    carries = warm_start(study, spec, source, configs)
    if carries is not None:  # a configuration not run as it was is a warning (-q shows it)
        head, *lines = describe(source, carries)
        log.info("%s", head)
        for c, line in zip(carries, lines, strict=True):
            (log.warning if c.redrawn else log.info)("%s", line)
    else:
        log.info("warm start from %r skipped: study %r already holds trials", source,
                 study_name)


def callbacks(*fns: Callback | None) -> Callback | None:
    """One Optuna callback calling each of ``fns`` that is not None (None when none is: then
    optimize() does not read each finished trial back)."""
    chosen = [f for f in fns if f is not None]
    if len(chosen) <= 1:
        return chosen[0] if chosen else None

    def each(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        for f in chosen:
            f(study, trial)

    return each


def worker_job(study_name: str, url: str, timeout: float | None,
               heartbeat_interval: int, grace_period: int, *, trial_lines: bool = False,
               data_dir: str | None = None, mlflow_uri: str | None = None,
               objective: Callable[..., float] | None = None,
               code_dirs: list[str] | None = None, max_failures: int | None = None,
               debug: bool = False) -> WorkerJob:
    """How ``hpo run`` and ``hpo compare`` start a worker of ``study_name`` with their own
    heartbeat settings (forked, or ``hpo worker ...`` in a fresh interpreter): quiet, or with
    ``trial_lines`` a JSON line per finished trial in its log (``hpo run`` logs them again).
    The worker runs until the study holds the budget recorded in it (the caller recorded it
    first). ``objective``: a user's function the forked workers run (``hpo.run``); a fresh
    interpreter finds it through the study's spec instead."""
    argv = ["worker", "--study", study_name,
            *(["--log-level", "info", "--log-format", "json"] if trial_lines else ["--quiet"]),
            "--heartbeat-interval", str(heartbeat_interval), "--grace-period", str(grace_period)]
    if timeout:
        argv += ["--timeout", str(timeout)]
    if data_dir:
        argv += ["--data-dir", data_dir]
    if mlflow_uri:
        argv += ["--mlflow-uri", mlflow_uri]
    for folder in code_dirs or ():
        argv += ["--code-dir", folder]
    if max_failures:
        argv += ["--max-failures", str(max_failures)]
    if debug:
        argv += ["--debug"]
    level = logging.INFO if trial_lines else logging.WARNING

    def target() -> int:
        logs.configure(level, "json" if trial_lines else "text")  # into this child's log
        req = RunRequest(study_name, url, join=True, timeout=timeout,
                         heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                         data_dir=data_dir, mlflow_uri=mlflow_uri, log_level=level,
                         trial_lines=trial_lines, objective=objective, code_dirs=code_dirs,
                         max_failures=max_failures, debug=debug, who="hpo worker")
        run_study(req)
        return 0

    return WorkerJob(url=url, target=target, argv=argv, env={"HPO_STORAGE": url})


def _run_workers(study: optuna.Study, job: WorkerJob, n_workers: int, progress: Progress,
                 per_trial: bool, who: str, on_tick: Callback | None = None) -> int:
    """Run ``n_workers`` worker processes and show progress until they exit. Returns how many
    failed (the last lines of their logs go to stderr). With ``per_trial`` the workers write a
    JSON line per finished trial into their logs, and each is logged again here as it comes.
    The workers' log folder is removed on every way out."""
    rdb = oc.rdb_of(study)
    tails: dict[str, _Tail] = {}

    def tick() -> None:
        for tail in tails.values():
            for line in tail.lines():
                logs.relog_trial(line)
        try:
            progress.refresh(study)
            if on_tick is not None:
                on_tick(study, None)  # type: ignore[arg-type]
        except Exception as e:  # noqa: BLE001 - a database outage must not stop supervision
            if not is_transient(e):
                raise
            OUTAGE.failed(who, e, "the workers retry; progress resumes when it is back")
        else:
            OUTAGE.ok()

    with tempfile.TemporaryDirectory(prefix="hpo-workers-") as log_dir:
        procs = start_workers(n_workers, job, log_dir, dispose=[rdb.engine] if rdb else [])
        if per_trial:  # the logs start_workers names (a child may not have opened its own yet)
            tails.update((name, _Tail(os.path.join(log_dir, name)))
                         for name in (f"worker-{i}.log" for i in range(n_workers)))
        supervise(procs, tick)
        tick()
        bad = failures(procs, log_dir)
    for message in bad:
        print(f"{who}: {message}", file=sys.stderr)
    return len(bad)


class _Tail:
    """The complete lines appended to a worker's log since the last look."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = 0
        self.rest = b""

    def lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except OSError:
            return []
        self.offset += len(data)
        *done, self.rest = (self.rest + data).split(b"\n")
        return [line.decode(errors="replace") for line in done]
