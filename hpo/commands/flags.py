"""What each flag may hold: the types ``argparse`` checks every value with, before any command
runs, and the parser that turns a refused value into one line on stderr (exit 2).

A refused value is reported as ``hpo run: error: --timeout must be a finite number > 0, got
'nan'``: the flag, what is allowed, what was given. argparse's own errors (a missing argument, an
unknown command or flag) keep their usage line above the error line.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable

from hpo import catalog

#: Messages of these types start so; the parser shows them as "<flag> <message>" on one line.
_OURS = re.compile(r"argument (?P<flag>[^:]+): (?P<what>(must be|may hold) .*)$", re.S)


class HelpFormatter(argparse.HelpFormatter):
    """``--help`` shows each flag's default, unless its help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (default is None or default is False or default == argparse.SUPPRESS
                or "default" in text or not action.option_strings
                or isinstance(action, (argparse._CountAction, argparse._VersionAction))):
            return text
        return f"{text} (default: %(default)s)".strip()


class Parser(argparse.ArgumentParser):
    """argparse, with a refused flag value on one line, and its own errors' usage on one;
    ``--help`` shows the defaults (:class:`HelpFormatter`)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # type: ignore[override]
        m = _OURS.match(message)
        if m:
            names = m["flag"].split("/")  # "-q/--quiet", "--study/--study-name": the first long
            flag = next((n for n in names if n.startswith("--")), names[-1])
            self.exit(2, f"{self.prog}: error: {flag} {m['what']}\n")
        usage = " ".join(self.format_usage().split())
        self.exit(2, f"{usage}\n{self.prog}: error: {message}\n")


def count(high: int, low: int = 1, span: bool = False) -> Callable[[str], int]:
    """A whole number in [low, high] (``span``: say the range whichever bound is crossed)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number in {low}..{high}, "
                                             f"got {text!r}") from None
        if span and not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in {low}..{high}, got {value}")
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        if value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high}, got {value}")
        return value

    parse.__name__ = "whole number"
    return parse


def number(high: float, low: float = 0.0, open_low: bool = True) -> Callable[[str], float]:
    """A finite number in (low, high] (``open_low``) or [low, high]."""
    above = f"> {catalog.num_text(low)}" if open_low else f">= {catalog.num_text(low)}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number {above}, got {text!r}")
        if value < low or (open_low and value == low):
            raise argparse.ArgumentTypeError(f"must be {above}, got {text!r}")
        if value > high:
            raise argparse.ArgumentTypeError(f"must be <= {catalog.num_text(high)}, "
                                             f"got {text!r}")
        return value

    parse.__name__ = "number"
    return parse


def study_name(text: str) -> str:
    """A study name: safe segments joined by '/' (see :func:`hpo.catalog.name_problem`)."""
    problem = catalog.name_problem(text, segments=True)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def title(text: str) -> str:
    """A plot title: printable, one line, at most 200 characters."""
    if not text.isprintable() or not 0 < len(text) <= 200:
        raise argparse.ArgumentTypeError("must be 1 to 200 printable characters on one line")
    return text


SEED = count(catalog.MAX_SEED, low=0)
PORT = count(65535, low=0, span=True)
TRIALS = count(catalog.MAX_TRIALS)
TOP = count(catalog.MAX_TRIALS)
SECONDS = number(catalog.MAX_TIMEOUT)
FRACTION = number(1.0)
