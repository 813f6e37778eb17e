"""Samplers by name, for configuration files and the command line.

Example:

    .. code-block:: python

        import optuna

        from hpo.samplers import available_samplers, make_sampler

        print(available_samplers())  # e.g. ('narrowing', 'random', 'tpe', 'qmc')
        sampler = make_sampler("tpe", seed=0, options={"n_startup_trials": 20})
        study = optuna.create_study(sampler=sampler)

The options are the sampler class's keyword arguments, plus the ``hpo`` spec's own options that
are not (``bounds`` of ``"narrowing"``, see :func:`make_sampler`).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import warnings
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning

from hpo import catalog

__all__ = ["SAMPLER_NAMES", "available_samplers", "make_sampler"]

#: Every sampler name :func:`make_sampler` knows, available here or not (:mod:`hpo.catalog`).
SAMPLER_NAMES: tuple[str, ...] = catalog.SAMPLER_NAMES


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def available_samplers() -> tuple[str, ...]:
    """The names in :data:`SAMPLER_NAMES` whose dependencies are installed here."""
    return tuple(
        name for name, c in catalog.SAMPLERS.items()
        if c.requires is None or _importable(c.requires[0])
    )


def load_class(target: str) -> Any:
    """The class a catalog entry names (``"module:Class"``), imported now."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)
def startup_trials(name: str, kwargs: Mapping[str, Any]) -> int | None:
    """How many trials sampler ``name`` with ``kwargs`` draws at random before it models any
    (``n_startup_trials``: given, else its class's default); None for a sampler without that
    phase (random, qmc, narrowing)."""

    if "n_startup_trials" in kwargs:
        return int(kwargs["n_startup_trials"])
    param = inspect.signature(load_class(catalog.SAMPLERS[name].target)).parameters.get(
        "n_startup_trials")
    return None if param is None else int(param.default)


def _pair(value: Any) -> tuple[float, float] | None:
    """``value`` as a finite ``(low, high)`` pair with low < high, else ``None``."""
    if isinstance(value, (str, bytes, Mapping)):
        return None
    try:
        low, high = (float(x) for x in value)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        return None
    return low, high


def _narrowing_kwargs(options: dict[str, Any]) -> dict[str, Any]:
    """Check the spec-level ``bounds`` of the narrowing sampler and drop it (see make_sampler)."""
    bounds = options.pop("bounds", None)
    if bounds is None:
        return options
    if not isinstance(bounds, Mapping):
        raise ValueError(f"sampler 'narrowing': bounds must be a table of param = [low, high], "
                         f"got {bounds!r}")
    initial = options.get("initial")
    if bounds and not initial:
        raise ValueError("sampler 'narrowing': bounds needs initial, the search ranges stage 0 "
                         "draws from (the objective asks for the bounds)")
    for name, value in bounds.items():
        pair = _pair(value)
        if pair is None:
            raise ValueError(f"sampler 'narrowing': bounds.{name} must be [low, high] with "
                             f"low < high, got {value!r}")
        if not isinstance(initial, Mapping) or name not in initial:
            continue  # a malformed initial is the sampler's to report
        start = _pair(initial[name])
        if start is not None and not pair[0] <= start[0] < start[1] <= pair[1]:
            raise ValueError(f"sampler 'narrowing': initial[{name!r}] must lie inside "
                             f"bounds.{name} = {list(pair)}, got {initial[name]!r}")
    return options


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
            ``"narrowing"`` also takes the spec's ``bounds``, ``{param: [low, high]}``: the
            hard limits of a ``shift = true`` search. They are enforced by the distributions
            the objective asks for (``hpo.spec.Spec.suggest_space`` widens ``[search]`` to
            them) and the sampler clips every range to those, so ``bounds`` is only checked
            here, not passed on; it needs ``initial`` (``[search]``'s ranges, which stage 0
            draws from), each inside its bounds. ``hpo.spec.Spec.sampler_kwargs`` makes both.

    Returns:
        A new sampler. Optuna's experimental-feature warnings (``"qmc"``) are silenced.

    Raises:
        ValueError: unknown name, unknown option, a ``seed`` inside ``options``, or a sampler
            whose dependency is not installed (the message says what to install).
    """
    component = catalog.SAMPLERS.get(name)
    if component is None:
        raise ValueError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLER_NAMES)}")
    if component.requires is not None and not _importable(component.requires[0]):
        module, install = component.requires
        raise ValueError(f"sampler {name!r} needs {module}: {install}")
    options = dict(options or {})
    if "seed" in options:
        raise ValueError(f"pass the seed of sampler {name!r} as seed=, not in options")
    allowed = component.option_names
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown option(s) for sampler {name!r}: {', '.join(unknown)}; "
            f"allowed: {', '.join(allowed) or 'none'}"
        )
    if name == "narrowing":
        options = _narrowing_kwargs(options)
    try:
        options = component.check(options)
    except catalog.OptionError as e:
        raise ValueError(f"sampler {name!r}: {e}") from None
    kwargs = {**component.defaults(), **options, "seed": seed}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return load_class(component.target)(**kwargs)
