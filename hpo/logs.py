"""hpo's log lines, through the standard library's :mod:`logging`. Imports nothing of Optuna
(``hpo --help`` stays light); Optuna's logger is set only when a command runs.

Every command takes ``-v`` (debug), ``-q`` (warnings only; ``-qq`` errors only) and
``--log-level LEVEL``, which wins over both; ``--log-format json`` writes one JSON object per
line. ``$HPO_LOG_LEVEL`` and ``$HPO_LOG_FORMAT`` are the defaults when no flag says otherwise
(a worker in compose or Kubernetes: ``HPO_LOG_FORMAT=json``). Everything logged goes to stderr;
stdout keeps the commands' results (``hpo best``'s listing, ``--json`` documents).

A finished trial is one record of the ``hpo.trial`` logger at INFO, with the fields of
:func:`trial_fields`; as text::

    trial 3 COMPLETE val_acc=0.740 lr=0.008985 weight_decay=2.56e-08

and as JSON (``--log-format json``)::

    {"time": "2026-12-07T07:01:02.345+00:00", "event": "trial", "study": "book-random",
     "trial": 3, "state": "COMPLETE", "value": 0.74, "params": {"lr": 0.00898512, ...},
     "worker": "host:4242"}

Any other record in JSON is ``{"time", "level", "logger", "message", "worker"}``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import socket
import sys
from typing import Any, TextIO

from hpo.db.keys import METRIC_NAME as BOOK_METRIC
from hpo.errors import UsageError

__all__ = ["FORMATS", "LEVELS", "add_flags", "configure", "log", "settings", "trial_fields",
           "trial_logger", "trial_text", "version", "worker_id"]

LEVELS = ("debug", "info", "warning", "error", "critical")
FORMATS = ("text", "json")
#: hpo's own logger (commands log under "hpo.<command>"); per-trial records go to "hpo.trial".
log = logging.getLogger("hpo")
trial_logger = logging.getLogger("hpo.trial")


def add_flags(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """``-v``, ``-q``, ``--log-level``, ``--log-format`` on ``parser``. ``suppress``: the
    subcommands' copies, whose defaults must not reset what was given before the command."""
    default = {"default": argparse.SUPPRESS} if suppress else {}
    parser.add_argument("-v", "--verbose", action="count", help="more log lines (debug)",
                        **(default or {"default": 0}))
    parser.add_argument("-q", "--quiet", action="count",
                        help="fewer: warnings only, no progress (-qq: errors only)",
                        **(default or {"default": 0}))
    parser.add_argument("--log-level", type=_one_of(LEVELS), metavar="LEVEL",
                        help=f"one of {', '.join(LEVELS)}; wins over -v/-q "
                             "(default: $HPO_LOG_LEVEL, else info)", **default)
    parser.add_argument("--log-format", type=_one_of(FORMATS), metavar="FORMAT",
                        help="text, or json: one JSON object per line (default: "
                             "$HPO_LOG_FORMAT, else text)", **default)


def _one_of(allowed: tuple[str, ...]):
    """A flag's value among ``allowed`` (any case); refused on one line naming them."""

    def parse(text: str) -> str:
        if text.lower() not in allowed:
            raise argparse.ArgumentTypeError(f"must be one of {', '.join(allowed)}, "
                                             f"got {text!r}")
        return text.lower()

    parse.__name__ = "name"
    return parse


def settings(args: argparse.Namespace) -> tuple[int, str]:
    """(level, format) from the flags, else ``$HPO_LOG_LEVEL`` / ``$HPO_LOG_FORMAT``, else
    (INFO, "text"). A bad environment value is bad input naming the variable."""
    name = getattr(args, "log_level", None)
    if name is None:
        verbose, quiet = getattr(args, "verbose", 0) or 0, getattr(args, "quiet", 0) or 0
        if verbose or quiet:
            name = "debug" if verbose > quiet else "info" if verbose == quiet else \
                "warning" if quiet - verbose == 1 else "error"
        else:
            name = _env("HPO_LOG_LEVEL", LEVELS, "info")
    fmt = getattr(args, "log_format", None) or _env("HPO_LOG_FORMAT", FORMATS, "text")
    return getattr(logging, name.upper()), fmt


def _env(var: str, allowed: tuple[str, ...], default: str) -> str:
    value = os.environ.get(var, "").strip().lower()
    if not value:
        return default
    if value not in allowed:
        raise UsageError(f"${var} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def worker_id() -> str:
    """Who logs: ``$HPO_WORKER_ID``, else ``host:pid`` (a pod's host name is the pod's)."""
    return os.environ.get("HPO_WORKER_ID") or f"{socket.gethostname()}:{os.getpid()}"


def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).isoformat(
        timespec="milliseconds")


class JsonFormatter(logging.Formatter):
    """One JSON object per record; a trial record (``extra={"trial": fields}``) is its
    fields, with the time and ``"event": "trial"`` first."""

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "trial", None)
        if fields is not None:
            doc = {"time": _iso(record.created), "event": "trial", **fields}
            doc.setdefault("worker", worker_id())
        else:
            doc = {"time": _iso(record.created), "level": record.levelname.lower(),
                   "logger": record.name, "message": record.getMessage(),
                   "worker": worker_id()}
            if record.exc_info:
                doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class TextFormatter(logging.Formatter):
    """hpo's records as their message (the lines hpo always printed); a trial record as
    :func:`trial_text`; other libraries' records (Optuna's) with their level and logger."""

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "trial", None)
        if fields is not None:
            return trial_text(fields)
        text = record.getMessage()
        if not (record.name == "hpo" or record.name.startswith("hpo.")):
            text = f"[{record.levelname[0]} {record.name}] {text}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


_HANDLER_NAME = "hpo"


class _Stderr(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is when a record comes (a forked worker's
    log file, a test's capture), as the standard library's last-resort handler does."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ sets it
        pass


def configure(level: int, fmt: str, stream: TextIO | None = None) -> None:
    """Send hpo's records (and Optuna's, through propagation) at ``level`` and above to
    ``stream`` (stderr) in ``fmt``. Safe to call again (a forked worker re-configures)."""
    root = logging.getLogger()
    for h in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(h)
    handler = logging.StreamHandler(stream) if stream is not None else _Stderr()
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    log.setLevel(level)
    if "optuna" in sys.modules:
        configure_optuna(level)


def configure_optuna(level: int) -> None:
    """Optuna's logger follows hpo's level, through hpo's handler (so that it is JSON with
    ``--log-format json``). At INFO, hpo's own trial lines replace Optuna's "Trial N finished"
    lines, so Optuna stays at WARNING; ``-v`` shows them."""
    import optuna

    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    optuna.logging.set_verbosity(max(level, logging.WARNING) if level > logging.DEBUG
                                 else logging.DEBUG)


#: The metric each study's value is (a user's objective names its own), read once per study.
_METRICS: dict[str, str] = {}


def metric_name(study: Any) -> str:
    """The name of ``study``'s value (``val_acc`` for the book's MLP), one read per study."""
    key = study.study_name
    if key not in _METRICS:
        try:
            names = study.metric_names
        except Exception:  # noqa: BLE001 - a storage without it: the book's name
            names = None
        _METRICS[key] = names[0] if names else BOOK_METRIC
    return _METRICS[key]


def trial_fields(study_name: str, trial: Any, metric: str = "val_acc") -> dict[str, Any]:
    """What a finished trial's record carries: study, trial, state, value, params, worker (and
    the metric, when it is not the book's ``val_acc``)."""
    from hpo.report.listing import clean_floats

    fields = {"study": study_name, "trial": trial.number, "state": trial.state.name,
              "value": None if trial.value is None else clean_floats(float(trial.value)),
              "params": clean_floats(dict(trial.params)), "worker": worker_id()}
    if metric != BOOK_METRIC:
        fields["metric"] = metric
    return fields


def trial_text(fields: dict[str, Any]) -> str:
    """``trial 3 COMPLETE val_acc=0.740 lr=0.008985 weight_decay=2.56e-08`` (4 significant
    digits, as the listing shows params)."""
    from hpo.report.listing import fmt_param

    metric = fields.get("metric", BOOK_METRIC)
    value = fields.get("value")
    if value is None:
        shown = "-"
    else:
        shown = f"{value:.3f}" if metric == BOOK_METRIC else f"{value:.4g}"
    params = " ".join(f"{k}={fmt_param(v)}" for k, v in fields.get("params", {}).items())
    return f"trial {fields['trial']} {fields['state']} {metric}={shown} {params}".rstrip()


def log_trial(study: Any, trial: Any) -> None:
    """An Optuna callback: one ``hpo.trial`` record for the finished ``trial`` (none for a
    surplus trial: it ran nothing, and the budget counts it nowhere)."""
    from hpo.db.keys import SURPLUS_ATTR

    if trial.state.name == "FAIL" and trial.system_attrs.get(SURPLUS_ATTR):
        return
    trial_logger.info("trial %s %s", trial.number, trial.state.name,
                      extra={"trial": trial_fields(study.study_name, trial,
                                                   metric_name(study))})


def relog_trial(line: str) -> bool:
    """Log again a trial record another process wrote as a JSON line (``hpo run``'s workers
    write theirs to their own logs); False when ``line`` is not one."""
    try:
        doc = json.loads(line)
    except ValueError:
        return False
    if not isinstance(doc, dict) or doc.get("event") != "trial":
        return False
    fields = {k: v for k, v in doc.items() if k not in ("time", "event")}
    trial_logger.info("trial %s %s", fields.get("trial"), fields.get("state"),
                      extra={"trial": fields})
    return True


def version() -> str:
    """The installed version, from the package metadata (``importlib.metadata``) of the
    distribution that provides the ``hpo`` package, whatever it is named."""
    from importlib import metadata

    try:
        names = metadata.packages_distributions().get("hpo", [])
    except Exception:  # noqa: BLE001 - a broken distribution elsewhere must not stop --version
        names = []
    for name in [*names, "hpo-book", "hpo"]:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        if name in names or _provides_hpo(dist):
            return dist.version
    return "unknown (hpo runs from a source tree that is not installed: pip install -e .)"


def _provides_hpo(dist) -> bool:
    """Whether ``dist`` is this hpo (an editable install lists no files of the package, only
    its entry point ``hpo = hpo.cli:main``)."""
    return any(ep.value.startswith("hpo.cli:") for ep in dist.entry_points)
