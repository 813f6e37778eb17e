"""The book's Best-N listing: one path for ``hpo best``, ``hpo report``, the dashboard note and
``hpo compare``.

``Best-1(val acc:0.86) | lr:0.009212978164927667, weight decay:4.585885333273752e-08``
is the book's line (section 6.5.3); hpo prints params as a person reads them (``lr:0.009213``,
:func:`fmt_param`) and adds the final train accuracy and the train-validation gap beside it,
because "is Best-8, with a small gap and train accuracy below 100%, the one to pick?" is the
question the book leaves the reader with. :func:`summary` gathers everything said about
a study (rows, small-gap rows, edge warnings, the confirmation and the test result) once;
:class:`Summary` renders it as text, JSON or Markdown (report.html's HTML: :mod:`hpo.report.page`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from hpo.catalog import DEFAULT_DIRECTION
from hpo.db.keys import CONFIRM_ATTR, TEST_ATTR
from hpo.db.storage import study_spec
from hpo.errors import SpecError
from hpo.report.metric import BOOK, Metric, metric_of
from hpo.samplers.edges import EDGE_FRACTION, trial_edge_warnings
from hpo.samplers.ranking import best_first
from hpo.spec import from_dict

BOOK_NAMES = {"weight_decay": "weight decay"}
#: How many Best-N lines ``hpo run``, ``hpo best`` and ``hpo report`` list by default: the
#: book's figure shows the top 20 trials (``graph_draw_num = 20``).
TOP = 20
#: Significant digits of a float param in text (``lr:0.009213``) and of every float in JSON.
TEXT_DIGITS = 4
JSON_DIGITS = 12
#: Chance level of every hpo dataset (ten digit classes), and the final train accuracy below
#: which a trial "learned nothing" and never counts as a small-gap trial (twice chance).
CHANCE = 0.1
LEARNED_MIN = 2 * CHANCE
#: How many trials the "Best with train-val gap < G" section of best.md and the page lists.
GAP_LIST = 5
EDGE_SUFFIX = ": the optimum may lie outside it"


def round_sig(x: float, digits: int) -> float:
    """``x`` rounded to ``digits`` significant digits (non-finite values unchanged)."""
    return float(f"{x:.{digits}g}") if math.isfinite(x) else x


def fmt_param(value: Any) -> str:
    """A param as a person reads it: floats to :data:`TEXT_DIGITS` significant digits, without
    binary noise (``0.15`` not ``0.15000000000000002``, ``0.009213``, ``2.56e-08``); other values
    as they are."""
    if isinstance(value, float):
        return repr(round_sig(value, TEXT_DIGITS))
    return str(value)


def fmt_params(params: Mapping[str, Any]) -> str:
    """Params as every text line shows them (``hpo best``, ``hpo worker``, warm-start lines):
    ``lr:0.0008289, weight decay:2.56e-08`` (:func:`fmt_param`, the book's names)."""
    return ", ".join(f"{BOOK_NAMES.get(k, k)}:{fmt_param(v)}" for k, v in params.items())


def clean_floats(obj: Any, digits: int = JSON_DIGITS) -> Any:
    """``obj`` with every float (in dicts, lists and tuples, recursively) rounded to ``digits``
    significant digits: what JSON output carries (``0.165``, not ``0.16500000000000004``)."""
    if isinstance(obj, float):
        return round_sig(obj, digits)
    if isinstance(obj, Mapping):
        return {k: clean_floats(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_floats(v, digits) for v in obj]
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` of :func:`clean_floats` (``hpo best --json``, ``hpo studies --json``)."""
    return json.dumps(clean_floats(obj), **kwargs)


@dataclass(frozen=True)
class Row:
    rank: int
    number: int
    value: float  # the study's metric (the book's: final validation accuracy)
    train_acc: float | None
    params: dict[str, Any]
    diverged: bool

    @property
    def val_acc(self) -> float:
        """The value under the book's name (a book study's value is its validation accuracy)."""
        return self.value

    @property
    def gap(self) -> float | None:
        return None if self.train_acc is None else self.train_acc - self.value

    def to_dict(self, metric: Metric = BOOK) -> dict[str, Any]:
        """The row for JSON: the value under the metric's name (``val_acc``); ``train_acc`` and
        ``gap`` for the book's metric, or when the trial recorded a train accuracy."""
        out: dict[str, Any] = {"rank": self.rank, "trial": self.number, metric.name: self.value}
        if metric.book or self.train_acc is not None:
            out.update(train_acc=self.train_acc, gap=self.gap)
        out.update(params=self.params, diverged=self.diverged)
        return out


def state_names(trials: Sequence[FrozenTrial]) -> dict[str, int]:
    """How many trials are in each state, by the state's name ({"COMPLETE": 98, ...})."""
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


#: The one ranking of trials (:func:`hpo.samplers.ranking.best_first`), under the name the
#: report modules and the warm start use: ``ranked(trials, direction)``, the book's maximize
#: when no direction is given.
ranked = best_first


def rows_from_trials(trials: Sequence[FrozenTrial],
                     direction: Any = DEFAULT_DIRECTION) -> list[Row]:
    """Every COMPLETE trial as a :class:`Row`, best first in ``direction``."""
    return [
        Row(rank=i + 1, number=t.number, value=float(t.value),  # type: ignore[arg-type]
            train_acc=t.user_attrs.get("train_acc"), params=dict(t.params),
            diverged=bool(t.user_attrs.get("diverged", False)))
        for i, t in enumerate(best_first(trials, direction))
    ]


rows = rows_from_trials


def best_rows(study: optuna.Study, top: int = TOP) -> list[Row]:
    return rows_from_trials(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
                            study.direction)[:top]


def learned(row: Row) -> bool:
    """False for a trial that learned nothing: its final train accuracy is below
    :data:`LEARNED_MIN` (twice chance on every hpo dataset, all of ten classes). Such a trial's
    small gap is chance minus chance, not a sign that it does not overfit."""
    return row.train_acc is not None and not row.diverged and row.train_acc >= LEARNED_MIN


def small_gap(row: Row, max_gap: float) -> bool:
    """True when the trial's train-validation gap is below ``max_gap`` and it learned something
    (:func:`learned`: diverged trials and trials at chance level never count)."""
    return row.gap is not None and learned(row) and row.gap < max_gap


def format_row(row: Row, metric: Metric = BOOK) -> str:
    """One line in the book's format (``Best-1(val acc:0.86) | lr:...``; another metric under
    its own name), then train accuracy and gap when the trial recorded them."""
    line = f"Best-{row.rank}({metric.label}:{metric.fmt(row.value)}) | {fmt_params(row.params)}"
    if row.train_acc is not None:
        line += f" | train acc:{row.train_acc:.2f}, gap:{row.gap:+.2f}"
    if row.diverged:
        line += " | diverged"
    return line + f"  [trial {row.number}]"


def gap_mark(max_gap: float) -> str:
    """The suffix of a listing line whose gap is below ``max_gap``."""
    return f"  <- gap < {max_gap:g}"


def small_gap_rows(all_rows: Sequence[Row], max_gap: float, top: int) -> list[Row]:
    """The best rows whose train-validation gap is below ``max_gap`` and that learned something
    (the book's closing question: a trial that does not overfit). Each keeps its overall rank:
    ``Best-4`` is the same trial in every listing."""
    return [r for r in all_rows if small_gap(r, max_gap)][:top]


# --- edge warnings ----------------------------------------------------------------------------


def search_limits(spec: Mapping[str, Any]) -> dict[str, BaseDistribution]:
    """The hard limits of each numeric param of a spec (as a dict, ``hpo:spec``): the space the
    objective asks for (:meth:`hpo.spec.Spec.suggest_space`: ``[search]``, widened to
    ``[sampler.bounds]`` where a narrowing spec moves outward). A best value at the edge of
    *these* says the search was too narrow. Empty for a spec this hpo cannot read."""
    space_keys = {k: spec[k] for k in ("search", "sampler", "objective") if k in spec}
    try:
        space = from_dict(space_keys, source="the study's spec", stored=True).suggest_space()
    except SpecError:
        return {}
    limits: dict[str, BaseDistribution] = {}
    for p in space:
        if p.type == "float":
            limits[p.name] = FloatDistribution(p.low, p.high, log=p.log, step=p.step)
        elif p.type == "int":
            limits[p.name] = IntDistribution(p.low, p.high, log=p.log, step=p.step or 1)
    return limits


def edge_warnings(trials: Sequence[FrozenTrial], spec: Mapping[str, Any],
                  direction: Any = None) -> list[str]:
    """Messages for each numeric param of the best trial (in ``direction``, else the spec's:
    :func:`metric_of`) that sits within :data:`~hpo.catalog.EDGE_FRACTION` of its range's width
    (log10 space for log params) of an edge of the spec's search limits (:func:`search_limits`),
    e.g. "lr=0.0095 sits at the upper edge of its original range [1e-06, 0.01]: the optimum may
    lie outside it"."""
    best = best_first(trials, metric_of(spec, direction).direction)
    if not best:
        return []
    messages = trial_edge_warnings(best[0], search_limits(spec), EDGE_FRACTION)
    return [m + EDGE_SUFFIX for m in messages]


# --- what hpo confirm and hpo test stored -------------------------------------------------------


FINISHED = ("COMPLETE", "PRUNED")


def n_finished(counts: Mapping[str, int]) -> int:
    """Finished trials (COMPLETE and PRUNED) of :func:`state_names` counts."""
    return sum(counts.get(s, 0) for s in FINISHED)


def made_at(record: Mapping[str, Any]) -> str:
    """When a stored result was made: its date and the number of finished trials the study held
    then (``2026-12-07T07:00:00+00:00, at 30 finished trials``)."""
    then = record.get("n_finished")
    text = str(record.get("at", "?"))
    return text + (f", at {then} finished trials" if then is not None else
                   ", trial count not recorded")


def stale_note(record: Mapping[str, Any], what: str, again: str,
               finished_now: int | None) -> str | None:
    """One line when ``record`` was made before the study's latest trials (the study has moved
    on since): ``STALE: ...``; None when it is current or cannot be told."""
    then = record.get("n_finished")
    if finished_now is None or then is None or finished_now <= then:
        return None
    return (f"STALE: {what} was made at {then} finished trials; the study now holds "
            f"{finished_now}: run `{again}` again to include the new trials")


def record_metric(record: Mapping[str, Any]) -> Metric:
    """The metric a stored ``hpo confirm`` / ``hpo test`` result is in: a user's objective's
    (its ``metric`` and ``direction`` keys), else the book's validation accuracy."""
    if "metric" not in record:
        return BOOK
    return Metric(str(record["metric"]), str(record.get("direction") or DEFAULT_DIRECTION))


def format_confirm(record: Mapping[str, Any], finished_now: int | None = None) -> str:
    """The ``hpo confirm`` result: each configuration's mean over fresh seeds, best first (in
    the study's direction), with when it was made; marked STALE when the study holds more
    finished trials now. A user's objective's is named by its metric."""
    m = record_metric(record)
    if m.book:
        lines = [f"Confirmed ({made_at(record)}) over {record['n_seeds']} fresh seeds each "
                 f"(mean ± standard error; noise floor: one configuration's val acc moves by "
                 f"±{record['noise_floor_std']:.3f} (std) across seeds on {record['n_val']} "
                 f"validation images):"]
    else:
        lines = [f"Confirmed ({made_at(record)}) over {record['n_seeds']} fresh seeds each "
                 f"(mean ± standard error, {m.order}; noise floor: one configuration's "
                 f"{m.name} moves by ±{record['noise_floor_std']:.4g} (std) across seeds):"]
    stale = stale_note(record, "this confirmation", "hpo confirm", finished_now)
    if stale:
        lines.insert(0, stale)
    for i, r in enumerate(record["rows"], 1):
        if m.book:
            lines.append(f"Confirmed-{i}(val acc:{r['mean']:.3f} ± {r['sem']:.3f}) | "
                         f"{fmt_params(r['params'])} | search val acc:"
                         f"{r['search_val_acc']:.2f}  [trial {r['trial']}]")
        else:
            lines.append(f"Confirmed-{i}({m.label}:{m.fmt(r['mean'])} ± {r['sem']:.2g}) | "
                         f"{fmt_params(r['params'])} | search {m.label}:"
                         f"{m.fmt(r['search_value'])}  [trial {r['trial']}]")
    return "\n".join(lines)


def format_test(record: Mapping[str, Any], finished_now: int | None = None) -> str:
    """The ``hpo test`` result in one line (two when it is STALE)."""
    m = record_metric(record)
    if m.book:
        line = (f"Test (once, {made_at(record)}): trial {record['trial']} test acc "
                f"{record['test_acc']:.4f} on {record['n_test']} images")
    else:
        line = (f"Test (once, {made_at(record)}): trial {record['trial']} test {m.label} "
                f"{m.fmt(record['test_value'])} (search {m.label} {m.fmt(record['value'])})")
    stale = stale_note(record, "this test result", "hpo test --force", finished_now)
    return f"{stale}\n{line}" if stale else line


# --- the summary --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """Everything hpo says about a study's best trials, rendered by its methods."""

    study: str
    n_trials: int
    rows: list[Row]  # every COMPLETE trial, best first
    top: int
    max_gap: float | None
    warnings: list[str]
    confirm: dict[str, Any] | None = None
    test: dict[str, Any] | None = None
    counts: dict[str, int] = field(default_factory=dict)
    metric: Metric = BOOK

    @property
    def n_complete(self) -> int:
        return len(self.rows)

    @property
    def listing(self) -> list[str]:
        """The Best-``top`` lines, marked where the gap is below ``max_gap``."""
        lines = []
        for r in self.rows[:self.top]:
            line = format_row(r, self.metric)
            if self.max_gap is not None and small_gap(r, self.max_gap):
                line += gap_mark(self.max_gap)
            lines.append(line)
        return lines

    @property
    def small_gap(self) -> list[str]:
        """The best ``GAP_LIST`` lines with a gap below ``max_gap`` (their overall ranks)."""
        if self.max_gap is None:
            return []
        return [format_row(r, self.metric) for r in self.rows
                if small_gap(r, self.max_gap)][:GAP_LIST]

    @property
    def after(self) -> list[str]:
        """What ``hpo confirm`` (with the noise floor) and ``hpo test`` stored."""
        now = n_finished(self.counts)
        lines = format_confirm(self.confirm, now).splitlines() if self.confirm else []
        return lines + (format_test(self.test, now).splitlines() if self.test else [])

    # ---------------------------------------------------------------- renderings

    def text(self) -> str:
        """``hpo best``: the Best-N lines, then (when present) the small-gap ranking, the
        confirmation and the test result. The edge warnings are not in it: commands print them
        to stderr (:meth:`warning_lines`)."""
        if not self.rows:
            return f"study {self.study!r} has no COMPLETE trials yet"
        lines = list(self.listing)
        if self.max_gap is not None:
            picked = small_gap_rows(self.rows, self.max_gap, self.top)
            lines.append("")
            lines.append(f"{self.gap_title()} (overall ranks):" if picked else
                         self.no_gap_text())
            lines += [format_row(r, self.metric) for r in picked]
        if self.confirm:
            lines += ["", format_confirm(self.confirm, n_finished(self.counts))]
        if self.test:
            lines += ["", format_test(self.test, n_finished(self.counts))]
        return "\n".join(lines)

    def warning_lines(self, who: str) -> list[str]:
        """The edge warnings as every command prints them, on stderr:
        ``hpo best: warning: lr=0.385 sits at the upper edge ...``."""
        return [f"{who}: warning: {w}" for w in self.warnings]

    def json(self) -> str:
        """``hpo best --json``."""
        out: dict[str, Any] = {"study": self.study, "trials": self.counts,
                               "best": [r.to_dict(self.metric) for r in self.rows[:self.top]]}
        if self.max_gap is not None:
            out["max_gap"] = self.max_gap
            out["best_small_gap"] = [r.to_dict(self.metric) for r in
                                     small_gap_rows(self.rows, self.max_gap, self.top)]
        now = n_finished(self.counts)
        if self.confirm:
            out["confirm"] = {**self.confirm, "stale": stale_note(self.confirm, "", "", now)
                              is not None}
        if self.test:
            out["test"] = {**self.test, "stale": stale_note(self.test, "", "", now) is not None}
        out["warnings"] = self.warnings
        return dumps(out, indent=2)

    @property
    def has_train_acc(self) -> bool:
        """Whether the rows carry the book's train accuracy (and so a gap): a user's objective
        that records no ``train_acc`` has none, and its listing says nothing about them."""
        return any(r.train_acc is not None for r in self.rows)

    def ranked_by(self) -> str:
        """What the rows are ranked by, in words (the book's: ``final validation accuracy``)."""
        if self.metric == BOOK:
            return "final validation accuracy"
        return f"{self.metric.name} ({self.metric.order})"

    def header(self) -> str:
        if self.metric == BOOK or self.has_train_acc:
            then = ("the book's listing, then the final training accuracy and the "
                    "train-validation gap")
        else:
            then = "in the book's listing format"
        text = (f"{self.n_complete} COMPLETE of {self.n_trials} trials, ranked by "
                f"{self.ranked_by()}; each line is {then}.")
        if self.max_gap is not None:
            text += (f" Lines marked `<- gap < {self.max_gap:g}` have a gap below "
                     f"{self.max_gap:g} (diverged trials and trials that learned nothing, "
                     f"train acc below {LEARNED_MIN:.2f}, never count).")
        return text

    def gap_title(self) -> str:
        return f"Best with train-val gap < {self.max_gap:g}"

    def no_gap_text(self) -> str:
        return (f"No COMPLETE trial that learned something (train acc >= {LEARNED_MIN:.2f}) has "
                f"a train-validation gap below {self.max_gap:g}.")

    def markdown(self) -> str:
        """The summary as Markdown (best.md, the optuna-dashboard note)."""
        parts = [f"# Best-{len(self.listing)} of study `{self.study}`", "", self.header(), ""]
        if self.warnings:
            parts += ["**Edge warning:**", ""] + [f"- {w}" for w in self.warnings] + [""]
        parts += ["```text", *(self.listing or ["no COMPLETE trials yet"]), "```", ""]
        if self.max_gap is not None:
            parts += [f"## {self.gap_title()}", ""]
            parts += (["```text", *self.small_gap, "```"] if self.small_gap
                      else [self.no_gap_text()])
            parts.append("")
        if self.after:
            parts += ["## Confirmation and test", "", "```text", *self.after, "```", ""]
        return "\n".join(parts)


def summary(
    trials: Sequence[FrozenTrial],
    spec: Mapping[str, Any],
    study: str,
    top: int | None = TOP,
    max_gap: float | None = None,
    user_attrs: Mapping[str, Any] | None = None,
    direction: Any = None,
) -> Summary:
    """Everything said about a study's best trials, from its trials, its spec (as a dict: its
    metric and direction, :func:`metric_of`; ``direction``, the study's own, wins when given)
    and its user attributes (``hpo:confirm``, ``hpo:test``)."""
    attrs = user_attrs or {}
    metric = metric_of(spec, direction)
    return Summary(study=study, n_trials=len(trials),
                   rows=rows_from_trials(trials, metric.direction),
                   top=TOP if top is None else top,
                   max_gap=max_gap, warnings=edge_warnings(trials, spec, metric.direction),
                   confirm=attrs.get(CONFIRM_ATTR), test=attrs.get(TEST_ATTR),
                   counts=state_names(trials), metric=metric)


def study_summary(study: optuna.Study, spec: Mapping[str, Any] | None = None,
                  top: int | None = TOP, max_gap: float | None = None) -> Summary:
    """:func:`summary` of a live study (one read of its trials); ``spec`` defaults to the one
    the study records."""
    attrs = study.user_attrs
    spec = (study_spec(study) or {}) if spec is None else spec
    return summary(study.get_trials(deepcopy=False), spec, study.study_name, top, max_gap, attrs,
                   study.direction)


def listing(study: optuna.Study, top: int | None = TOP, max_gap: float | None = None) -> str:
    """The text ``hpo best`` prints for a study."""
    return study_summary(study, None, top, max_gap).text()
