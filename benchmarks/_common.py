"""Shared helpers of the benchmarks: the machine line, load average, throw-away PostgreSQL
databases, reading trial times straight from a storage, and small statistics.

Plain Python on purpose (like bench_mlp.py): every benchmark prints a Markdown table and a
machine line, and can be pasted into RESULTS.md as is.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import sqlite3
import statistics
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# HPO_BENCH_SRC=/path/to/a/patched/copy (a folder holding hpo/) measures a candidate fix without
# touching this checkout; subprocesses get it through PYTHONPATH.
SRC = os.environ.get("HPO_BENCH_SRC", str(ROOT))
sys.path.insert(0, SRC)
if "HPO_BENCH_SRC" in os.environ:
    os.environ["PYTHONPATH"] = SRC + os.pathsep + os.environ.get("PYTHONPATH", "")

PYTHON = str(ROOT / ".venv" / "bin" / "python")
HPO = str(ROOT / ".venv" / "bin" / "hpo")
STUDIES = ROOT / "studies"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
ONE_BLAS_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages, e.g. ``0.52, 1.10, 1.71``."""
    return ", ".join(f"{v:.2f}" for v in os.getloadavg())


def now_utc() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def machine_line() -> str:
    """CPU, cores, Python / NumPy / Optuna / SQLAlchemy versions, the BLAS and its kernel."""
    import numpy as np
    import optuna
    import sqlalchemy
    from threadpoolctl import threadpool_info

    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    blas_s = ", ".join(
        f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture')} kernel)"
        for i in blas
    ) or "none found"
    return (
        f"{model}, {os.cpu_count()} cores; Python {platform.python_version()}, NumPy "
        f"{np.__version__}, Optuna {optuna.__version__}, SQLAlchemy {sqlalchemy.__version__}; "
        f"BLAS {blas_s}"
    )


def header(command: str) -> str:
    """The lines every table starts with: command, machine, date, load average."""
    src = f"\nhpo source: {SRC} (HPO_BENCH_SRC)" if SRC != str(ROOT) else ""
    return (
        f"command: {command}{src}\n"
        f"machine: {machine_line()}\n"
        f"date: {now_utc()}; load average at start {loadavg()}"
    )


# --- statistics -------------------------------------------------------------------------------


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def q(xs: Sequence[float], p: float) -> float:
    """The p-quantile (0..1) by linear interpolation."""
    s = sorted(xs)
    if not s:
        return float("nan")
    k = (len(s) - 1) * p
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


# --- PostgreSQL -------------------------------------------------------------------------------


@contextlib.contextmanager
def pg_database(prefix: str = "bench") -> Iterator[str]:
    """A fresh PostgreSQL database for one run; yields its SQLAlchemy URL, drops it after."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as con:
        con.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as con:
            con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- reading trials straight from the storage ------------------------------------------------


@dataclass(frozen=True)
class TrialRow:
    number: int
    state: str
    start: float | None  # POSIX seconds
    complete: float | None
    value: float | None


_TRIALS_SQL = (
    "SELECT t.number, t.state, t.datetime_start, t.datetime_complete, v.value "
    "FROM trials t JOIN studies s ON s.study_id = t.study_id "
    "LEFT JOIN trial_values v ON v.trial_id = t.trial_id AND v.objective = 0 "
    "WHERE s.study_name = {p} ORDER BY t.number"
)


def _posix(x) -> float | None:
    """Optuna stores naive local datetimes (``datetime.now()``)."""
    if x is None:
        return None
    if isinstance(x, str):
        x = dt.datetime.fromisoformat(x)
    return x.timestamp()


def read_trials(url: str, study: str) -> list[TrialRow]:
    """Every trial of ``study`` with its state, start/complete times and value, with one plain
    query (no Optuna import, cheap enough to poll while a run is going)."""
    if url.startswith("sqlite:///"):
        path = url.split("sqlite:///", 1)[1]
        if not os.path.exists(path):
            return []
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            rows = con.execute(_TRIALS_SQL.format(p="?"), (study,)).fetchall()
        except sqlite3.OperationalError:  # schema not created yet
            return []
        finally:
            con.close()
    else:
        import psycopg

        dsn = url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(dsn) as con:
            try:
                rows = con.execute(_TRIALS_SQL.format(p="%s"), (study,)).fetchall()
            except psycopg.errors.UndefinedTable:
                return []
    return [TrialRow(n, s, _posix(a), _posix(b), v) for n, s, a, b, v in rows]


def fmt_s(x: float, nd: int = 1) -> str:
    return f"{x:.{nd}f}"
