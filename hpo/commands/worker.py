"""``hpo worker --study NAME``: join an existing study with the spec stored in it."""

from __future__ import annotations

import argparse
import sys

import optuna

from hpo.commands.common import heartbeat_settings, positive
from hpo.objective import Objective
from hpo.procs import WorkerJob, pin_blas_threads
from hpo.retry import with_retries
from hpo.signals import install_signal_handlers, watch_parent
from hpo.storage import JOIN_WAIT, check_schema, get_storage, load_study_spec, resolve_url
from hpo.trials import KEYED_SAMPLERS, SURPLUS_ATTR, build_sampler_and_pruner, work


def worker(args: argparse.Namespace) -> int:
    positive("--n-trials", args.n_trials)
    interval, grace = heartbeat_settings(args)
    return run_worker(args.study, resolve_url(args.storage), args.n_trials, args.timeout,
                      quiet=args.quiet, heartbeat_interval=interval, grace_period=grace)


def run_worker(study_name: str, url: str, n_trials: int | None, timeout: float | None, *,
               quiet: bool, heartbeat_interval: int, grace_period: int) -> int:
    """Run trials of ``study_name`` until it holds its recorded budget of finished trials, this
    worker has run ``n_trials`` trials (``None``: no cap of its own), or ``timeout`` seconds
    pass. Returns the exit code.

    ``--n-trials`` of a worker caps that worker only: it never changes the study's budget
    (``hpo run`` and ``hpo init`` record it), so a worker cannot make a study overshoot it.

    A worker started together with the ``hpo run`` / ``hpo init`` that creates its study waits
    for it (up to :data:`~hpo.storage.JOIN_WAIT` seconds, while the storage is still empty);
    a database that refuses connections is retried (``$HPO_DB_WAIT``)."""
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
    objective = Objective(spec)
    study = with_retries(lambda: optuna.load_study(study_name=study_name, storage=storage,
                                                    sampler=sampler, pruner=pruner),
                         who="hpo worker", what=f"the study {study_name!r}")
    pin_blas_threads()
    timeout = timeout if timeout is not None else spec.timeout

    def on_trial(s: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
        if SURPLUS_ATTR in t.system_attrs:
            return  # a surplus claim ran nothing and counts nowhere: one line per trial run
        value = "-" if t.value is None else f"{t.value:.3f}"
        print(f"trial {t.number} {t.state.name} val_acc={value} params={t.params}", flush=True)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # with a callback, optimize() reads the finished trial back (a get_trial: six queries)
    result = work(study, objective, n_trials=spec.n_trials, timeout=timeout, max_runs=n_trials,
                  on_trial=None if quiet else on_trial)
    print(f"worker done: ran {result.trials_run} trial(s); study holds {result.finished} "
          f"finished of its budget {spec.n_trials} ({result.stopped_by})", file=sys.stderr)
    return 0


def worker_job(study_name: str, url: str, timeout: float | None,
               heartbeat_interval: int, grace_period: int) -> WorkerJob:
    """How ``hpo run`` and ``hpo compare`` start a quiet worker of ``study_name`` with their
    own heartbeat settings (forked, or ``hpo worker ...`` in a fresh interpreter). The worker
    runs until the study holds the budget recorded in it (the caller recorded it first)."""
    argv = ["worker", "--study", study_name, "--quiet",
            "--heartbeat-interval", str(heartbeat_interval), "--grace-period", str(grace_period)]
    if timeout:
        argv += ["--timeout", str(timeout)]

    def target() -> int:
        return run_worker(study_name, url, None, timeout, quiet=True,
                          heartbeat_interval=heartbeat_interval, grace_period=grace_period)

    return WorkerJob(url=url, target=target, argv=argv, env={"HPO_STORAGE": url})
