"""Warm start, the book's "search again" across studies: a new study begins with the best
configurations of an earlier one (``hpo run SPEC --warm-start STUDY``).

The earlier study's best ``top`` COMPLETE trials are enqueued in the new study as its first
trials (Optuna's ``enqueue_trial``; WAITING until a worker runs them, and they count toward the
budget like any trial). Only the params the new spec searches are carried over, and only values
inside its ranges; the others are drawn by the sampler (never clipped: an lr at the edge of the
new range is another configuration, not the earlier one). ``hpo run`` says, per configuration,
whether it runs as it was, with which params re-drawn and why, or is skipped (none of its params
fits the new space). Each enqueued trial records where it came from (user attribute
``hpo:warm_start``: ``"STUDY#N"``), and the new study records the whole warm start (user
attribute ``hpo:warm_start``). A study that already holds trials is not warm started again.

A study of a user's own objective (``[objective]``) ranks in its own direction, and its
function may ask for params the spec does not declare (define-by-run): those are carried as
they were (an enqueued trial hands a fixed value to whichever ``suggest_*`` asks for its name,
and a name the new function never asks for is simply unused); the params the spec declares
follow the rule above.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from hpo.db.keys import WARM_ATTR
from hpo.report.listing import BOOK_NAMES, fmt_param, fmt_params
from hpo.samplers.ranking import best_first
from hpo.spec import Param, Spec

#: How many of the earlier study's best configurations ``--warm-start`` carries by default.
WARM_TOP = 5


def fits(p: Param, value: Any) -> bool:
    """Whether ``value`` is one the new spec's param ``p`` can take."""
    if p.type == "categorical":
        return value in p.choices
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    assert p.low is not None and p.high is not None
    if p.type == "int" and not float(value).is_integer():
        return False
    return p.low <= value <= p.high


def why_not(p: Param | None, value: Any) -> str:
    """Why ``value`` is not carried into the new spec's param ``p`` (None: not searched)."""
    if p is None:
        return "not searched by the new spec"
    if p.type == "categorical":
        return f"{value!r} is not one of {list(p.choices)}"
    return (f"{fmt_param(value)} is outside the new range [{fmt_param(p.low)}, "
            f"{fmt_param(p.high)}]")


@dataclass
class Carry:
    """What becomes of one of the earlier study's configurations in the new study."""

    number: int  # the source trial
    value: float
    params: dict[str, Any]  # carried as they were
    redrawn: dict[str, str] = field(default_factory=dict)  # param -> why it is drawn anew
    #: carried params the new spec does not declare (a user's function, define-by-run): fixed
    #: only if the new function asks for them by that name
    undeclared: tuple[str, ...] = ()

    @property
    def skipped(self) -> bool:
        return not self.params

    def line(self) -> str:
        """``trial 7 as it was: lr:0.009, weight decay:1e-06``, ``trial 3 with lr re-drawn
        (0.385 is outside the new range [0.001, 0.002]), weight decay:1.357e-06 kept`` or
        ``trial 5 skipped: ...``."""
        why = "; ".join(f"{BOOK_NAMES.get(k, k)} {r}" for k, r in self.redrawn.items())
        if self.skipped:
            return f"trial {self.number} skipped: none of its params fits ({why})"
        note = ""
        if self.undeclared:
            names = ", ".join(BOOK_NAMES.get(k, k) for k in self.undeclared)
            note = (f" ({names} not declared by the new spec: used only if its function asks "
                    "for them)")
        if not self.redrawn:
            return f"trial {self.number} as it was: {fmt_params(self.params)}{note}"
        names = ", ".join(BOOK_NAMES.get(k, k) for k in self.redrawn)
        return (f"trial {self.number} with {names} re-drawn by the sampler ({why}); kept "
                f"{fmt_params(self.params)}{note}")


def plan(spec: Spec, configs: Sequence[FrozenTrial]) -> list[Carry]:
    """What each of ``configs`` becomes in a study of ``spec``: its params that the new space
    can take (for a user's objective also those its spec does not declare: define-by-run),
    and why the others are re-drawn."""
    space = {p.name: p for p in spec.suggest_space()}
    define_by_run = spec.objective is not None
    out = []
    for t in configs:
        keep = {k: v for k, v in t.params.items()
                if (fits(space[k], v) if k in space else define_by_run)}
        why = {k: why_not(space.get(k), v) for k, v in t.params.items() if k not in keep}
        out.append(Carry(t.number, float(t.value), keep, why,
                         tuple(k for k in keep if k not in space)))
    return out


def carried(spec: Spec, trial: FrozenTrial) -> dict[str, Any]:
    """The params of ``trial`` that the new spec searches, with values inside its ranges."""
    return plan(spec, [trial])[0].params


def best_configs(source: optuna.Study, top: int) -> list[FrozenTrial]:
    """The best ``top`` COMPLETE trials of ``source``, best first in its direction."""
    return best_first(source.get_trials(deepcopy=False), source.direction)[:top]


def warm_start(study: optuna.Study, spec: Spec, source_name: str,
               configs: Sequence[FrozenTrial]) -> list[Carry] | None:
    """Enqueue ``configs`` (trials of the study ``source_name``) as the first trials of a study
    that holds none yet; returns what became of each (:class:`Carry`; skipped ones were not
    enqueued), or None when the study already has trials (nothing enqueued)."""
    if study.get_trials(deepcopy=False):
        return None
    carries = plan(spec, configs)
    for c in carries:
        if not c.skipped:
            study.enqueue_trial(c.params, user_attrs={WARM_ATTR: f"{source_name}#{c.number}"},
                                skip_if_exists=True)
    study.set_user_attr(WARM_ATTR, {
        "study": source_name,
        "trials": [c.number for c in carries if not c.skipped],
        "values": [c.value for c in carries if not c.skipped],
        "redrawn": {str(c.number): c.redrawn for c in carries if c.redrawn and not c.skipped},
        "skipped": {str(c.number): c.redrawn for c in carries if c.skipped},
    })
    return carries


def describe(source_name: str, carries: Sequence[Carry]) -> list[str]:
    """What ``hpo run --warm-start`` prints (stderr): a headline, then one line per
    configuration."""
    run = [c for c in carries if not c.skipped]
    exact = sum(not c.redrawn for c in run)
    head = (f"warm start from {source_name!r}: {len(run)} of its best {len(carries)} "
            f"configuration(s) run first ({exact} as they were, {len(run) - exact} with params "
            f"re-drawn, {len(carries) - len(run)} skipped):")
    return [head] + [f"  {c.line()}" for c in carries]
