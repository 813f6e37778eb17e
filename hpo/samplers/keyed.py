"""Random and quasi-random samplers whose draws are a function of (seed, trial number).

Optuna's ``RandomSampler`` is one random stream per process: with W worker processes the points a
study gets depend on which worker asked when (and each worker reseeds from the operating
system), so ``hpo run --workers 2 --seed 7`` drew different points on every run. Optuna's
``QMCSampler`` takes the next point of its sequence from a counter in the study (two workers
may read the same value) and samples the first trial at random. Here:

* :class:`KeyedRandomSampler`: the value of param ``p`` in trial ``n`` is drawn from
  ``np.random.default_rng([seed, n, crc32(p)])`` (uniform, log-uniform for log params, on the
  param's step grid), as the narrowing sampler draws;
* :class:`KeyedQMCSampler`: trial ``n`` takes point ``n`` of a seeded (scrambled) Sobol' or
  Halton sequence of :data:`DIMENSIONS` dimensions, the ``j``-th param the trial asks for its
  ``j``-th coordinate (the objective asks for its params in a fixed order).

So a study's draws are the same for any number of workers, on any machines, in any order, and
a resumed study draws the next trial numbers' points. Neither learns from finished trials.
"""

from __future__ import annotations

import math
import secrets
import threading
import zlib
from typing import Any

import numpy as np
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial

from hpo.samplers.ranges import draw, full_range

__all__ = ["DIMENSIONS", "KeyedQMCSampler", "KeyedRandomSampler", "from_unit"]

#: Coordinates of a QMC point; a trial's params beyond this many are drawn as by
#: :class:`KeyedRandomSampler`.
DIMENSIONS = 32


def _keyed_rng(seed: int, number: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, number, zlib.crc32(name.encode())])


class _Keyed(BaseSampler):
    """A sampler that samples every param on its own, keyed by (seed, trial number)."""

    def __init__(self, seed: int | None = None) -> None:
        self._user_seed = seed
        self._seed = seed if seed is not None else secrets.randbits(32)

    def reseed_rng(self) -> None:
        # Draws are keyed by (seed, trial number): a seeded sampler keeps its seed in every
        # worker process (that is the point); only an unseeded one takes a fresh seed.
        if self._user_seed is None:
            self._seed = secrets.randbits(32)

    def infer_relative_search_space(self, study: Study,
                                    trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return {}


class KeyedRandomSampler(_Keyed):
    """Uniform (log-uniform for log params) random search; param ``p`` of trial ``n`` is drawn
    from ``default_rng([seed, n, crc32(p)])``, whoever asks and whenever."""

    def __str__(self) -> str:
        return f"KeyedRandomSampler(seed={self._user_seed})"

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return draw(_keyed_rng(self._seed, trial.number, param_name), param_distribution,
                    full_range(param_distribution))


class KeyedQMCSampler(_Keyed):
    """Trial ``n`` takes point ``n`` of the seeded sequence (``qmc_type`` ``"sobol"`` or
    ``"halton"``, scrambled unless ``scramble=False``); the ``j``-th param a trial asks for
    takes coordinate ``j``. Options as Optuna's ``QMCSampler`` (the two ``warn_*`` flags are
    accepted and have nothing to warn about here)."""

    def __init__(self, *, qmc_type: str = "sobol", scramble: bool = True,
                 seed: int | None = None, warn_asynchronous_seeding: bool = True,
                 warn_independent_sampling: bool = True) -> None:
        if qmc_type not in ("sobol", "halton"):
            raise ValueError(f"qmc_type must be 'sobol' or 'halton', got {qmc_type!r}")
        super().__init__(seed)
        self._qmc_type = qmc_type
        self._scramble = scramble
        self._lock = threading.Lock()
        self._points: dict[tuple[int, int], np.ndarray] = {}

    def __str__(self) -> str:
        return (f"KeyedQMCSampler(qmc_type={self._qmc_type!r}, scramble={self._scramble}, "
                f"seed={self._user_seed})")

    def point(self, number: int) -> np.ndarray:
        """Point ``number`` of the sequence, in ``[0, 1)`` ** :data:`DIMENSIONS`."""
        key = (self._seed, number)
        with self._lock:
            cached = self._points.get(key)
            if cached is not None:
                return cached
            from scipy.stats import qmc  # slow to import: only when a QMC study runs

            engine_class = qmc.Sobol if self._qmc_type == "sobol" else qmc.Halton
            engine = engine_class(DIMENSIONS, scramble=self._scramble, seed=self._seed)
            if number:
                engine.fast_forward(number)
            point = engine.random(1)[0]
            if len(self._points) > 64:  # one per running trial is all that is reused
                self._points.clear()
            self._points[key] = point
            return point

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        j = len([p for p in trial.params if p != param_name])
        if j >= DIMENSIONS:
            return draw(_keyed_rng(self._seed, trial.number, param_name), param_distribution,
                        full_range(param_distribution))
        return from_unit(param_distribution, float(self.point(trial.number)[j]))


def from_unit(dist: BaseDistribution, u: float) -> Any:
    """The value of ``dist`` at ``u`` in ``[0, 1)``: uniform (log-uniform for log params) over
    its range, on its step grid; a categorical takes choice ``floor(u * C)``."""
    u = min(max(u, 0.0), math.nextafter(1.0, 0.0))
    if isinstance(dist, CategoricalDistribution):
        return dist.choices[int(u * len(dist.choices))]
    if isinstance(dist, IntDistribution):
        if dist.log:
            lo, hi = math.log(dist.low - 0.5), math.log(dist.high + 0.5)
            return int(min(max(round(math.exp(lo + u * (hi - lo))), dist.low), dist.high))
        k = (dist.high - dist.low) // dist.step
        return int(dist.low + int(u * (k + 1)) * dist.step)
    assert isinstance(dist, FloatDistribution)
    if dist.step is not None:
        k = round((dist.high - dist.low) / dist.step)
        value = dist.low + int(u * (k + 1)) * dist.step
    elif dist.log:
        lo, hi = math.log(dist.low), math.log(dist.high)
        value = math.exp(lo + u * (hi - lo))
    else:
        value = dist.low + u * (dist.high - dist.low)
    return float(min(max(value, dist.low), dist.high))
