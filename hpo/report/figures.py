"""The book's figures for a study, drawn with matplotlib (PNG files of ``hpo report``).

Section 6.5.3 of the book lists the best trials and draws the validation (solid) and training
(dashed) accuracy of the top 20 trials per epoch, then narrows the ranges by eye. This module
draws that grid and the views that make the narrowing decision easier:

* :func:`best_curves_figure`: the top 20 trials' learning curves, titled Best-1 ... Best-20;
* :func:`acc_vs_params_figure`: validation accuracy against lr and against weight decay;
* :func:`contour_figure`: validation accuracy over the lr x weight-decay plane, interpolated;
* :func:`stages_figure` (narrowing studies): each stage's ranges and trials;
* :func:`curve_figure`: one trial's learning curve (a dashboard artifact).

Each is a plain function of a list of FrozenTrials and the spec dict (``hpo:spec``); matplotlib
is imported inside them, so ``hpo --help`` stays fast. The plotly versions are in
:mod:`hpo.report.plots`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from optuna.trial import FrozenTrial

from hpo.catalog import DEFAULT_DIRECTION
from hpo.report.listing import ranked
from hpo.report.metric import BOOK, Metric
from hpo.report.plane import (
    CURVE_ATTRS,
    PLANE,
    curve_x,
    finite,
    interpolate,
    is_log,
    label,
    plane_points,
    reported_curve,
    stages,
    xy,
)

# matplotlib (~0.4 s) is imported inside the figures: this module loads before hpo report has
# checked its flags and opened the study.
if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Subplots per row in the Best-N grid (the book's ``col_num``).
GRID_COLUMNS = 5
DPI = 110


def _figure(width: float, height: float) -> Figure:
    """A matplotlib Figure on the Agg canvas (no pyplot, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def best_curves_figure(
    trials: Sequence[FrozenTrial], top: int = 20, title: str | None = None,
    direction: Any = DEFAULT_DIRECTION, metric: Metric = BOOK, kind: str = "accuracy",
) -> Figure:
    """The book's figure: the top ``top`` COMPLETE trials (best first in the study's
    ``direction``) accuracy per epoch, validation solid and training dashed, one subplot each
    ("Best-1 (0.86)" ...), y from 0 to 1. With ``kind="reported"`` (a user's objective,
    :func:`hpo.report.plane.curve_kind`): the values each trial reported per step, titled in
    ``metric``, y scaled to the values."""
    if kind == "reported":
        return _reported_curves_figure(trials, top, title, direction, metric)
    fig, best, axes = _best_grid(trials, top, direction)
    if not best:
        return fig
    n = len(best)
    for i, (ax, t) in enumerate(zip(axes[:n], best, strict=True)):
        val, train = (t.user_attrs.get(k) for k in CURVE_ATTRS)
        if val:
            ax.plot(curve_x(t, val), val, color="C0", lw=1.4, label="validation")
        if train:
            ax.plot(curve_x(t, train), train, "--", color="C1", lw=1.2, label="training")
        if not val and not train:
            ax.text(0.5, 0.5, "no curves recorded", ha="center", va="center", fontsize=8,
                    transform=ax.transAxes)
        diverged = bool(t.user_attrs.get("diverged", False))
        ax.set_title(f"Best-{i + 1} ({metric.fmt(t.value)})" + (" diverged" if diverged else ""),
                     fontsize=9, color="C3" if diverged else "black")
        ax.set_ylim(0.0, 1.0)
        _label_cell(ax, i, n, "accuracy", "epoch")
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper right", fontsize=8, ncol=2, frameon=False)
    fig.suptitle(title or f"Best-{n}: validation (solid) and training (dashed) accuracy",
                 fontsize=11, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))
    return fig


def _best_grid(trials: Sequence[FrozenTrial], top: int, direction: Any) -> tuple:
    """(figure, the ``top`` best trials, one subplot each in rows of :data:`GRID_COLUMNS`);
    with no COMPLETE trial the figure says so and there are no subplots."""
    best = ranked(list(trials), direction)[:top]
    cols = GRID_COLUMNS
    nrows = max(1, math.ceil(len(best) / cols))
    fig = _figure(2.6 * cols, 1.9 * nrows + 1.0)
    if not best:
        fig.text(0.5, 0.5, "no COMPLETE trials yet", ha="center", va="center")
        return fig, best, None
    axes = fig.subplots(nrows, cols, squeeze=False, sharex=True, sharey=True).ravel()
    for ax in axes[len(best):]:
        ax.remove()
    return fig, best, axes


def _label_cell(ax: Any, i: int, n: int, ylabel: str, xlabel: str) -> None:
    """Subplot ``i`` of ``n`` in the grid: small ticks, a grid, the y label on the first column,
    the x label (and tick labels) on the last row."""
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if i % GRID_COLUMNS == 0:
        ax.set_ylabel(ylabel, fontsize=8)
    if i >= n - GRID_COLUMNS:
        ax.set_xlabel(xlabel, fontsize=8)
        ax.xaxis.set_tick_params(labelbottom=True)


def _reported_curves_figure(trials: Sequence[FrozenTrial], top: int, title: str | None,
                            direction: Any, metric: Metric) -> Figure:
    """The Best-N grid of a user's objective: each trial's reported values per step."""
    from matplotlib.ticker import MaxNLocator

    fig, best, axes = _best_grid(trials, top, direction)
    if not best:
        return fig
    n = len(best)
    for i, (ax, t) in enumerate(zip(axes[:n], best, strict=True)):
        steps, values = reported_curve(t)
        if values:
            ax.plot(steps, values, color="C0", lw=1.4, marker="." if len(values) < 12 else None)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        else:
            ax.text(0.5, 0.5, "nothing reported", ha="center", va="center", fontsize=8,
                    transform=ax.transAxes)
        ax.set_title(f"Best-{i + 1} ({metric.fmt(t.value)})", fontsize=9)
        _label_cell(ax, i, n, f"reported {metric.name}", "step")
    fig.suptitle(title or f"Best-{n}: the values each trial reported per step "
                 f"(ranked by {metric.name}, {metric.order})", fontsize=11, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))
    return fig


def _norm(spec: dict[str, Any], name: str, values: np.ndarray):
    from matplotlib.colors import LogNorm, Normalize

    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        lo, hi = (lo / 2, lo * 2) if is_log(spec, name) and lo > 0 else (lo - 1, hi + 1)
    return LogNorm(lo, hi) if is_log(spec, name) and lo > 0 else Normalize(lo, hi)


def _set_scales(ax, spec: dict[str, Any], x: str | None, y: str | None) -> None:
    if x:
        ax.set_xscale("log" if is_log(spec, x) else "linear")
        ax.set_xlabel(label(x))
    if y:
        ax.set_yscale("log" if is_log(spec, y) else "linear")
        ax.set_ylabel(label(y))


def acc_vs_params_figure(
    trials: Sequence[FrozenTrial], spec: dict[str, Any], params: Sequence[str] = PLANE
) -> Figure:
    """Validation accuracy against each of the two params (log x axes for log params), the
    points coloured by the other param (log colour scale), the best trial starred."""
    points = plane_points(trials, params, spec)
    fig = _figure(11, 4.3)
    axes = fig.subplots(1, 2)
    if not points:
        fig.text(0.5, 0.5, "no COMPLETE trials yet", ha="center", va="center")
        return fig
    x, y, v = xy(points, params)
    for ax, along, other, values, colour in ((axes[0], params[0], params[1], x, y),
                                             (axes[1], params[1], params[0], y, x)):
        sc = ax.scatter(values, v, c=colour, norm=_norm(spec, other, colour), cmap="viridis",
                        s=22, edgecolors="none", alpha=0.9)
        ax.scatter(values[:1], v[:1], marker="*", s=220, facecolors="none", edgecolors="C3",
                   lw=1.4, label=f"Best-1 (trial {points[0].number})")
        _set_scales(ax, spec, along, None)
        _pad_axis(ax.set_xlim, spec, along, values)
        ax.set_ylabel("validation accuracy")
        ax.grid(alpha=0.3, which="both" if not is_log(spec, along) else "major")
        ax.legend(loc="lower right", fontsize=8)
        fig.colorbar(sc, ax=ax, label=label(other))
    fig.suptitle(f"validation accuracy against {label(params[0])} and {label(params[1])} "
                 f"({len(points)} trials)", fontsize=11)
    fig.tight_layout()
    return fig


def contour_figure(
    trials: Sequence[FrozenTrial], spec: dict[str, Any], params: Sequence[str] = PLANE
) -> Figure:
    """Validation accuracy over the params' plane (log axes for log params), interpolated
    linearly between the trials (log10 space), with the trials as points."""
    points = plane_points(trials, params, spec)
    fig = _figure(7.5, 5.8)
    ax = fig.add_subplot()
    _set_scales(ax, spec, params[0], params[1])
    if not points:
        ax.text(0.5, 0.5, "no COMPLETE trials yet", ha="center", va="center",
                transform=ax.transAxes)
        return fig
    x, y, v = xy(points, params)
    grid = interpolate(points, spec, params, n=200)
    if grid is None:
        ax.text(0.5, 0.97, "too few trials to interpolate", ha="center", va="top",
                transform=ax.transAxes, fontsize=9)
        sc = ax.scatter(x, y, c=v, cmap="viridis", s=30, edgecolors="black", lw=0.4)
        fig.colorbar(sc, ax=ax, label="validation accuracy")
    else:
        from matplotlib.ticker import MaxNLocator

        gx, gy, z = grid
        lo, hi = float(v.min()), float(v.max())
        levels = MaxNLocator(12).tick_values(lo, hi) if hi > lo else [lo - 0.01, hi + 0.01]
        cs = ax.contourf(gx, gy, z, levels=levels, cmap="viridis")
        fig.colorbar(cs, ax=ax, label="validation accuracy")
        ax.scatter(x, y, s=12, c="white", edgecolors="black", lw=0.5, label="trials")
        _pad_axis(ax.set_xlim, spec, params[0], x, with_range=False)
        _pad_axis(ax.set_ylim, spec, params[1], y, with_range=False)
    ax.scatter(x[:1], y[:1], marker="*", s=260, c="C3", edgecolors="white", lw=0.8,
               label=f"Best-1 ({v[0]:.2f}, trial {points[0].number})")
    ax.legend(loc="best", fontsize=8, framealpha=0.85)
    ax.set_title(f"validation accuracy over {label(params[0])} x {label(params[1])} "
                 f"({len(points)} trials, linear interpolation)", fontsize=10)
    fig.tight_layout()
    return fig


def stages_figure(
    trials: Sequence[FrozenTrial], spec: dict[str, Any], params: Sequence[str] = PLANE
) -> Figure | None:
    """A narrowing study's stages on the params' plane: each stage's ranges as a rectangle and
    its trials as points, in the stage's colour. ``None`` for a study without stages."""
    from matplotlib.patches import Rectangle

    found = stages(trials, spec, params)
    if not found:
        return None
    fig = _figure(7.5, 5.8)
    ax = fig.add_subplot()
    _set_scales(ax, spec, params[0], params[1])
    for s in found:
        colour = f"C{s.number % 10}"
        if s.ranges is not None:
            (x0, x1), (y0, y1) = s.ranges[params[0]], s.ranges[params[1]]
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=True, facecolor=colour,
                                   alpha=0.08, edgecolor=colour, lw=1.6))
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour,
                                   lw=1.6))
        if s.trials:
            x, y, v = xy(s.trials, params)
            ax.scatter(x, y, s=24, color=colour, edgecolors="white", lw=0.4,
                       label=f"stage {s.number}: {len(s.trials)} trials, best {v.max():.2f}")
        else:
            ax.plot([], [], "s", color=colour, label=f"stage {s.number}: no COMPLETE trials")
    best = plane_points(trials, params, spec)
    if best:
        ax.scatter([best[0].params[params[0]]], [best[0].params[params[1]]], marker="*", s=260,
                   facecolors="none", edgecolors="black", lw=1.2,
                   label=f"Best-1 ({best[0].value:.2f}, trial {best[0].number})")
    xs = [t.params[params[0]] for s in found for t in s.trials]
    ys = [t.params[params[1]] for s in found for t in s.trials]
    for s in found:
        if s.ranges:
            xs += s.ranges[params[0]]
            ys += s.ranges[params[1]]
    if xs:
        _pad_axis(ax.set_xlim, spec, params[0], xs)
        _pad_axis(ax.set_ylim, spec, params[1], ys)
    ax.legend(loc="best", fontsize=8, framealpha=0.85)
    ax.set_title(f"narrowing: each stage's ranges (rectangles) and trials ({len(found)} stages)",
                 fontsize=10)
    fig.tight_layout()
    return fig


def _pad_axis(
    setter, spec: dict[str, Any], name: str, values: Sequence[float], with_range: bool = True
) -> None:
    """One axis' limits: the values (and with ``with_range`` the spec's range) with 4% room on
    each side (log10 space for log params), so that edges and edge points show whole."""
    p = spec.get("search", {}).get(name, {})
    lo, hi = float(min(values)), float(max(values))
    if with_range and finite(p.get("low")) and finite(p.get("high")):
        lo, hi = min(lo, float(p["low"])), max(hi, float(p["high"]))
    if hi <= lo:
        return
    if is_log(spec, name) and lo > 0:
        pad = 0.04 * (math.log10(hi) - math.log10(lo))
        setter(lo / 10**pad, hi * 10**pad)
    else:
        setter(lo - 0.04 * (hi - lo), hi + 0.04 * (hi - lo))


def curve_figure(trial: FrozenTrial, metric: Metric = BOOK, kind: str = "accuracy") -> Figure:
    """One trial's learning curve (the artifact uploaded per top trial; no rank in it, since
    the rank changes as the study grows); ``kind="reported"``: the values it reported."""
    fig = _figure(4.5, 3.2)
    ax = fig.add_subplot()
    if kind == "reported":
        steps, values = reported_curve(trial)
        if values:
            ax.plot(steps, values, "-", label=f"reported {metric.name}")
    else:
        for key, style, name in zip(CURVE_ATTRS, ("-", "--"), ("validation", "training"),
                                    strict=True):
            curve = trial.user_attrs.get(key)
            if curve:
                ax.plot(curve_x(trial, curve), curve, style, label=name)
    params = ", ".join(f"{label(k)} {v:.3g}" if finite(v) else f"{label(k)} {v}"
                       for k, v in trial.params.items())
    ax.set_title(f"trial {trial.number}: {metric.label} {metric.fmt(trial.value)}\n{params}",
                 fontsize=8)
    if kind == "reported":
        ax.set_xlabel("step")
        ax.set_ylabel(metric.name)
    else:
        ax.set_ylim(0, 1)
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig
