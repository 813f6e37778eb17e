"""Random search that narrows its ranges stage by stage, as in chapter 6 of the book.

The book tunes the learning rate and weight decay by random search over wide log-scale ranges,
then looks at the best results, narrows the ranges around them and searches again.
:class:`NarrowingSampler` does exactly that, one *stage* of ``stage_trials`` trials at a time.
The range arithmetic is in :mod:`hpo.samplers.ranges`, the edge rule in
:mod:`hpo.samplers.edges`, the stages and their memo in :mod:`hpo.samplers.stages`; this module
is the sampler: what it records on each trial, and when it waits for a stage to finish.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.storages import InMemoryStorage
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from hpo.db import optuna_private as oc
from hpo.db.keys import EDGE_WARNING_ATTR, PARTIAL_ATTR, RANGES_ATTR, SHIFTED_ATTR, STAGE_ATTR
from hpo.db.storage import keep_alive
from hpo.samplers.edges import EDGE_FRACTION, check_edge_fraction, edge_warnings
from hpo.samplers.ranges import MIN_WIDTH_FRACTION, draw
from hpo.samplers.stages import Rule, StageBook, StageRanges
from hpo.signals import stop_requested

__all__ = [
    "EDGE_WARNING_ATTR",
    "MIN_WIDTH_FRACTION",
    "NarrowingSampler",
    "PARTIAL_ATTR",
    "RANGES_ATTR",
    "SHIFTED_ATTR",
    "STAGE_ATTR",
    "edge_warnings",
]

_logger = logging.getLogger(__name__)


_MAX_CONTEXTS = 4096


@dataclass
class _TrialContext:
    stage: int
    ranges: StageRanges
    recorded: dict[str, list[Any]]
    thread: int  # the thread that asked for the trial
    #: ``recorded`` holds ranges not yet written to the trial (stage 0: written by after_trial)
    pending: bool = False


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
      not ``wait_timeout``. When nobody else can finish the stage, the sampler does not wait
      at all: it narrows at once from what has finished and records ``narrowing:partial``.
      That is when every unfinished trial of stage ``s-1`` was asked through this sampler *by
      the calling thread* and is not told yet (Optuna's batch ask-and-tell: the thread that
      would tell them is the one asking), or when the study is in this process's memory
      (``InMemoryStorage``) and no other thread runs. A dead worker's trials (heartbeat stale
      past the grace period, or never beating past it) are failed at the first look, which
      finishes the stage.

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
      none was), e.g. ``["lr"]``. Nobody reads them before the trial ends (a stage is a
      function of the trial's number), so on hpo's storage they are written with the trial's
      end, in its final transaction (:func:`hpo.db.optuna_private.set_trial_system_attr_behind`);
      "when the trial starts" above is when this process knows them.

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

    :meth:`reseed_rng` keeps a given ``seed``: draws are keyed by ``(seed, trial number,
    param)``, so threads and processes sharing one seeded sampler never repeat each other's
    draws and a study's draws are the same for any number of workers. Only an unseeded sampler
    takes a fresh random seed.

    Multi-objective studies are refused (``ValueError``) by every sampling method.
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
        edge_fraction: float = EDGE_FRACTION,
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
        check_edge_fraction(edge_fraction)
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

        self._rule = Rule(stage_trials, keep_top, float(margin), float(edge_fraction), shift,
                          checked_initial)
        self._user_seed = seed
        self._seed = seed % 2**64 if seed is not None else secrets.randbits(63)
        self._wait_timeout = float(wait_timeout)
        self._poll_interval = float(poll_interval)
        self._init_state()

    def _init_state(self) -> None:
        self._lock = threading.Lock()
        self._book = StageBook(self._rule)
        self._timed_out: set[tuple[int, int, int]] = set()
        self._contexts: OrderedDict[tuple[int, int, int], _TrialContext] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in ("_lock", "_book", "_timed_out", "_contexts"):
            del state[key]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_state()

    def __str__(self) -> str:
        r = self._rule
        return (f"NarrowingSampler(stage_trials={r.stage_trials}, keep_top={r.keep_top}, "
                f"margin={r.margin}, shift={r.shift}, initial={dict(r.initial) or None})")

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
        _refuse_multi_objective(study)
        return {}

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        _refuse_multi_objective(study)
        self._prepare(study, trial)

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        _refuse_multi_objective(study)
        ctx = self._context(study, trial)
        if ctx is None:  # before_trial did not run on this instance
            ctx = self._prepare(study, trial)
        dist = param_distribution
        current = self._rule.effective(ctx.ranges.ranges.get(param_name), dist, param_name)
        as_json = current.to_json()
        if ctx.recorded.get(param_name) != as_json:
            ctx.recorded[param_name] = as_json
            if ctx.stage == 0:
                # Stage 0's ranges are the original ranges of the params the trial asks for,
                # complete only once it has asked for all of them: one write, in after_trial,
                # instead of one per param (each storage write is a round trip).
                ctx.pending = True
            else:
                oc.set_trial_system_attr_behind(study, trial, RANGES_ATTR, dict(ctx.recorded))
        rng = np.random.default_rng([self._seed, trial.number, zlib.crc32(param_name.encode())])
        return draw(rng, dist, current)

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
            oc.set_trial_system_attr_behind(study, trial, RANGES_ATTR, dict(ctx.recorded))

    # ---------------------------------------------------------------- public helpers

    @property
    def stage_trials(self) -> int:
        """Trials per stage."""
        return self._rule.stage_trials

    @property
    def _initial(self) -> dict[str, tuple[float, float]]:
        return dict(self._rule.initial)

    @property
    def _shift(self) -> bool:
        return self._rule.shift

    def stage_of(self, trial_number: int) -> int:
        """The stage of trial number ``trial_number``."""
        return trial_number // self._rule.stage_trials

    def stage_ranges(self, study: Study, stage: int) -> dict[str, list[Any]]:
        """The ranges of ``stage``, derived from the trials now in storage (no waiting).

        Same format as the ``narrowing:ranges`` attribute; params never seen before ``stage``
        are absent (they are sampled from the distribution the objective asks for).
        """
        if stage < 0:
            raise ValueError(f"stage must be >= 0, got {stage}")
        return self._book.ranges(study, stage, oc.all_trials(study)).to_json()

    # ---------------------------------------------------------------- internals

    @staticmethod
    def _context_key(study: Study, trial: FrozenTrial) -> tuple[int, int, int]:
        return (id(oc.storage_of(study)), oc.study_id(study), oc.trial_id(trial))

    def _context(self, study: Study, trial: FrozenTrial) -> _TrialContext | None:
        with self._lock:
            return self._contexts.get(self._context_key(study, trial))

    def _prepare(self, study: Study, trial: FrozenTrial) -> _TrialContext:
        stage = self.stage_of(trial.number)
        oc.set_trial_system_attr_behind(study, trial, STAGE_ATTR, stage)
        ranges = self._book.memoised(study, stage)
        if ranges is None:
            ranges = self._book.ranges(study, stage, self._wait_for(study, stage, trial))
        if stage > 0:
            oc.set_trial_system_attr_behind(study, trial, RANGES_ATTR, ranges.to_json())
            if not ranges.final:
                oc.set_trial_system_attr_behind(study, trial, PARTIAL_ATTR, True)
            if ranges.edge_warnings:
                oc.set_trial_system_attr_behind(study, trial, EDGE_WARNING_ATTR,
                                         "; ".join(ranges.edge_warnings))
            if ranges.shifted:
                oc.set_trial_system_attr_behind(study, trial, SHIFTED_ATTR, list(ranges.shifted))
        ctx = _TrialContext(stage, ranges, ranges.to_json(), threading.get_ident())
        with self._lock:
            self._contexts[self._context_key(study, trial)] = ctx
            while len(self._contexts) > _MAX_CONTEXTS:  # trials that were never told
                self._contexts.popitem(last=False)
        return ctx

    def _wait_for(self, study: Study, stage: int, trial: FrozenTrial) -> list[FrozenTrial]:
        """All trials, once stage ``stage - 1`` has finished, or at once when nobody else can
        finish it, or when the wait timed out.

        With a heartbeat-enabled storage the waiting trial keeps its own heartbeat and stale
        trials are failed (:func:`hpo.db.storage.keep_alive`), since ``Study.optimize`` only does
        that between trials and every worker may be waiting here.
        """
        trials = oc.cached_trials(study)
        if not trials or trials[-1].number < trial.number:  # read before this trial existed
            trials = oc.all_trials(study)
        key = (id(oc.storage_of(study)), oc.study_id(study), stage)
        with self._lock:
            timed_out = key in self._timed_out
        if timed_out or self._rule.previous_finished(trials, stage):
            return trials
        heartbeat = oc.heartbeat_interval(oc.storage_of(study))
        next_beat = time.monotonic()
        deadline = next_beat + self._wait_timeout
        while True:
            now = time.monotonic()
            if heartbeat is not None and now >= next_beat:
                keep_alive(study, trial)
                next_beat = now + heartbeat
                trials = oc.all_trials(study)
                if self._rule.previous_finished(trials, stage):
                    return trials
            if self._nobody_else_can_finish(study, self._rule.pending(trials, stage)):
                return trials  # narrow from what has finished, at once
            remaining = deadline - now
            if remaining <= 0:
                break
            if stop_requested():
                # SIGTERM / Ctrl-C while waiting (in ask, where raising would leave the new
                # trial RUNNING): stop waiting; the trial loop fails the trial right after
                return trials
            time.sleep(min(self._poll_interval, remaining))
            trials = oc.all_trials(study)
            if self._rule.previous_finished(trials, stage):
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

    def _nobody_else_can_finish(self, study: Study, pending: Sequence[FrozenTrial]) -> bool:
        """Whether waiting is pointless: the study lives in this process's memory and no other
        thread runs, or every pending trial was asked through this sampler by the calling thread
        and is not told yet (the thread that would tell them is the one waiting)."""
        if not pending:
            return False
        if isinstance(oc.storage_of(study), InMemoryStorage) and threading.active_count() == 1:
            return True
        me = threading.get_ident()
        with self._lock:
            return all(
                (ctx := self._contexts.get(self._context_key(study, t))) is not None
                and ctx.thread == me and t.state == TrialState.RUNNING
                for t in pending
            )


def _refuse_multi_objective(study: Study) -> None:
    if len(study.directions) > 1:
        raise ValueError("NarrowingSampler does not support multi-objective studies: it "
                         "narrows around the best trials of one objective")
