"""``hpo compare SPEC...``: samplers or specs compared fairly across seeds (:mod:`hpo.compare`)."""

from __future__ import annotations

import argparse
import shlex
import sys

from hpo.commands.common import heartbeat_settings, output_dir
from hpo.commands.worker import worker_job
from hpo.compare import make_arms, run_grid, table, write_outputs
from hpo.errors import UsageError
from hpo.procs import WorkerJob
from hpo.samplers import available_samplers
from hpo.spec import load_spec
from hpo.storage import mask_url, resolve_url


def compare(args: argparse.Namespace) -> int:
    """``hpo compare SPEC...``: one study per (arm, seed) on the same split, a table and plots."""
    specs = [load_spec(path) for path in args.spec]
    samplers = None
    if args.samplers is not None:
        samplers = [s.strip() for s in args.samplers.split(",") if s.strip()]
        usable = available_samplers()
        for s in samplers:
            if s not in usable:
                raise UsageError(f"--samplers: {s!r} is not available here; choose from "
                                 f"{', '.join(usable)}")
        if not samplers or len(set(samplers)) != len(samplers):
            raise UsageError("--samplers must name distinct samplers, e.g. narrowing,random,tpe")
    try:
        arms = make_arms(specs, samplers)
    except ValueError as e:
        raise UsageError(str(e)) from None
    for flag, value, low in (("--n-trials", args.n_trials, 1), ("--seeds", args.seeds, 1),
                             ("--workers", args.workers, 1), ("--confirm-seeds",
                                                              args.confirm_seeds, 2)):
        if value < low:
            raise UsageError(f"{flag} must be >= {low}, got {value}")
    if not 0 < args.target <= 1:
        raise UsageError(f"--target must be in (0, 1], got {args.target}")
    if args.confirm < 0:
        raise UsageError(f"--confirm must be >= 0, got {args.confirm}")
    output_dir("--out", args.out)
    url = resolve_url(args.storage)
    interval, grace = heartbeat_settings(args)

    def job(study_name: str, n_trials: int) -> WorkerJob:
        return worker_job(study_name, url, n_trials, None, interval, grace)

    grid = run_grid(arms, args.seeds, args.n_trials, url=url, workers=args.workers,
                    target=args.target, evaluate_test=not args.no_test,
                    confirm_top=args.confirm, confirm_seeds=args.confirm_seeds,
                    progress=not args.quiet,
                    title=specs[0].name if len(specs) == 1 else args.title, worker_job=job)
    command = ("hpo compare " + " ".join(shlex.quote(p) for p in args.spec)
               + (f" --title {shlex.quote(args.title)}" if len(specs) > 1 else "")
               + (f" --storage {shlex.quote(mask_url(url))}" if args.storage else "")
               + (f" --samplers {','.join(samplers)}" if samplers else "")
               + f" --n-trials {args.n_trials} --seeds {args.seeds} --workers {args.workers}"
               + f" --target {args.target}"
               + (f" --confirm {args.confirm} --confirm-seeds {args.confirm_seeds}"
                  if args.confirm else "")
               + f" --out {shlex.quote(args.out)}" + (" --no-test" if args.no_test else ""))
    paths = write_outputs(grid, args.out, command)
    print(table(grid))
    print(f"wrote {paths['plot']}, {paths['table']}, {paths['json']}", file=sys.stderr)
    return 0
