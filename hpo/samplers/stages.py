"""Stages of the narrowing search: each stage's ranges, derived from the previous stage's
trials, and a memo of them per study.

A stage's ranges are a pure function of the trials in storage (:meth:`Rule.derive`), so every
worker on any machine derives the same ones. :class:`StageBook` remembers them once they are
*final* (every earlier trial finished) and keeps the last *provisional* ones (some earlier trial
still unfinished) for as long as the same trials are unfinished.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from hpo.db import optuna_private as oc
from hpo.samplers.edges import trial_edge_warnings
from hpo.samplers.ranges import (
    Range,
    clip,
    full_range,
    hull,
    narrow_categorical,
    narrow_numeric,
    same_kind,
    shift_numeric,
)
from hpo.samplers.ranking import best_first

_logger = logging.getLogger("hpo.samplers.narrowing")

#: A trial in one of these states no longer changes a stage's ranges.
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


@dataclass(frozen=True)
class StageRanges:
    stage: int
    ranges: Mapping[str, Range]
    #: True when every trial before this stage had finished when the ranges were derived, so
    #: that they are final and can be memoised.
    final: bool
    edge_warnings: tuple[str, ...] = ()
    shifted: tuple[str, ...] = ()

    def to_json(self) -> dict[str, list[Any]]:
        return {name: r.to_json() for name, r in self.ranges.items()}


STAGE_ZERO = StageRanges(stage=0, ranges={}, final=True)


def stage_slice(trials: Sequence[FrozenTrial], stage: int, k: int) -> list[FrozenTrial]:
    """The trials of ``stage`` from a list of all trials sorted by number."""
    lo, hi = stage * k, (stage + 1) * k
    part = trials[lo:hi]
    if part and part[0].number == lo and part[-1].number == lo + len(part) - 1:
        return list(part)
    return [t for t in trials if lo <= t.number < hi]  # unexpected order: fall back to a scan


@dataclass(frozen=True)
class Rule:
    """The narrowing rule's settings (see :class:`~hpo.samplers.NarrowingSampler`)."""

    stage_trials: int
    keep_top: int
    margin: float
    edge_fraction: float
    shift: bool
    initial: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    def previous_finished(self, trials: Sequence[FrozenTrial], stage: int) -> bool:
        """Whether every trial of stage ``stage - 1`` exists and has finished."""
        previous = stage_slice(trials, stage - 1, self.stage_trials)
        return len(previous) == self.stage_trials and all(t.state in FINISHED for t in previous)

    def pending(self, trials: Sequence[FrozenTrial], stage: int) -> list[FrozenTrial]:
        """The unfinished trials of stage ``stage - 1``."""
        previous = stage_slice(trials, stage - 1, self.stage_trials)
        return [t for t in previous if t.state not in FINISHED]

    def base(self, name: str, dist: BaseDistribution) -> Range:
        """The original range of ``name``: ``initial[name]`` inside ``dist``, else all of it."""
        full = full_range(dist)
        if name not in self.initial or isinstance(dist, CategoricalDistribution):
            return full
        low, high = self.initial[name]
        return clip(Range(dist, low, high), dist) or full  # no overlap: all of dist

    def effective(self, stage_range: Range | None, dist: BaseDistribution, name: str) -> Range:
        """The stage's range for ``name`` clipped to the distribution the objective asks for now.

        This clipping is what keeps every draw inside the distribution. A param without a stage
        range (stage 0, or new) uses its original range; if the objective asks for another
        range than before and the two do not overlap, so does it.
        """
        if stage_range is None or not same_kind(stage_range.dist, dist):
            return self.base(name, dist)
        return clip(stage_range, dist) or self.base(name, dist)

    def derive(self, prev: StageRanges, trials: Sequence[FrozenTrial],
               direction: StudyDirection) -> StageRanges:
        """Ranges of stage ``prev.stage + 1`` from the trials of stage ``prev.stage``."""
        finished = len(trials) == self.stage_trials and all(t.state in FINISHED for t in trials)
        final = prev.final and finished
        ranges = dict(prev.ranges)
        # Params first seen in this stage enter at the hull of their original ranges in the
        # distributions they were asked with (one unless the objective's ranges are dynamic).
        for t in trials:
            if t.state not in (TrialState.COMPLETE, TrialState.PRUNED):
                continue
            for name, dist in t.distributions.items():
                known = ranges.get(name)
                if known is None or (name not in prev.ranges and same_kind(known.dist, dist)):
                    base = self.base(name, dist)
                    ranges[name] = base if known is None else hull(known, base)
        best = best_first(trials, direction)[: self.keep_top]
        if not best:
            return StageRanges(prev.stage + 1, ranges, final)
        shifted = []
        for name in dict.fromkeys(name for t in best for name in t.params):
            having = [t for t in best if name in t.params]
            dist = having[0].distributions[name]
            values = [t.params[name] for t in having]
            previous = ranges.get(name)
            if previous is None or not same_kind(previous.dist, dist):
                previous = self.base(name, dist)
            if isinstance(dist, CategoricalDistribution):
                ranges[name] = narrow_categorical(previous, values)
                continue
            moved = None
            if self.shift:
                limits = (dist.low, dist.high)  # type: ignore[attr-defined]
                moved = shift_numeric(previous, values[0], self.edge_fraction, limits)
            if moved is not None:
                ranges[name] = moved
                shifted.append(name)
            else:
                ranges[name] = narrow_numeric(previous, values, self.margin)
        original = {}
        for name, dist in best[0].distributions.items():
            if not isinstance(dist, CategoricalDistribution):
                base = self.base(name, dist)
                original[name] = (base.low, base.high)
        on_edge = tuple(trial_edge_warnings(best[0], None, self.edge_fraction, original))
        return StageRanges(prev.stage + 1, ranges, final, on_edge, tuple(shifted))


class StageBook:
    """Each study's stage ranges, derived on demand and remembered once final. Thread-safe.

    Keyed by the storage object (weakly) and the study's id: one sampler instance may serve
    several studies and storages."""

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self._lock = threading.Lock()
        # storage -> study_id -> [ranges of stage 0, 1, ...]: a prefix of final stages.
        self._memo: weakref.WeakKeyDictionary[Any, dict[int, list[StageRanges]]] = (
            weakref.WeakKeyDictionary()
        )
        # storage -> ((study_id, stage, unfinished trial numbers), ranges): the last ranges
        # derived from an unfinished history.
        self._provisional: weakref.WeakKeyDictionary[Any, tuple[tuple[Any, ...], StageRanges]] = (
            weakref.WeakKeyDictionary()
        )

    def _memo_list(self, study: Study) -> list[StageRanges]:
        per_storage = self._memo.setdefault(oc.storage_of(study), {})
        return per_storage.setdefault(oc.study_id(study), [STAGE_ZERO])

    def memoised(self, study: Study, stage: int) -> StageRanges | None:
        """The final ranges of ``stage``, if already known."""
        with self._lock:
            memo = self._memo_list(study)
            return memo[stage] if stage < len(memo) else None

    def ranges(self, study: Study, stage: int, trials: Sequence[FrozenTrial]) -> StageRanges:
        """Ranges of ``stage`` given all of the study's trials (sorted by number): from the
        last memoised stage, one stage at a time."""
        with self._lock:
            memo = self._memo_list(study)
            if stage < len(memo):
                return memo[stage]
            current = memo[-1]
        # Not final: some earlier trial is unfinished (e.g. a worker died holding it). The ranges
        # depend only on which trials before the stage have finished, so they are reused for
        # as long as the same ones are unfinished.
        k = self.rule.stage_trials
        unfinished = tuple(t.number for t in trials[: stage * k]
                           if t.state not in FINISHED and t.number < stage * k)
        key = (oc.study_id(study), stage, unfinished)
        storage = oc.storage_of(study)
        with self._lock:
            cached = self._provisional.get(storage)
            if cached is not None and cached[0] == key:
                return cached[1]
        for s in range(current.stage + 1, stage + 1):
            current = self.rule.derive(current, stage_slice(trials, s - 1, k), study.direction)
            if current.final:
                with self._lock:
                    if len(memo) == s:
                        memo.append(current)
                        self._log_stage(study, current)
        if not current.final:
            with self._lock:
                self._provisional[storage] = (key, current)
        return current

    def _log_stage(self, study: Study, ranges: StageRanges) -> None:
        _logger.info("NarrowingSampler: study %r stage %d ranges %s", study.study_name,
                     ranges.stage, ranges.to_json())
        advice = ("ranges may move out to the distribution's limits (shift=True)"
                  if self.rule.shift else "consider widening the original range")
        for message in ranges.edge_warnings:
            _logger.warning("NarrowingSampler: study %r stage %d: %s; %s", study.study_name,
                            ranges.stage - 1, message, advice)
