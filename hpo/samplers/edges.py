"""The edge rule: does a best trial sit on an edge of its original range?

A best value at the edge of the range it was searched in says the range was too narrow: the
optimum may lie outside it. The narrowing sampler records it per stage
(``narrowing:edge_warning``) and moves a crowded range outward with ``shift=True``;
``hpo best``, ``hpo report`` and the dashboard note say it about the study's best trial
(:mod:`hpo.report.listing`, through :func:`edge_warnings`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from hpo.catalog import EDGE_FRACTION, SAMPLERS
from hpo.samplers.ranges import to_space
from hpo.samplers.ranking import best_first

__all__ = ["EDGE_FRACTION", "check_edge_fraction", "edge_warnings", "trial_edge_warnings"]


#: The catalog's declaration of ``edge_fraction`` (a number in (0, 0.5)).
_EDGE_OPTION = SAMPLERS["narrowing"].option("edge_fraction")


def check_edge_fraction(edge_fraction: float) -> float:
    """``edge_fraction`` when the catalog allows it, else ValueError: the one check of it, for
    the narrowing sampler's option and :func:`edge_warnings`'s argument."""
    try:
        return float(_EDGE_OPTION.check(edge_fraction))  # type: ignore[union-attr]
    except ValueError as e:
        raise ValueError(f"edge_fraction {e}") from None


def _fmt(x: float) -> str:
    return f"{x:g}"


def trial_edge_warnings(
    trial: FrozenTrial,
    distributions: Mapping[str, BaseDistribution] | None,
    edge_fraction: float,
    original: Mapping[str, tuple[float, float]] | None = None,
) -> list[str]:
    """Edge messages for ``trial``; a param's original range is ``original[name]`` when given,
    else its distribution in ``distributions``, else the one recorded on the trial."""
    messages = []
    for name, value in trial.params.items():
        dist = (distributions or {}).get(name, trial.distributions.get(name))
        if not isinstance(dist, (FloatDistribution, IntDistribution)):
            continue
        low, high = (original or {}).get(name, (dist.low, dist.high))
        if dist.log and low <= 0:
            continue
        lo, hi = to_space(dist, low), to_space(dist, high)
        width = hi - lo
        if width <= 0:
            continue
        x = to_space(dist, value)
        shown = str(value) if isinstance(dist, IntDistribution) else f"{value:.3g}"
        where = f"its original range [{_fmt(low)}, {_fmt(high)}]"
        if x < lo:
            messages.append(f"{name}={shown} lies below {where}")
        elif x > hi:
            messages.append(f"{name}={shown} lies above {where}")
        elif x - lo <= edge_fraction * width:
            messages.append(f"{name}={shown} sits at the lower edge of {where}")
        elif hi - x <= edge_fraction * width:
            messages.append(f"{name}={shown} sits at the upper edge of {where}")
    return messages


def edge_warnings(
    source: Study | FrozenTrial | Sequence[FrozenTrial],
    distributions: Mapping[str, BaseDistribution] | None = None,
    *,
    direction: StudyDirection | str | None = None,
    edge_fraction: float = EDGE_FRACTION,
) -> list[str]:
    """Say which params of a best trial sit on an edge of their original range.

    A numeric param "sits on an edge" when its value (log10 of it for log params) lies within
    ``edge_fraction`` of the range's width from the lower or upper end. That usually means the
    range was too narrow: the optimum may lie outside it. Categorical params never warn.

    Example:

        .. code-block:: python

            from hpo.samplers import edge_warnings

            for message in edge_warnings(study):
                print("warning:", message)
            # warning: lr=0.00953 sits at the upper edge of its original range [1e-06, 0.01]

    Args:
        source:
            A single-objective :class:`~optuna.study.Study` (its best COMPLETE trial is checked),
            one :class:`~optuna.trial.FrozenTrial` (checked as is), or a sequence of trials (the
            best COMPLETE one by ``direction`` is checked: :func:`hpo.samplers.ranking.best_first`).
        distributions:
            The original ranges, by param name. Params not listed use the distribution recorded
            on the trial, which is the one the objective asked for.
        direction:
            ``"minimize"``/``"maximize"``; required when ``source`` is a sequence of trials.
        edge_fraction:
            How close to an edge counts as "on" it, as a fraction of the range's width.

    Returns:
        One message per param on an edge, e.g. ``"lr=0.00953 sits at the upper edge of its
        original range [1e-06, 0.01]"``, or ``"... lies above its original range ..."`` for a
        value outside it. Empty when nothing sits on an edge or there is no COMPLETE trial.
    """
    check_edge_fraction(edge_fraction)
    if isinstance(source, FrozenTrial):
        best: FrozenTrial | None = source
    elif isinstance(source, Study):
        if len(source.directions) > 1:
            raise ValueError("edge_warnings needs a single-objective study")
        ranked = best_first(source.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
                            source.direction if direction is None else direction)
        best = ranked[0] if ranked else None
    else:
        if direction is None:
            raise ValueError("edge_warnings: pass direction= with a sequence of trials")
        ranked = best_first(list(source), direction)
        best = ranked[0] if ranked else None
    if best is None:
        return []
    return trial_edge_warnings(best, distributions, edge_fraction)
