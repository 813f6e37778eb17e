"""The one ranking of trials: which COMPLETE trial is the best, the second best, ...

Every part of hpo that picks "the best trials" ranks them here: the narrowing sampler's next
stage (:mod:`hpo.samplers.stages`), the edge rule (:mod:`hpo.samplers.edges`), ``hpo best``'s
listing, ``hpo report``'s figures, ``hpo test``/``hpo confirm`` (:mod:`hpo.report`) and the warm
start (:mod:`hpo.engine.warmstart`). The rule: COMPLETE trials with a finite value, best first in
the study's direction (highest first when it maximizes, lowest first when it minimizes); equal
values go to the lower trial number (the earlier trial).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from hpo.catalog import DEFAULT_DIRECTION

__all__ = ["best_first", "direction_sign"]


def direction_sign(direction: StudyDirection | str) -> float:
    """-1 for ``maximize`` (so that an ascending sort puts the highest value first), +1 for
    ``minimize``; a :class:`~optuna.study.StudyDirection` or its name in any case."""
    if isinstance(direction, str):
        try:
            direction = StudyDirection[direction.upper()]
        except KeyError:
            raise ValueError(
                f"direction must be 'minimize' or 'maximize', got {direction!r}"
            ) from None
    if direction == StudyDirection.MAXIMIZE:
        return -1.0
    if direction == StudyDirection.MINIMIZE:
        return 1.0
    raise ValueError(f"direction must be 'minimize' or 'maximize', got {direction!r}")


def best_first(trials: Sequence[FrozenTrial],
               direction: StudyDirection | str = DEFAULT_DIRECTION) -> list[FrozenTrial]:
    """COMPLETE trials with a finite value, best first by ``direction`` (the study's; the book's
    ``maximize`` when not given); equal values: the lower trial number first."""
    sign = direction_sign(direction)
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None
            and math.isfinite(t.value)]
    return sorted(done, key=lambda t: (sign * float(t.value), t.number))  # type: ignore[arg-type]
