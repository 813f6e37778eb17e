"""``hpo run SPEC``: create or resume the study of a spec, run W workers, print Best-N."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING

from hpo import catalog, logs
from hpo.commands import flags
from hpo.commands.common import heartbeat_settings, spec_from_args, worker_storage
from hpo.errors import UsageError

if TYPE_CHECKING:
    import optuna

    from hpo.engine.progress import Progress

log = logging.getLogger("hpo.run")

HELP = "create or resume a study from a spec and run it"


def add_arguments(p: flags.Parser) -> None:
    p.description = ("Create (or resume) the study of SPEC, run W local worker processes until "
                     "it holds N finished trials, print Best-N.")
    p.epilog = flags.SPEC_EPILOG
    flags.files(p.add_argument("spec", metavar="SPEC",
                               help="study spec file (TOML), e.g. studies/book-random.toml"))
    flags.storage(p)
    flags.study_flag(p, help="study name (default: the spec's name)")
    p.add_argument("--n-trials", type=flags.TRIALS, metavar="N", help=flags.BUDGET_HELP)
    p.add_argument("--workers", type=flags.count(catalog.MAX_WORKERS), default=1, metavar="W",
                   help="local worker processes (forked; one BLAS thread each)")
    p.add_argument("--seed", type=flags.SEED, metavar="S",
                   help="sampler/model seed (default: spec's)")
    p.add_argument("--data-seed", type=flags.SEED, metavar="D",
                   help="seed of the train/validation shuffle (default: the spec's data.seed)")
    p.add_argument("--timeout", type=flags.SECONDS, metavar="S", help="stop after S seconds")
    p.add_argument("--top", type=flags.TOP, metavar="K", help=flags.TOP_HELP)
    flags.data_dir(p)
    flags.mlflow(p)
    p.add_argument("--warm-start", type=flags.study_name, metavar="STUDY",
                   help="begin a new study with the best configurations of STUDY (same storage)")
    p.add_argument("--warm-start-top", type=flags.count(1000), metavar="K",
                   help="how many of STUDY's best configurations (default 5; needs --warm-start)")
    flags.heartbeat(p)


def trial_lines(args: argparse.Namespace) -> bool:
    """Whether every finished trial is a log line: ``--log-format json`` at level info, or
    ``-v`` (with a progress bar or progress lines the text trial lines are debug detail)."""
    level, fmt = getattr(args, "log_settings", (logging.INFO, "text"))
    return level <= logging.DEBUG or (fmt == "json" and level <= logging.INFO)


def run(args: argparse.Namespace) -> int:
    from hpo.db.retry import with_retries
    from hpo.db.storage import create_or_load_study, mask_url, resolve_url
    from hpo.engine.jobs import callbacks, worker_job
    from hpo.engine.loop import (
        build_sampler_and_pruner,
        close_waiting,
        continue_sampling,
        count_states,
        work,
    )
    from hpo.engine.procs import pin_blas_threads
    from hpo.engine.progress import Progress
    from hpo.engine.tracking import mlflow_callback
    from hpo.engine.warmstart import WARM_TOP, describe, warm_start
    from hpo.objectives.book import Objective
    from hpo.report.listing import study_summary
    from hpo.signals import install_signal_handlers

    spec, study_name = spec_from_args(args)
    interval, grace = heartbeat_settings(args)
    timeout = args.timeout if args.timeout is not None else spec.timeout
    sampler, pruner = build_sampler_and_pruner(spec)
    data_dir = getattr(args, "data_dir", None)
    # loads the data: a data error stops us before any write
    objective = Objective(spec.with_data_dir(data_dir))
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
                             mlflow_uri=getattr(args, "mlflow_uri", None))
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
    from hpo.db.retry import with_retries
    from hpo.engine.loop import count

    return with_retries(lambda: count(study)[0], who="hpo run",
                        what=f"the study {study.study_name!r}")


def _warm_configs(url: str, source: str, study_name: str, top: int) -> list:
    """The best ``top`` configurations of the study ``source`` in the same storage, read
    before anything is written (bad input: no such study, or nothing finished in it)."""
    import optuna

    from hpo.db.storage import get_storage, load_study_spec
    from hpo.engine.warmstart import best_configs

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
    import tempfile

    from hpo.db import optuna_private as oc
    from hpo.db.retry import OUTAGE, is_transient
    from hpo.engine.procs import failures, start_workers, supervise

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
