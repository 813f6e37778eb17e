"""The report's figures as plotly figures: the HTML page (:mod:`hpo.report.page`) and
optuna-dashboard (:mod:`hpo.report.dashboard`) show these. Same data as :mod:`hpo.report.figures`.

Each builder draws for the page by default, and with ``card=True`` for a card of
optuna-dashboard's study page, which draws a saved figure in a box of fixed height
(:data:`CARD_HEIGHT`, about half the page wide): there the figure takes that height, its width
from the card, and keeps its titles, labels and legend inside (the Best-20 grid as 4 x 5 small
panels, as the book draws it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from optuna.trial import FrozenTrial

from hpo.catalog import DEFAULT_DIRECTION
from hpo.report.figures import GRID_COLUMNS
from hpo.report.listing import ranked
from hpo.report.metric import BOOK, Metric, metric_of
from hpo.report.plane import (
    CURVE_ATTRS,
    PLANE,
    curve_kind,
    curve_x,
    interpolate,
    is_log,
    label,
    numeric_plane,
    plane_points,
    reported_curve,
    stages,
    xy,
)

# plotly (~0.5 s) is imported inside the builders, as matplotlib in hpo.report.figures: the
# figure modules load before hpo report has checked its flags and opened the study.
if TYPE_CHECKING:
    import plotly.graph_objects as go

_TEMPLATE = "plotly_white"
#: optuna-dashboard 0.21 draws a saved plotly figure in a box 450 px high (``height: 450px`` in
#: its bundle.js); the card mode of the builders stays inside it.
CARD_HEIGHT = 450
#: In a card the title sits below plotly's tool bar (top right, about 30 px high), which would
#: otherwise cover its end; ``margin["t"]`` counts from the top of the card.
_CARD_TITLE = {"font": {"size": 13}, "x": 0.01, "xanchor": "left", "yref": "container",
               "y": 1 - 32 / CARD_HEIGHT, "yanchor": "top"}


def _card_layout(fig: go.Figure, title: str, margin: dict[str, int], **layout: Any) -> None:
    """Lay ``fig`` out for a dashboard card: its height, width from the card, small title."""
    fig.update_layout(template=_TEMPLATE, height=CARD_HEIGHT, autosize=True,
                      title={"text": title, **_CARD_TITLE}, margin=margin,
                      font={"size": 11}, **layout)


def report_figures(trials: Sequence[FrozenTrial], spec: dict[str, Any], top: int,
                   card: bool = False) -> dict[str, go.Figure]:
    """The report's figures by key (``best_curves``, and with a numeric lr x weight-decay
    plane ``acc_vs_params``, ``contour`` and, for a narrowing study, ``stages``). The learning
    curves (:func:`hpo.report.plane.curve_kind`): the book's accuracy per epoch, or the values
    a user's function reported per step; none when its trials reported nothing."""
    metric = metric_of(spec)
    figs = {}
    kind = curve_kind(trials, metric)
    if kind is not None:
        figs["best_curves"] = best_curves_plotly(trials, top, card=card,
                                                 direction=metric.direction, metric=metric,
                                                 kind=kind)
    if numeric_plane(spec):
        figs["acc_vs_params"] = acc_vs_params_plotly(trials, spec, card=card)
        figs["contour"] = contour_plotly(trials, spec, card=card)
        staged = stages_plotly(trials, spec, card=card)
        if staged is not None:
            figs["stages"] = staged
    return figs


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

    if not (is_log(spec, name) and values.min() > 0):
        return values.tolist(), {"title": {"text": label(name)}}
    logs = np.log10(values)
    decades = list(range(math.floor(logs.min()), math.ceil(logs.max()) + 1))
    bar = {"title": {"text": label(name)}, "tickvals": decades,
           "ticktext": [f"1e{d}" for d in decades]}
    return np.round(logs, 4).tolist(), bar


def best_curves_plotly(trials: Sequence[FrozenTrial], top: int = 20,
                       card: bool = False, direction: Any = DEFAULT_DIRECTION,
                       metric: Metric = BOOK, kind: str = "accuracy") -> go.Figure:
    """Plotly version of :func:`best_curves_figure` (``kind="reported"``: the values a user's
    function reported per step)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    best = ranked(list(trials), direction)[:top]
    n = len(best)
    if n == 0:
        return go.Figure(layout={"title": {"text": "no COMPLETE trials yet"},
                                 "template": _TEMPLATE})
    nrows = math.ceil(n / GRID_COLUMNS)
    fig = make_subplots(rows=nrows, cols=GRID_COLUMNS, shared_xaxes=True, shared_yaxes=True,
                        subplot_titles=[f"Best-{i + 1} ({metric.fmt(t.value)})"
                                        for i, t in enumerate(best)],
                        vertical_spacing=(min(0.5 / nrows, 0.12) if card
                                          else min(0.3 / nrows, 0.08)),
                        horizontal_spacing=0.02)
    for i, t in enumerate(best):
        r, c = i // GRID_COLUMNS + 1, i % GRID_COLUMNS + 1
        if kind == "reported":
            steps, values = reported_curve(t)
            fig.add_trace(go.Scatter(
                x=steps, y=values, mode="lines+markers" if len(values) < 12 else "lines",
                name=f"reported {metric.name}", showlegend=False,
                line={"color": "#1f77b4"}, marker={"size": 4},
                hovertemplate=f"Best-{i + 1}, trial {t.number}<br>{metric.name} "
                              "%{y:.4g} at step %{x}<extra></extra>"), row=r, col=c)
            continue
        for key, dash, name, colour in zip(CURVE_ATTRS, ("solid", "dash"),
                                           ("validation", "training"), ("#1f77b4", "#ff7f0e"),
                                           strict=True):
            curve = t.user_attrs.get(key) or []
            fig.add_trace(go.Scatter(
                x=curve_x(t, curve), y=curve, mode="lines", name=name,
                legendgroup=name, showlegend=i == 0, line={"dash": dash, "color": colour},
                hovertemplate=f"Best-{i + 1}, trial {t.number}<br>{name} "
                              "%{y:.3f} at epoch %{x}<extra></extra>"), row=r, col=c)
    if kind == "reported":
        title = (f"Best-{n}: the {metric.name} each trial reported per step (ranked "
                 f"{metric.order})")
    else:
        fig.update_yaxes(range=[0, 1])
        title = f"Best-{n}: validation (solid) and training (dashed) accuracy per epoch"
    if card:
        if kind != "reported":
            fig.update_yaxes(tickvals=[0, 0.5, 1])
        fig.update_yaxes(tickfont_size=9)
        fig.update_xaxes(tickfont_size=9, nticks=3)
        _card_layout(fig, title, {"l": 30, "r": 8, "t": 72, "b": 24}, showlegend=False)
        fig.update_annotations(font_size=10)
        return fig
    fig.update_layout(template=_TEMPLATE, height=200 * nrows + 120, title={"text": title},
                      margin={"l": 40, "r": 20, "t": 90, "b": 40})
    fig.update_annotations(font_size=11)
    return fig


def acc_vs_params_plotly(
    trials: Sequence[FrozenTrial], spec: dict[str, Any], params: Sequence[str] = PLANE,
    card: bool = False,
) -> go.Figure:
    """Plotly version of :func:`acc_vs_params_figure`."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    points = plane_points(trials, params, spec)
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.16)
    if points:
        x, y, v = xy(points, params)
        custom = _custom(points, params)
        for col, along, other, values, colour in ((1, params[0], params[1], x, y),
                                                  (2, params[1], params[0], y, x)):
            colours, bar = _colour_values(spec, other, colour)
            bar.update(x=0.42 if col == 1 else 1.0, len=0.9)
            if card:
                bar.update(thickness=12)
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
    title = (f"validation accuracy against {label(params[0])} and {label(params[1])} "
             f"({len(points)} trials)")
    if card:
        _card_layout(fig, title, {"l": 50, "r": 10, "t": 80, "b": 50},
                     legend={"x": 1.0, "y": 1.0, "xanchor": "right", "yanchor": "bottom",
                             "orientation": "h"})
        return fig
    fig.update_layout(template=_TEMPLATE, height=430, title={"text": title},
                      legend={"x": 0.0, "y": -0.2, "orientation": "h"})
    return fig


def contour_plotly(
    trials: Sequence[FrozenTrial], spec: dict[str, Any], params: Sequence[str] = PLANE,
    card: bool = False,
) -> go.Figure:
    """Plotly version of :func:`contour_figure` (a 60 x 60 grid, to keep the JSON small)."""
    import plotly.graph_objects as go

    points = plane_points(trials, params, spec)
    fig = go.Figure()
    if points:
        x, y, v = xy(points, params)
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
    title = (f"validation accuracy over {label(params[0])} x {label(params[1])} "
             f"({len(points)} trials, linear interpolation)")
    if card:
        _card_layout(fig, title, {"l": 60, "r": 10, "t": 80, "b": 50},
                     xaxis=_axis(spec, params[0]), yaxis=_axis(spec, params[1]),
                     legend={"x": 0.0, "y": 1.0, "yanchor": "bottom", "orientation": "h"})
        return fig
    fig.update_layout(template=_TEMPLATE, height=560, xaxis=_axis(spec, params[0]),
                      yaxis=_axis(spec, params[1]), title={"text": title},
                      legend={"x": 0.0, "y": -0.15, "orientation": "h"})
    return fig


def stages_plotly(
    trials: Sequence[FrozenTrial], spec: dict[str, Any], params: Sequence[str] = PLANE,
    card: bool = False,
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
            x, y, _ = xy(s.trials, params)
            fig.add_trace(go.Scatter(
                x=x.tolist(), y=y.tolist(), mode="markers", legendgroup=f"s{s.number}",
                name=f"stage {s.number} trials ({len(s.trials)})",
                customdata=_custom(s.trials, params), hovertemplate=_hover(params),
                marker={"color": colour, "size": 7, "line": {"width": 0.5, "color": "white"}}))
    title = f"narrowing: each stage's ranges and trials ({len(found)} stages)"
    if card:
        _card_layout(fig, title, {"l": 60, "r": 10, "t": 60, "b": 50},
                     xaxis=_axis(spec, params[0]), yaxis=_axis(spec, params[1]),
                     legend={"font": {"size": 10}})
        return fig
    fig.update_layout(template=_TEMPLATE, height=560, xaxis=_axis(spec, params[0]),
                      yaxis=_axis(spec, params[1]), title={"text": title})
    return fig
