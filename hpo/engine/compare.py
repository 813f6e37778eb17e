"""Sampler comparison across seeds: ``hpo compare``.

Fairness rules:

* one study per (sampler, seed), named ``<spec>/<sampler>/seed<k>``, all on the **same data
  split** (the spec's ``data.seed``); seed k sets the sampler's seed and the trials' network seeds,
  so trial n of every sampler at seed k starts from the same initial weights (common random
  numbers: a difference between samplers is the samplers', not the initialisations');
* the budget is exact (:func:`hpo.engine.loop.work`); the studies live in their own storage,
  ``<out>/compare.db`` unless ``--storage`` says otherwise, and a rerun continues them only when
  asked (``--resume``: finished studies are skipped, unfinished ones completed);
* what is compared is the best **validation** accuracy so far, with its spread over seeds (median
  and interquartile range), and the **test** accuracy of each study's chosen trial, measured once
  per study by :mod:`hpo.report.evaluate` (stored; a rerun reuses it).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
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
from hpo.report.evaluate import CONFIRM_ATTR, choose_trial, confirm, evaluate_on_test
from hpo.report.listing import TEST_ATTR, clean_floats

CHECKPOINTS = (10, 25, 50, 100, 200, 300, 500, 1000)
NARROWING_DEFAULTS = {"stage_trials": 100, "keep_top": 10}


@dataclass
class StudyRun:
    """One (sampler, seed) study, reduced to what the comparison needs."""

    sampler: str
    seed: int
    name: str
    best_so_far: list[float]  # best validation accuracy after trial i+1 (finished trials only)
    elapsed: list[float]  # seconds from the first trial's start to each finished trial's end
    test_acc: float | None = None
    chosen_trial: int | None = None
    confirmed_val: float | None = None  # the confirmed winner's mean val acc over fresh seeds

    def trials_to(self, target: float) -> int | None:
        for i, v in enumerate(self.best_so_far):
            if v >= target:
                return i + 1
        return None

    def seconds_to(self, target: float) -> float | None:
        n = self.trials_to(target)
        return None if n is None else self.elapsed[n - 1]

    def best_at(self, n: int) -> float:
        return self.best_so_far[min(n, len(self.best_so_far)) - 1]


@dataclass(frozen=True)
class Arm:
    """One contender: a spec run by its sampler. ``label`` names it in tables and plots."""

    label: str
    spec: Any  # hpo.spec.Spec


@dataclass
class Grid:
    title: str
    arms: list[Arm]
    seeds: int
    n_trials: int
    target: float
    runs: dict[str, list[StudyRun]] = field(default_factory=dict)
    confirmed: bool = False
    workers: int = 1

    @property
    def labels(self) -> list[str]:
        return [a.label for a in self.arms]


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
    """Best-so-far curve over finished trials in trial-number order, with elapsed seconds."""
    trials = sorted(
        (t for t in study.get_trials(deepcopy=False)
         if t.state in (TrialState.COMPLETE, TrialState.PRUNED)),
        key=lambda t: t.number,
    )
    best, curve, elapsed = -np.inf, [], []
    t0 = min((t.datetime_start for t in trials if t.datetime_start), default=None)
    for t in trials:
        if t.state == TrialState.COMPLETE and t.value is not None:
            best = max(best, float(t.value))
        curve.append(float(best) if np.isfinite(best) else 0.0)
        end = t.datetime_complete or t.datetime_start
        elapsed.append((end - t0).total_seconds() if t0 and end else float("nan"))
    # elapsed must be monotone for "seconds to target" (workers finish out of number order)
    elapsed = list(np.maximum.accumulate(elapsed)) if elapsed else []
    test = study.user_attrs.get(TEST_ATTR)
    confirmed = study.user_attrs.get(CONFIRM_ATTR)
    return StudyRun(sampler, seed, study.study_name, curve, [float(x) for x in elapsed],
                    test_acc=None if test is None else float(test["test_acc"]),
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
    print(f"hpo compare: {len(arms)} arms x {seeds} seeds, studies in {mask_url(url)}",
          file=sys.stderr)
    grid = Grid(title or arms[0].spec.name, arms, seeds, n_trials, target,
                confirmed=confirm_top > 0, workers=workers)
    total = len(arms) * seeds * n_trials
    by_label = {a.label: a for a in arms}
    cells = [(a.label, k) for k in range(seeds) for a in arms]  # seed-major: early partial views
    names = dict(zip(cells, cell_names(arms, seeds), strict=True))
    runs: dict[tuple[str, int], RunRequest] = {}
    studies: dict[tuple[str, int], optuna.Study] = {}
    for s, k in cells:  # every cell's study first: the progress bar knows what is done
        v = by_label[s].spec.replace(seed=k, n_trials=n_trials)  # seed k: the network seeds
        runs[s, k] = RunRequest(names[s, k], url, v, workers=workers, data=data, progress=False,
                              announce=False, heartbeat_interval=heartbeat_interval,
                              grace_period=grace_period, who="hpo compare")
        if worker_job is not None:
            runs[s, k].worker_job = lambda name=names[s, k]: worker_job(name, n_trials)
        studies[s, k] = open_study(runs[s, k])[0]
    done0 = sum(min(count(st)[0], n_trials) for st in studies.values())
    bar = Progress(total, done0, enabled=progress)
    finished_before = done0
    try:
        for s, k in cells:
            study = studies[s, k]
            base = finished_before - min(count(study)[0], n_trials)

            def on_trial(st, t, base=base):
                bar.update(base + min(count(st)[0], n_trials), None)

            if bar.bar is not None:
                bar.bar.set_description_str(study.study_name, refresh=False)
            if count(study)[0] < n_trials:
                runs[s, k].on_trial = on_trial if progress else None  # a count is a read
                outcome = run_study(runs[s, k])
                if outcome.failed_workers:
                    raise RuntimeError(f"a worker of {study.study_name} failed")
            finished_before = base + min(count(study)[0], n_trials)
            bar.update(finished_before, None)
            if confirm_top and CONFIRM_ATTR not in study.user_attrs:
                confirm(study, top=confirm_top, seeds=confirm_seeds)
            if evaluate_test and TEST_ATTR not in study.user_attrs:
                evaluate_on_test(study, choose_trial(study))
            grid.runs.setdefault(s, []).append(summarize_study(
                optuna.load_study(study_name=study.study_name, storage=oc.storage_of(study)), s, k))
    finally:
        bar.close()
    return grid


# --- statistics -----------------------------------------------------------------------------


def _q(values: list[float]) -> tuple[float, float, float]:
    a = np.asarray(values, dtype=float)
    return float(np.median(a)), float(np.percentile(a, 25)), float(np.percentile(a, 75))


def _fmt_q(values: list[float], digits: int = 3) -> str:
    if not values:
        return "-"
    m, lo, hi = _q(values)
    return f"{m:.{digits}f} [{lo:.{digits}f}–{hi:.{digits}f}]"


def mean_ranks(grid: Grid) -> dict[str, float]:
    """Mean rank of each sampler's final best validation accuracy across seeds (1 = best; ties
    share the average rank)."""
    from scipy.stats import rankdata

    ranks: dict[str, list[float]] = {s: [] for s in grid.labels}
    for k in range(grid.seeds):
        finals = [-_by_seed(grid, s, k).best_so_far[-1] for s in grid.labels]
        for s, r in zip(grid.labels, rankdata(finals), strict=True):
            ranks[s].append(float(r))
    return {s: float(np.mean(r)) for s, r in ranks.items()}


def _by_seed(grid: Grid, sampler: str, seed: int) -> StudyRun:
    return next(r for r in grid.runs[sampler] if r.seed == seed)


def reference(grid: Grid) -> str:
    """The arm the others are tested against: ``narrowing`` (the book's search) when present."""
    return "narrowing" if "narrowing" in grid.labels else grid.labels[0]


def mann_whitney(grid: Grid) -> dict[str, float | None]:
    """Two-sided Mann-Whitney U p-value of each arm's final best against :func:`reference`."""
    from scipy.stats import mannwhitneyu

    reference_ = reference(grid)
    ref = [r.best_so_far[-1] for r in grid.runs[reference_]]
    out: dict[str, float | None] = {}
    for s in grid.labels:
        if s == reference_:
            out[s] = None
            continue
        vals = [r.best_so_far[-1] for r in grid.runs[s]]
        if len(set(vals + ref)) == 1:
            out[s] = 1.0
        else:
            out[s] = float(mannwhitneyu(vals, ref, alternative="two-sided").pvalue)
    return out


def table(grid: Grid) -> str:
    """The Markdown summary table, one row per sampler."""
    checkpoints = [c for c in CHECKPOINTS if c < grid.n_trials] + [grid.n_trials]
    ranks = mean_ranks(grid)
    pvals = mann_whitney(grid)
    head = (["sampler"] + [f"best val @{c}" for c in checkpoints]
            + [f"trials to {grid.target:.2f}", f"seconds to {grid.target:.2f}", "reached",
               "mean rank", f"U-test p vs {reference(grid)}"]
            + (["chosen: confirmed val acc"] if grid.confirmed else [])
            + ["test acc of chosen"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in grid.labels:
        runs = grid.runs[s]
        cells = [s] + [_fmt_q([r.best_at(c) for r in runs]) for c in checkpoints]
        hits = [r.trials_to(grid.target) for r in runs]
        secs = [r.seconds_to(grid.target) for r in runs]
        reached = sum(h is not None for h in hits)
        # seeds that never reached the target count as "more than the budget": the median is
        # reported only when at least half of the seeds reached it
        cells.append(_median_or_more([h for h in hits], grid.n_trials, "{:.0f}"))
        cells.append(_median_or_more([x for x in secs], None, "{:.1f}"))
        cells.append(f"{reached}/{len(runs)}")
        cells.append(f"{ranks[s]:.2f}")
        p = pvals.get(s)
        cells.append("—" if p is None else f"{p:.3f}")
        if grid.confirmed:
            cells.append(_fmt_q([r.confirmed_val for r in runs if r.confirmed_val is not None]))
        tests = [r.test_acc for r in runs if r.test_acc is not None]
        cells.append(_fmt_q(tests) if tests else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _median_or_more(values: list[float | None], cap: int | None, fmt: str) -> str:
    n = len(values)
    got = sorted(v for v in values if v is not None)
    if len(got) * 2 < n or not got:
        return f">{cap}" if cap is not None else "not reached"
    padded = got + [float("inf")] * (n - len(got))
    med = float(np.median(padded))
    return fmt.format(med) if np.isfinite(med) else (f">{cap}" if cap else "not reached")


# --- figure -----------------------------------------------------------------------------------


#: Line styles and markers per arm, so that arms whose medians coincide stay visible.
STYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P")


def plot(grid: Grid, path: str) -> None:
    """Save :func:`best_so_far_figure` to ``path``."""
    best_so_far_figure(grid).savefig(path)


def best_so_far_figure(grid: Grid):
    """Best-so-far validation accuracy: median line and interquartile band per arm, against
    trial number (left) and against elapsed seconds (right). Each arm has its own colour, line
    style and markers (placed at different trials per arm), so equal medians do not hide one
    another; the trial axis has whole-number ticks. A matplotlib Figure (no pyplot state)."""
    from matplotlib import rcParams
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(12, 4.6), dpi=110)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    colors = rcParams["axes.prop_cycle"].by_key()["color"]
    x = np.arange(1, grid.n_trials + 1)
    t_max = max((r.elapsed[-1] for rs in grid.runs.values() for r in rs if r.elapsed), default=1)
    t_grid = np.linspace(0, t_max, 300)
    n_arms = len(grid.labels)
    for i, s in enumerate(grid.labels):
        c = colors[i % len(colors)]
        style = {"color": c, "linestyle": STYLES[i % len(STYLES)], "linewidth": 1.8,
                 "marker": MARKERS[i % len(MARKERS)], "markersize": 5, "zorder": 3 + i}
        curves = np.array([_pad(r.best_so_far, grid.n_trials) for r in grid.runs[s]])
        med, lo, hi = (np.percentile(curves, q, axis=0) for q in (50, 25, 75))
        every = max(1, grid.n_trials // 8)
        ax1.plot(x, med, label=f"{s} (n={len(curves)})".replace("$", r"\$"),
                 markevery=(min(i * every // n_arms, grid.n_trials - 1), every), **style)
        ax1.fill_between(x, lo, hi, color=c, alpha=0.15, linewidth=0)
        timed = np.array([_at_times(r, t_grid) for r in grid.runs[s]])
        with warnings.catch_warnings():  # before every seed's first trial ended: all NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            med, lo, hi = (np.nanpercentile(timed, q, axis=0) for q in (50, 25, 75))
        ax2.plot(t_grid, med, label=s.replace("$", r"\$"),
                 markevery=(i * 37 // n_arms, 37), **style)
        ax2.fill_between(t_grid, lo, hi, color=c, alpha=0.15, linewidth=0)
    for ax in (ax1, ax2):
        ax.axhline(grid.target, color="grey", linestyle=":", linewidth=1)
        ax.set_ylabel("best validation accuracy so far")
        ax.grid(alpha=0.3)
        ax.set_ylim(0, 1)
    ax1.set_xlabel("trial")
    ax1.set_xlim(1, max(grid.n_trials, 2))
    ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax2.set_xlabel(f"seconds since the study's first trial ({grid.workers} worker"
                   f"{'s' if grid.workers > 1 else ''})")
    ax1.legend(loc="lower right")
    title = f"{grid.title}: {', '.join(grid.labels)}".replace("$", r"\$")  # not mathtext
    lines = textwrap.wrap(title, 110, break_on_hyphens=False)
    lines.append(f"best validation accuracy so far, median and IQR over {grid.seeds} "
                 f"seed{'s' if grid.seeds > 1 else ''}")
    fig.suptitle("\n".join(lines), fontsize=11)
    fig.tight_layout()
    return fig


def grid_from_summary(path: str) -> Grid:
    """A :class:`Grid` rebuilt from a ``summary.json`` that :func:`write_outputs` wrote (its
    runs and figures, without the studies): ``scripts/replot_compare.py`` redraws from it."""
    with open(path) as fh:
        raw = json.load(fh)
    runs = {label: [StudyRun(**r) for r in rs] for label, rs in raw["runs"].items()}
    grid = Grid(raw["spec"], [Arm(label, None) for label in runs], raw["seeds"],
                raw["n_trials"], raw["target"], runs=runs, workers=raw.get("workers", 1))
    grid.confirmed = any(r.confirmed_val is not None for rs in runs.values() for r in rs)
    return grid


def _pad(curve: list[float], n: int) -> list[float]:
    return (curve + [curve[-1]] * (n - len(curve)))[:n] if curve else [0.0] * n


def _at_times(run: StudyRun, t_grid: np.ndarray) -> np.ndarray:
    """The best-so-far value at each time of ``t_grid`` (NaN before the first trial ended)."""
    times = np.asarray(run.elapsed)
    idx = np.searchsorted(times, t_grid, side="right") - 1
    vals = np.asarray(run.best_so_far)
    out = np.where(idx >= 0, vals[np.clip(idx, 0, None)], np.nan)
    return out


# --- command ----------------------------------------------------------------------------------


def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"NumPy {np.__version__}, Optuna {optuna.__version__}")


def code_commit() -> str:
    """The git commit of the running hpo code (``+ local changes`` when hpo/ differs from it),
    or ``unknown`` outside a git checkout: a results page says what made it."""
    git = ["git", "-C", os.path.dirname(os.path.abspath(__file__))]
    try:
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "--", "."], capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + (" + local changes" if dirty else "")


def write_outputs(grid: Grid, out: str, command: str, notes: tuple = ()) -> dict[str, str]:
    os.makedirs(out, exist_ok=True)
    paths = {"plot": os.path.join(out, "best_so_far.png"),
             "table": os.path.join(out, "summary.md"),
             "json": os.path.join(out, "summary.json")}
    plot(grid, paths["plot"])
    md = [
        f"# {grid.title}: {', '.join(grid.labels)} — {grid.seeds} seeds × "
        f"{grid.n_trials} trials",
        "",
        f"Command: `{command}`",
        "",
        f"Code: hpo at commit {code_commit()}",
        "",
        f"Machine: {machine_line()}; date {time.strftime('%Y-%m-%d')}",
        "",
        "Best validation accuracy so far: median [interquartile range] over seeds. "
        f"Trials/seconds to {grid.target:.2f}: median over seeds, counting seeds that never got "
        "there as beyond the budget (shown as >N when fewer than half reached it). Mean rank: of "
        "the final best across arms within each seed (1 = best). U-test: two-sided "
        f"Mann–Whitney U of the final best against {reference(grid)}. "
        + ("Chosen: each study's top trials retrained with fresh seeds (`hpo confirm`), the "
           "winner by mean validation accuracy. " if grid.confirmed else
           "Chosen: each study's best trial. ")
        + "Test acc: the chosen trial retrained with its own seed and evaluated once on the "
        "test split.",
        "",
        table(grid), "",
        *[f"**Note:** {n}\n" for n in notes],
        "![best so far](best_so_far.png)",
        "",
    ]
    with open(paths["table"], "w") as fh:
        fh.write("\n".join(md))
    raw = {s: [vars(r) for r in runs] for s, runs in grid.runs.items()}
    with open(paths["json"], "w") as fh:
        json.dump(clean_floats({"spec": grid.title, "n_trials": grid.n_trials,
                                "seeds": grid.seeds, "target": grid.target,
                                "workers": grid.workers, "runs": raw, "notes": list(notes)}), fh)
    return paths
