"""``hpo run SPEC``: create or resume the study of a spec, run W workers, print Best-N."""

from __future__ import annotations

import argparse
import logging

from hpo import catalog
from hpo.commands import flags
from hpo.commands.common import spec_from_args
from hpo.errors import UsageError

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
    flags.max_failures(p)
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
    from hpo.db.storage import resolve_url
    from hpo.engine.study import RunRequest, run_study
    from hpo.report.listing import study_summary

    spec, study_name = spec_from_args(args)
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
