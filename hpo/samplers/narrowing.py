"""Random search that narrows its ranges stage by stage, as in chapter 6 of the book.

The book tunes the learning rate and weight decay by random search over wide log-scale ranges,
then looks at the best results, narrows the ranges around them and searches again.
:class:`NarrowingSampler` does exactly that, one *stage* of ``stage_trials`` trials at a time.
:func:`edge_warnings` tells whether a best trial sits on an edge of its original range (a sign
that the range was too narrow to begin with).
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
import warnings
import weakref
import zlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.exceptions import ExperimentalWarning
from optuna.samplers import BaseSampler
from optuna.storages import fail_stale_trials
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

__all__ = [
    "EDGE_WARNING_ATTR",
    "NarrowingSampler",
    "PARTIAL_ATTR",
    "RANGES_ATTR",
    "SHIFTED_ATTR",
    "STAGE_ATTR",
    "edge_warnings",
]

_logger = logging.getLogger(__name__)

#: Trial system attribute: the trial's stage (``int``).
STAGE_ATTR = "narrowing:stage"
#: Trial system attribute: ``{param: [low, high]}`` (numeric) / ``{param: [choices]}``.
RANGES_ATTR = "narrowing:ranges"
#: Trial system attribute: present when the previous stage's best trial sits on an edge.
EDGE_WARNING_ATTR = "narrowing:edge_warning"
#: Trial system attribute: ``True`` when the ranges came from an unfinished history.
PARTIAL_ATTR = "narrowing:partial"
#: Trial system attribute: the params whose range moved outward (``shift=True`` only).
SHIFTED_ATTR = "narrowing:shifted"

#: A degenerate range (one value, or identical values) is widened to this fraction of the
#: previous range's width (in log10 space for log params), centred on the value.
MIN_WIDTH_FRACTION = 0.01

_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
_GRID_EPS = 1e-9
_MAX_CONTEXTS = 4096


# --------------------------------------------------------------------------------------------
# Ranges
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Range:
    """The range of one param in one stage.

    Numeric params: ``[low, high]`` in the param's own units, on the step grid of ``dist``.
    Categorical params: ``kept``, indices into ``dist.choices`` in the original order.
    ``dist`` is the distribution the objective asked for (as recorded on the trials).
    """

    dist: BaseDistribution
    low: float = 0.0
    high: float = 0.0
    kept: tuple[int, ...] = ()

    def to_json(self) -> list[Any]:
        if isinstance(self.dist, CategoricalDistribution):
            return [self.dist.choices[i] for i in self.kept]
        if isinstance(self.dist, IntDistribution):
            return [int(self.low), int(self.high)]
        return [float(self.low), float(self.high)]


def _full_range(dist: BaseDistribution) -> _Range:
    if isinstance(dist, CategoricalDistribution):
        return _Range(dist, kept=tuple(range(len(dist.choices))))
    assert isinstance(dist, (FloatDistribution, IntDistribution))
    return _Range(dist, dist.low, dist.high)


def _hull(r: _Range, other: _Range) -> _Range:
    """``r`` widened to cover ``other`` (numeric params)."""
    if isinstance(r.dist, CategoricalDistribution):
        return r
    return _Range(r.dist, min(r.low, other.low), max(r.high, other.high))


def _same_kind(a: BaseDistribution, b: BaseDistribution) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, CategoricalDistribution):
        return a.choices == b.choices  # type: ignore[attr-defined]
    return a.log == b.log and a.step == b.step  # type: ignore[attr-defined]


def _to_space(dist: FloatDistribution | IntDistribution, x: float) -> float:
    return math.log10(x) if dist.log else float(x)


def _from_space(dist: FloatDistribution | IntDistribution, y: float) -> float:
    return 10.0**y if dist.log else y


def _grid_step(dist: FloatDistribution | IntDistribution) -> float | None:
    return dist.step  # IntDistribution always has a step (1 by default); Float may have None


def _grid_floor(dist: FloatDistribution | IntDistribution, x: float) -> float:
    step = _grid_step(dist)
    if step is None:
        return x
    k = math.floor((x - dist.low) / step + _GRID_EPS)
    return _on_grid(dist, k)


def _grid_ceil(dist: FloatDistribution | IntDistribution, x: float) -> float:
    step = _grid_step(dist)
    if step is None:
        return x
    k = math.ceil((x - dist.low) / step - _GRID_EPS)
    return _on_grid(dist, k)


def _on_grid(dist: FloatDistribution | IntDistribution, k: int) -> float:
    if isinstance(dist, IntDistribution):
        return int(dist.low + k * dist.step)
    assert dist.step is not None
    return dist.low + k * dist.step


def _narrow_numeric(prev: _Range, values: Sequence[float], margin: float) -> _Range:
    """Hull of ``values`` (log10 space for log params), widened by ``margin``, inside ``prev``."""
    dist = prev.dist
    assert isinstance(dist, (FloatDistribution, IntDistribution))
    p_lo, p_hi = _to_space(dist, prev.low), _to_space(dist, prev.high)
    xs = [_to_space(dist, v) for v in values]
    lo, hi = min(xs), max(xs)
    span = hi - lo
    lo, hi = lo - margin * span, hi + margin * span
    min_width = MIN_WIDTH_FRACTION * (p_hi - p_lo)
    if hi - lo < min_width:
        centre = 0.5 * (lo + hi)
        lo, hi = centre - 0.5 * min_width, centre + 0.5 * min_width
    lo, hi = max(lo, p_lo), min(hi, p_hi)
    if lo > hi:  # the values lie outside the previous range (e.g. enqueued trials)
        return prev
    # Back to the param's units; keep the values themselves inside despite rounding.
    low = min(_from_space(dist, lo), min(values))
    high = max(_from_space(dist, hi), max(values))
    low, high = _grid_floor(dist, low), _grid_ceil(dist, high)
    low, high = max(low, prev.low), min(high, prev.high)
    if low > high:
        return prev
    return _Range(dist, low, high)


def _shift_numeric(
    prev: _Range, best: float, edge_fraction: float, outer: tuple[float, float]
) -> _Range | None:
    """Recentre ``prev`` on ``best`` when ``best`` crowds an edge that can still move outward.

    ``outer`` is the hard ``(low, high)`` limit (the distribution the objective asks for); the
    result never leaves it. Returns ``None`` when no shift applies (``best`` is inside, or the
    crowded edge already sits on the outer limit).
    """
    dist = prev.dist
    assert isinstance(dist, (FloatDistribution, IntDistribution))
    p_lo, p_hi = _to_space(dist, prev.low), _to_space(dist, prev.high)
    width = p_hi - p_lo
    if width <= 0:
        return None
    x = _to_space(dist, best)
    near_low = x - p_lo <= edge_fraction * width and prev.low > outer[0]
    near_high = p_hi - x <= edge_fraction * width and prev.high < outer[1]
    if not (near_low or near_high):
        return None
    o_lo, o_hi = _to_space(dist, outer[0]), _to_space(dist, outer[1])
    lo, hi = max(x - 0.5 * width, o_lo), min(x + 0.5 * width, o_hi)
    low = max(_grid_floor(dist, _from_space(dist, lo)), _grid_ceil(dist, outer[0]))
    high = min(_grid_ceil(dist, _from_space(dist, hi)), _grid_floor(dist, outer[1]))
    low, high = min(low, best), max(high, best)
    if low > high:
        return None
    return _Range(dist, low, high)


def _narrow_categorical(prev: _Range, values: Sequence[Any]) -> _Range:
    dist = prev.dist
    assert isinstance(dist, CategoricalDistribution)
    seen = set()
    for v in values:
        try:
            seen.add(int(dist.to_internal_repr(v)))
        except ValueError:  # a value that is not among the choices
            continue
    kept = tuple(i for i in prev.kept if i in seen)
    return _Range(dist, kept=kept) if kept else prev


# --------------------------------------------------------------------------------------------
# Edge warnings
# --------------------------------------------------------------------------------------------


def _direction_sign(direction: StudyDirection | str) -> float:
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


def _best_first(trials: Sequence[FrozenTrial], sign: float) -> list[FrozenTrial]:
    """COMPLETE trials, best first; ties go to the lower trial number."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    return sorted(complete, key=lambda t: (sign * float(t.value), t.number))  # type: ignore


def _fmt(x: float) -> str:
    return f"{x:g}"


def _trial_edge_warnings(
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
        lo, hi = _to_space(dist, low), _to_space(dist, high)
        width = hi - lo
        if width <= 0:
            continue
        x = _to_space(dist, value)
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
    edge_fraction: float = 0.1,
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
            best COMPLETE one by ``direction`` is checked; ties go to the lower number).
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
    if not 0.0 < edge_fraction < 0.5:
        raise ValueError(f"edge_fraction must be in (0, 0.5), got {edge_fraction!r}")
    if isinstance(source, FrozenTrial):
        best: FrozenTrial | None = source
    elif isinstance(source, Study):
        if source._is_multi_objective():
            raise ValueError("edge_warnings needs a single-objective study")
        sign = _direction_sign(source.direction if direction is None else direction)
        ranked = _best_first(source.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), sign)
        best = ranked[0] if ranked else None
    else:
        if direction is None:
            raise ValueError("edge_warnings: pass direction= with a sequence of trials")
        ranked = _best_first(list(source), _direction_sign(direction))
        best = ranked[0] if ranked else None
    if best is None:
        return []
    return _trial_edge_warnings(best, distributions, edge_fraction)


# --------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _StageRanges:
    stage: int
    ranges: Mapping[str, _Range]
    #: True when every trial before this stage had finished when the ranges were derived, so
    #: that they are final and can be memoised.
    final: bool
    edge_warnings: tuple[str, ...] = ()
    shifted: tuple[str, ...] = ()

    def to_json(self) -> dict[str, list[Any]]:
        return {name: r.to_json() for name, r in self.ranges.items()}


_STAGE_ZERO = _StageRanges(stage=0, ranges={}, final=True)


@dataclass
class _TrialContext:
    stage: int
    ranges: _StageRanges
    recorded: dict[str, list[Any]]
    #: ``recorded`` holds ranges not yet written to the trial (stage 0: written by after_trial)
    pending: bool = False


def _all_trials(study: Study) -> list[FrozenTrial]:
    """Every trial of the study, sorted by number, read from storage.

    Not ``study.get_trials()``: under ``HyperbandPruner`` samplers receive a per-bracket view
    of the study whose ``get_trials`` hides the other brackets' trials, while a stage is made
    of all the trials.
    """
    return study._storage.get_all_trials(study._study_id, deepcopy=False)


def _heartbeat_interval(storage: Any) -> float | None:
    """The storage's heartbeat interval in seconds, or ``None`` without heartbeats."""
    get_interval = getattr(storage, "get_heartbeat_interval", None)
    if get_interval is None or not hasattr(storage, "record_heartbeat"):
        return None
    interval = get_interval()
    return None if interval is None else float(interval)


def _stage_slice(trials: Sequence[FrozenTrial], stage: int, k: int) -> list[FrozenTrial]:
    """The trials of ``stage`` from a list of all trials sorted by number."""
    lo, hi = stage * k, (stage + 1) * k
    part = trials[lo:hi]
    if part and part[0].number == lo and part[-1].number == lo + len(part) - 1:
        return list(part)
    return [t for t in trials if lo <= t.number < hi]  # unexpected order: fall back to a scan


class NarrowingSampler(BaseSampler):
    """Random search in stages, each narrowing the ranges around the previous stage's best.

    This is the hyperparameter search of chapter 6 of "Deep Learning from Scratch": sample
    widely at random (log scale for the learning rate and weight decay), keep the best results,
    narrow the ranges around them and sample again.

    Trial number ``n`` belongs to stage ``n // stage_trials``.

    * **Every value lies inside the distribution the objective asks for.** Ranges are clipped
      to it (rounded inward to its ``step`` grid) before each draw, so every trial stays valid
      for ``study.add_trials``, :func:`optuna.copy_study` and the dashboard's search-space views.
      The distribution is the *hard bound* of a param; ``initial`` only narrows where the search
      starts.
    * **Stage 0** samples uniformly from each param's *original range*: ``initial[param]``
      (clipped to the distribution) when given, else the whole distribution the objective asks
      for: log-uniform where ``log=True``, on the ``step`` grid where there is one, uniformly
      over the choices of a categorical.
    * **Stage s >= 1** samples uniformly (log-uniform for log params) from ranges derived from
      the trials of stage ``s-1``: take its COMPLETE trials (PRUNED ones count as worse than
      every COMPLETE one, FAIL ones are ignored), keep the best ``keep_top`` (by the study's
      direction; ties go to the lower trial number) and, per param:

      - numeric: the ``[min, max]`` of their values (in log10 space for log params), widened on
        each side by ``margin`` times its width, then clipped to stage ``s-1``'s range, so
        ranges never grow (unless ``shift=True`` moves them, below). A range narrower than
        ``MIN_WIDTH_FRACTION`` (1 %) of the previous range's width (one value, or identical
        values) is widened to that width, centred on the values, and clipped. Int and stepped
        float ranges are rounded outward to the step grid.
      - categorical: keep the choices seen among the best, in the original order. The sampler
        returns one of the original choices (Optuna's distribution must not change), drawn
        uniformly from the kept ones.
      - a param none of the best trials has (a conditional param) keeps its previous range;
        so does every param when stage ``s-1`` has no COMPLETE trial.

      The ranges are a pure function of the trials in storage: every worker, on any machine,
      derives the same ones, and a restarted worker carries on where the study is. They are
      memoised per study and stage once every earlier trial has finished.

    * **Waiting at stage boundaries.** A stage-``s`` trial does not start until every trial of
      stage ``s-1`` has finished (re-reading the trials every ``poll_interval`` seconds), so that
      every worker samples stage ``s`` from the same ranges and the study is reproducible
      whatever the number of workers. The cost is at most one trial's duration per worker at
      each stage boundary. After ``wait_timeout`` seconds it narrows from what has finished,
      records ``narrowing:partial = True`` on the trial, and this sampler instance no longer
      waits for that stage. ``narrowing:partial`` is recorded on every trial whose ranges were
      derived while some earlier trial was still unfinished (a worker that died holding a
      trial makes all later ranges partial until the trial is finished or failed, e.g. by
      Optuna's heartbeat); such ranges are recomputed, not memoised, once that trial finishes.
      With a heartbeat-enabled storage, a waiting trial records its own heartbeat and fails
      stale trials (``optuna.storages.fail_stale_trials``) every heartbeat interval, so a
      worker that died holding a stage-``s-1`` trial costs the others about the grace period,
      not ``wait_timeout``. With ask-and-tell batches larger than ``stage_trials`` from a
      single thread, pass ``wait_timeout=0`` (the batch's own unfinished trials would block).

    * **Draws** are seeded by ``(seed, trial number, param name)``: a trial's params do not
      depend on how many workers ran the study nor on the order the params are asked for.

    * **Recorded on each trial** (system attributes, JSON values): ``narrowing:stage`` (int);
      ``narrowing:ranges``, ``{param: [low, high]}`` for numeric params and
      ``{param: [kept choices]}`` for categorical ones, the ranges in force for the trial's
      stage (params the trial asks for show exactly the range they were drawn from; stage 0
      lists only those, and records them once, when the trial is told — ``after_trial``, so a
      stage-0 trial whose worker died, or that was told through another sampler instance, has
      none; later stages record them when the trial starts and add a param asked outside them
      at once); ``narrowing:edge_warning``, a message such as
      ``"lr=0.00953 sits at the upper edge of its original range [1e-06, 0.01]"`` when the
      previous stage's best trial sits within ``edge_fraction`` of an edge of a param's
      original range (``initial[param]`` when given, see :func:`edge_warnings`), or
      ``"lr=0.2 lies above its original range [1e-06, 0.01]"`` once a shifted stage found a
      better value outside it (several messages are joined with ``"; "``);
      ``narrowing:partial`` (``True``) as above; ``narrowing:shifted``, the list of params whose
      range was recentred for this stage instead of narrowed (``shift=True`` only, absent when
      none was), e.g. ``["lr"]``.

    * **Edge-aware mode** (``shift=True``): for each numeric param, if stage ``s-1``'s best
      COMPLETE trial sits within ``edge_fraction`` of stage ``s-1``'s range width from one of
      its edges (log10 space for log params), and that edge is not already at the limit of the
      distribution the objective asks for, stage ``s``'s range is not narrowed but recentred on
      the best value with stage ``s-1``'s width, rounded outward to a step grid, then clipped
      to the distribution (so it is never outside it). Otherwise the param narrows as
      above. Each param is handled on its own (one may shift while another narrows); a shifted
      stage narrows in later stages like any other once its best sits inside. To let a search
      move beyond its starting range, ask the objective for the hard bounds as the distribution
      and pass the starting range as ``initial`` (the ``hpo`` spec does this: ``[search]`` is
      ``initial``, ``[sampler.bounds]`` the distribution). Without ``initial`` a param can only
      move back out to its distribution after an earlier stage narrowed it.

    Example:

        .. code-block:: python

            import math

            import optuna

            from hpo.samplers import NarrowingSampler


            def objective(trial):
                lr = trial.suggest_float("lr", 1e-6, 1e-2, log=True)
                weight_decay = trial.suggest_float("weight_decay", 1e-8, 1e-1, log=True)
                return -((math.log10(lr) + 2.5) ** 2) - 0.01 * (math.log10(weight_decay) + 6) ** 2


            sampler = NarrowingSampler(stage_trials=30, keep_top=5, seed=0)
            study = optuna.create_study(direction="maximize", sampler=sampler)
            study.optimize(objective, n_trials=90)
            print(study.trials[-1].system_attrs["narrowing:ranges"])  # stage 2's ranges

    Args:
        stage_trials: Trials per stage (``>= 1``).
        keep_top: How many of a stage's best COMPLETE trials span the next stage's ranges.
        margin: Widen each numeric range by this fraction of its width on each side (``>= 0``).
        seed: Seed of the draws; ``None`` picks a random one once, at construction.
        wait_timeout: Longest wait, in seconds, for the previous stage to finish (``>= 0``).
        poll_interval: Seconds between re-reads of the trials while waiting (``> 0``).
        edge_fraction: Width fraction that counts as "at an edge" (``0 < edge_fraction < 0.5``).
        shift: Move a range outward when the best trial crowds one of its edges, up to the
            limits of the distribution (see above).
        initial: Stage 0's ``(low, high)`` range per numeric param, in the param's own units,
            inside the distribution the objective asks for (clipped to it; ignored for a param
            that turns out categorical, or that does not overlap its distribution). Params not
            listed start from their whole distribution. This range is also the "original
            range" of edge warnings.

    The former ``bounds`` argument is gone: the distribution is the bound (a ``bounds`` wider
    than the distribution produced values outside it).
    """

    def __init__(
        self,
        *,
        stage_trials: int = 100,
        keep_top: int = 10,
        margin: float = 0.0,
        seed: int | None = None,
        wait_timeout: float = 600.0,
        poll_interval: float = 0.5,
        edge_fraction: float = 0.1,
        shift: bool = False,
        initial: Mapping[str, tuple[float, float]] | None = None,
    ) -> None:
        if isinstance(stage_trials, bool) or not isinstance(stage_trials, int) or stage_trials < 1:
            raise ValueError(f"stage_trials must be an int >= 1, got {stage_trials!r}")
        if isinstance(keep_top, bool) or not isinstance(keep_top, int) or keep_top < 1:
            raise ValueError(f"keep_top must be an int >= 1, got {keep_top!r}")
        if not (isinstance(margin, (int, float)) and math.isfinite(margin) and margin >= 0):
            raise ValueError(f"margin must be a finite number >= 0, got {margin!r}")
        if not (isinstance(wait_timeout, (int, float)) and wait_timeout >= 0):
            raise ValueError(f"wait_timeout must be >= 0 seconds, got {wait_timeout!r}")
        if not (isinstance(poll_interval, (int, float)) and poll_interval > 0):
            raise ValueError(f"poll_interval must be > 0 seconds, got {poll_interval!r}")
        if not (isinstance(edge_fraction, (int, float)) and 0.0 < edge_fraction < 0.5):
            raise ValueError(f"edge_fraction must be in (0, 0.5), got {edge_fraction!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be an int or None, got {seed!r}")
        if not isinstance(shift, bool):
            raise ValueError(f"shift must be true or false, got {shift!r}")
        if initial is not None and not isinstance(initial, Mapping):
            raise ValueError(f"initial must be a mapping of param -> (low, high), got {initial!r}")
        checked_initial: dict[str, tuple[float, float]] = {}
        for name, pair in (initial or {}).items():
            try:
                low, high = (float(x) for x in pair)
            except (TypeError, ValueError):
                raise ValueError(
                    f"initial[{name!r}] must be a (low, high) pair, got {pair!r}"
                ) from None
            if not (math.isfinite(low) and math.isfinite(high) and low < high):
                raise ValueError(f"initial[{name!r}] must have finite low < high, got {pair!r}")
            checked_initial[str(name)] = (low, high)

        self._stage_trials = stage_trials
        self._keep_top = keep_top
        self._margin = float(margin)
        self._user_seed = seed
        self._seed = seed % 2**64 if seed is not None else secrets.randbits(63)
        self._wait_timeout = float(wait_timeout)
        self._poll_interval = float(poll_interval)
        self._edge_fraction = float(edge_fraction)
        self._shift = shift
        self._initial = checked_initial
        self._init_state()

    def _init_state(self) -> None:
        self._lock = threading.Lock()
        # storage -> study_id -> [ranges of stage 0, 1, ...]: a prefix of final stages.
        self._memo: weakref.WeakKeyDictionary[Any, dict[int, list[_StageRanges]]] = (
            weakref.WeakKeyDictionary()
        )
        # storage -> ((study_id, stage, unfinished trial numbers), ranges): the last ranges
        # derived from an unfinished history.
        self._provisional: weakref.WeakKeyDictionary[Any, tuple[tuple[Any, ...], _StageRanges]] = (
            weakref.WeakKeyDictionary()
        )
        self._timed_out: set[tuple[int, int, int]] = set()
        self._contexts: OrderedDict[tuple[int, int, int], _TrialContext] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in ("_lock", "_memo", "_provisional", "_timed_out", "_contexts"):
            del state[key]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_state()

    def __str__(self) -> str:
        return (
            f"NarrowingSampler(stage_trials={self._stage_trials}, keep_top={self._keep_top}, "
            f"margin={self._margin}, shift={self._shift}, initial={self._initial or None})"
        )

    # ---------------------------------------------------------------- BaseSampler interface

    def reseed_rng(self) -> None:
        # Draws are keyed by (seed, trial number, param): threads sharing this sampler never
        # repeat each other. Only an unseeded sampler takes a fresh seed.
        if self._user_seed is None:
            self._seed = secrets.randbits(63)

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return {}

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._raise_error_if_multi_objective(study)
        self._prepare(study, trial)

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        ctx = self._context(study, trial)
        if ctx is None:  # before_trial did not run on this instance
            ctx = self._prepare(study, trial)
        dist = param_distribution
        current = self._effective_range(ctx.ranges.ranges.get(param_name), dist, param_name)
        as_json = current.to_json()
        if ctx.recorded.get(param_name) != as_json:
            ctx.recorded[param_name] = as_json
            if ctx.stage == 0:
                # Stage 0's ranges are the original ranges of the params the trial asks for,
                # complete only once it has asked for all of them: one write, in after_trial,
                # instead of one per param (each storage write is a round trip).
                ctx.pending = True
            else:
                study._storage.set_trial_system_attr(
                    trial._trial_id, RANGES_ATTR, dict(ctx.recorded)
                )
        rng = np.random.default_rng([self._seed, trial.number, zlib.crc32(param_name.encode())])
        return _draw(rng, dist, current)

    def after_trial(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        with self._lock:
            ctx = self._contexts.pop(self._context_key(study, trial), None)
        if ctx is not None and ctx.pending:  # before the trial's state is written (tell)
            study._storage.set_trial_system_attr(trial._trial_id, RANGES_ATTR, dict(ctx.recorded))

    # ---------------------------------------------------------------- public helpers

    @property
    def stage_trials(self) -> int:
        """Trials per stage."""
        return self._stage_trials

    def stage_of(self, trial_number: int) -> int:
        """The stage of trial number ``trial_number``."""
        return trial_number // self._stage_trials

    def stage_ranges(self, study: Study, stage: int) -> dict[str, list[Any]]:
        """The ranges of ``stage``, derived from the trials now in storage (no waiting).

        Same format as the ``narrowing:ranges`` attribute; params never seen before ``stage``
        are absent (they are sampled from the distribution the objective asks for).
        """
        if stage < 0:
            raise ValueError(f"stage must be >= 0, got {stage}")
        trials = _all_trials(study)
        return self._stage(study, stage, trials).to_json()

    # ---------------------------------------------------------------- internals

    def _context_key(self, study: Study, trial: FrozenTrial) -> tuple[int, int, int]:
        return (id(study._storage), study._study_id, trial._trial_id)

    def _context(self, study: Study, trial: FrozenTrial) -> _TrialContext | None:
        with self._lock:
            return self._contexts.get(self._context_key(study, trial))

    def _prepare(self, study: Study, trial: FrozenTrial) -> _TrialContext:
        stage = trial.number // self._stage_trials
        storage, trial_id = study._storage, trial._trial_id
        storage.set_trial_system_attr(trial_id, STAGE_ATTR, stage)
        ranges = self._memoised(study, stage)
        if ranges is None:
            ranges = self._stage(study, stage, self._wait_for(study, stage, trial_id))
        if stage > 0:
            storage.set_trial_system_attr(trial_id, RANGES_ATTR, ranges.to_json())
            if not ranges.final:
                storage.set_trial_system_attr(trial_id, PARTIAL_ATTR, True)
            if ranges.edge_warnings:
                storage.set_trial_system_attr(
                    trial_id, EDGE_WARNING_ATTR, "; ".join(ranges.edge_warnings)
                )
            if ranges.shifted:
                storage.set_trial_system_attr(trial_id, SHIFTED_ATTR, list(ranges.shifted))
        ctx = _TrialContext(stage, ranges, ranges.to_json())
        with self._lock:
            self._contexts[self._context_key(study, trial)] = ctx
            while len(self._contexts) > _MAX_CONTEXTS:  # trials that were never told
                self._contexts.popitem(last=False)
        return ctx

    def _wait_for(self, study: Study, stage: int, trial_id: int) -> list[FrozenTrial]:
        """All trials, once stage ``stage - 1`` has finished or the wait timed out.

        With a heartbeat-enabled storage, the waiting trial's heartbeat is recorded (a worker
        that dies while waiting leaves a stale trial, not an eternal RUNNING one) and stale
        trials are failed, since ``Study.optimize`` only does that between trials and every
        worker may be waiting here.
        """
        trials = study._get_trials(deepcopy=False, use_cache=True)
        key = (id(study._storage), study._study_id, stage)
        with self._lock:
            timed_out = key in self._timed_out
        if timed_out or self._previous_finished(trials, stage):
            return trials
        heartbeat = _heartbeat_interval(study._storage)
        next_beat = time.monotonic()
        deadline = next_beat + self._wait_timeout
        while True:
            now = time.monotonic()
            if heartbeat is not None and now >= next_beat:
                study._storage.record_heartbeat(trial_id)
                with warnings.catch_warnings():  # as Study.optimize does
                    warnings.simplefilter("ignore", ExperimentalWarning)
                    fail_stale_trials(study)
                next_beat = now + heartbeat
            remaining = deadline - now
            if remaining <= 0:
                break
            time.sleep(min(self._poll_interval, remaining))
            trials = _all_trials(study)
            if self._previous_finished(trials, stage):
                return trials
        with self._lock:
            self._timed_out.add(key)
        _logger.warning(
            "NarrowingSampler: stage %d of study %r still has unfinished trials after %.0f s; "
            "narrowing from the finished ones (narrowing:partial)",
            stage - 1,
            study.study_name,
            self._wait_timeout,
        )
        return trials

    def _previous_finished(self, trials: Sequence[FrozenTrial], stage: int) -> bool:
        previous = _stage_slice(trials, stage - 1, self._stage_trials)
        return len(previous) == self._stage_trials and all(t.state in _FINISHED for t in previous)

    def _memo_list(self, study: Study) -> list[_StageRanges]:
        per_storage = self._memo.setdefault(study._storage, {})
        return per_storage.setdefault(study._study_id, [_STAGE_ZERO])

    def _memoised(self, study: Study, stage: int) -> _StageRanges | None:
        with self._lock:
            memo = self._memo_list(study)
            return memo[stage] if stage < len(memo) else None

    def _stage(self, study: Study, stage: int, trials: Sequence[FrozenTrial]) -> _StageRanges:
        """Ranges of ``stage``: from the last memoised stage, one stage at a time."""
        with self._lock:
            memo = self._memo_list(study)
            if stage < len(memo):
                return memo[stage]
            current = memo[-1]
        # Not final: some earlier trial is unfinished (e.g. a worker died holding it). The ranges
        # depend only on which trials before the stage have finished, so they are reused for
        # as long as the same ones are unfinished.
        k = self._stage_trials
        unfinished = tuple(
            t.number
            for t in trials[: stage * k]
            if t.state not in _FINISHED and t.number < stage * k
        )
        key = (study._study_id, stage, unfinished)
        with self._lock:
            cached = self._provisional.get(study._storage)
            if cached is not None and cached[0] == key:
                return cached[1]
        sign = _direction_sign(study.direction)
        for s in range(current.stage + 1, stage + 1):
            previous = _stage_slice(trials, s - 1, k)
            current = self._derive(current, previous, sign)
            if current.final:
                with self._lock:
                    if len(memo) == s:
                        memo.append(current)
                        self._log_stage(study, current)
        if not current.final:
            with self._lock:
                self._provisional[study._storage] = (key, current)
        return current

    def _derive(
        self, prev: _StageRanges, trials: Sequence[FrozenTrial], sign: float
    ) -> _StageRanges:
        """Ranges of stage ``prev.stage + 1`` from the trials of stage ``prev.stage``."""
        finished = len(trials) == self._stage_trials and all(t.state in _FINISHED for t in trials)
        final = prev.final and finished
        ranges = dict(prev.ranges)
        # Params first seen in this stage enter at the hull of their original ranges in the
        # distributions they were asked with (one unless the objective's ranges are dynamic).
        for t in trials:
            if t.state not in (TrialState.COMPLETE, TrialState.PRUNED):
                continue
            for name, dist in t.distributions.items():
                known = ranges.get(name)
                if known is None or (name not in prev.ranges and _same_kind(known.dist, dist)):
                    base = self._base(name, dist)
                    ranges[name] = base if known is None else _hull(known, base)
        best = _best_first(trials, sign)[: self._keep_top]
        if not best:
            return _StageRanges(prev.stage + 1, ranges, final)
        names = list(dict.fromkeys(name for t in best for name in t.params))
        shifted = []
        for name in names:
            having = [t for t in best if name in t.params]
            dist = having[0].distributions[name]
            values = [t.params[name] for t in having]
            previous = ranges.get(name)
            if previous is None or not _same_kind(previous.dist, dist):
                previous = self._base(name, dist)
            if isinstance(dist, CategoricalDistribution):
                ranges[name] = _narrow_categorical(previous, values)
                continue
            assert isinstance(dist, (FloatDistribution, IntDistribution))
            moved = None
            if self._shift:
                limits = (dist.low, dist.high)
                moved = _shift_numeric(previous, values[0], self._edge_fraction, limits)
            if moved is not None:
                ranges[name] = moved
                shifted.append(name)
            else:
                ranges[name] = _narrow_numeric(previous, values, self._margin)
        original = {}
        for name, dist in best[0].distributions.items():
            if not isinstance(dist, CategoricalDistribution):
                base = self._base(name, dist)
                original[name] = (base.low, base.high)
        on_edge = tuple(_trial_edge_warnings(best[0], None, self._edge_fraction, original))
        return _StageRanges(prev.stage + 1, ranges, final, on_edge, tuple(shifted))

    def _base(self, name: str, dist: BaseDistribution) -> _Range:
        """The original range of ``name``: ``initial[name]`` inside ``dist``, else all of it."""
        full = _full_range(dist)
        if name not in self._initial or not isinstance(dist, (FloatDistribution, IntDistribution)):
            return full
        low, high = self._initial[name]
        low = _grid_ceil(dist, max(low, dist.low))
        high = _grid_floor(dist, min(high, dist.high))
        if low > high:  # no overlap with the distribution the objective asks for
            return full
        return _Range(dist, low, high)

    def _effective_range(
        self, stage_range: _Range | None, dist: BaseDistribution, name: str
    ) -> _Range:
        """The stage's range for ``name`` clipped to the distribution the objective asks for now.

        This clipping is what keeps every draw inside the distribution. A param without a stage
        range (stage 0, or new) uses its original range; if the objective asks for another
        range than before and the two do not overlap, so does it.
        """
        if stage_range is None or not _same_kind(stage_range.dist, dist):
            return self._base(name, dist)
        if isinstance(dist, CategoricalDistribution):
            return _Range(dist, kept=stage_range.kept)
        assert isinstance(dist, (FloatDistribution, IntDistribution))
        low = _grid_ceil(dist, max(stage_range.low, dist.low))
        high = _grid_floor(dist, min(stage_range.high, dist.high))
        if low > high:
            return self._base(name, dist)
        return _Range(dist, low, high)

    def _log_stage(self, study: Study, ranges: _StageRanges) -> None:
        _logger.info(
            "NarrowingSampler: study %r stage %d ranges %s",
            study.study_name,
            ranges.stage,
            ranges.to_json(),
        )
        advice = (
            "ranges may move out to the distribution's limits (shift=True)"
            if self._shift
            else "consider widening the original range"
        )
        for message in ranges.edge_warnings:
            _logger.warning(
                "NarrowingSampler: study %r stage %d: %s; %s",
                study.study_name,
                ranges.stage - 1,
                message,
                advice,
            )


def _draw(rng: np.random.Generator, dist: BaseDistribution, r: _Range) -> Any:
    """One uniform draw (log-uniform for log params) from ``r``, on ``dist``'s grid."""
    if isinstance(dist, CategoricalDistribution):
        return dist.choices[r.kept[int(rng.integers(len(r.kept)))]]
    if isinstance(dist, IntDistribution):
        low, high = int(r.low), int(r.high)
        if dist.log:  # log-uniform over the integers, as Optuna's RandomSampler does
            x = math.exp(rng.uniform(math.log(low - 0.5), math.log(high + 0.5)))
            return int(min(max(round(x), low), high))
        k_low = (low - dist.low) // dist.step
        k_high = (high - dist.low) // dist.step
        return int(dist.low + int(rng.integers(k_low, k_high + 1)) * dist.step)
    assert isinstance(dist, FloatDistribution)
    low, high = float(r.low), float(r.high)
    if dist.step is not None:
        k_low = round((low - dist.low) / dist.step)
        k_high = round((high - dist.low) / dist.step)
        value = dist.low + int(rng.integers(k_low, k_high + 1)) * dist.step
    elif dist.log:
        value = math.exp(rng.uniform(math.log(low), math.log(high)))
    else:
        value = rng.uniform(low, high)
    return float(min(max(value, low), high))
