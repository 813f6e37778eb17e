"""``hpo test NAME`` (the test split, once) and ``hpo confirm NAME`` (fresh seeds)."""

from __future__ import annotations

import argparse
import logging

from hpo.commands.common import open_study, positive
from hpo.engine.procs import pin_blas_threads
from hpo.errors import UsageError
from hpo.report.evaluate import AlreadyTested, choose_trial, confirm, evaluate_on_test
from hpo.report.listing import (
    CONFIRM_ATTR,
    dumps,
    format_confirm,
    n_finished,
    stale_note,
    state_names,
)

log = logging.getLogger("hpo.test")

def test_cmd(args: argparse.Namespace) -> int:
    """``hpo test NAME``: retrain the chosen trial and evaluate it on the test split, once."""
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
        record = evaluate_on_test(study, trial, force=args.force, data_dir=args.data_dir)
    except (AlreadyTested, ValueError) as e:
        raise UsageError(str(e)) from None
    if args.json:
        print(dumps(record, indent=2))
        return 0
    print(f"trial {record['trial']} | val acc {record['val_acc']:.4f} | "
          f"train acc {record['train_acc']:.4f} | test acc {record['test_acc']:.4f} "
          f"({record['n_test']} test images)")
    if not record["reproduced"]:
        log.warning("hpo test: warning: the retrained network's validation accuracy %.4f "
                    "differs from the stored %.4f", record["retrained_val_acc"], record["val_acc"])
    return 0


def confirm_cmd(args: argparse.Namespace) -> int:
    """``hpo confirm NAME``: retrain the top K configurations with fresh seeds."""
    positive("--top", args.top)
    if args.seeds < 2:
        raise UsageError(f"--seeds must be >= 2 (a standard error needs two), got {args.seeds}")
    study = open_study(args)
    pin_blas_threads()
    try:
        record = confirm(study, top=args.top, seeds=args.seeds, data_dir=args.data_dir)
    except ValueError as e:
        raise UsageError(str(e)) from None
    print(dumps(record, indent=2) if args.json else format_confirm(record))
    return 0
