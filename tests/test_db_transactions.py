"""PostgreSQL transactions per finished trial (issue 26), counted by PostgreSQL itself, and what
the worker does without a pre-ping per checkout when its pooled connections die between trials.

The count is ``xact_commit + xact_rollback`` of a fresh database in ``pg_stat_database`` (as
``benchmarks/bench_transactions.py`` counts it), one worker (``hpo run --workers 1``), schema
and study made first. Two runs of N and 2N trials on fresh databases: their difference over N
is what one more finished trial costs, exactly (the fixed cost of opening the storage and the
summary cancels out).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import optuna
import psycopg
import pytest
from optuna.trial import TrialState

from hpo.db.storage import get_storage
from hpo.engine.loop import work
from tests.conftest import PG_URL, fresh_pg_database, require_pg

pytestmark = pytest.mark.postgres

#: Transactions per finished trial of a one-worker study, random sampler or TPE with the median
#: pruner: its creation (with its first heartbeat, the budget's count and, for TPE, what the
#: sampler reads as the trial starts), its parameters (one transaction, with TPE's constant-liar
#: attribute), its end (with its attributes and reports). (Was 12 with a pre-ping per checkout,
#: 5 with the loop's own count and a transaction per parameter.)
BOUND = 3


def _dsn(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def _xacts(url: str) -> int:
    """The database's counter, read from another database (the reads count nowhere here),
    once it is settled: no session of the database is left (a backend's counts reach
    ``pg_stat_database`` as it ends) and two reads a moment apart agree."""
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(_dsn(PG_URL), autocommit=True) as con:
        last = None
        for _ in range(300):
            sessions = con.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                                   (name,)).fetchone()[0]
            now = con.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database "
                              "WHERE datname = %s", (name,)).fetchone()[0]
            if sessions == 0 and now == last:
                return int(now)
            last = now
            time.sleep(0.2)
    raise AssertionError(f"pg_stat_database of {name} never settled")


def _no_autovacuum(url: str) -> None:
    """Autovacuum off for the database's tables: an autoanalyze (after 50 changed rows of a
    table, whenever the launcher visits) is a transaction of the database too, and would be
    counted as the worker's."""
    with psycopg.connect(_dsn(url), autocommit=True) as con:
        tables = [r[0] for r in con.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()]
        for table in tables:
            con.execute(f'ALTER TABLE "{table}" SET (autovacuum_enabled = false)')


def _count_run(spec, n: int) -> tuple[int, int]:
    """(transactions, finished trials) of ``hpo run SPEC --n-trials n --workers 1``."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    with fresh_pg_database() as url:
        hpo = [sys.executable, "-m", "hpo"]
        subprocess.run([*hpo, "init", str(spec), "--storage", url, "--n-trials", str(n)],
                       check=True, env=env, capture_output=True, timeout=120)
        _no_autovacuum(url)
        before = _xacts(url)
        subprocess.run([*hpo, "run", str(spec), "--storage", url, "--n-trials", str(n),
                        "--workers", "1", "--quiet"], check=True, env=env, capture_output=True,
                       timeout=240)
        after = _xacts(url)
        study = optuna.load_study(study_name=spec.stem, storage=url)
        finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED)
                       for t in study.get_trials(deepcopy=False))
        return after - before, finished


TPE_PRUNED = dict(sampler="tpe", sampler_options="n_startup_trials = 2",
                  extra="[pruner]\nname = \"median\"\nn_startup_trials = 1\n"
                        "n_warmup_steps = 1\ninterval_steps = 1\n")


@pytest.mark.slow  # two `hpo run`s each, about 11 s
@pytest.mark.parametrize("kind", ["random", "tpe-median"])
def test_transactions_per_finished_trial(tiny_spec, kind):
    require_pg()
    spec = tiny_spec(sampler="random") if kind == "random" else tiny_spec(**TPE_PRUNED)
    n = 6
    small, done_small = _count_run(spec, n)
    large, done_large = _count_run(spec, 2 * n)
    assert (done_small, done_large) == (n, 2 * n)
    per_trial = (large - small) / n
    print(f"transactions: {small} for {n} trials, {large} for {2 * n}: {per_trial} per trial")
    # + 1: psycopg prepares a statement on its 6th run, and the first ROLLBACK after that (a
    # read's connection returned to the pool, at the run's end) makes it send DEALLOCATE ALL
    # on that connection's next use: one transaction per run at most, in the larger run only
    assert large - small <= BOUND * n + 1, (small, large)


def test_worker_survives_its_connections_killed_between_trials(pg_url, capsys):
    """Without a pre-ping, a pooled connection that the server killed fails its next
    statement: a connection-level error, retried. Every backend of the worker is terminated
    after each trial is told (``on_trial``: between trials); the study still ends with exactly
    its budget, nothing RUNNING, and the retry was said in one line."""
    n = 5
    storage = get_storage(pg_url, heartbeat=True, create_schema=True)
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    killed = []
    admin = psycopg.connect(_dsn(pg_url), autocommit=True)

    def objective(trial: optuna.Trial) -> float:
        return trial.suggest_float("x", 0, 1) + trial.suggest_float("y", 0, 1)

    def kill(_study, _frozen) -> None:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()").fetchall()
        killed.append(sum(1 for (ok,) in rows if ok))

    try:
        result = work(study, objective, n_trials=n, on_trial=kill, max_outage=60)
    finally:
        admin.close()
    assert (result.finished, result.stopped_by) == (n, "budget")
    assert len(killed) >= n and all(k >= 1 for k in killed), killed
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert states.count(TrialState.COMPLETE) == n
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    err = capsys.readouterr().err
    # said by whichever write met the dead connection first: the loop's next creation, or the
    # trial's end, committed by the writer thread while the next trial runs
    assert "storage unavailable" in err and (
        "retrying" in err or "written when it is back" in err), err
