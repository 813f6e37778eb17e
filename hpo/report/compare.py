"""A comparison's results: the grid of studies, its statistics, table, figure and files.

``hpo compare`` (:mod:`hpo.engine.compare`) runs one study per (arm, seed) and reduces each to a
:class:`StudyRun`; this module says what they show:

* what is compared is the best **validation** accuracy so far, with its spread over seeds (median
  and interquartile range), the mean rank of each arm's final best within a seed and a two-sided
  Mann-Whitney U test against the reference arm, and the **test** accuracy of each study's chosen
  trial (measured once per study by :mod:`hpo.report.evaluate`);
* :func:`write_outputs` writes ``summary.md`` (the table, the command, the code's commit and the
  machine), ``summary.json`` (every curve) and ``best_so_far.png``; :func:`grid_from_summary`
  reads ``summary.json`` back (``scripts/replot_compare.py`` redraws the figure from it).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import textwrap
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna

from hpo.report.listing import clean_floats
from hpo.report.metric import BOOK, Metric, metric_of
from hpo.samplers.ranking import direction_sign

CHECKPOINTS = (10, 25, 50, 100, 200, 300, 500, 1000)


@dataclass
class StudyRun:
    """One (sampler, seed) study, reduced to what the comparison needs."""

    sampler: str
    seed: int
    name: str
    best_so_far: list[float]  # best value after trial i+1 (finished trials only)
    elapsed: list[float]  # seconds from the first trial's start to each finished trial's end
    test_acc: float | None = None
    chosen_trial: int | None = None
    confirmed_val: float | None = None  # the confirmed winner's mean val acc over fresh seeds

    def trials_to(self, target: float, direction: str = BOOK.direction) -> int | None:
        """Trials until the best value reached ``target`` (at or above it when the study
        maximizes, at or below when it minimizes); None if it never did."""
        sign = -direction_sign(direction)  # +1: maximize
        for i, v in enumerate(self.best_so_far):
            if sign * v >= sign * target:
                return i + 1
        return None

    def seconds_to(self, target: float, direction: str = BOOK.direction) -> float | None:
        n = self.trials_to(target, direction)
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
    metric: Metric | None = None  # None: the arms' spec's (metric_of), else the book's

    def __post_init__(self) -> None:
        if self.metric is None:
            spec = self.arms[0].spec if self.arms else None
            self.metric = metric_of(spec.to_dict()) if hasattr(spec, "to_dict") else BOOK

    @property
    def labels(self) -> list[str]:
        return [a.label for a in self.arms]

    @property
    def m(self) -> Metric:
        return self.metric or BOOK


def grid_from_summary(path: str) -> Grid:
    """A :class:`Grid` rebuilt from a ``summary.json`` that :func:`write_outputs` wrote (its
    runs and figures, without the studies): ``scripts/replot_compare.py`` redraws from it."""
    with open(path) as fh:
        raw = json.load(fh)
    runs = {label: [StudyRun(**r) for r in rs] for label, rs in raw["runs"].items()}
    grid = Grid(raw["spec"], [Arm(label, None) for label in runs], raw["seeds"],
                raw["n_trials"], raw["target"], runs=runs, workers=raw.get("workers", 1),
                metric=Metric(raw.get("metric", BOOK.name), raw.get("direction", BOOK.direction)))
    grid.confirmed = any(r.confirmed_val is not None for rs in runs.values() for r in rs)
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
    """Mean rank of each sampler's final best value across seeds (1 = best in the study's
    direction; ties share the average rank)."""
    # scipy.stats (~1 s) when the table is made: hpo compare imports this module at start-up,
    # before it checks its flags or runs a cell
    from scipy.stats import rankdata

    ranks: dict[str, list[float]] = {s: [] for s in grid.labels}
    for k in range(grid.seeds):
        sign = direction_sign(grid.m.direction)
        finals = [sign * _by_seed(grid, s, k).best_so_far[-1] for s in grid.labels]
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
    from scipy.stats import mannwhitneyu  # start-up time: see mean_ranks

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


# --- table ----------------------------------------------------------------------------------


def table(grid: Grid) -> str:
    """The Markdown summary table, one row per sampler."""
    checkpoints = [c for c in CHECKPOINTS if c < grid.n_trials] + [grid.n_trials]
    ranks = mean_ranks(grid)
    pvals = mann_whitney(grid)
    short = "val" if grid.m.book else grid.m.name  # the book's table says "best val @10"
    head = (["sampler"] + [f"best {short} @{c}" for c in checkpoints]
            + [f"trials to {grid.target:.2f}", f"seconds to {grid.target:.2f}", "reached",
               "mean rank", f"U-test p vs {reference(grid)}"]
            + (["chosen: confirmed val acc"] if grid.confirmed else [])
            + [f"test {'acc' if grid.m.book else grid.m.name} of chosen"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in grid.labels:
        runs = grid.runs[s]
        cells = [s] + [_fmt_q([r.best_at(c) for r in runs]) for c in checkpoints]
        hits = [r.trials_to(grid.target, grid.m.direction) for r in runs]
        secs = [r.seconds_to(grid.target, grid.m.direction) for r in runs]
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
    # matplotlib (~0.4 s) only when drawing: hpo compare imports this module before its cells run
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
        ax.set_ylabel(f"best {grid.m.words} so far")
        ax.grid(alpha=0.3)
        if grid.m.book:  # an accuracy
            ax.set_ylim(0, 1)
    ax1.set_xlabel("trial")
    ax1.set_xlim(1, max(grid.n_trials, 2))
    ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax2.set_xlabel(f"seconds since the study's first trial ({grid.workers} worker"
                   f"{'s' if grid.workers > 1 else ''})")
    ax1.legend(loc="lower right")
    title = f"{grid.title}: {', '.join(grid.labels)}".replace("$", r"\$")  # not mathtext
    lines = textwrap.wrap(title, 110, break_on_hyphens=False)
    lines.append(f"best {grid.m.words} so far, median and IQR over {grid.seeds} "
                 f"seed{'s' if grid.seeds > 1 else ''}")
    fig.suptitle("\n".join(lines), fontsize=11)
    fig.tight_layout()
    return fig


def _pad(curve: list[float], n: int) -> list[float]:
    return (curve + [curve[-1]] * (n - len(curve)))[:n] if curve else [0.0] * n


def _at_times(run: StudyRun, t_grid: np.ndarray) -> np.ndarray:
    """The best-so-far value at each time of ``t_grid`` (NaN before the first trial ended)."""
    times = np.asarray(run.elapsed)
    idx = np.searchsorted(times, t_grid, side="right") - 1
    vals = np.asarray(run.best_so_far)
    out = np.where(idx >= 0, vals[np.clip(idx, 0, None)], np.nan)
    return out


# --- output files ---------------------------------------------------------------------------


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
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # hpo/, not hpo/report
    git = ["git", "-C", package]
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
        f"Best {grid.m.words} so far: median [interquartile range] over seeds. "
        f"Trials/seconds to {grid.target:.2f}: median over seeds, counting seeds that never got "
        "there as beyond the budget (shown as >N when fewer than half reached it). Mean rank: of "
        "the final best across arms within each seed (1 = best). U-test: two-sided "
        f"Mann–Whitney U of the final best against {reference(grid)}. "
        + ("Chosen: each study's top trials retrained with fresh seeds (`hpo confirm`), the "
           "winner by mean validation accuracy. " if grid.confirmed else
           "Chosen: each study's best trial. ")
        + ("Test acc: the chosen trial retrained with its own seed and evaluated once on the "
           "test split." if grid.m.book else f"Test {grid.m.name}: the chosen trial's params "
           "through the spec's `[objective] test` function once (- when it names none)."),
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
        summary = {"spec": grid.title, "n_trials": grid.n_trials, "seeds": grid.seeds,
                   "target": grid.target, "workers": grid.workers, "runs": raw,
                   "notes": list(notes)}
        if grid.m != BOOK:  # a book comparison's file stays as it was
            summary.update(metric=grid.m.name, direction=grid.m.direction)
        json.dump(clean_floats(summary), fh)
    return paths
