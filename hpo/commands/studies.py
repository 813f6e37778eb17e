"""``hpo studies``: every study in the storage, with its trial counts and best value."""

from __future__ import annotations

import argparse

from hpo.commands import flags
from hpo.commands.common import open_storage

HELP = "list the studies in the storage"


def add_arguments(p: flags.Parser) -> None:
    flags.storage(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")


def studies(args: argparse.Namespace) -> int:
    """``hpo studies``: every study with its trial counts and best value."""
    from hpo.db import optuna_private as oc
    from hpo.db.storage import stored_spec
    from hpo.report.listing import dumps, rows_from_trials, state_names
    from hpo.report.metric import METRIC_NAME, metric_of

    storage = open_storage(args)
    rows = []
    for s in sorted(storage.get_all_studies(), key=lambda s: s.study_name):
        trials = storage.get_all_trials(oc.study_id(s), deepcopy=False)
        # the best in the study's own direction; none for a multi-objective study (no one best)
        best_row = rows_from_trials(trials, s.directions[0])[:1] if len(s.directions) == 1 \
            else []
        spec = stored_spec(s.system_attrs, s.user_attrs) or {}
        metric = metric_of(spec).name if spec else "value"  # a study hpo did not make: value
        best = best_row[0].val_acc if best_row else None
        rows.append({
            "study": s.study_name,
            "sampler": spec.get("sampler", {}).get("name", "?"),
            "budget": spec.get("budget", {}).get("n_trials"),
            "trials": state_names(trials),
            "metric": metric,
            "best_value": best,
            "best_val_acc": best if metric == METRIC_NAME else None,
        })
    if args.json:
        print(dumps(rows, indent=2))
        return 0
    if not rows:
        print("no studies")
        return 0
    width = max(len(r["study"]) for r in rows)
    book = all(r["metric"] == METRIC_NAME for r in rows)  # else each value names its metric
    print(f"{'study':<{width}}  {'sampler':<9} {'complete':>8} {'pruned':>6} {'fail':>4} "
          f"{'running':>7} {'budget':>6}  {'best val acc' if book else 'best'}")
    for r in rows:
        c = r["trials"]
        value = r["best_value"]
        best_acc = ("-" if value is None else f"{value:.3f}" if book
                    else f"{value:.4g} {r['metric']}")
        print(f"{r['study']:<{width}}  {r['sampler']:<9} {c.get('COMPLETE', 0):>8} "
              f"{c.get('PRUNED', 0):>6} {c.get('FAIL', 0):>4} {c.get('RUNNING', 0):>7} "
              f"{r['budget'] or '-':>6}  {best_acc}")
    return 0
