"""The book's Best-N listing, and what is printed about a study.

``Best-1(val acc:0.86) | lr:0.009212978164927667, weight decay:4.585885333273752e-08``
is the book's line (section 6.5.3); hpo adds the final train accuracy and the train-validation gap
beside it, because "is Best-8, with a small gap and train accuracy below 100%, the one to pick?"
is the question the book leaves the reader with.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

BOOK_NAMES = {"weight_decay": "weight decay"}


@dataclass(frozen=True)
class Row:
    rank: int
    number: int
    val_acc: float
    train_acc: float | None
    params: dict[str, Any]
    diverged: bool

    @property
    def gap(self) -> float | None:
        return None if self.train_acc is None else self.train_acc - self.val_acc

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "trial": self.number, "val_acc": self.val_acc,
                "train_acc": self.train_acc, "gap": self.gap, "params": self.params,
                "diverged": self.diverged}


def ranked(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """COMPLETE trials, best validation accuracy first (ties: earlier trial first)."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None
            and math.isfinite(t.value)]
    return sorted(done, key=lambda t: (-t.value, t.number))


def rows_from_trials(trials: list[FrozenTrial]) -> list[Row]:
    """Every COMPLETE trial as a :class:`Row`, best first."""
    return [
        Row(rank=i + 1, number=t.number, val_acc=float(t.value),
            train_acc=t.user_attrs.get("train_acc"), params=dict(t.params),
            diverged=bool(t.user_attrs.get("diverged", False)))
        for i, t in enumerate(ranked(list(trials)))
    ]


def best_rows(study: optuna.Study, top: int = 10) -> list[Row]:
    return rows_from_trials(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))[:top]


def small_gap(row: Row, max_gap: float) -> bool:
    """True when the trial's train-validation gap is below ``max_gap`` (diverged trials, whose
    gap is chance minus chance, never count)."""
    return row.gap is not None and not row.diverged and row.gap < max_gap


def format_row(row: Row) -> str:
    """One line in the book's format, then train accuracy and gap."""
    params = ", ".join(f"{BOOK_NAMES.get(k, k)}:{v}" for k, v in row.params.items())
    line = f"Best-{row.rank}(val acc:{row.val_acc:.2f}) | {params}"
    if row.train_acc is not None:
        line += f" | train acc:{row.train_acc:.2f}, gap:{row.gap:+.2f}"
    if row.diverged:
        line += " | diverged"
    return line + f"  [trial {row.number}]"


def small_gap_rows(study: optuna.Study, max_gap: float, top: int = 10) -> list[Row]:
    """The best trials whose train-validation gap is below ``max_gap`` (the book's closing
    question: a trial that does not overfit), ranked among themselves."""
    rows = [r for r in best_rows(study, top=10**9) if small_gap(r, max_gap)]
    return [Row(i + 1, r.number, r.val_acc, r.train_acc, r.params, r.diverged)
            for i, r in enumerate(rows[:top])]


def edge_notes(study: optuna.Study) -> list[str]:
    """Warnings for a best trial sitting on an edge of the spec's search range."""
    from hpo.samplers import edge_warnings

    return [f"{w}: the optimum may lie outside it" for w in edge_warnings(study)]


def listing(study: optuna.Study, top: int = 10, max_gap: float | None = None) -> str:
    """The Best-N lines, then (when present) the small-gap ranking, the confirmation, the test
    result and edge warnings."""
    rows = best_rows(study, top)
    if not rows:
        return f"study {study.study_name!r} has no COMPLETE trials yet"
    lines = []
    small = {r.number for r in small_gap_rows(study, max_gap, top=10**9)} if max_gap else set()
    for r in rows:
        mark = f"  <- gap < {max_gap:g}" if r.number in small else ""
        lines.append(format_row(r) + mark)
    if max_gap is not None:
        picked = small_gap_rows(study, max_gap, top)
        lines.append("")
        lines.append(f"Best with train-val gap < {max_gap:g}:" if picked else
                     f"no COMPLETE trial has a train-val gap < {max_gap:g}")
        lines += [format_row(r).replace("Best-", "Gap-best-", 1) for r in picked]
    confirmed = study.user_attrs.get("hpo:confirm")
    if confirmed:
        from hpo.evaluate import format_confirm

        lines += ["", format_confirm(confirmed)]
    tested = study.user_attrs.get("hpo:test")
    if tested:
        lines += ["", f"Test (once, {tested['at']}): trial {tested['trial']} test acc "
                      f"{tested['test_acc']:.4f} on {tested['n_test']} images"]
    lines += [f"warning: {w}" for w in edge_notes(study)]
    return "\n".join(lines)


def listing_json(study: optuna.Study, top: int = 10, max_gap: float | None = None) -> str:
    counts = state_counts(study)
    out: dict[str, Any] = {"study": study.study_name, "trials": counts,
                           "best": [r.to_dict() for r in best_rows(study, top)]}
    if max_gap is not None:
        out["max_gap"] = max_gap
        out["best_small_gap"] = [r.to_dict() for r in small_gap_rows(study, max_gap, top)]
    for key, attr in (("confirm", "hpo:confirm"), ("test", "hpo:test")):
        if attr in study.user_attrs:
            out[key] = study.user_attrs[attr]
    out["warnings"] = edge_notes(study)
    return json.dumps(out, indent=2)


def state_counts(study: optuna.Study) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


# --- commands ---------------------------------------------------------------------------------


def _open(args) -> optuna.storages.RDBStorage:
    from hpo.storage import check_schema, get_storage, resolve_url

    url = resolve_url(args.storage)
    storage = get_storage(url)
    check_schema(storage, url)
    return storage


def best_cmd(args) -> int:
    """``hpo best NAME``: the Best-N listing (``--json`` for machines)."""
    from hpo.cli import UsageError
    from hpo.storage import load_study_spec

    if args.top < 1:
        raise UsageError(f"--top must be >= 1, got {args.top}")
    if args.max_gap is not None and args.max_gap <= 0:
        raise UsageError(f"--max-gap must be > 0, got {args.max_gap}")
    storage = _open(args)
    load_study_spec(storage, args.study)  # a clear error for unknown / foreign studies
    study = optuna.load_study(study_name=args.study, storage=storage)
    print(listing_json(study, args.top, args.max_gap) if args.json
          else listing(study, args.top, args.max_gap))
    return 0


def studies_cmd(args) -> int:
    """``hpo studies``: every study with its trial counts and best value."""
    from hpo.storage import SPEC_ATTR

    storage = _open(args)
    rows = []
    for s in sorted(storage.get_all_studies(), key=lambda s: s.study_name):
        trials = storage.get_all_trials(s._study_id, deepcopy=False)
        counts: dict[str, int] = {}
        for t in trials:
            counts[t.state.name] = counts.get(t.state.name, 0) + 1
        done = [t.value for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
        spec = s.user_attrs.get(SPEC_ATTR, {})
        rows.append({
            "study": s.study_name,
            "sampler": spec.get("sampler", {}).get("name", "?"),
            "budget": spec.get("budget", {}).get("n_trials"),
            "trials": counts,
            "best_val_acc": max(done) if done else None,
        })
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no studies")
        return 0
    width = max(len(r["study"]) for r in rows)
    print(f"{'study':<{width}}  {'sampler':<9} {'complete':>8} {'pruned':>6} {'fail':>4} "
          f"{'running':>7} {'budget':>6}  best val acc")
    for r in rows:
        c = r["trials"]
        best = "-" if r["best_val_acc"] is None else f"{r['best_val_acc']:.3f}"
        print(f"{r['study']:<{width}}  {r['sampler']:<9} {c.get('COMPLETE', 0):>8} "
              f"{c.get('PRUNED', 0):>6} {c.get('FAIL', 0):>4} {c.get('RUNNING', 0):>7} "
              f"{r['budget'] or '-':>6}  {best}")
    return 0
