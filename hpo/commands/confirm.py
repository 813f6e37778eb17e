"""``hpo confirm NAME``: the top K configurations retrained with fresh seeds."""

from __future__ import annotations

import argparse

from hpo.commands import flags
from hpo.commands.common import open_study
from hpo.errors import UsageError

HELP = "retrain the top K configurations with fresh seeds"


def add_arguments(p: flags.Parser) -> None:
    p.description = ("Retrain the top K trials' configurations with S fresh initialisation "
                     "seeds each (same train/validation split) and rank them by mean validation "
                     "accuracy with its standard error; `hpo test` then uses the confirmed "
                     "winner. A study of your own objective re-runs its function with fresh "
                     "seeds (it must take `seed`).")
    flags.study_arg(p, help="the study", required=True)
    flags.storage(p)
    p.add_argument("--top", type=flags.count(1000), default=5, metavar="K",
                   help="how many of the best configurations to retrain")
    p.add_argument("--seeds", type=flags.count(1000, low=2), default=5, metavar="S",
                   help="fresh initialisation seeds per configuration")
    flags.data_dir(p)
    flags.folders(p.add_argument("--code-dir", type=flags.filled("a folder"), metavar="DIR",
                                 action="append",
                                 help="a study's own objective: a folder its code may be "
                                      "loaded from (repeatable; default $HPO_CODE_DIR; "
                                      "docs/objectives.md)"))
    p.add_argument("--json", action="store_true", help="machine-readable output")


def confirm_cmd(args: argparse.Namespace) -> int:
    """``hpo confirm NAME``: retrain the top K configurations with fresh seeds."""
    from hpo.engine.procs import pin_blas_threads
    from hpo.objectives.user import code_dirs_from
    from hpo.report.evaluate import confirm
    from hpo.report.listing import dumps, format_confirm

    study = open_study(args)
    pin_blas_threads()
    try:
        record = confirm(study, top=args.top, seeds=args.seeds, data_dir=args.data_dir,
                         code_dirs=code_dirs_from(getattr(args, "code_dir", None)))
    except ValueError as e:
        raise UsageError(str(e)) from None
    print(dumps(record, indent=2) if args.json else format_confirm(record))
    return 0
