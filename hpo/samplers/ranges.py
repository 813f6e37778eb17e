"""Range arithmetic of the narrowing search: one param's range in one stage, and how it narrows,
shifts and is drawn from. Pure functions of Optuna distributions; no storage, no study.

Numeric ranges are ``[low, high]`` in the param's own units, on the step grid of its
distribution; log params are narrowed and shifted in log10 space. Categorical ranges keep a
subset of the choices, in their original order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

#: A degenerate range (one value, or identical values) is widened to this fraction of the
#: previous range's width (in log10 space for log params), centred on the value.
MIN_WIDTH_FRACTION = 0.01

_GRID_EPS = 1e-9

Numeric = FloatDistribution | IntDistribution


@dataclass(frozen=True)
class Range:
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


def full_range(dist: BaseDistribution) -> Range:
    """All of a distribution."""
    if isinstance(dist, CategoricalDistribution):
        return Range(dist, kept=tuple(range(len(dist.choices))))
    assert isinstance(dist, (FloatDistribution, IntDistribution))
    return Range(dist, dist.low, dist.high)


def hull(r: Range, other: Range) -> Range:
    """``r`` widened to cover ``other`` (numeric params)."""
    if isinstance(r.dist, CategoricalDistribution):
        return r
    return Range(r.dist, min(r.low, other.low), max(r.high, other.high))


def same_kind(a: BaseDistribution, b: BaseDistribution) -> bool:
    """Whether two distributions share type, scale and grid (their bounds may differ)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, CategoricalDistribution):
        return a.choices == b.choices  # type: ignore[attr-defined]
    return a.log == b.log and a.step == b.step  # type: ignore[attr-defined]


def to_space(dist: Numeric, x: float) -> float:
    """A value in the space where ranges are narrowed: log10 for log params."""
    return math.log10(x) if dist.log else float(x)


def from_space(dist: Numeric, y: float) -> float:
    return 10.0**y if dist.log else y


def grid_floor(dist: Numeric, x: float) -> float:
    """The largest grid point of ``dist`` at or below ``x`` (``x`` itself without a step)."""
    if dist.step is None:  # IntDistribution always has a step (1 by default); Float may not
        return x
    k = math.floor((x - dist.low) / dist.step + _GRID_EPS)
    return _on_grid(dist, k)


def grid_ceil(dist: Numeric, x: float) -> float:
    """The smallest grid point of ``dist`` at or above ``x`` (``x`` itself without a step)."""
    if dist.step is None:
        return x
    k = math.ceil((x - dist.low) / dist.step - _GRID_EPS)
    return _on_grid(dist, k)


def _on_grid(dist: Numeric, k: int) -> float:
    if isinstance(dist, IntDistribution):
        return int(dist.low + k * dist.step)
    assert dist.step is not None
    return dist.low + k * dist.step


def clip(r: Range, dist: BaseDistribution) -> Range | None:
    """``r`` inside ``dist`` (rounded inward to its grid), or ``None`` when they do not meet."""
    if isinstance(dist, CategoricalDistribution):
        return Range(dist, kept=r.kept)
    assert isinstance(dist, (FloatDistribution, IntDistribution))
    low = grid_ceil(dist, max(r.low, dist.low))
    high = grid_floor(dist, min(r.high, dist.high))
    return None if low > high else Range(dist, low, high)


def narrow_numeric(prev: Range, values: Sequence[float], margin: float) -> Range:
    """Hull of ``values`` (log10 space for log params), widened by ``margin``, inside ``prev``."""
    dist = prev.dist
    assert isinstance(dist, (FloatDistribution, IntDistribution))
    p_lo, p_hi = to_space(dist, prev.low), to_space(dist, prev.high)
    xs = [to_space(dist, v) for v in values]
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
    low = min(from_space(dist, lo), min(values))
    high = max(from_space(dist, hi), max(values))
    low, high = grid_floor(dist, low), grid_ceil(dist, high)
    low, high = max(low, prev.low), min(high, prev.high)
    if low > high:
        return prev
    return Range(dist, low, high)


def shift_numeric(
    prev: Range, best: float, edge_fraction: float, outer: tuple[float, float]
) -> Range | None:
    """Recentre ``prev`` on ``best`` when ``best`` crowds an edge that can still move outward.

    ``outer`` is the hard ``(low, high)`` limit (the distribution the objective asks for); the
    result never leaves it. Returns ``None`` when no shift applies (``best`` is inside, or the
    crowded edge already sits on the outer limit).
    """
    dist = prev.dist
    assert isinstance(dist, (FloatDistribution, IntDistribution))
    p_lo, p_hi = to_space(dist, prev.low), to_space(dist, prev.high)
    width = p_hi - p_lo
    if width <= 0:
        return None
    x = to_space(dist, best)
    near_low = x - p_lo <= edge_fraction * width and prev.low > outer[0]
    near_high = p_hi - x <= edge_fraction * width and prev.high < outer[1]
    if not (near_low or near_high):
        return None
    o_lo, o_hi = to_space(dist, outer[0]), to_space(dist, outer[1])
    lo, hi = max(x - 0.5 * width, o_lo), min(x + 0.5 * width, o_hi)
    low = max(grid_floor(dist, from_space(dist, lo)), grid_ceil(dist, outer[0]))
    high = min(grid_ceil(dist, from_space(dist, hi)), grid_floor(dist, outer[1]))
    low, high = min(low, best), max(high, best)
    if low > high:
        return None
    return Range(dist, low, high)


def narrow_categorical(prev: Range, values: Sequence[Any]) -> Range:
    """The choices of ``prev`` that appear among ``values`` (all of ``prev`` if none does)."""
    dist = prev.dist
    assert isinstance(dist, CategoricalDistribution)
    seen = set()
    for v in values:
        try:
            seen.add(int(dist.to_internal_repr(v)))
        except ValueError:  # a value that is not among the choices
            continue
    kept = tuple(i for i in prev.kept if i in seen)
    return Range(dist, kept=kept) if kept else prev


def draw(rng: np.random.Generator, dist: BaseDistribution, r: Range) -> Any:
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
