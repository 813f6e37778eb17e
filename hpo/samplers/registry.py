"""Samplers by name, for configuration files and the command line.

Example:

    .. code-block:: python

        import optuna

        from hpo.samplers import available_samplers, make_sampler

        print(available_samplers())  # e.g. ('narrowing', 'random', 'tpe', 'qmc')
        sampler = make_sampler("tpe", seed=0, options={"n_startup_trials": 20})
        study = optuna.create_study(sampler=sampler)
"""

from __future__ import annotations

import importlib.util
import inspect
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning

from hpo.samplers.narrowing import NarrowingSampler

__all__ = ["SAMPLER_NAMES", "available_samplers", "make_sampler"]

#: Every sampler name :func:`make_sampler` knows, available here or not.
SAMPLER_NAMES: tuple[str, ...] = ("narrowing", "random", "tpe", "cmaes", "qmc", "gp")

_CLASSES: dict[str, Callable[..., optuna.samplers.BaseSampler]] = {
    "narrowing": NarrowingSampler,
    "random": optuna.samplers.RandomSampler,
    "tpe": optuna.samplers.TPESampler,
    "cmaes": optuna.samplers.CmaEsSampler,
    "qmc": optuna.samplers.QMCSampler,
    "gp": optuna.samplers.GPSampler,
}

#: Defaults that differ from the sampler class's own.
_DEFAULTS: dict[str, dict[str, Any]] = {"qmc": {"scramble": True}}

#: name -> (module that must be importable, how to install it)
_REQUIRES: dict[str, tuple[str, str]] = {
    "cmaes": ("cmaes", "pip install cmaes"),
    "gp": ("torch", "pip install 'hpo[gp]'"),
}


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def available_samplers() -> tuple[str, ...]:
    """The names in :data:`SAMPLER_NAMES` whose dependencies are installed here."""
    return tuple(
        name for name in SAMPLER_NAMES if name not in _REQUIRES or _importable(_REQUIRES[name][0])
    )


def _allowed_options(name: str) -> tuple[str, ...]:
    parameters = inspect.signature(_CLASSES[name]).parameters.values()
    return tuple(
        p.name
        for p in parameters
        if p.name != "seed" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    )


def make_sampler(
    name: str,
    *,
    seed: int | None = None,
    options: Mapping[str, Any] | None = None,
) -> optuna.samplers.BaseSampler:
    """Build the sampler called ``name``.

    Args:
        name: One of :data:`SAMPLER_NAMES`: ``"narrowing"`` (:class:`NarrowingSampler`),
            ``"random"``, ``"tpe"``, ``"cmaes"`` (needs ``cmaes``), ``"qmc"`` (scrambled Sobol'
            by default) or ``"gp"`` (needs ``torch``).
        seed: Passed to the sampler, for reproducible draws.
        options: Keyword arguments of the sampler's class, e.g. ``{"n_startup_trials": 20}``
            for ``"tpe"`` or ``{"stage_trials": 30, "keep_top": 5}`` for ``"narrowing"``.

    Returns:
        A new sampler. Optuna's experimental-feature warnings (``"qmc"``) are silenced.

    Raises:
        ValueError: unknown name, unknown option, a ``seed`` inside ``options``, or a sampler
            whose dependency is not installed (the message says what to install).
    """
    if name not in _CLASSES:
        raise ValueError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLER_NAMES)}")
    if name in _REQUIRES and not _importable(_REQUIRES[name][0]):
        module, install = _REQUIRES[name]
        raise ValueError(f"sampler {name!r} needs {module}: {install}")
    options = dict(options or {})
    if "seed" in options:
        raise ValueError(f"pass the seed of sampler {name!r} as seed=, not in options")
    allowed = _allowed_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown option(s) for sampler {name!r}: {', '.join(unknown)}; "
            f"allowed: {', '.join(allowed) or 'none'}"
        )
    kwargs = {**_DEFAULTS.get(name, {}), **options, "seed": seed}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return _CLASSES[name](**kwargs)
