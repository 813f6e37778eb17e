"""``hpo report``: the book's figures for a study, as PNGs, one HTML page and dashboard plots.

Section 6.5.3 of the book lists the best trials ("Best-1(val acc:0.86) | lr:..., weight
decay:...") and draws the validation (solid) and training (dashed) accuracy of the top 20 trials
per epoch, then narrows the ranges by eye. This module draws that grid and the views that make
the narrowing decision easier:

* ``best_curves.png``: the top 20 trials' learning curves, titled Best-1 ... Best-20;
* ``acc_vs_params.png``: validation accuracy against lr and against weight decay;
* ``contour.png``: validation accuracy over the lr x weight-decay plane, interpolated;
* ``stages.png`` (narrowing studies): each stage's ranges and trials;
* ``best.md``: the Best-N listing, gap marks (``--max-gap``) and edge warnings;
* ``report.html``: plotly versions of the figures and the listing, one self-contained file.

Unless ``--no-dashboard``, the plotly figures and the listing also go into the study for
optuna-dashboard (study system attributes ``dashboard:plot_data:<id>:<i>`` and
``dashboard:note_ver`` / ``dashboard:note_str:<i>``), and with ``--artifact-dir`` each top
trial's learning curve becomes a trial artifact (trial system attribute ``artifacts:<uuid>``).

The builders are plain functions of a list of FrozenTrials and the spec dict (``hpo:spec``);
matplotlib and plotly are imported inside them, so ``hpo --help`` stays fast.
"""

from __future__ import annotations

import html
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optuna.trial import FrozenTrial

from hpo.report import BOOK_NAMES, Row, format_row, ranked, rows_from_trials, small_gap

if TYPE_CHECKING:
    import numpy as np
    import optuna
    import plotly.graph_objects as go
    from matplotlib.figure import Figure

#: The plane of figures 2-4: the book's two hyperparameters.
PLANE = ("lr", "weight_decay")
#: Subplots per row in the Best-N grid (the book's ``col_num``).
GRID_COLUMNS = 5
#: How many trials the "Best with gap < G" section lists.
GAP_LIST = 5
#: A param within this fraction of its range's width (log10 space for log params) of an edge.
EDGE_FRACTION = 0.1
EDGE_SUFFIX = ": the optimum may lie outside it"
#: Trial system attributes written by hpo.samplers.narrowing.
STAGE_ATTR = "narrowing:stage"
RANGES_ATTR = "narrowing:ranges"
#: optuna-dashboard graph object ids (fixed, so that a second report replaces the first).
GRAPH_IDS = {
    "best_curves": "hpo-best-curves",
    "acc_vs_params": "hpo-acc-vs-params",
    "contour": "hpo-contour",
    "stages": "hpo-stages",
}
DPI = 110


# --- data -------------------------------------------------------------------------------------


def label(name: str) -> str:
    """A param's name as the book writes it ("weight decay")."""
    return BOOK_NAMES.get(name, name).replace("_", " ")


def rows(trials: Sequence[FrozenTrial]) -> list[Row]:
    """Every COMPLETE trial as a :class:`hpo.report.Row`, best first (as ``best_rows``)."""
    return rows_from_trials(list(trials))


def is_log(spec: dict[str, Any], name: str) -> bool:
    """Whether ``name`` is searched on a log scale (unknown params: lr and weight decay are)."""
    p = spec.get("search", {}).get(name)
    return bool(p.get("log", False)) if p else name in PLANE


def numeric_plane(spec: dict[str, Any], params: Sequence[str] = PLANE) -> bool:
    """Whether the spec searches both params of ``params`` as numbers (figures 2-4 need it)."""
    search = spec.get("search", {})
    return all(n in search and search[n].get("type", "float") != "categorical" for n in params)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def plane_points(
    trials: Sequence[FrozenTrial], params: Sequence[str] = PLANE
) -> list[FrozenTrial]:
    """The COMPLETE trials with a finite value and numeric, finite values of both params, best
    first."""
    return [t for t in ranked(list(trials)) if all(_finite(t.params.get(n)) for n in params)]


def _xy(points: Sequence[FrozenTrial], params: Sequence[str]) -> tuple[np.ndarray, ...]:
    import numpy as np

    x = np.array([float(t.params[params[0]]) for t in points])
    y = np.array([float(t.params[params[1]]) for t in points])
    v = np.array([float(t.value) for t in points])  # type: ignore[arg-type]
    return x, y, v


def edge_warnings(trials: Sequence[FrozenTrial], spec: dict[str, Any]) -> list[str]:
    """Messages for each numeric param of the best trial that sits within 10% (log10 space for
    log params) of an edge of the spec's range, e.g. "lr=0.0095 sits at the upper edge of its
    original range [1e-06, 0.01]: the optimum may lie outside it"."""
    from optuna.distributions import FloatDistribution, IntDistribution

    from hpo.samplers.narrowing import edge_warnings as sampler_edge_warnings

    best = ranked(list(trials))
    if not best:
        return []
    dists: dict[str, Any] = {}
    for name, p in spec.get("search", {}).items():
        kind = p.get("type", "float")
        try:
            if kind == "float":
                dists[name] = FloatDistribution(p["low"], p["high"], log=p.get("log", False),
                                                step=p.get("step"))
            elif kind == "int":
                dists[name] = IntDistribution(p["low"], p["high"], log=p.get("log", False),
                                              step=p.get("step") or 1)
        except (KeyError, TypeError, ValueError):
            continue
    messages = sampler_edge_warnings(best[0], dists, edge_fraction=EDGE_FRACTION)
    return [m + EDGE_SUFFIX for m in messages]


@dataclass(frozen=True)
class Stage:
    """One stage of a narrowing study: its number, the ranges it drew from (``None`` when the
    trials did not record them) and its COMPLETE trials on the plane."""

    number: int
    ranges: dict[str, tuple[float, float]] | None
    trials: list[FrozenTrial] = field(default_factory=list)


def stages(
    trials: Sequence[FrozenTrial], spec: dict[str, Any], params: Sequence[str] = PLANE
) -> list[Stage]:
    """The stages of a narrowing study (empty for other studies).

    A stage's ranges come from the ``narrowing:ranges`` attribute of its lowest-numbered trial
    that recorded both params; stage 0 falls back to the spec's ranges.
    """
    by_stage: dict[int, list[FrozenTrial]] = {}
    for t in sorted(trials, key=lambda t: t.number):
        s = t.system_attrs.get(STAGE_ATTR)
        if isinstance(s, int) and not isinstance(s, bool):
            by_stage.setdefault(s, []).append(t)
    out = []
    for number in sorted(by_stage):
        ranges = None
        for t in by_stage[number]:
            recorded = t.system_attrs.get(RANGES_ATTR)
            if isinstance(recorded, dict) and all(_pair(recorded.get(n)) for n in params):
                ranges = {n: (float(recorded[n][0]), float(recorded[n][1])) for n in params}
                break
        if ranges is None and number == 0:
            search = spec.get("search", {})
            if all(_pair([search.get(n, {}).get(k) for k in ("low", "high")]) for n in params):
                ranges = {n: (float(search[n]["low"]), float(search[n]["high"])) for n in params}
        out.append(Stage(number, ranges, plane_points(by_stage[number], params)))
    return out


def _pair(x: Any) -> bool:
    return isinstance(x, (list, tuple)) and len(x) == 2 and all(_finite(v) for v in x)


def interpolate(
    points: Sequence[FrozenTrial],
    spec: dict[str, Any],
    params: Sequence[str] = PLANE,
    n: int = 120,
) -> tuple[np.ndarray, np.ndarray, np.ma.MaskedArray] | None:
    """Validation accuracy linearly interpolated between the trials on an ``n`` x ``n`` grid
    (log10 space for log params; masked outside their convex hull). Returns the grid's x and y
    values (in the params' units) and the masked values, or ``None`` with too few distinct,
    non-collinear trials."""
    import numpy as np
    from matplotlib.tri import LinearTriInterpolator, Triangulation

    x, y, v = _xy(points, params)
    if len(v) < 3:
        return None
    tx = np.log10(x) if is_log(spec, params[0]) else x
    ty = np.log10(y) if is_log(spec, params[1]) else y
    span_x, span_y = np.ptp(tx), np.ptp(ty)
    if not (span_x > 0 and span_y > 0):
        return None
    # Triangulate in the unit square (both axes take the same room in the figure).
    ux, uy = (tx - tx.min()) / span_x, (ty - ty.min()) / span_y
    try:
        tri = Triangulation(ux, uy)
        interp = LinearTriInterpolator(tri, v)
    except (ValueError, RuntimeError):  # collinear or duplicate points
        return None
    g = np.linspace(0.0, 1.0, n)
    gx, gy = np.meshgrid(g, g)
    z = interp(gx, gy)
    xs, ys = tx.min() + g * span_x, ty.min() + g * span_y
    if is_log(spec, params[0]):
        xs = 10.0**xs
    if is_log(spec, params[1]):
        ys = 10.0**ys
    return xs, ys, np.ma.masked_invalid(z)


# --- matplotlib -------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Figure:
    """A matplotlib Figure on the Agg canvas (no pyplot, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def best_curves_figure(
    trials: Sequence[FrozenTrial], top: int = 20, title: str | None = None
) -> Figure:
    """The book's figure: the top ``top`` COMPLETE trials' accuracy per epoch, validation solid
    and training dashed, one subplot each ("Best-1 (0.86)" ...), y from 0 to 1."""
    best = ranked(list(trials))[:top]
    n = len(best)
    cols = GRID_COLUMNS
    nrows = max(1, math.ceil(n / cols))
    fig = _figure(2.6 * cols, 1.9 * nrows + 1.0)
    if n == 0:
        fig.text(0.5, 0.5, "no COMPLETE trials yet", ha="center", va="center")
        return fig
    axes = fig.subplots(nrows, cols, squeeze=False, sharex=True, sharey=True).ravel()
    for ax in axes[n:]:
        ax.remove()
    for i, (ax, t) in enumerate(zip(axes[:n], best, strict=True)):
        val, train = t.user_attrs.get("val_acc_curve"), t.user_attrs.get("train_acc_curve")
        if val:
            ax.plot(curve_x(t, val), val, color="C0", lw=1.4, label="validation")
        if train:
            ax.plot(curve_x(t, train), train, "--", color="C1", lw=1.2, label="training")
        if not val and not train:
            ax.text(0.5, 0.5, "no curves recorded", ha="center", va="center", fontsize=8,
                    transform=ax.transAxes)
        diverged = bool(t.user_attrs.get("diverged", False))
        ax.set_title(f"Best-{i + 1} ({t.value:.2f})" + (" diverged" if diverged else ""),
                     fontsize=9, color="C3" if diverged else "black")
        ax.set_ylim(0.0, 1.0)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if i % cols == 0:
            ax.set_ylabel("accuracy", fontsize=8)
        if i >= n - cols:
            ax.set_xlabel("epoch", fontsize=8)
            ax.xaxis.set_tick_params(labelbottom=True)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper right", fontsize=8, ncol=2, frameon=False)
    fig.suptitle(title or f"Best-{n}: validation (solid) and training (dashed) accuracy",
                 fontsize=11, x=0.01, ha="left")
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
    points = plane_points(trials, params)
    fig = _figure(11, 4.3)
    axes = fig.subplots(1, 2)
    if not points:
        fig.text(0.5, 0.5, "no COMPLETE trials yet", ha="center", va="center")
        return fig
    x, y, v = _xy(points, params)
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
    points = plane_points(trials, params)
    fig = _figure(7.5, 5.8)
    ax = fig.add_subplot()
    _set_scales(ax, spec, params[0], params[1])
    if not points:
        ax.text(0.5, 0.5, "no COMPLETE trials yet", ha="center", va="center",
                transform=ax.transAxes)
        return fig
    x, y, v = _xy(points, params)
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
            x, y, v = _xy(s.trials, params)
            ax.scatter(x, y, s=24, color=colour, edgecolors="white", lw=0.4,
                       label=f"stage {s.number}: {len(s.trials)} trials, best {v.max():.2f}")
        else:
            ax.plot([], [], "s", color=colour, label=f"stage {s.number}: no COMPLETE trials")
    best = plane_points(trials, params)
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
    if with_range and _finite(p.get("low")) and _finite(p.get("high")):
        lo, hi = min(lo, float(p["low"])), max(hi, float(p["high"]))
    if hi <= lo:
        return
    if is_log(spec, name) and lo > 0:
        pad = 0.04 * (math.log10(hi) - math.log10(lo))
        setter(lo / 10**pad, hi * 10**pad)
    else:
        setter(lo - 0.04 * (hi - lo), hi + 0.04 * (hi - lo))


def curve_x(trial: FrozenTrial, curve: list) -> list[int]:
    """The epochs of a learning curve's points: ``curve_epochs`` when the spec measured only
    some epochs (``[model] eval_every``), else 1, 2, ..."""
    epochs = trial.user_attrs.get("curve_epochs")
    if epochs and len(epochs) == len(curve):
        return list(epochs)
    return list(range(1, len(curve) + 1))


def curve_figure(trial: FrozenTrial) -> Figure:
    """One trial's learning curve (the artifact uploaded per top trial; no rank in it, since
    the rank changes as the study grows)."""
    fig = _figure(4.5, 3.2)
    ax = fig.add_subplot()
    for key, style, name in (("val_acc_curve", "-", "validation"),
                             ("train_acc_curve", "--", "training")):
        curve = trial.user_attrs.get(key)
        if curve:
            ax.plot(curve_x(trial, curve), curve, style, label=name)
    params = ", ".join(f"{label(k)} {v:.3g}" if _finite(v) else f"{label(k)} {v}"
                       for k, v in trial.params.items())
    ax.set_title(f"trial {trial.number}: val acc {trial.value:.2f}\n{params}",
                 fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


# --- plotly -----------------------------------------------------------------------------------

_TEMPLATE = "plotly_white"


def _hover(params: Sequence[str]) -> str:
    return ("trial %{customdata[0]}<br>val acc %{customdata[1]:.3f}<br>"
            + "<br>".join(f"{label(n)} %{{customdata[{i + 2}]:.3g}}" for i, n in enumerate(params))
            + "<extra></extra>")


def _custom(points: Sequence[FrozenTrial], params: Sequence[str]) -> list[list[Any]]:
    return [[t.number, t.value, *(t.params[n] for n in params)] for t in points]


def _axis(spec: dict[str, Any], name: str) -> dict[str, Any]:
    return {"type": "log" if is_log(spec, name) else "linear", "title": {"text": label(name)},
            "exponentformat": "power"}


def _colour_values(spec: dict[str, Any], name: str, values: np.ndarray) -> tuple[Any, dict]:
    """Marker colours for a param on a log colour scale: log10 values, ticks at the decades."""
    import numpy as np

    if not (is_log(spec, name) and values.min() > 0):
        return values.tolist(), {"title": {"text": label(name)}}
    logs = np.log10(values)
    decades = list(range(math.floor(logs.min()), math.ceil(logs.max()) + 1))
    bar = {"title": {"text": label(name)}, "tickvals": decades,
           "ticktext": [f"1e{d}" for d in decades]}
    return np.round(logs, 4).tolist(), bar


def best_curves_plotly(trials: Sequence[FrozenTrial], top: int = 20) -> go.Figure:
    """Plotly version of :func:`best_curves_figure`."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    best = ranked(list(trials))[:top]
    n = len(best)
    if n == 0:
        return go.Figure(layout={"title": {"text": "no COMPLETE trials yet"},
                                 "template": _TEMPLATE})
    nrows = math.ceil(n / GRID_COLUMNS)
    fig = make_subplots(rows=nrows, cols=GRID_COLUMNS, shared_xaxes=True, shared_yaxes=True,
                        subplot_titles=[f"Best-{i + 1} ({t.value:.2f})"
                                        for i, t in enumerate(best)],
                        vertical_spacing=min(0.3 / nrows, 0.08), horizontal_spacing=0.02)
    for i, t in enumerate(best):
        r, c = i // GRID_COLUMNS + 1, i % GRID_COLUMNS + 1
        for key, dash, name, colour in (("val_acc_curve", "solid", "validation", "#1f77b4"),
                                        ("train_acc_curve", "dash", "training", "#ff7f0e")):
            curve = t.user_attrs.get(key) or []
            fig.add_trace(go.Scatter(
                x=curve_x(t, curve), y=curve, mode="lines", name=name,
                legendgroup=name, showlegend=i == 0, line={"dash": dash, "color": colour},
                hovertemplate=f"Best-{i + 1}, trial {t.number}<br>{name} "
                              "%{y:.3f} at epoch %{x}<extra></extra>"), row=r, col=c)
    fig.update_yaxes(range=[0, 1])
    fig.update_layout(template=_TEMPLATE, height=200 * nrows + 120,
                      title={"text": f"Best-{n}: validation (solid) and training (dashed) "
                                     "accuracy per epoch"},
                      margin={"l": 40, "r": 20, "t": 90, "b": 40})
    fig.update_annotations(font_size=11)
    return fig


def acc_vs_params_plotly(
    trials: Sequence[FrozenTrial], spec: dict[str, Any], params: Sequence[str] = PLANE
) -> go.Figure:
    """Plotly version of :func:`acc_vs_params_figure`."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    points = plane_points(trials, params)
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.16)
    if points:
        x, y, v = _xy(points, params)
        custom = _custom(points, params)
        for col, along, other, values, colour in ((1, params[0], params[1], x, y),
                                                  (2, params[1], params[0], y, x)):
            colours, bar = _colour_values(spec, other, colour)
            bar.update(x=0.42 if col == 1 else 1.0, len=0.9)
            fig.add_trace(go.Scatter(
                x=values.tolist(), y=v.tolist(), mode="markers", name=f"by {label(along)}",
                showlegend=False, customdata=custom, hovertemplate=_hover(params),
                marker={"color": colours, "colorscale": "Viridis", "size": 7,
                        "colorbar": bar, "showscale": True}), row=1, col=col)
            fig.add_trace(go.Scatter(
                x=values[:1].tolist(), y=v[:1].tolist(), mode="markers", name="Best-1",
                showlegend=col == 1, customdata=custom[:1], hovertemplate=_hover(params),
                marker={"symbol": "star-open", "size": 16, "color": "#d62728",
                        "line": {"width": 2}}), row=1, col=col)
            fig.update_xaxes(_axis(spec, along), row=1, col=col)
    fig.update_yaxes(title_text="validation accuracy", row=1, col=1)
    fig.update_layout(template=_TEMPLATE, height=430,
                      title={"text": f"validation accuracy against {label(params[0])} and "
                                     f"{label(params[1])} ({len(points)} trials)"},
                      legend={"x": 0.0, "y": -0.2, "orientation": "h"})
    return fig


def contour_plotly(
    trials: Sequence[FrozenTrial], spec: dict[str, Any], params: Sequence[str] = PLANE
) -> go.Figure:
    """Plotly version of :func:`contour_figure` (a 60 x 60 grid, to keep the JSON small)."""
    import numpy as np
    import plotly.graph_objects as go

    points = plane_points(trials, params)
    fig = go.Figure()
    if points:
        x, y, v = _xy(points, params)
        grid = interpolate(points, spec, params, n=60)
        if grid is not None:
            gx, gy, z = grid
            values = np.round(z.filled(np.nan), 4)
            fig.add_trace(go.Contour(
                x=gx.tolist(), y=gy.tolist(),
                z=[[None if math.isnan(c) else float(c) for c in row] for row in values],
                colorscale="Viridis", colorbar={"title": {"text": "val acc"}},
                contours={"coloring": "fill"}, connectgaps=False, name="interpolated",
                hovertemplate=f"{label(params[0])} %{{x:.3g}}<br>{label(params[1])} %{{y:.3g}}"
                              "<br>val acc ≈ %{z:.3f}<extra></extra>"))
        fig.add_trace(go.Scatter(
            x=x.tolist(), y=y.tolist(), mode="markers", name="trials",
            customdata=_custom(points, params), hovertemplate=_hover(params),
            marker={"size": 7, "color": v.tolist() if grid is None else "white",
                    "colorscale": "Viridis", "line": {"width": 1, "color": "black"}}))
        fig.add_trace(go.Scatter(
            x=x[:1].tolist(), y=y[:1].tolist(), mode="markers", name="Best-1",
            customdata=_custom(points, params)[:1], hovertemplate=_hover(params),
            marker={"symbol": "star", "size": 18, "color": "#d62728",
                    "line": {"width": 1, "color": "white"}}))
    fig.update_layout(template=_TEMPLATE, height=560, xaxis=_axis(spec, params[0]),
                      yaxis=_axis(spec, params[1]),
                      title={"text": f"validation accuracy over {label(params[0])} x "
                                     f"{label(params[1])} ({len(points)} trials, linear "
                                     "interpolation)"},
                      legend={"x": 0.0, "y": -0.15, "orientation": "h"})
    return fig


def stages_plotly(
    trials: Sequence[FrozenTrial], spec: dict[str, Any], params: Sequence[str] = PLANE
) -> go.Figure | None:
    """Plotly version of :func:`stages_figure`; ``None`` for a study without stages."""
    import plotly.graph_objects as go
    from plotly.colors import qualitative

    found = stages(trials, spec, params)
    if not found:
        return None
    fig = go.Figure()
    palette = qualitative.Plotly
    for s in found:
        colour = palette[s.number % len(palette)]
        if s.ranges is not None:
            (x0, x1), (y0, y1) = s.ranges[params[0]], s.ranges[params[1]]
            fig.add_trace(go.Scatter(
                x=[x0, x1, x1, x0, x0], y=[y0, y0, y1, y1, y0], mode="lines", fill="toself",
                opacity=0.35, line={"color": colour, "width": 2}, legendgroup=f"s{s.number}",
                name=f"stage {s.number} ranges", hoverinfo="name"))
        if s.trials:
            x, y, _ = _xy(s.trials, params)
            fig.add_trace(go.Scatter(
                x=x.tolist(), y=y.tolist(), mode="markers", legendgroup=f"s{s.number}",
                name=f"stage {s.number} trials ({len(s.trials)})",
                customdata=_custom(s.trials, params), hovertemplate=_hover(params),
                marker={"color": colour, "size": 7, "line": {"width": 0.5, "color": "white"}}))
    fig.update_layout(template=_TEMPLATE, height=560, xaxis=_axis(spec, params[0]),
                      yaxis=_axis(spec, params[1]),
                      title={"text": f"narrowing: each stage's ranges and trials "
                                     f"({len(found)} stages)"})
    return fig


# --- Best-N listing ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """What best.md, the HTML page and the dashboard note say about a study."""

    study: str
    n_trials: int
    n_complete: int
    listing: list[str]
    max_gap: float | None
    small_gap: list[str]
    warnings: list[str]
    after: list[str] = field(default_factory=list)  # `hpo confirm` (noise floor) and `hpo test`

    def header(self) -> str:
        text = (f"{self.n_complete} COMPLETE of {self.n_trials} trials, ranked by final "
                "validation accuracy; each line is the book's listing, then the final training "
                "accuracy and the train-validation gap.")
        if self.max_gap is not None:
            text += (f" Lines marked `<- gap < {self.max_gap:g}` have a gap below "
                     f"{self.max_gap:g} (diverged trials never count).")
        return text

    def gap_title(self) -> str:
        return f"Best with gap < {self.max_gap:g}"

    def no_gap_text(self) -> str:
        return f"No COMPLETE trial has a train-validation gap below {self.max_gap:g}."

    def markdown(self) -> str:
        """The summary as Markdown (best.md, the optuna-dashboard note)."""
        parts = [f"# Best-{len(self.listing)} of study `{self.study}`", "", self.header(), ""]
        if self.warnings:
            parts += ["**Edge warning:**", ""] + [f"- {w}" for w in self.warnings] + [""]
        parts += ["```text", *(self.listing or ["no COMPLETE trials yet"]), "```", ""]
        if self.max_gap is not None:
            parts += [f"## {self.gap_title()}", ""]
            parts += (["```text", *self.small_gap, "```"] if self.small_gap
                      else [self.no_gap_text()])
            parts.append("")
        if self.after:
            parts += ["## Confirmation and test", "", "```text", *self.after, "```", ""]
        return "\n".join(parts)

    def html(self) -> str:
        """The summary as an HTML fragment."""
        e = html.escape
        parts = [f"<p>{e(self.header())}</p>"]
        if self.warnings:
            parts.append('<div class="warn"><b>Edge warning:</b><ul>'
                         + "".join(f"<li>{e(w)}</li>" for w in self.warnings) + "</ul></div>")
        parts.append("<pre>" + e("\n".join(self.listing or ["no COMPLETE trials yet"]))
                     + "</pre>")
        if self.max_gap is not None:
            parts.append(f"<h3>{e(self.gap_title())}</h3>")
            parts.append("<pre>" + e("\n".join(self.small_gap)) + "</pre>" if self.small_gap
                         else f"<p>{e(self.no_gap_text())}</p>")
        if self.after:
            parts.append("<h3>Confirmation and test</h3>")
            parts.append("<pre>" + e("\n".join(self.after)) + "</pre>")
        return "\n".join(parts)


def gap_mark(max_gap: float) -> str:
    """The suffix of a listing line whose gap is below ``max_gap``."""
    return f"  <- gap < {max_gap:g}"


def summary(
    trials: Sequence[FrozenTrial],
    spec: dict[str, Any],
    study: str,
    top: int = 20,
    max_gap: float | None = None,
    user_attrs: dict[str, Any] | None = None,
) -> Summary:
    """The Best-``top`` listing (``hpo.report.format_row``), gap marks and the best
    ``GAP_LIST`` trials with a gap below ``max_gap``, the edge warnings, and what ``hpo confirm``
    and ``hpo test`` stored in the study (``user_attrs``)."""
    all_rows = rows(trials)
    listing = []
    for r in all_rows[:top]:
        line = format_row(r)
        if max_gap is not None and small_gap(r, max_gap):
            line += gap_mark(max_gap)
        listing.append(line)
    gap_lines = []
    if max_gap is not None:
        gap_lines = [format_row(r) for r in all_rows if small_gap(r, max_gap)][:GAP_LIST]
    after: list[str] = []
    attrs = user_attrs or {}
    if "hpo:confirm" in attrs:
        from hpo.evaluate import format_confirm

        after += format_confirm(attrs["hpo:confirm"]).splitlines()
    if "hpo:test" in attrs:
        t = attrs["hpo:test"]
        after.append(f"Test (once, {t['at']}): trial {t['trial']} test acc {t['test_acc']:.4f} "
                     f"on {t['n_test']} images")
    return Summary(study=study, n_trials=len(trials), n_complete=len(all_rows),
                   listing=listing, max_gap=max_gap, small_gap=gap_lines,
                   warnings=edge_warnings(trials, spec), after=after)


# --- HTML -------------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
pre { background: #f6f8fa; padding: 0.8em; overflow-x: auto; font-size: 12px; }
.warn { background: #fff4e5; border-left: 4px solid #f0a020; padding: 0.4em 1em; }
p.caption { color: #555; font-size: 14px; }
"""


def html_page(study: str, summary_: Summary, figures: Sequence[tuple[str, str, go.Figure]]) -> str:
    """One self-contained HTML page: plotly.js inline (no network), the summary, then each
    ``(title, caption, figure)``."""
    from plotly.offline import get_plotlyjs

    e = html.escape
    body = [f"<h1>hpo report: {e(study)}</h1>", "<h2>Best trials</h2>", summary_.html()]
    for i, (title, caption, fig) in enumerate(figures):
        body += [f"<h2>{e(title)}</h2>", f'<p class="caption">{e(caption)}</p>',
                 fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"figure-{i}",
                             config={"displaylogo": False})]
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f"<title>hpo report: {e(study)}</title>", f"<style>{_CSS}</style>",
        f'<script type="text/javascript">{get_plotlyjs()}</script>', "</head>", "<body>",
        *body, "</body>", "</html>", ""])


#: Heading and caption of each figure in the HTML page.
SECTIONS = {
    "best_curves": ("Learning curves of the best trials",
                    "The book's figure (section 6.5.3): the top trials' validation (solid) and "
                    "training (dashed) accuracy per epoch."),
    "acc_vs_params": ("Validation accuracy against lr and weight decay",
                      "Final validation accuracy against each hyperparameter; colour is the "
                      "other one. The band of good values is where to narrow the ranges."),
    "contour": ("Validation accuracy over lr x weight decay",
                "Validation accuracy interpolated linearly between the trials (in log space); "
                "white points are the trials, the star is Best-1."),
    "stages": ("Narrowing stages",
               "Each narrowing stage's ranges (rectangles) and its trials, in the stage's "
               "colour."),
}


# --- the command ------------------------------------------------------------------------------


#: Study system attribute prefix under which optuna-dashboard lists a trial's artifacts
#: (``dashboard:artifacts:<trial_id>:<artifact_id>``). Optuna's ``upload_artifact`` cannot
#: attach files to a finished trial (trial attributes are frozen), this location can.
DASHBOARD_ARTIFACTS = "dashboard:artifacts:"


def _has_artifact(study_attrs: dict[str, Any], trial: FrozenTrial, filename: str,
                  store: Any) -> bool:
    """Whether the dashboard already lists ``filename`` for ``trial`` and ``store`` holds it."""
    from optuna.artifacts.exceptions import ArtifactNotFound

    prefix = f"{DASHBOARD_ARTIFACTS}{trial._trial_id}:"
    values = [v for k, v in study_attrs.items() if k.startswith(prefix)]
    values += [v for k, v in trial.system_attrs.items() if k.startswith("artifacts:")]
    for value in values:
        try:
            meta = json.loads(value)
            if meta["filename"] != filename:
                continue
            store.open_reader(meta["artifact_id"]).close()
            return True
        except (TypeError, ValueError, KeyError, ArtifactNotFound):  # deleted ones are "null"
            continue
    return False


def upload_trial_artifact(
    study: optuna.Study, trial: FrozenTrial, path: Path, artifact_dir: str
) -> str:
    """Store ``path`` in the FileSystemArtifactStore at ``artifact_dir`` and list it as an
    artifact of the (finished) ``trial`` in optuna-dashboard. Returns the artifact id."""
    import mimetypes
    import uuid

    from optuna.artifacts import FileSystemArtifactStore

    artifact_id = str(uuid.uuid4())
    with open(path, "rb") as f:
        FileSystemArtifactStore(artifact_dir).write(artifact_id, f)
    mimetype, encoding = mimetypes.guess_type(path.name)
    meta = {"artifact_id": artifact_id, "filename": path.name,
            "mimetype": mimetype or "application/octet-stream", "encoding": encoding}
    study._storage.set_study_system_attr(
        study._study_id, f"{DASHBOARD_ARTIFACTS}{trial._trial_id}:{artifact_id}", json.dumps(meta))
    return artifact_id


def publish(
    study: optuna.Study,
    plots: dict[str, go.Figure],
    note: str,
    curves: Sequence[tuple[FrozenTrial, Path]] = (),
    artifact_dir: str | None = None,
) -> int:
    """Save the plotly figures and the note into the study for optuna-dashboard and, with
    ``artifact_dir``, each ``(trial, png)`` as an artifact of its trial (unless the trial
    already has that file in this store).
    Returns the number of artifacts uploaded."""
    import optuna_dashboard

    for key, fig in plots.items():
        optuna_dashboard.save_plotly_graph_object(study, fig, graph_object_id=GRAPH_IDS[key])
    optuna_dashboard.save_note(study, note)
    if not artifact_dir or not curves:
        return 0
    from optuna.artifacts import FileSystemArtifactStore

    Path(artifact_dir).mkdir(parents=True, exist_ok=True)
    store = FileSystemArtifactStore(artifact_dir)
    study_attrs = study._storage.get_study_system_attrs(study._study_id)
    uploaded = 0
    for trial, path in curves:
        if not _has_artifact(study_attrs, trial, path.name, store):
            upload_trial_artifact(study, trial, path, artifact_dir)
            uploaded += 1
    return uploaded


def report_cmd(args) -> int:
    """``hpo report NAME``: PNGs, best.md and report.html in ``--out``; the plotly figures and
    the listing in optuna-dashboard unless ``--no-dashboard``."""
    import optuna

    from hpo.cli import UsageError
    from hpo.report import _open
    from hpo.storage import load_study_spec

    if args.top < 1:
        raise UsageError(f"--top must be >= 1, got {args.top}")
    if args.max_gap is not None and not (math.isfinite(args.max_gap) and args.max_gap > 0):
        raise UsageError(f"--max-gap must be > 0, got {args.max_gap}")
    storage = _open(args)
    spec = load_study_spec(storage, args.study).to_dict()
    out = Path(args.out or Path("out", "report", *args.study.split("/")))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create --out {out}: {e.strerror}") from None
    study = optuna.load_study(study_name=args.study, storage=storage)
    trials = study.get_trials(deepcopy=False)
    written: list[Path] = []

    def save(fig: Figure, name: str) -> None:
        fig.savefig(out / name)
        written.append(out / name)

    shown = min(args.top, len(ranked(trials)))
    save(best_curves_figure(trials, args.top, title=f"{args.study}: Best-{shown}, validation "
                            "(solid) and training (dashed) accuracy"), "best_curves.png")
    plots: dict[str, go.Figure] = {"best_curves": best_curves_plotly(trials, args.top)}
    if numeric_plane(spec):
        save(acc_vs_params_figure(trials, spec), "acc_vs_params.png")
        save(contour_figure(trials, spec), "contour.png")
        plots["acc_vs_params"] = acc_vs_params_plotly(trials, spec)
        plots["contour"] = contour_plotly(trials, spec)
        staged, staged_plotly = stages_figure(trials, spec), stages_plotly(trials, spec)
        if staged is not None and staged_plotly is not None:
            save(staged, "stages.png")
            plots["stages"] = staged_plotly
    else:
        print(f"hpo report: the study does not search both {' and '.join(PLANE)}: no "
              "accuracy-vs-params, contour or stages figures", file=sys.stderr)

    info = summary(trials, spec, args.study, args.top, args.max_gap, study.user_attrs)
    note = info.markdown()
    (out / "best.md").write_text(note, encoding="utf-8")
    written.append(out / "best.md")
    page = html_page(args.study, info,
                     [(*SECTIONS[k], fig) for k, fig in plots.items()])
    (out / "report.html").write_text(page, encoding="utf-8")
    written.append(out / "report.html")
    for path in written:
        print(f"hpo report: wrote {path}", file=sys.stderr)
    for w in info.warnings:
        print(f"hpo report: warning: {w}", file=sys.stderr)

    if args.no_dashboard:
        if args.artifact_dir:
            print("hpo report: --artifact-dir ignored with --no-dashboard", file=sys.stderr)
        return 0
    curves: list[tuple[FrozenTrial, Path]] = []
    if args.artifact_dir:
        (out / "curves").mkdir(exist_ok=True)
        for t in ranked(trials)[:args.top]:
            path = out / "curves" / f"learning_curve_trial{t.number}.png"
            curve_figure(t).savefig(path)
            curves.append((t, path))
    uploaded = publish(study, plots, note, curves, args.artifact_dir)
    print(f"hpo report: published {len(plots)} figures ({', '.join(GRAPH_IDS[k] for k in plots)})"
          f" and the Best-{len(info.listing)} note to optuna-dashboard for study "
          f"{args.study!r}", file=sys.stderr)
    if args.artifact_dir:
        print(f"hpo report: uploaded {uploaded} learning curves to {args.artifact_dir} "
              f"({len(curves) - uploaded} already there); serve them with "
              f"`hpo dashboard --artifact-dir {args.artifact_dir}`", file=sys.stderr)
    return 0

