"""``hpo run SPEC``: create or resume the study of a spec, run W workers, print Best-N."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from dataclasses import replace

import optuna

from hpo import logs
from hpo.commands.common import callbacks, heartbeat_settings, positive, worker_storage
from hpo.commands.worker import worker_job
from hpo.errors import UsageError
from hpo.report.listing import study_summary
from hpo.objectives import make_objective
from hpo.engine.procs import failures, pin_blas_threads, start_workers, supervise
from hpo.engine.progress import Progress
from hpo.db.retry import OUTAGE, is_transient, with_retries
from hpo.signals import install_signal_handlers
from hpo.spec import Spec, load_spec
from hpo.db.storage import create_or_load_study, get_storage, load_study_spec, mask_url, resolve_url
from hpo.engine.tracking import mlflow_callback
from hpo.engine.loop import (
    build_sampler_and_pruner,
    close_waiting,
    continue_sampling,
    count,
    count_states,
    work,
)
from hpo.engine.warmstart import WARM_TOP, best_configs, describe, warm_start

log = logging.getLogger("hpo.run")


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


def trial_lines(args: argparse.Namespace) -> bool:
    """Whether every finished trial is a log line: ``--log-format json`` at level info, or
    ``-v`` (with a progress bar or progress lines the text trial lines are debug detail)."""
    level, fmt = getattr(args, "log_settings", (logging.INFO, "text"))
    return level <= logging.DEBUG or (fmt == "json" and level <= logging.INFO)


def run(args: argparse.Namespace) -> int:
    spec, study_name = spec_from_args(args)
    positive("--workers", args.workers)
    if args.timeout is not None and args.timeout <= 0:
        raise UsageError(f"--timeout must be > 0, got {args.timeout}")
    interval, grace = heartbeat_settings(args)
    timeout = args.timeout if args.timeout is not None else spec.timeout
    sampler, pruner = build_sampler_and_pruner(spec)
    data_dir = getattr(args, "data_dir", None)
    # loads the data (or the user's function): an error stops us before any write
    objective = make_objective(spec, data_dir=data_dir,
                               max_failures=getattr(args, "max_failures", None),
                               debug=getattr(args, "debug", False))
    url = resolve_url(args.storage)
    warm = getattr(args, "warm_start", None)
    top = getattr(args, "warm_start_top", None)
    if top is not None and not warm:
        raise UsageError("--warm-start-top needs --warm-start STUDY (the study to start from)")
    configs = _warm_configs(url, warm, study_name, top or WARM_TOP) if warm else None
    # MLflow (the spec's [tracking] or --mlflow-uri): checked before the study is written
    tracking = mlflow_callback(getattr(args, "mlflow_uri", None), spec.mlflow, study_name)
    install_signal_handlers()  # a SIGTERM while waiting for the database ends the wait
    storage = worker_storage(url, interval, grace, create_schema=True)
    study = create_or_load_study(storage, spec, study_name, sampler=sampler, pruner=pruner)
    # a resumed or joined study: new points, not the first ones again (before the warm start)
    with_retries(lambda: continue_sampling(study, spec), who="hpo run",
                 what=f"the study {study_name!r}")
    level, _ = getattr(args, "log_settings", (logging.INFO, "text"))
    logs.configure_optuna(level)
    done, _, waiting = with_retries(lambda: count_states(study), who="hpo run",
                                    what=f"the study {study_name!r}")
    if done >= spec.n_trials:  # the budget just recorded is already met: say so, run nothing
        if waiting:
            with_retries(lambda: close_waiting(study), who="hpo run",
                         what=f"the study {study_name!r}")
        log.warning("hpo run: nothing to run: study %r already has %d finished trials of its "
                 "budget %d", study_name, done, spec.n_trials)
        summary = with_retries(lambda: study_summary(study, spec.to_dict(), args.top),
                               who="hpo run", what=f"the study {study_name!r}")
        print(summary.text())
        for line in summary.warning_lines("hpo run"):
            log.warning("%s", line)
        return 0
    log.info("study %r on %s: %d trials, sampler %s, pruner %s, %d worker(s)", study_name,
             mask_url(url), spec.n_trials, spec.sampler, spec.pruner, args.workers)
    if configs is not None:
        carries = warm_start(study, spec, warm, configs)
        if carries is not None:  # a configuration not run as it was is a warning (-q shows it)
            head, *lines = describe(warm, carries)
            log.info("%s", head)
            for c, line in zip(carries, lines, strict=True):
                (log.warning if c.redrawn else log.info)("%s", line)
        else:
            log.info("warm start from %r skipped: study %r already holds trials", warm,
                     study_name)
    progress = Progress(spec.n_trials, done, enabled=level <= logging.INFO)
    per_trial = trial_lines(args)
    failed = 0
    try:
        if args.workers == 1:
            pin_blas_threads()
            work(study, objective, n_trials=spec.n_trials, timeout=timeout,
                 on_trial=callbacks(progress.on_trial if progress.enabled else None,
                                    logs.log_trial if per_trial else None, tracking))
            progress.refresh(study)
        else:
            job = worker_job(study_name, url, timeout, interval, grace,
                             trial_lines=per_trial, data_dir=data_dir,
                             mlflow_uri=getattr(args, "mlflow_uri", None),
                             code_dirs=[spec.objective.base] if spec.objective else None,
                             max_failures=getattr(args, "max_failures", None),
                             debug=getattr(args, "debug", False))
            failed = _run_workers(study, job, args.workers, progress, per_trial)
    finally:
        progress.close()
    summary = with_retries(lambda: study_summary(study, spec.to_dict(), args.top),
                           who="hpo run", what=f"the study {study_name!r}")
    print(summary.text())
    for line in summary.warning_lines("hpo run"):
        log.warning("%s", line)
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


def _run_workers(study: optuna.Study, job, n_workers: int, progress: Progress,
                 per_trial: bool = False) -> int:
    """Run ``n_workers`` worker processes and show progress until they exit. Returns how many
    failed (the last lines of their logs go to stderr). With ``per_trial`` the workers write a
    JSON line per finished trial into their logs, and each is logged again here as it comes.
    The workers' log folder is removed on every way out."""
    from hpo.db import optuna_private as oc

    rdb = oc.rdb_of(study)
    tails: dict[str, _Tail] = {}

    def tick() -> None:
        for tail in tails.values():
            for line in tail.lines():
                logs.relog_trial(line)
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
        if per_trial:  # the logs start_workers names (a child may not have opened its own yet)
            tails.update((name, _Tail(os.path.join(log_dir, name)))
                         for name in (f"worker-{i}.log" for i in range(n_workers)))
        supervise(procs, tick)
        tick()
        bad = failures(procs, log_dir)
    for message in bad:
        print(f"hpo run: {message}", file=sys.stderr)
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
