"""Typed getters for spec values: each returns the value when it is of the right type and in
range, else raises a one-line :class:`~hpo.errors.SpecError` naming the file and the key, with
what is allowed and what was given (cut short)."""

from __future__ import annotations

import math
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

    def options(self, table: str, component: catalog.Component, options: dict[str, Any],
                context: dict[str, Any]) -> dict[str, Any]:
        """The options of a sampler or pruner, checked against its catalog declaration."""
        try:
            return component.check(options, spec=True, context=context)
        except catalog.OptionError as e:
            raise self.fail(f"{table}.{e.key}", e.reason) from None

