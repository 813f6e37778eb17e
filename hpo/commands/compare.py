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
import math
import os
import shlex
from typing import TYPE_CHECKING

from hpo import catalog
from hpo.commands import flags
from hpo.commands.common import output_dir
from hpo.errors import UsageError

if TYPE_CHECKING:
    from hpo.report.compare import Grid

#: The comparison's own storage, inside --out.
STORAGE_FILE = "compare.db"


log = logging.getLogger("hpo.compare")

HELP = "compare samplers fairly across seeds"


def target_value(text: str) -> float:
    """``--target``: any finite number (a user's metric may be a loss above 1 or below 0); the
    book's accuracy is checked against [0, 1] once the specs are read."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


target_value.__name__ = "number"


def add_arguments(p: flags.Parser) -> None:
    p.description = ("One study per (sampler, seed), named <spec>/<sampler>/seed<k>, on the same "
                     "data split; best-so-far plots and a table. With several specs (same "
                     "[data]), each spec is an arm with its own sampler and space.")
    flags.files(p.add_argument("spec", metavar="SPEC", nargs="+",
                               help="study spec file(s) (TOML)"))
    p.add_argument("--storage", metavar="URL",
                   help="SQLAlchemy URL of the comparison's studies (default: "
                        "sqlite:///DIR/compare.db under --out; $HPO_STORAGE and "
                        "$OPTUNA_STORAGE are not used)")
    p.add_argument("--samplers", type=flags.sampler_names, metavar="LIST",
                   help="with one spec: comma-separated sampler names, of "
                        + ",".join(catalog.SAMPLER_NAMES))
    p.add_argument("--confirm", type=flags.count(1000, low=0), default=0, metavar="K",
                   help="retrain each study's top K with fresh seeds and test the winner")
    p.add_argument("--confirm-seeds", type=flags.count(1000, low=2), default=5, metavar="S",
                   help="fresh seeds per configuration for --confirm")
    p.add_argument("--title", type=flags.title, default="comparison",
                   help="title with several specs")
    p.add_argument("--n-trials", type=flags.TRIALS, default=100, metavar="N",
                   help="finished trials per study")
    p.add_argument("--seeds", type=flags.count(1000), default=5, metavar="K",
                   help="studies per sampler, one per seed")
    p.add_argument("--workers", type=flags.count(catalog.MAX_WORKERS), default=1, metavar="W",
                   help="worker processes per study")
    p.add_argument("--target", type=target_value, default=0.80, metavar="VALUE",
                   help="value to reach (at or above it when the study maximizes, at or below "
                        "when it minimizes; the book's validation accuracy: in [0, 1]; "
                        "default 0.80)")
    flags.folders(p.add_argument("--out", type=flags.filled("a folder"), default="out/compare",
                                 metavar="DIR",
                                 help="table, plot and the comparison's own storage "
                                      "(DIR/compare.db unless --storage) go here"))
    p.add_argument("--resume", action="store_true",
                   help="continue the studies an earlier run of this comparison left")
    p.add_argument("--no-test", action="store_true", help="skip the test-set evaluation")


def storage_url(args: argparse.Namespace) -> str:
    """``--storage``, else ``sqlite:///<out>/compare.db``."""
    return args.storage or f"sqlite:///{os.path.join(args.out, STORAGE_FILE)}"


def studies_in(url: str) -> list[str]:
    """The names of the studies already in ``url``, read without creating anything (an absent
    SQLite file or a database without Optuna's schema holds none)."""
    from hpo.db.storage import get_storage, sqlite_path
    from hpo.errors import StorageError

    path = sqlite_path(url)
    if path and not os.path.exists(path):
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
    from hpo.db.storage import mask_url

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
    from hpo.samplers.registry import startup_trials

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
    from hpo.db.storage import mask_url, sqlite_path
    from hpo.engine.compare import cell_names, make_arms, run_grid
    from hpo.engine.study import heartbeat_pair
    from hpo.objectives import make_objective
    from hpo.report.compare import table, write_outputs
    from hpo.samplers import available_samplers
    from hpo.spec import load_spec

    specs = [load_spec(path) for path in args.spec]
    samplers = None
    if args.samplers is not None:
        samplers = [s.strip() for s in args.samplers.split(",") if s.strip()]
        usable = available_samplers()
        for s in samplers:
            if s not in usable:
                raise UsageError(f"--samplers: {s!r} is not available here; choose from "
                                 f"{', '.join(usable)}")
    if any(s.objective is None for s in specs) and not 0.0 <= args.target <= 1.0:
        raise UsageError(f"--target: must be in [0, 1] for the book's validation accuracy, "
                         f"got {args.target:g}")
    try:
        arms = make_arms(specs, samplers)
    except ValueError as e:
        raise UsageError(str(e)) from None
    output_dir("--out", args.out)
    interval, grace = heartbeat_pair(getattr(args, "heartbeat_interval", None),
                                     getattr(args, "grace_period", None))
    url = storage_url(args)
    path = sqlite_path(url) if args.storage is not None else ""  # --out's is made below
    if path and not os.path.isdir(folder := os.path.dirname(os.path.abspath(path))):
        raise UsageError(f"--storage {url}: the folder {folder} does not exist")
    check_resume(args, url, cell_names(arms, args.seeds))
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
