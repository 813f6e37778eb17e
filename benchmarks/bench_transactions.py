"""PostgreSQL transactions per finished trial, counted by PostgreSQL itself.

For each spec: a fresh database, the schema and the study made first (``hpo init``), the
database's statistics reset, then one worker finishes ``--trials`` trials (``hpo run SPEC
--n-trials N --workers 1``). The count is ``xact_commit + xact_rollback`` of that database in
``pg_stat_database`` (every statement outside an explicit transaction is one transaction, every
pool pre-ping too), minus what reading the counters costs (measured the same way with no work in
between), divided by the finished trials.

Plain Optuna is counted the same way: ``study.optimize`` on an ``RDBStorage`` with a trivial
objective that reports 5 intermediate values (random and TPE samplers), heartbeats off.

Run: ``.venv/bin/python benchmarks/bench_transactions.py [--trials 40] [--specs a.toml,b.toml]``
(``HPO_BENCH_SRC=/path/to/a/copy`` counts another source tree: benchmarks/_common.py).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import HPO, ONE_BLAS_THREAD, PYTHON, STUDIES, header, pg_database  # noqa: E402

PLAIN = r"""
import sys, optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
url, sampler, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
S = optuna.samplers
s = S.RandomSampler(seed=0) if sampler == "random" else S.TPESampler(seed=0)
study = optuna.load_study(study_name="plain", storage=url, sampler=s)
def objective(trial):
    x = trial.suggest_float("lr", 1e-6, 1e-2, log=True)
    y = trial.suggest_float("weight_decay", 1e-8, 1e-4, log=True)
    for step in range(5):
        trial.report(x + y * step, step)
    return x + y
study.optimize(objective, n_trials=n)
"""

CREATE_PLAIN = r"""
import sys, optuna
optuna.create_study(study_name="plain", storage=sys.argv[1], direction="maximize")
"""


def _dsn(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def _transactions(url: str) -> int:
    import psycopg

    with psycopg.connect(_dsn(url), autocommit=True) as con:
        con.execute("SELECT pg_stat_clear_snapshot()")
        row = con.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database "
            "WHERE datname = current_database()").fetchone()
    return int(row[0])


def _reset(url: str) -> None:
    import psycopg

    with psycopg.connect(_dsn(url), autocommit=True) as con:
        con.execute("SELECT pg_stat_reset()")


def _finished(url: str, study: str) -> int:
    import psycopg

    with psycopg.connect(_dsn(url), autocommit=True) as con:
        row = con.execute(
            "SELECT count(*) FROM trials t JOIN studies s USING (study_id) "
            "WHERE s.study_name = %s AND t.state IN ('COMPLETE', 'PRUNED')", (study,)).fetchone()
    return int(row[0])


def _settled(url: str, base: int) -> int:
    """The counter once the exited processes' statistics have reached it (they are flushed
    when a backend ends; wait until two reads a moment apart agree)."""
    last = -1
    for _ in range(50):
        now = _transactions(url) - base
        if now == last:
            return now
        last = now
        time.sleep(0.2)
    return last


def _read_cost(url: str) -> int:
    _reset(url)
    first = _settled(url, 0)
    second = _settled(url, 0)
    return max(second - first, 0)


def count_hpo(spec: Path, trials: int) -> tuple[int, int]:
    env = {**os.environ, **ONE_BLAS_THREAD}
    with pg_database("xact") as url:
        subprocess.run([HPO, "init", str(spec), "--storage", url, "--n-trials", str(trials)],
                       check=True, env=env, capture_output=True)
        cost = _read_cost(url)
        _reset(url)
        subprocess.run([HPO, "run", str(spec), "--storage", url, "--n-trials", str(trials),
                        "--workers", "1", "--quiet"], check=True, env=env, capture_output=True)
        xacts = _settled(url, 0) - cost
        import tomllib

        name = tomllib.loads(spec.read_text())["name"]
        return xacts, _finished(url, name)


def count_plain(sampler: str, trials: int) -> tuple[int, int]:
    with pg_database("xact") as url:
        subprocess.run([PYTHON, "-c", CREATE_PLAIN, url], check=True, capture_output=True)
        cost = _read_cost(url)
        _reset(url)
        subprocess.run([PYTHON, "-c", PLAIN, url, sampler, str(trials)], check=True,
                       capture_output=True)
        xacts = _settled(url, 0) - cost
        return xacts, _finished(url, "plain")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--specs", default="", help="comma-separated spec files (default: studies/)")
    args = ap.parse_args()
    specs = ([Path(s) for s in args.specs.split(",") if s] if args.specs
             else sorted(STUDIES.glob("*.toml")))
    print(header(f"benchmarks/bench_transactions.py --trials {args.trials}"))
    print()
    print("| run | finished trials | transactions | per finished trial |")
    print("|---|---:|---:|---:|")
    for sampler in ("random", "tpe"):
        x, n = count_plain(sampler, args.trials)
        print(f"| plain Optuna, {sampler}, 5 reports | {n} | {x} | {x / max(n, 1):.1f} |",
              flush=True)
    for spec in specs:
        x, n = count_hpo(spec, args.trials)
        print(f"| hpo {spec.stem} | {n} | {x} | {x / max(n, 1):.1f} |", flush=True)


if __name__ == "__main__":
    main()
