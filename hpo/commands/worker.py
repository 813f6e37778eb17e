"""``hpo worker --study NAME``: join an existing study with the spec stored in it."""

from __future__ import annotations

import argparse
import logging

from hpo.commands import flags
from hpo.commands.common import heartbeat_settings

HELP = "join an existing study and run trials"


def add_arguments(p: flags.Parser) -> None:
    p.description = ("Join study NAME (its spec is stored in it) and run trials until the study "
                     "holds its budget of finished trials.")
    flags.study_flag(p, required=True, help="the study to join")
    flags.storage(p)
    p.add_argument("--n-trials", type=flags.TRIALS, metavar="N",
                   help="run at most N trials in this worker (default: no cap of its own); "
                        "never changes the study's budget, which `hpo run` / `hpo init` record")
    p.add_argument("--timeout", type=flags.SECONDS, metavar="S", help="stop after S seconds")
    flags.data_dir(p)
    flags.mlflow(p)
    flags.heartbeat(p)


def worker(args: argparse.Namespace) -> int:
    """Run trials of ``--study`` (:func:`hpo.engine.jobs.run_worker`)."""
    from hpo.db.storage import resolve_url
    from hpo.engine.jobs import run_worker

    interval, grace = heartbeat_settings(args)
    level, _ = getattr(args, "log_settings", (logging.INFO, "text"))
    return run_worker(args.study, resolve_url(args.storage), args.n_trials, args.timeout,
                      trial_lines=level <= logging.INFO, heartbeat_interval=interval,
                      grace_period=grace, data_dir=args.data_dir, log_level=level,
                      mlflow_uri=args.mlflow_uri)
