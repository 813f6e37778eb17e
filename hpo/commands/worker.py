"""``hpo worker --study NAME``: join an existing study with the spec stored in it."""

from __future__ import annotations

import argparse
import logging

from hpo.commands import flags

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
    flags.max_failures(p)
    flags.folders(p.add_argument("--code-dir", type=flags.filled("a folder"), metavar="DIR",
                                 action="append",
                                 help="a folder this worker may run a study's own objective "
                                      "from (repeatable; default $HPO_CODE_DIR; "
                                      "docs/objectives.md)"))


def worker(args: argparse.Namespace) -> int:
    """Run trials of ``args.study`` until it holds its recorded budget of finished trials, this
    worker has run ``--n-trials`` trials (no cap of its own by default), or ``--timeout``
    seconds pass.

    ``--n-trials`` of a worker caps that worker only: it never changes the study's budget
    (``hpo run`` and ``hpo init`` record it), so a worker cannot make a study overshoot it.

    A worker started together with the ``hpo run`` / ``hpo init`` that creates its study waits
    for it (up to :data:`~hpo.db.storage.JOIN_WAIT` seconds, while the storage is still empty);
    a database that refuses connections is retried (``$HPO_DB_WAIT``)."""
    from hpo.db.storage import resolve_url
    from hpo.engine.study import RunRequest, run_study
    from hpo.objectives.user import code_dirs_from

    level, _ = getattr(args, "log_settings", (logging.INFO, "text"))
    req = RunRequest(args.study, resolve_url(args.storage), join=True, max_runs=args.n_trials,
                   timeout=args.timeout, heartbeat_interval=args.heartbeat_interval,
                   grace_period=args.grace_period, data_dir=args.data_dir,
                   mlflow_uri=args.mlflow_uri, log_level=level, trial_lines=level <= logging.INFO,
                   code_dirs=code_dirs_from(getattr(args, "code_dir", None)),
                   max_failures=getattr(args, "max_failures", None),
                   debug=getattr(args, "debug", False), who="hpo worker")
    req.heartbeats()  # a bad pair of heartbeat flags is bad input before anything runs
    run_study(req)
    return 0
