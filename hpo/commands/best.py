"""``hpo best [NAME]``: the book's Best-N listing of a study."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from hpo.commands import flags
from hpo.commands.common import open_storage, open_study
from hpo.errors import UsageError

if TYPE_CHECKING:
    import optuna

HELP = "the book's Best-N listing of a study"


def add_arguments(p: flags.Parser) -> None:
    flags.study_arg(p, help="the study (may be left out when the storage holds only one)",
                    required=False)
    flags.storage(p)
    p.add_argument("--top", type=flags.TOP, metavar="K", help=flags.TOP_HELP)
    p.add_argument("--max-gap", type=flags.FRACTION, metavar="G",
                   help="also rank the trials whose train-validation gap is below G")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def best(args: argparse.Namespace) -> int:
    """``hpo best [NAME]``: the Best-N listing (``--json`` for machines)."""
    from hpo.db.storage import study_spec
    from hpo.report.listing import study_summary

    if args.study is None:
        args.study = only_study(open_storage(args))
    study = open_study(args)
    info = study_summary(study, study_spec(study) or {}, args.top, args.max_gap)
    print(info.json() if args.json else info.text())
    for line in info.warning_lines("hpo best"):
        print(line, file=sys.stderr)
    return 0


def only_study(storage: optuna.storages.BaseStorage) -> str:
    """The name of the storage's one study; bad input (one line naming them) when it holds none
    or several, since then a NAME must be given."""
    names = sorted(s.study_name for s in storage.get_all_studies())
    if len(names) == 1:
        return names[0]
    if not names:
        raise UsageError("this storage holds no study yet: run one first (hpo run SPEC)")
    shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    raise UsageError(f"this storage holds {len(names)} studies ({shown}): name one, e.g. "
                     f"hpo best {names[0]} (hpo studies lists them)")
