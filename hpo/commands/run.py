"""``hpo run SPEC``: create or resume the study of a spec, run W workers, print Best-N."""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace

import optuna

from hpo.commands.common import heartbeat_settings, positive, worker_storage
from hpo.commands.worker import worker_job
from hpo.errors import UsageError
from hpo.listing import study_summary
from hpo.objective import Objective
from hpo.procs import failures, pin_blas_threads, start_workers, supervise
from hpo.progress import Progress
from hpo.retry import OUTAGE, is_transient, with_retries
from hpo.signals import install_signal_handlers
from hpo.spec import Spec, load_spec
from hpo.storage import create_or_load_study, get_storage, load_study_spec, mask_url, resolve_url
from hpo.trials import (
    build_sampler_and_pruner,
    close_waiting,
    continue_sampling,
    count,
    count_states,
    work,
)
from hpo.warmstart import WARM_TOP, best_configs, describe, warm_start


def spec_from_args(args: argparse.Namespace) -> tuple[Spec, str]:
    """The spec of ``args.spec`` with the flags applied, and the study's name: ``--study``, else
    the spec's name with ``/data<D>`` and ``/seed<S>`` for ``--data-seed`` and ``--seed``."""
    spec = load_spec(args.spec)
    if getattr(args, "n_trials", None) is not None:
        positive("--n-trials", args.n_trials)
        spec = spec.replace(n_trials=args.n_trials)
    suffix = ""
    if getattr(args, "data_seed", None) is not None:
        if args.data_seed < 0:
            raise UsageError(f"--data-seed must be >= 0, got {args.data_seed}")
        spec = spec.replace(data=replace(spec.data, seed=args.data_seed))
        suffix += f"/data{args.data_seed}"
    if getattr(args, "seed", None) is not None:
        if args.seed < 0:
            raise UsageError(f"--seed must be >= 0, got {args.seed}")
        spec = spec.replace(seed=args.seed)
        suffix += f"/seed{args.seed}"
    return spec, getattr(args, "study", None) or spec.name + suffix


def run(args: argparse.Namespace) -> int:
    spec, study_name = spec_from_args(args)
    positive("--workers", args.workers)
    if args.timeout is not None and args.timeout <= 0:
        raise UsageError(f"--timeout must be > 0, got {args.timeout}")
    interval, grace = heartbeat_settings(args)
    timeout = args.timeout if args.timeout is not None else spec.timeout
    sampler, pruner = build_sampler_and_pruner(spec)
    objective = Objective(spec)  # loads the data: a data error stops us before any write
    url = resolve_url(args.storage)
    warm = getattr(args, "warm_start", None)
    top = getattr(args, "warm_start_top", None)
    if top is not None and not warm:
        raise UsageError("--warm-start-top needs --warm-start STUDY (the study to start from)")
    configs = _warm_configs(url, warm, study_name, top or WARM_TOP) if warm else None
    install_signal_handlers()  # a SIGTERM while waiting for the database ends the wait
    storage = worker_storage(url, interval, grace, create_schema=True)
    study = create_or_load_study(storage, spec, study_name, sampler=sampler, pruner=pruner)
    # a resumed or joined study: new points, not the first ones again (before the warm start)
    with_retries(lambda: continue_sampling(study, spec), who="hpo run",
                 what=f"the study {study_name!r}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    done, _, waiting = with_retries(lambda: count_states(study), who="hpo run",
                                    what=f"the study {study_name!r}")
    if done >= spec.n_trials:  # the budget just recorded is already met: say so, run nothing
        if waiting:
            with_retries(lambda: close_waiting(study), who="hpo run",
                         what=f"the study {study_name!r}")
        print(f"hpo run: nothing to run: study {study_name!r} already has {done} finished "
              f"trials of its budget {spec.n_trials}", file=sys.stderr)
        summary = with_retries(lambda: study_summary(study, spec.to_dict(), args.top),
                               who="hpo run", what=f"the study {study_name!r}")
        print(summary.text())
        for line in summary.warning_lines("hpo run"):
            print(line, file=sys.stderr)
        return 0
    print(f"study {study_name!r} on {mask_url(url)}: {spec.n_trials} trials, sampler "
          f"{spec.sampler}, pruner {spec.pruner}, {args.workers} worker(s)", file=sys.stderr)
    if configs is not None:
        carries = warm_start(study, spec, warm, configs)
        print("\n".join(describe(warm, carries)) if carries is not None else
              f"warm start from {warm!r} skipped: study {study_name!r} already holds trials",
              file=sys.stderr)
    progress = Progress(spec.n_trials, done, enabled=not args.quiet)
    failed = 0
    try:
        if args.workers == 1:
            pin_blas_threads()
            work(study, objective, n_trials=spec.n_trials, timeout=timeout,
                 on_trial=progress.on_trial if progress.bar is not None else None)
            progress.refresh(study)
        else:
            job = worker_job(study_name, url, timeout, interval, grace)
            failed = _run_workers(study, job, args.workers, progress)
    finally:
        progress.close()
    summary = with_retries(lambda: study_summary(study, spec.to_dict(), args.top),
                           who="hpo run", what=f"the study {study_name!r}")
    print(summary.text())
    for line in summary.warning_lines("hpo run"):
        print(line, file=sys.stderr)
    if failed and _finished(study) < spec.n_trials:
        return 1
    return 0  # workers may die: the study still holds its budget (their failures were shown)


def _finished(study: optuna.Study) -> int:
    """Finished trials of the study (retried through an outage)."""
    return with_retries(lambda: count(study)[0], who="hpo run",
                        what=f"the study {study.study_name!r}")


def _warm_configs(url: str, source: str, study_name: str, top: int) -> list:
    """The best ``top`` configurations of the study ``source`` in the same storage, read
    before anything is written (bad input: no such study, or nothing finished in it)."""
    if source == study_name:
        raise UsageError(f"--warm-start {source}: name another study than the one being run")
    storage = get_storage(url)
    load_study_spec(storage, source)  # a clear error for an unknown or foreign study
    configs = best_configs(optuna.load_study(study_name=source, storage=storage), top)
    if not configs:
        raise UsageError(f"--warm-start {source}: the study has no COMPLETE trial to start from")
    return configs


def _run_workers(study: optuna.Study, job, n_workers: int, progress: Progress) -> int:
    """Run ``n_workers`` worker processes and show progress until they exit. Returns how many
    failed (the last lines of their logs go to stderr). The workers' log folder is removed on
    every way out."""
    from hpo import optuna_compat as oc

    rdb = oc.rdb_of(study)

    def tick() -> None:
        try:
            progress.refresh(study)
        except Exception as e:  # noqa: BLE001 - a database outage must not stop supervision
            if not is_transient(e):
                raise
            OUTAGE.failed("hpo run", e, "the workers retry; progress resumes when it is back")
        else:
            OUTAGE.ok()

    with tempfile.TemporaryDirectory(prefix="hpo-workers-") as log_dir:
        procs = start_workers(n_workers, job, log_dir, dispose=[rdb.engine] if rdb else [])
        supervise(procs, tick)
        tick()
        bad = failures(procs, log_dir)
    for message in bad:
        print(f"hpo run: {message}", file=sys.stderr)
    return len(bad)
