"""Sampler comparison across seeds: ``hpo compare``.

Fairness rules:

* one study per (sampler, seed), named ``<spec>/<sampler>/seed<k>``, all on the **same data
  split** (the spec's ``data.seed``); seed k sets the sampler's seed and the trials' network seeds,
  so trial n of every sampler at seed k starts from the same initial weights (common random
  numbers: a difference between samplers is the samplers', not the initialisations');
* the budget is exact (:func:`hpo.engine.loop.work`); the studies live in their own storage,
  ``<out>/compare.db`` unless ``--storage`` says otherwise, and a rerun continues them only when
  asked (``--resume``: finished studies are skipped, unfinished ones completed);
* each finished cell is reduced to a :class:`~hpo.report.compare.StudyRun` (its best-so-far
  curve, the test accuracy of its chosen trial, measured once per study by
  :mod:`hpo.report.evaluate` and stored: a rerun reuses it); what they show (statistics, table,
  figure, files) is :mod:`hpo.report.compare`'s.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from hpo.db import optuna_private as oc
from hpo.db.storage import mask_url
from hpo.engine.loop import count
from hpo.engine.procs import WorkerJob
from hpo.engine.progress import Progress
from hpo.engine.study import RunRequest, open_study, run_study
from hpo.objectives import make_objective
from hpo.report.compare import Arm, Grid, StudyRun
from hpo.report.evaluate import CONFIRM_ATTR, choose_trial, confirm, evaluate_on_test
from hpo.report.listing import TEST_ATTR

NARROWING_DEFAULTS = {"stage_trials": 100, "keep_top": 10}

log = logging.getLogger("hpo.compare")


def evaluates_test(spec) -> bool:
    """Does a cell of ``spec`` get a test-split evaluation? The book's MLP always; a user's
    objective only when its ``[objective]`` names a ``test`` function."""
    return spec.objective is None or bool(spec.objective.test)


def confirms(spec) -> bool:
    """Does ``--confirm`` apply to a cell of ``spec``? The book's MLP (retrained with fresh
    seeds), and a user's objective whose function takes ``seed`` (re-run with fresh ones:
    :func:`hpo.report.evaluate.confirm`)."""
    if spec.objective is None:
        return True
    return "seed" in getattr(make_objective(spec), "takes", frozenset())


def _test_cell(study: optuna.Study, spec) -> None:
    """The cell's chosen trial measured once on the test split (a user's objective: its
    ``[objective] test`` function, loaded from the spec's folder)."""
    trial = choose_trial(study)
    if spec.objective is None:
        evaluate_on_test(study, trial)
    else:
        base = spec.objective.base
        evaluate_on_test(study, trial, code_dirs=[base] if base else None)


def study_name(spec_name: str, sampler: str, seed: int) -> str:
    return f"{spec_name}/{sampler}/seed{seed}"


def cell_names(arms: list[Arm], seeds: int) -> list[str]:
    """The study name of every (arm, seed) cell, seed-major (the order they run in)."""
    return [study_name(a.spec.name, a.spec.sampler, k) for k in range(seeds) for a in arms]


def variant(spec, sampler: str, seed: int, n_trials: int):
    """The spec as run by ``sampler`` at ``seed``: same data, model and space."""
    options = dict(spec.sampler_options) if spec.sampler == sampler else (
        dict(NARROWING_DEFAULTS) if sampler == "narrowing" else {}
    )
    return spec.replace(sampler=sampler, sampler_options=options, seed=seed, n_trials=n_trials)


def make_arms(specs: list, samplers: list[str] | None) -> list[Arm]:
    """One spec with ``samplers``: an arm per sampler (label = sampler name). Several specs: an
    arm per spec with its own sampler (label = spec name); they must share the data split."""
    if len(specs) == 1:
        spec = specs[0]
        return [Arm(s, variant(spec, s, spec.seed, spec.n_trials)) for s in samplers or
                ["narrowing", "random", "tpe"]]
    if samplers:
        raise ValueError("give --samplers with one spec, or several specs without --samplers")
    first = specs[0].data
    for s in specs[1:]:
        if s.data != first:
            raise ValueError(f"spec {s.name!r} has another data section than {specs[0].name!r}: "
                             "a fair comparison needs the same split")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"the specs need distinct names, got {', '.join(names)}")
    return [Arm(s.name, s) for s in specs]


def summarize_study(study: optuna.Study, sampler: str, seed: int) -> StudyRun:
    """Best-so-far curve over finished trials in trial-number order (in the study's direction),
    with elapsed seconds. Before the first COMPLETE trial the curve holds 0.0 for a maximized
    study (an accuracy) and the first best value for a minimized one."""
    trials = sorted(
        (t for t in study.get_trials(deepcopy=False)
         if t.state in (TrialState.COMPLETE, TrialState.PRUNED)),
        key=lambda t: t.number,
    )
    minimize = study.direction == optuna.study.StudyDirection.MINIMIZE
    better = min if minimize else max
    best, curve, elapsed = (np.inf if minimize else -np.inf), [], []
    t0 = min((t.datetime_start for t in trials if t.datetime_start), default=None)
    for t in trials:
        if t.state == TrialState.COMPLETE and t.value is not None and np.isfinite(t.value):
            best = better(best, float(t.value))
        curve.append(float(best) if np.isfinite(best) else None)
        end = t.datetime_complete or t.datetime_start
        elapsed.append((end - t0).total_seconds() if t0 and end else float("nan"))
    first = next((c for c in curve if c is not None), 0.0)
    curve = [(first if minimize else 0.0) if c is None else c for c in curve]
    # elapsed must be monotone for "seconds to target" (workers finish out of number order)
    elapsed = list(np.maximum.accumulate(elapsed)) if elapsed else []
    test = study.user_attrs.get(TEST_ATTR)
    confirmed = study.user_attrs.get(CONFIRM_ATTR)
    # the book's record holds test_acc; a user objective's its metric's test_value
    tested = None if test is None else test.get("test_acc", test.get("test_value"))
    return StudyRun(sampler, seed, study.study_name, curve, [float(x) for x in elapsed],
                    test_acc=None if tested is None else float(tested),
                    chosen_trial=None if test is None else int(test["trial"]),
                    confirmed_val=None if confirmed is None
                    else float(confirmed["rows"][0]["mean"]))


def run_grid(arms: list[Arm], seeds: int, n_trials: int, *, url: str, workers: int,
             target: float, evaluate_test: bool, confirm_top: int = 0, confirm_seeds: int = 5,
             progress: bool = True, title: str | None = None,
             worker_job: Callable[[str, int], WorkerJob] | None = None,
             data: Any = None, heartbeat_interval: int | None = None,
             grace_period: int | None = None) -> Grid:
    """Run (or resume) every (arm, seed) study; optionally confirm its top trials with fresh
    seeds (``confirm_top`` > 0); evaluate each chosen trial on the test split once.

    Each cell is one :func:`hpo.engine.study.run_study` (in this process, or with ``workers`` >
    1 in worker processes started by ``worker_job(study_name, n_trials)``, default
    :func:`hpo.engine.study.worker_job`). ``data``: the arms' shared split, when the caller
    loaded it already (else loaded here)."""
    if data is None:  # one data load for the whole grid: the split is shared
        data = getattr(make_objective(arms[0].spec), "data", None)
    if logging.getLogger("hpo").isEnabledFor(logging.WARNING):  # -q shows it, -qq does not
        print(f"hpo compare: {len(arms)} arms x {seeds} seeds, studies in {mask_url(url)}",
              file=sys.stderr)
    if confirm_top and not all(confirms(a.spec) for a in arms):
        log.warning("hpo compare: --confirm %d skipped: an arm's own [objective] function takes "
                    "no `seed`, and a confirmation needs fresh seeds", confirm_top)
        confirm_top = 0
    grid = Grid(title or arms[0].spec.name, arms, seeds, n_trials, target,
                confirmed=confirm_top > 0, workers=workers)
    total = len(arms) * seeds * n_trials
    by_label = {a.label: a for a in arms}
    cells = [(a.label, k) for k in range(seeds) for a in arms]  # seed-major: early partial views
    names = dict(zip(cells, cell_names(arms, seeds), strict=True))
    runs: dict[tuple[str, int], RunRequest] = {}
    opened: dict[tuple[str, int], tuple] = {}  # open_study's (study, objective, ...)
    for s, k in cells:  # every cell's study first: the progress bar knows what is done
        v = by_label[s].spec.replace(seed=k, n_trials=n_trials)  # seed k: the network seeds
        runs[s, k] = RunRequest(names[s, k], url, v, workers=workers, data=data, progress=False,
                              announce=False, heartbeat_interval=heartbeat_interval,
                              grace_period=grace_period, who="hpo compare")
        if worker_job is not None:
            runs[s, k].worker_job = lambda name=names[s, k]: worker_job(name, n_trials)
        opened[s, k] = open_study(runs[s, k])
    done0 = sum(min(count(st)[0], n_trials) for st, *_ in opened.values())
    bar = Progress(total, done0, enabled=progress)
    finished_before = done0
    try:
        for s, k in cells:
            study = opened[s, k][0]
            base = finished_before - min(count(study)[0], n_trials)

            def on_trial(st, t, base=base):
                bar.update(base + min(count(st)[0], n_trials), None)

            if bar.bar is not None:
                bar.bar.set_description_str(study.study_name, refresh=False)
            if count(study)[0] < n_trials:
                runs[s, k].on_trial = on_trial if progress else None  # a count is a read
                outcome = run_study(runs[s, k], opened[s, k])
                if outcome.failed_workers:
                    raise RuntimeError(f"a worker of {study.study_name} failed")
            finished_before = base + min(count(study)[0], n_trials)
            bar.update(finished_before, None)
            spec = by_label[s].spec
            if confirm_top and CONFIRM_ATTR not in study.user_attrs:
                base = spec.objective.base if spec.objective else None
                confirm(study, top=confirm_top, seeds=confirm_seeds,
                        code_dirs=[base] if base else None)
            if evaluate_test and evaluates_test(spec) and TEST_ATTR not in study.user_attrs:
                _test_cell(study, spec)
            grid.runs.setdefault(s, []).append(summarize_study(
                optuna.load_study(study_name=study.study_name, storage=oc.storage_of(study)), s, k))
    finally:
        bar.close()
    return grid
