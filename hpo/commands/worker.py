"""``hpo worker --study NAME``: join an existing study with the spec stored in it."""

from __future__ import annotations

import argparse
import logging

import optuna

from hpo import logs
from hpo.commands.common import callbacks, heartbeat_settings, positive
from hpo.objectives import make_objective
from hpo.objectives.user import code_dirs_from
from hpo.engine.procs import WorkerJob, pin_blas_threads
from hpo.db.retry import with_retries
from hpo.signals import install_signal_handlers, watch_parent
from hpo.db.storage import JOIN_WAIT, check_schema, get_storage, load_study_spec, resolve_url
from hpo.engine.tracking import mlflow_callback
from hpo.engine.loop import KEYED_SAMPLERS, build_sampler_and_pruner, work

log = logging.getLogger("hpo.worker")


def worker(args: argparse.Namespace) -> int:
    positive("--n-trials", args.n_trials)
    interval, grace = heartbeat_settings(args)
    level, _ = getattr(args, "log_settings", (logging.INFO, "text"))
    return run_worker(args.study, resolve_url(args.storage), args.n_trials, args.timeout,
                      trial_lines=level <= logging.INFO, heartbeat_interval=interval,
                      grace_period=grace, data_dir=args.data_dir, log_level=level,
                      mlflow_uri=args.mlflow_uri,
                      code_dirs=code_dirs_from(getattr(args, "code_dir", None)),
                      max_failures=getattr(args, "max_failures", None),
                      debug=getattr(args, "debug", False))


def run_worker(study_name: str, url: str, n_trials: int | None, timeout: float | None, *,
               trial_lines: bool, heartbeat_interval: int, grace_period: int,
               data_dir: str | None = None, log_level: int = logging.INFO,
               mlflow_uri: str | None = None, code_dirs: list[str] | None = None,
               max_failures: int | None = None, debug: bool = False) -> int:
    """Run trials of ``study_name`` until it holds its recorded budget of finished trials, this
    worker has run ``n_trials`` trials (``None``: no cap of its own), or ``timeout`` seconds
    pass. Returns the exit code. ``trial_lines``: one ``hpo.trial`` log record per finished
    trial (:mod:`hpo.logs`).

    ``--n-trials`` of a worker caps that worker only: it never changes the study's budget
    (``hpo run`` and ``hpo init`` record it), so a worker cannot make a study overshoot it.

    A worker started together with the ``hpo run`` / ``hpo init`` that creates its study waits
    for it (up to :data:`~hpo.db.storage.JOIN_WAIT` seconds, while the storage is still empty);
    a database that refuses connections is retried (``$HPO_DB_WAIT``).

    A study of a user's objective runs its code only from ``code_dirs`` (``--code-dir`` /
    ``$HPO_CODE_DIR``; ``hpo run`` passes its spec's folder): :mod:`hpo.objectives.user`."""
    install_signal_handlers()  # a SIGTERM while waiting for the database ends the wait
    watch_parent()  # started by `hpo run` / `hpo compare`: stop when it dies
    storage = get_storage(url, heartbeat=True, heartbeat_interval=heartbeat_interval,
                          grace_period=grace_period, join_wait=JOIN_WAIT, who="hpo worker")
    check_schema(storage, url)
    spec = load_study_spec(storage, study_name, wait=JOIN_WAIT)
    sampler, pruner = build_sampler_and_pruner(spec)
    if spec.sampler not in KEYED_SAMPLERS:
        # Every worker builds its sampler from the spec's seed; without this, W workers of a
        # TPE, CMA-ES or GP study would draw the same points. The narrowing, random and QMC
        # samplers key each draw by (seed, trial number) and stay reproducible whatever the
        # number of workers.
        sampler.reseed_rng()
    objective = make_objective(spec, data_dir=data_dir, code_dirs=code_dirs,
                               max_failures=max_failures, debug=debug)
    tracking = mlflow_callback(mlflow_uri, spec.mlflow, study_name)
    study = with_retries(lambda: optuna.load_study(study_name=study_name, storage=storage,
                                                    sampler=sampler, pruner=pruner),
                         who="hpo worker", what=f"the study {study_name!r}")
    pin_blas_threads()
    timeout = timeout if timeout is not None else spec.timeout

    logs.configure_optuna(log_level)
    # with a callback, optimize() reads the finished trial back (a get_trial: six queries)
    result = work(study, objective, n_trials=spec.n_trials, timeout=timeout, max_runs=n_trials,
                  on_trial=callbacks(logs.log_trial if trial_lines else None, tracking))
    log.info("worker done: ran %d trial(s); study holds %d finished of its budget %d (%s)",
             result.trials_run, result.finished, spec.n_trials, result.stopped_by)
    return 0


def worker_job(study_name: str, url: str, timeout: float | None,
               heartbeat_interval: int, grace_period: int, *, trial_lines: bool = False,
               data_dir: str | None = None, mlflow_uri: str | None = None,
               code_dirs: list[str] | None = None, max_failures: int | None = None,
               debug: bool = False) -> WorkerJob:
    """How ``hpo run`` and ``hpo compare`` start a worker of ``study_name`` with their own
    heartbeat settings (forked, or ``hpo worker ...`` in a fresh interpreter): quiet, or with
    ``trial_lines`` a JSON line per finished trial in its log (``hpo run`` logs them again).
    The worker runs until the study holds the budget recorded in it (the caller recorded it
    first)."""
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
        return run_worker(study_name, url, None, timeout, trial_lines=trial_lines,
                          heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                          data_dir=data_dir, log_level=level, mlflow_uri=mlflow_uri,
                          code_dirs=code_dirs, max_failures=max_failures, debug=debug)

    return WorkerJob(url=url, target=target, argv=argv, env={"HPO_STORAGE": url})
