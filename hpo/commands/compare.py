"""``hpo compare SPEC...``: samplers or specs compared fairly across seeds
(:mod:`hpo.engine.compare`).

The comparison keeps its studies in its own storage, ``sqlite:///<out>/compare.db``, beside its
table and plot (``--storage`` chooses another; ``$HPO_STORAGE`` does not apply: a comparison's
dozens of studies do not belong among a project's studies by accident). Studies of the same
comparison already there are continued only with ``--resume``; without it the command refuses
before writing anything.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex

from hpo.commands.common import heartbeat_settings, output_dir
from hpo.db.storage import get_storage, mask_url
from hpo.engine.compare import Grid, cell_names, make_arms, run_grid, table, write_outputs
from hpo.errors import StorageError, UsageError
from hpo.objectives import make_objective
from hpo.samplers import available_samplers
from hpo.samplers.registry import startup_trials
from hpo.spec import load_spec

#: The comparison's own storage, inside --out.
STORAGE_FILE = "compare.db"


log = logging.getLogger("hpo.compare")

def storage_url(args: argparse.Namespace) -> str:
    """``--storage``, else ``sqlite:///<out>/compare.db``."""
    return args.storage or f"sqlite:///{os.path.join(args.out, STORAGE_FILE)}"


def studies_in(url: str) -> list[str]:
    """The names of the studies already in ``url``, read without creating anything (an absent
    SQLite file or a database without Optuna's schema holds none)."""
    if url.startswith("sqlite:///"):
        path = url.split("sqlite:///", 1)[1]
        if "?" not in path and path != ":memory:" and not os.path.exists(path):
            return []
    try:
        storage = get_storage(url)
    except StorageError as e:
        if "has no Optuna schema" in str(e):
            return []
        raise
    try:
        return sorted(s.study_name for s in storage.get_all_studies())
    finally:
        engine = getattr(storage, "engine", None)
        if engine is not None:
            engine.dispose()


def check_resume(args: argparse.Namespace, url: str, names: list[str]) -> None:
    """Refuse (bad input) to continue earlier studies without ``--resume``, and to mix another
    comparison's studies into ``--out``'s own storage even with it."""
    existing = studies_in(url)
    ours = [n for n in names if n in existing]

    def listed(found: list[str]) -> str:
        return ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")

    if args.storage is None:
        where = f"--out {args.out}"
        if existing and not ours:
            raise UsageError(f"{where} holds another comparison ({len(existing)} studies in "
                             f"{url}: {listed(existing)}); choose another --out")
        if existing and not args.resume:
            raise UsageError(f"{where} already holds this comparison ({len(ours)} of its "
                             f"{len(names)} studies in {url}); pass --resume to continue it, "
                             "or choose another --out")
    elif ours and not args.resume:
        raise UsageError(f"--storage {mask_url(url)} already holds {len(ours)} of this "
                         f"comparison's {len(names)} studies ({listed(ours)}); pass --resume to "
                         "continue them, or choose another --storage")


def startup_notes(grid: Grid) -> list[str]:
    """One line per arm with no more trials than its sampler's random start-up trials: such a
    TPE (CMA-ES, GP) arm *is* random search, and its row (p = 1.000) says nothing about it."""
    notes = []
    for arm in (a for a in grid.arms if a.spec is not None):  # None: from summary.json
        n = startup_trials(arm.spec.sampler, arm.spec.sampler_kwargs())
        if n is not None and grid.n_trials <= n:
            notes.append(f"{arm.label}: {grid.n_trials} trials per study are no more than its "
                         f"{n} random start-up trials (n_startup_trials), so it never used its "
                         f"model and its row measures random search; give --n-trials above {n}")
    return notes


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
    interval, grace = heartbeat_settings(args)
    url = storage_url(args)
    check_resume(args, url, cell_names(arms, args.seeds))
    if any(a.spec.objective is not None for a in arms):  # until the report ranks by direction
        raise UsageError("hpo compare runs the book's MLP only for now; a spec with [objective] "
                         "is compared by `hpo run --seed S` per sampler")
    # the data: bad input before any write
    data = getattr(make_objective(arms[0].spec), "data", None)
    if args.storage is None:
        try:
            os.makedirs(args.out, exist_ok=True)
        except OSError as e:
            raise UsageError(f"cannot create --out {args.out}: {e.strerror}") from None

    grid = run_grid(arms, args.seeds, args.n_trials, url=url, workers=args.workers,
                    target=args.target, evaluate_test=not args.no_test,
                    confirm_top=args.confirm, confirm_seeds=args.confirm_seeds,
                    progress=not args.quiet,
                    title=specs[0].name if len(specs) == 1 else args.title, data=data,
                    heartbeat_interval=interval, grace_period=grace)
    command = ("hpo compare " + " ".join(shlex.quote(p) for p in args.spec)
               + (f" --title {shlex.quote(args.title)}" if len(specs) > 1 else "")
               + (f" --storage {shlex.quote(mask_url(url))}" if args.storage else "")
               + (f" --samplers {','.join(samplers)}" if samplers else "")
               + f" --n-trials {args.n_trials} --seeds {args.seeds} --workers {args.workers}"
               + f" --target {args.target}"
               + (f" --confirm {args.confirm} --confirm-seeds {args.confirm_seeds}"
                  if args.confirm else "")
               + f" --out {shlex.quote(args.out)}" + (" --no-test" if args.no_test else "")
               + (" --resume" if args.resume else ""))
    notes = tuple(startup_notes(grid))
    paths = write_outputs(grid, args.out, command, notes)
    print(table(grid))
    for note in notes:
        log.warning("hpo compare: note: %s", note)
    log.info("wrote %s, %s, %s", paths["plot"], paths["table"], paths["json"])
    return 0
