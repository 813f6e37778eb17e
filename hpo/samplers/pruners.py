"""Pruners by name, the epochs they act at, and a median pruner that reads the storage once
per trial instead of once per report.

Optuna's :class:`~optuna.pruners.MedianPruner` (a :class:`~optuna.pruners.PercentilePruner`)
calls ``study.get_trials(states=(COMPLETE,))`` at *every* ``should_prune``: on an RDBStorage
that is a storage read (seven SQL queries on PostgreSQL, even when incremental) per report, up
to ten per trial with hpo's default median settings. A COMPLETE trial never changes, so
:class:`MedianPruner` here takes one snapshot of the study's COMPLETE trials per trial and
answers every report of that trial from it, with Optuna's own decision rule.

The snapshot is, in order of preference, the trials Optuna itself already read for this trial
(``Study._get_trials(use_cache=True)``: the per-trial cache that ``study.ask()`` resets and the
samplers — TPE, QMC, CMA-ES, the narrowing sampler's stage waits — fill), or else one read at
the trial's first report. A cached list only counts when it was read after the trial was created
(it holds the trial's own number), so a snapshot never predates its trial.

Decisions:

* **One worker**: identical to Optuna's MedianPruner. No trial completes while the current one
  runs, so the snapshot holds exactly the COMPLETE trials Optuna would read at each report.
* **W workers**: a trial completed by another worker *while this trial runs* (after its
  snapshot) is seen from this worker's next trial on, not at this trial's later reports. The
  median then rests on at most W - 1 fewer trials per step; the rule is unchanged.

Hyperband and successive halving are left as Optuna ships them: ``HyperbandPruner`` builds a
per-bracket view of the study on the same storage (``_filter_study``) and successive halving
reads the trials of its rung; hpo reports to them only at their rungs (a few reports per trial).
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Container, Mapping
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo import catalog
from hpo.db import optuna_private as oc

__all__ = ["MedianPruner", "make_pruner", "report_steps"]

_COMPLETE = (TrialState.COMPLETE,)


class _CompletedView:
    """The study as ``PercentilePruner.prune`` sees it: ``get_trials`` of COMPLETE trials
    answers from the snapshot; everything else is the real study's."""

    def __init__(self, study: optuna.Study, completed: list[FrozenTrial]) -> None:
        self._study = study
        self._completed = completed

    def get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        if states is None or any(s in states for s in TrialState if s != TrialState.COMPLETE):
            return self._study.get_trials(deepcopy=deepcopy, states=states)
        trials = self._completed if TrialState.COMPLETE in states else []
        return copy.deepcopy(trials) if deepcopy else list(trials)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


class MedianPruner(optuna.pruners.MedianPruner):
    """:class:`optuna.pruners.MedianPruner` with one storage read per trial, not per report.

    Same arguments, same rule (see the module docstring for what a snapshot per trial changes
    with several workers)."""

    # (storage id, study id, trial id) -> that trial's COMPLETE trials; one trial at a time, set
    # by one assignment (no lock, so the pruner stays picklable)
    _snapshot: tuple[tuple[int, int, int], list[FrozenTrial]] | None = None

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        return super().prune(_CompletedView(study, self._completed(study, trial)), trial)

    def _completed(self, study: optuna.Study, trial: FrozenTrial) -> list[FrozenTrial]:
        key = (id(oc.storage_of(study)), oc.study_id(study), oc.trial_id(trial))
        snapshot = self._snapshot
        if snapshot is not None and snapshot[0] == key:
            return snapshot[1]
        trials: list[FrozenTrial] | None = oc.cached_trials(study)
        # holding a number >= the trial's, it was read after the trial was created; otherwise
        # it is a stale list (this study object did not ask for the trial)
        if not any(t.number >= trial.number for t in reversed(trials)):
            trials = None
        if trials is None:
            trials = study.get_trials(deepcopy=False)
        completed = [t for t in trials if t.state == TrialState.COMPLETE]
        self._snapshot = (key, completed)
        return completed


def make_pruner(name: str, options: Mapping[str, Any], epochs: int) -> optuna.pruners.BasePruner:
    """The pruner called ``name`` (:data:`hpo.catalog.PRUNERS`) with hpo's defaults and
    ``options``; unknown options and bad values raise ValueError naming the allowed ones.

    "median" is :class:`MedianPruner`: Optuna's rule with one storage read per trial instead of
    one per report; hyperband and successive-halving are Optuna's own."""

    component = catalog.PRUNERS.get(name)
    if component is None:
        raise ValueError(f"unknown pruner {name!r}; allowed: {', '.join(catalog.PRUNER_NAMES)}")
    bad = [k for k in options if k not in component.option_names]
    if bad:
        raise ValueError(f"pruner {name!r} has no option {bad[0]!r}; allowed: "
                         f"{', '.join(component.option_names) or 'none'}")
    try:
        checked = component.check(options, context={"epochs": epochs})
    except catalog.OptionError as e:
        raise ValueError(f"pruner {name!r}: {e}") from None
    module, _, cls = component.target.partition(":")
    return getattr(importlib.import_module(module), cls)(
        **catalog.pruner_kwargs(name, checked, epochs))


def report_steps(pruner: str, options: Mapping[str, Any], epochs: int) -> frozenset[int]:
    """The epochs at which ``pruner`` can act: only those are reported to the storage.

    median: every ``interval_steps`` epochs after ``n_warmup_steps``;
    successive-halving / hyperband: the rungs ``min_resource * reduction_factor**k``.
    """
    if pruner == "none":
        return frozenset()
    kwargs = catalog.pruner_kwargs(pruner, options, epochs)
    if pruner == "median":
        warmup = max(int(kwargs["n_warmup_steps"]), 1)
        every = int(kwargs["interval_steps"])
        if every < 1:
            raise ValueError(f"interval_steps must be >= 1, got {every}")
        return frozenset(range(warmup, epochs + 1, every))
    # Optuna's own defaults: hyperband reduces by 3, successive halving by 4
    rf = int(kwargs.get("reduction_factor", 3 if pruner == "hyperband" else 4))
    lo = kwargs.get("min_resource", 5)
    lo = 5 if lo == "auto" else int(lo)
    lo *= rf ** int(kwargs.get("min_early_stopping_rate", 0))  # successive halving's first rung
    if rf < 2 or lo < 1:  # the loop below would never end
        raise ValueError(f"reduction_factor must be >= 2 and min_resource >= 1, got {rf} and {lo}")
    steps, r = set(), lo
    while r < epochs:
        steps.add(r)
        r *= rf
    return frozenset(steps)
