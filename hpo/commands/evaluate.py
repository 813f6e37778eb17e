"""``hpo test NAME``: the chosen trial retrained and evaluated on the test split, once."""

from __future__ import annotations

import argparse
import logging

from hpo.commands import flags
from hpo.commands.common import open_study
from hpo.errors import UsageError

log = logging.getLogger("hpo.test")

HELP = "evaluate a study's chosen trial on the test split, once"


def add_arguments(p: flags.Parser) -> None:
    p.description = ("Retrain the chosen configuration (best by default) with its seed on the "
                     "training split and evaluate it on the test split once; the result is "
                     "stored in the study. A study of your own objective runs its "
                     "[objective] test function once on the trial's params instead.")
    flags.study_arg(p, help="the study", required=True)
    flags.storage(p)
    p.add_argument("--trial", type=flags.count(2**31, low=0), metavar="N",
                   help="trial number (default: the best)")
    p.add_argument("--force", action="store_true", help="evaluate again although done before")
    flags.data_dir(p)
    flags.folders(p.add_argument("--code-dir", type=flags.filled("a folder"), metavar="DIR",
                                 action="append",
                                 help="a study's own objective: a folder its code may be "
                                      "loaded from (repeatable; default $HPO_CODE_DIR; "
                                      "docs/objectives.md)"))
    p.add_argument("--json", action="store_true", help="machine-readable output")


def test_cmd(args: argparse.Namespace) -> int:
    """``hpo test NAME``: retrain the chosen trial and evaluate it on the test split, once."""
    from hpo.objectives.user import code_dirs_from
    from hpo.report.evaluate import AlreadyTested, choose_trial, evaluate_on_test
    from hpo.report.listing import (
        CONFIRM_ATTR,
        dumps,
        format_test,
        n_finished,
        stale_note,
        state_names,
    )

    study = open_study(args)
    try:
        trial = choose_trial(study, args.trial)
        confirmed = study.user_attrs.get(CONFIRM_ATTR)
        now = n_finished(state_names(study.get_trials(deepcopy=False)))
        stale = stale_note(confirmed, "the confirmation", "hpo confirm", now) if (
            confirmed and args.trial is None and confirmed.get("winner") == trial.number) else None
        if stale:
            log.warning("hpo test: warning: %s; testing its winner, trial %d",
                        stale.removeprefix("STALE: "), trial.number)
        record = evaluate_on_test(study, trial, force=args.force, data_dir=args.data_dir,
                                  code_dirs=code_dirs_from(getattr(args, "code_dir", None)))
    except (AlreadyTested, ValueError) as e:
        raise UsageError(str(e)) from None
    if args.json:
        print(dumps(record, indent=2))
        return 0
    if "metric" in record:  # a user's objective: its own test function, in its metric
        print(format_test(record))
        return 0
    print(f"trial {record['trial']} | val acc {record['val_acc']:.4f} | "
          f"train acc {record['train_acc']:.4f} | test acc {record['test_acc']:.4f} "
          f"({record['n_test']} test images)")
    if not record["reproduced"]:
        log.warning("hpo test: warning: the retrained network's validation accuracy %.4f "
                    "differs from the stored %.4f", record["retrained_val_acc"], record["val_acc"])
    return 0
