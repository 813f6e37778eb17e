"""Typed getters for spec values: each returns the value when it is of the right type and in
range, else raises a one-line :class:`~hpo.errors.SpecError` naming the file and the key, with
what is allowed and what was given (cut short)."""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation, getcontext
from typing import Any

from hpo import catalog
from hpo.catalog import shown
from hpo.errors import SpecError

MAX_STRING = 4096  # a path, a name
MAX_TEXT = 10_000  # a description
MAX_CHOICES = 1000


def _finite(x: float) -> bool:
    try:
        return math.isfinite(x)
    except OverflowError:  # an int too large for a float
        return False


class Validator:
    """Small typed getters that raise one-line SpecErrors naming the file and the key."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.stored = False  # a study's stored spec: no check added since it was written

    def fail(self, key: str, msg: str) -> SpecError:
        return SpecError(f"{self.source}: {key}: {msg}")

    def keys(self, where: str, table: dict, allowed: set[str]) -> None:
        for k in table:
            if k not in allowed:
                key = f"{where}.{k}" if where else k
                raise self.fail(key, f"unknown key; allowed: {', '.join(sorted(allowed))}")

    def table(self, key: str, value: Any) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a table, got {type(value).__name__}")
        return value

    def string(self, key: str, value: Any) -> str:
        if not isinstance(value, str):
            raise self.fail(key, f"must be a string, got {shown(value)}")
        if len(value) > MAX_STRING:
            raise self.fail(key, f"must be at most {MAX_STRING} characters, got {len(value)}")
        return value

    def text(self, key: str, value: Any) -> str:
        if not isinstance(value, str):
            raise self.fail(key, f"must be a string, got {shown(value)}")
        if len(value) > MAX_TEXT:
            raise self.fail(key, f"must be at most {MAX_TEXT} characters, got {len(value)}")
        return value

    def boolean(self, key: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, got {shown(value)}")
        return value

    def choice(self, key: str, value: Any, allowed: tuple[str, ...]) -> str:
        if not isinstance(value, str) or value not in allowed:
            raise self.fail(key, f"{shown(value)} is not one of {', '.join(allowed)}")
        return value

    def integer(self, key: str, value: Any, minimum: int | None = None,
                maximum: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"must be an integer, got {shown(value)}")
        for low, high in ((minimum, None), (None, maximum)):  # the side it breaks, alone
            if not catalog.in_bounds(value, low, high):
                raise self.fail(key, f"must be{catalog.bounds_text(low, high)}, "
                                     f"got {shown(value)}")
        return value

    def number(self, key: str, value: Any, low: float | None = None, high: float | None = None,
               open_: bool = False, open_high: bool = False) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
            raise self.fail(key, f"must be a finite number, got {shown(value)}")
        bounds = {"open_low": open_, "open_high": open_ or open_high}
        if not catalog.in_bounds(value, low, high, **bounds):
            raise self.fail(key, f"must be{catalog.bounds_text(low, high, **bounds)}, "
                                 f"got {value}")
        return float(value)

    def step(self, key: str, value: Any, low: float, high: float, log: bool,
             integer: bool) -> float:
        """A numeric range's ``step``: > 0, at most high - low, not with log, and dividing
        high - low (else Optuna moves ``high`` down to the grid, warning on every trial)."""
        step = self.integer(key, value) if integer else self.number(key, value)
        if step <= 0:
            raise self.fail(key, f"must be > 0, got {step}")
        if step > high - low:
            raise self.fail(key, f"must be <= high - low ({high - low:g}), got {step}")
        if log:
            raise self.fail(key, "cannot be combined with log = true")
        # Optuna's own test (optuna.distributions._adjust_int_uniform_high and, for floats,
        # _adjust_discrete_uniform_high: decimal arithmetic on the numbers as written, so
        # 0.1 - 0.01 is 0.09, a multiple of 0.03)
        d_low, d_high, d_step = ((low, high, step) if integer else
                                 (Decimal(str(x)) for x in (low, high, step)))
        try:
            rest = (d_high - d_low) % d_step
        except InvalidOperation:  # Optuna's test fails the same way, on every trial
            raise self.fail(key, f"is too small for the range: (high - low) / step must be "
                                 f"below 1e{getcontext().prec}, got {step}") from None
        if rest and not self.stored:  # a study stored before this check ran as Optuna ran it
            shown_ = (lambda d: str(d)) if integer else (lambda d: repr(float(d)))
            raise self.fail(key, f"must divide high - low ({shown_(d_high - d_low)}) evenly, "
                                 f"got {step} (e.g. high = {shown_(d_high - rest)})")
        return step

    def folder(self, key: str, value: Any) -> str:
        """A data folder's path, which remembers this file and key: an error about the
        folder when the data is read names them (:class:`hpo.nn.data.DataDir`)."""
        from hpo.nn.data import DataDir

        return DataDir(self.string(key, value), f"{self.source}: {key}")

    def options(self, table: str, component: catalog.Component, options: dict[str, Any],
                context: dict[str, Any]) -> dict[str, Any]:
        """The options of a sampler or pruner, checked against its catalog declaration."""
        try:
            return component.check(options, spec=True, context=context)
        except catalog.OptionError as e:
            raise self.fail(f"{table}.{e.key}", e.reason) from None


_DIGITS = re.compile(r"[0-9](?:_?[0-9])*")


def long_integer(text: str, parse: Callable[[str], Any]) -> str | None:
    """What is wrong, with the key when found and the line, when TOML ``text`` holds an integer
    with more digits than Python reads (``sys.get_int_max_str_digits()``); None when none.
    ``parse`` (tomllib.loads) reads the text again with each such number replaced by a
    marker, to find the key that holds it."""
    limit = getattr(sys, "get_int_max_str_digits", lambda: 4300)()
    runs = [m for m in _DIGITS.finditer(text) if limit and
            len(m.group().replace("_", "")) > limit]
    if not runs:
        return None
    marks = {str(9 * 10**17 + i): m for i, m in enumerate(runs)}
    marked, end = [], 0
    for mark, m in marks.items():
        marked += [text[end:m.start()], mark]
        end = m.end()
    found: list[tuple[str, re.Match]] = []

    def walk(value: Any, path: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{path}.{k}" if path else k)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{path}[{i}]")
        elif type(value) is int and str(abs(value)) in marks:
            found.append((path, marks[str(abs(value))]))

    try:
        walk(parse("".join(marked) + text[end:]), "")
    except Exception:  # noqa: BLE001 - another fault of the text: the line is all we say
        pass
    key, m = min(found, key=lambda f: f[1].start()) if found else ("", runs[0])
    line = text.count("\n", 0, m.start()) + 1
    digits = len(m.group().replace("_", ""))
    return (f"{key + ': ' if key else ''}an integer of {digits} digits on line {line} is too "
            f"long to read (at most {limit} digits)")


# --- [objective]: a user's own objective function (run by hpo.objectives.user) ---------------

@dataclass(frozen=True)
class ObjectiveSpec:
    """A spec's ``[objective]`` table: the user's function instead of the book's MLP.

    ``function`` is ``"FILE.py:NAME"`` (a file relative to the spec's folder) or
    ``"package.module:NAME"``; ``config`` is ``[objective.config]``, passed to the function as
    the keyword ``config`` when its signature takes it. ``base`` (the folder of the spec file
    given on the command line; None for a spec read from a study) and ``source`` are where the
    spec came from: not part of the stored spec."""

    function: str
    direction: str = catalog.DEFAULT_DIRECTION
    metric: str = catalog.DEFAULT_METRIC
    config: dict[str, Any] = field(default_factory=dict)
    test: str | None = None
    max_failures: int | None = None
    base: str | None = field(default=None, compare=False)
    source: str = field(default="spec", compare=False)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"function": self.function, "direction": self.direction,
                             "metric": self.metric, "config": dict(self.config),
                             "test": self.test}
        if self.max_failures is not None:
            d["max_failures"] = self.max_failures
        return d


_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_MODULE = re.compile(rf"{_NAME}(\.{_NAME})*")


def reference_problem(value: str) -> str | None:
    """Why ``value`` is not ``"FILE.py:NAME"`` or ``"package.module:NAME"`` (None when it is)."""
    where, sep, name = value.rpartition(":")
    if not sep or not where or not _MODULE.fullmatch(name):
        return "must be 'FILE.py:NAME' or 'package.module:NAME'"
    if not where.endswith(".py") and not _MODULE.fullmatch(where):
        return f"{where!r} is neither a .py file nor a dotted module name"
    return None


def _plain(value: Any) -> bool:
    """JSON-storable TOML data (no dates or times)."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(map(_plain, value))
    if isinstance(value, float):
        return _finite(value)
    return isinstance(value, (str, int, bool))


def objective_table(v: Validator, raw: Any, base: str | None) -> ObjectiveSpec:
    """The ``[objective]`` table, checked (the function itself is loaded later, by
    :func:`hpo.objectives.make_objective`, before anything is written)."""
    o = v.table("objective", raw)
    v.keys("objective", o, set(catalog.OBJECTIVE_KEYS))
    refs = {}
    for key in ("function", "test"):
        if o.get(key) is None:  # a stored spec holds test = null
            if key == "function":
                raise v.fail("objective.function", "is required, e.g. 'objective.py:objective'")
            continue
        refs[key] = v.string(f"objective.{key}", o[key])
        if (problem := reference_problem(refs[key])) is not None:
            raise v.fail(f"objective.{key}", f"{problem}, got {shown(refs[key])}")
    direction = o.get("direction", catalog.DEFAULT_DIRECTION)
    if isinstance(direction, list):
        raise v.fail("objective.direction", "multi-objective studies (a list of directions) "
                                            "are not supported; give one of "
                                            + ", ".join(catalog.DIRECTIONS))
    direction = v.choice("objective.direction", direction, catalog.DIRECTIONS)
    metric = v.string("objective.metric", o.get("metric", catalog.DEFAULT_METRIC))
    if not metric.strip() or len(metric) > 100 or "\n" in metric:
        raise v.fail("objective.metric", f"must be a name of 1 to 100 characters on one line, "
                                         f"got {shown(metric)}")
    config = v.table("objective.config", o.get("config", {}))
    if not _plain(config):
        raise v.fail("objective.config", "may hold strings, numbers, booleans, lists and "
                                         "tables only (no dates or times)")
    failures = o.get("max_failures")
    if failures is not None:
        failures = v.integer("objective.max_failures", failures, minimum=1, maximum=1000)
    return ObjectiveSpec(function=refs["function"], direction=direction, metric=metric,
                         config=dict(config), test=refs.get("test"), max_failures=failures,
                         base=base, source=v.source)
