"""``hpo best [NAME]`` (the book's Best-N listing) and ``hpo studies`` (every study)."""

from __future__ import annotations

import argparse
import math
import sys

import optuna

from hpo.commands.common import open_storage, open_study, positive
from hpo.db import optuna_private as oc
from hpo.db.storage import stored_spec, study_spec
from hpo.errors import UsageError
from hpo.report.listing import dumps, rows_from_trials, state_names, study_summary


def best(args: argparse.Namespace) -> int:
    """``hpo best [NAME]``: the Best-N listing (``--json`` for machines)."""
    positive("--top", args.top)
    if args.max_gap is not None and not (math.isfinite(args.max_gap) and args.max_gap > 0):
        raise UsageError(f"--max-gap must be > 0, got {args.max_gap}")
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


def studies(args: argparse.Namespace) -> int:
    """``hpo studies``: every study with its trial counts and best value."""
    storage = open_storage(args)
    rows = []
    for s in sorted(storage.get_all_studies(), key=lambda s: s.study_name):
        trials = storage.get_all_trials(oc.study_id(s), deepcopy=False)
        best_row = rows_from_trials(trials)[:1]
        spec = stored_spec(s.system_attrs, s.user_attrs) or {}
        rows.append({
            "study": s.study_name,
            "sampler": spec.get("sampler", {}).get("name", "?"),
            "budget": spec.get("budget", {}).get("n_trials"),
            "trials": state_names(trials),
            "best_val_acc": best_row[0].val_acc if best_row else None,
        })
    if args.json:
        print(dumps(rows, indent=2))
        return 0
    if not rows:
        print("no studies")
        return 0
    width = max(len(r["study"]) for r in rows)
    print(f"{'study':<{width}}  {'sampler':<9} {'complete':>8} {'pruned':>6} {'fail':>4} "
          f"{'running':>7} {'budget':>6}  best val acc")
    for r in rows:
        c = r["trials"]
        best_acc = "-" if r["best_val_acc"] is None else f"{r['best_val_acc']:.3f}"
        print(f"{r['study']:<{width}}  {r['sampler']:<9} {c.get('COMPLETE', 0):>8} "
              f"{c.get('PRUNED', 0):>6} {c.get('FAIL', 0):>4} {c.get('RUNNING', 0):>7} "
              f"{r['budget'] or '-':>6}  {best_acc}")
    return 0
