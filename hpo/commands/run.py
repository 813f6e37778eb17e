"""``hpo run SPEC``: create or resume the study of a spec, run W workers, print Best-N."""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace

from hpo.commands.common import positive
from hpo.db.retry import with_retries
from hpo.db.storage import resolve_url
from hpo.engine.study import RunRequest, run_study
from hpo.errors import UsageError
from hpo.report.listing import study_summary
from hpo.spec import Spec, load_spec

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
    warm = getattr(args, "warm_start", None)
    top = getattr(args, "warm_start_top", None)
    if top is not None and not warm:
        raise UsageError("--warm-start-top needs --warm-start STUDY (the study to start from)")
    level, _ = getattr(args, "log_settings", (logging.INFO, "text"))
    req = RunRequest(study_name, resolve_url(args.storage), spec, workers=args.workers,
                   timeout=args.timeout, heartbeat_interval=args.heartbeat_interval,
                   grace_period=args.grace_period, data_dir=getattr(args, "data_dir", None),
                   mlflow_uri=getattr(args, "mlflow_uri", None), warm_start=warm,
                   log_level=level, trial_lines=trial_lines(args),
                   progress=level <= logging.INFO,
                   max_failures=getattr(args, "max_failures", None),
                   debug=getattr(args, "debug", False))
    if top is not None:
        req.warm_top = top
    req.heartbeats()  # a bad pair of heartbeat flags is bad input before anything runs
    outcome = run_study(req)
    summary = with_retries(lambda: study_summary(outcome.study, outcome.spec.to_dict(),
                                                 args.top),
                           who="hpo run", what=f"the study {study_name!r}")
    print(summary.text())
    for line in summary.warning_lines("hpo run"):
        log.warning("%s", line)
    # workers may die: the study still holds its budget (their failures were shown)
    return 1 if outcome.short else 0
