"""What each flag may hold: the types ``argparse`` checks every value with, before any command
runs, and the parser that turns a refused value into one line on stderr (exit 2).

A refused value is reported as ``hpo run: error: --timeout must be a finite number > 0, got
'nan'``: the flag, what is allowed, what was given. argparse's own errors (a missing argument, an
unknown command or flag) end their one line with the command's usage: ``hpo best: error:
unrecognized arguments: --bogus (usage: hpo best [-h] ...)``.
"""

from __future__ import annotations

import argparse
import math
import os
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
    """argparse, with a refused flag value on one line, and its own errors on one line that
    ends with the usage; ``--help`` shows the defaults (:class:`HelpFormatter`)."""

    #: a command's study given as NAME or ``--study NAME`` (:func:`study_arg`); True: required
    study_required: bool | None = None

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # type: ignore[override]
        m = _OURS.match(message)
        if m:
            names = m["flag"].split("/")  # "-q/--quiet", "--study/--study-name": the first long
            flag = next((n for n in names if n.startswith("--")), names[-1])
            self.exit(2, f"{self.prog}: error: {flag} {m['what']}\n")
        usage = " ".join(self.format_usage().split())  # what is allowed, on the same line
        self.exit(2, f"{self.prog}: error: {message} ({usage})\n")


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


def sampler_names(text: str) -> str:
    """Comma-separated sampler names of the catalog, each once (``narrowing,random,tpe``)."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    for name in names:
        if name not in catalog.SAMPLER_NAMES:
            raise argparse.ArgumentTypeError(f"may hold only sampler names: {name!r} is not "
                                             "available; choose from "
                                             f"{', '.join(catalog.SAMPLER_NAMES)}")
    if not names or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError("must be distinct sampler names, e.g. "
                                         "narrowing,random,tpe")
    return ",".join(names)


# --- flags several commands take, declared once ---------------------------------------------

SPEC_EPILOG = (f"A spec's [sampler] name is one of {', '.join(catalog.SAMPLER_NAMES)}; its "
               f"[pruner] name one of {', '.join(catalog.PRUNER_NAMES)}; their options: "
               "`python -m hpo.catalog` (the README's tables).")
#: hpo run, hpo best and hpo report list the same Best-N (hpo.report.listing.TOP).
TOP_HELP = "how many best trials to list (default 20, the book's figure)"
BUDGET_HELP = ("the study's budget: finished trials it should hold in total, recorded in the study "
               "(default: the spec's [budget]); nothing runs when it already holds that many")


# what shtab completes (shtab.FILE / shtab.DIRECTORY, spelled out: no import for --help)
def files(action: argparse.Action) -> argparse.Action:
    """``action`` completes file names (a spec)."""
    action.complete = {"bash": "_shtab_compgen_files", "zsh": "_files", "tcsh": "f"}  # type: ignore[attr-defined]
    return action


def folders(action: argparse.Action) -> argparse.Action:
    """``action`` completes folder names."""
    action.complete = {"bash": "_shtab_compgen_dirs", "zsh": "_files -/", "tcsh": "d"}  # type: ignore[attr-defined]
    return action


def filled(allowed: str) -> Callable[[str], str]:
    """A value that is not blank (a blank path or URL is a mistake: "" would mean the current
    folder, or nothing at all), stated as ``allowed`` when refused."""

    def parse(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}")
        return text

    parse.__name__ = allowed
    return parse


def existing_folder(text: str) -> str:
    """A folder that exists."""
    if not text.strip() or not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"must be an existing folder, got {text!r}")
    return text


def storage_url(text: str) -> str:
    """A database URL: not blank (a blank ``--storage`` is a mistake, not the default)."""
    if not text.strip() or text != text.strip():
        raise argparse.ArgumentTypeError(
            "must be a database URL (sqlite:///FILE, postgresql://USER@HOST/DB, "
            f"grpc://HOST:PORT), got {text!r}")
    return text


def storage(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", type=storage_url, metavar="URL",
                   help="SQLAlchemy URL (default: $HPO_STORAGE, else $OPTUNA_STORAGE, else "
                        "sqlite:///hpo.db)")


def study_flag(p: argparse.ArgumentParser, **kw) -> None:
    """``--study NAME``, and Optuna's spelling ``--study-name NAME``."""
    p.add_argument("--study", "--study-name", type=study_name, metavar="NAME", **kw)


def study_arg(p: Parser, help: str, required: bool) -> None:
    """The study as an argument (``hpo best NAME``) or as ``--study NAME`` / ``--study-name
    NAME`` as ``hpo run`` and ``hpo worker`` take it; :func:`one_study` makes them one."""
    p.add_argument("study_arg", type=study_name, metavar="NAME", nargs="?", help=help)
    study_flag(p, help="the study, as a flag (as in hpo run, hpo worker and Optuna's CLI)")
    p.study_required = required


def one_study(p: Parser, args: argparse.Namespace) -> None:
    """``hpo best NAME`` and ``hpo best --study NAME`` (or ``--study-name``) are one thing:
    ``args.study``, named once (and named at all where :func:`study_arg` requires it)."""
    given = args.study_arg
    del args.study_arg
    if given and args.study and given != args.study:
        p.error(f"the study is named twice: {given!r} and --study {args.study!r}")
    args.study = args.study or given
    if p.study_required and not args.study:
        p.error("the following arguments are required: NAME (or --study NAME)")


def mlflow(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mlflow-uri", type=filled("an MLflow tracking URI, e.g. file:./mlruns"),
                   metavar="URI",
                   help="log each finished trial as an MLflow run there, e.g. file:./mlruns "
                        "(default: the spec's [tracking] mlflow; needs the extra [mlflow])")


def data_dir(p: argparse.ArgumentParser,
             help: str = "folder with the four MNIST IDX .gz files (dataset mnist; default: the "
                         "spec's data.data_dir, else downloaded once into ~/.cache/hpo)") -> None:
    folders(p.add_argument("--data-dir", metavar="DIR", help=help))


def max_failures(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-failures", type=count(1000), metavar="K",
                   help="a worker stops (exit 1) after K failed trials of a spec's own "
                        "objective in a row (default: the spec's, else 3)")


def heartbeat(p: argparse.ArgumentParser) -> None:
    p.add_argument("--heartbeat-interval", type=count(catalog.MAX_HEARTBEAT), default=None,
                   metavar="S", help="seconds between a running trial's heartbeats (default 10)")
    p.add_argument("--grace-period", type=count(catalog.MAX_GRACE, low=2), default=None,
                   metavar="S", help="a trial silent this long is failed and retried (default 60)")
