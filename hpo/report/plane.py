"""A study's trials on the plane of two params (the book's lr and weight decay): the points,
the narrowing stages, an interpolated surface, the epochs of a learning curve. The figures
(:mod:`hpo.report.figures`, matplotlib) and the plots (:mod:`hpo.report.plots`, plotly) draw
from here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from optuna.trial import FrozenTrial

from hpo.db.keys import RANGES_ATTR, STAGE_ATTR
from hpo.report.listing import BOOK_NAMES, ranked
from hpo.report.metric import Metric, metric_of

#: The plane of figures 2-4: the book's two hyperparameters.
PLANE = ("lr", "weight_decay")
#: The learning curves a trial of the book's objective records (validation, training).
CURVE_ATTRS = ("val_acc_curve", "train_acc_curve")


def label(name: str) -> str:
    """A param's name as the book writes it ("weight decay")."""
    return BOOK_NAMES.get(name, name).replace("_", " ")


def is_log(spec: dict[str, Any], name: str) -> bool:
    """Whether ``name`` is searched on a log scale (unknown params: lr and weight decay are)."""
    p = spec.get("search", {}).get(name)
    return bool(p.get("log", False)) if p else name in PLANE


def numeric_plane(spec: dict[str, Any], params: Sequence[str] = PLANE) -> bool:
    """Whether the spec searches both params of ``params`` as numbers (figures 2-4 need it)."""
    search = spec.get("search", {})
    return all(n in search and search[n].get("type", "float") != "categorical" for n in params)


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def plane_points(
    trials: Sequence[FrozenTrial], params: Sequence[str] = PLANE, spec: dict[str, Any] | None = None
) -> list[FrozenTrial]:
    """The COMPLETE trials with a finite value and numeric, finite values of both params, best
    first in the direction of ``spec``'s metric (:func:`hpo.report.listing.metric_of`)."""
    best = ranked(list(trials), metric_of(spec).direction)
    return [t for t in best if all(finite(t.params.get(n)) for n in params)]


def xy(points: Sequence[FrozenTrial], params: Sequence[str]) -> tuple[np.ndarray, ...]:
    x = np.array([float(t.params[params[0]]) for t in points])
    y = np.array([float(t.params[params[1]]) for t in points])
    v = np.array([float(t.value) for t in points])  # type: ignore[arg-type]
    return x, y, v


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
        out.append(Stage(number, ranges, plane_points(by_stage[number], params, spec)))
    return out


def _pair(x: Any) -> bool:
    return isinstance(x, (list, tuple)) and len(x) == 2 and all(finite(v) for v in x)


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
    # matplotlib (~0.3 s) only when a surface is drawn: hpo report imports this module first
    from matplotlib.tri import LinearTriInterpolator, Triangulation

    x, y, v = xy(points, params)
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


def curve_x(trial: FrozenTrial, curve: list) -> list[int]:
    """The epochs of a learning curve's points: ``curve_epochs`` when the spec measured only
    some epochs (``[model] eval_every``), else 1, 2, ..."""
    epochs = trial.user_attrs.get("curve_epochs")
    if epochs and len(epochs) == len(curve):
        return list(epochs)
    return list(range(1, len(curve) + 1))


def reported_curve(trial: FrozenTrial) -> tuple[list[int], list[float]]:
    """The values a user's function reported (``trial.report(value, step)``: the trial's
    intermediate values), by step, finite ones only."""
    steps = sorted(k for k, v in trial.intermediate_values.items() if finite(v))
    return steps, [float(trial.intermediate_values[k]) for k in steps]


def curve_kind(trials: Sequence[FrozenTrial], metric: Metric) -> str | None:
    """Which learning curves a study has: ``"accuracy"`` (the book's validation and training
    accuracy per epoch: every book study, and a user's objective that recorded
    :data:`CURVE_ATTRS`), ``"reported"`` (a user's objective whose trials reported values,
    :func:`reported_curve`), or None (none to draw)."""
    if metric.book or any(t.user_attrs.get(k) for t in trials for k in CURVE_ATTRS):
        return "accuracy"
    if any(t.intermediate_values for t in trials):
        return "reported"
    return None
