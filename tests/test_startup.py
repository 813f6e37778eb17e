"""Start-up: any number of `hpo` processes started at the same instant on an empty storage, a
database that refuses connections, storages that are not what they claim to be.

Crowds are started by one launcher process that imports everything once, forks one child per
command and releases them all at once (each child blocks on a pipe until the launcher closes
it): the commands' first storage calls happen within a millisecond or so of each other, and
eight cold interpreters (~1 s of imports each on two cores) are not paid per round. Each child
is a real process with its own database connections, running `python -m hpo ...` as a user
would, with its output in its own log file.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpo.db.storage import study_spec
from tests.conftest import free_port, fresh_pg_database, hpo, require_pg

optuna.logging.set_verbosity(optuna.logging.WARNING)

LAUNCHER = r"""
import json, os, runpy, sys, time, traceback, urllib.request
import numpy, optuna, sqlalchemy, psycopg, sklearn.datasets  # noqa: F401 - imported once
import hpo.cli, hpo.objectives.book, hpo.engine.loop  # noqa: F401
import hpo.report.dashboard, hpo.report.listing  # noqa: F401
import hpo.commands.run, hpo.commands.worker, hpo.commands.init, hpo.commands.dashboard  # noqa
import hpo.engine.study, hpo.db.storage  # noqa: F401 - the commands import them as they run


def crowd(jobs):
    r, w = os.pipe()
    pids = []
    for job in jobs:
        pid = os.fork()
        if pid == 0:
            os.close(w)
            fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.read(r, 1)  # returns when the launcher closes the pipe: everyone at once
            sys.argv = ["hpo", *job["argv"]]
            code = 1
            try:
                runpy.run_module("hpo", run_name="__main__", alter_sys=True)
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        pids.append(pid)
    os.close(r)
    os.close(w)  # go
    codes = []
    for pid, job in zip(pids, jobs):
        if job.get("url"):  # a server: it must answer, then it is stopped
            deadline, answered = time.monotonic() + 120, False
            while not answered and time.monotonic() < deadline:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    break
                try:
                    with urllib.request.urlopen(job["url"], timeout=2) as resp:
                        answered = resp.status == 200
                except OSError:
                    time.sleep(0.2)
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            codes.append(0 if answered else 1)
        else:
            codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    return codes


# crowds one after the other: [[{"log": path, "argv": [...], "url": health URL}, ...], ...]
print(json.dumps([crowd(jobs) for jobs in json.loads(sys.argv[1])]))
"""


def launch_crowds(tmp_path: Path, crowds: list[list[dict]]) -> list[tuple[list[int], list[str]]]:
    """Run each crowd of ``hpo`` commands (``{"argv": [...], "url": health URL of a server}``)
    as processes released at the same instant, one crowd after the other. Returns, per crowd,
    the exit codes (0 for a server that answered before it was stopped) and the outputs."""
    launcher = tmp_path / "launcher.py"
    launcher.write_text(LAUNCHER)
    jobs = [[{**job, "log": str(tmp_path / f"crowd{c}-{i}.log")} for i, job in enumerate(crowd)]
            for c, crowd in enumerate(crowds)]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    r = subprocess.run([sys.executable, str(launcher), json.dumps(jobs)], capture_output=True,
                       text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    return [(codes, [Path(job["log"]).read_text() for job in crowd])
            for codes, crowd in zip(json.loads(r.stdout), jobs, strict=True)]


def trials_of(url: str, study: str) -> list[optuna.trial.FrozenTrial]:
    storage = optuna.storages.RDBStorage(url, skip_table_creation=True)
    try:
        return storage.get_all_trials(storage.get_study_id_from_name(study))
    finally:
        storage.engine.dispose()


def assert_exact_budget(url: str, study: str, n_trials: int) -> None:
    trials = trials_of(url, study)
    states = Counter(t.state for t in trials)
    assert states[TrialState.COMPLETE] == n_trials, states
    assert states[TrialState.RUNNING] == states[TrialState.WAITING] == 0, states
    for t in trials:  # the only FAIL trials are surplus claims, failed before sampling
        if t.state == TrialState.FAIL:
            assert t.system_attrs.get("hpo:surplus") is True and not t.params, t
    loaded = optuna.load_study(study_name=study, storage=url)
    assert study_spec(loaded)["budget"]["n_trials"] == n_trials
    assert loaded.metric_names == ["val_acc"]


def assert_clean(codes: list[int], outputs: list[str]) -> None:
    assert codes == [0] * len(codes), "\n---\n".join(outputs)
    for out in outputs:
        assert "Traceback" not in out and ": error: " not in out, out


CROWD, BUDGET = 8, 8


def runs(spec: Path, url: str, n: int = CROWD) -> list[dict]:
    return [{"argv": ["run", str(spec), "--storage", url, "--quiet"]}] * n


def everyone(spec: Path, url: str, study: str) -> list[dict]:
    """init, the dashboard, workers and runs: every kind of process that opens a storage."""
    port = free_port()
    return [{"argv": ["init", str(spec), "--storage", url]},
            {"argv": ["dashboard", "--storage", url, "--port", str(port)],
             "url": f"http://127.0.0.1:{port}/api/meta"},
            *[{"argv": ["worker", "--study", study, "--storage", url, "--quiet"]}] * 3,
            *runs(spec, url, 3)]


@pytest.mark.postgres
@pytest.mark.slow
def test_crowds_started_at_once_on_fresh_postgres_databases(tiny_spec, tmp_path):
    """Eight `hpo run` released at the same instant on an EMPTY database, three times, each on a
    new database (Optuna alone: 7/8, 1/8 and 3/8 crashed in three runs, exit 2); then every kind
    of process at once on a fourth: the workers and the dashboard wait for the creators."""
    require_pg()
    spec = tiny_spec(name="crowd", n_trials=BUDGET, epochs=1)
    with contextlib.ExitStack() as stack:
        urls = [stack.enter_context(fresh_pg_database()) for _ in range(4)]
        results = launch_crowds(tmp_path, [*(runs(spec, url) for url in urls[:3]),
                                           everyone(spec, urls[3], "crowd")])
        for url, (codes, outputs) in zip(urls, results, strict=True):
            assert_clean(codes, outputs)
            assert_exact_budget(url, "crowd", BUDGET)


@pytest.mark.slow  # about 7-22 s on a 2-core machine: CI's slow step
def test_crowds_started_at_once_on_fresh_sqlite_files(tiny_spec, tmp_path):
    """The same on SQLite files that do not exist yet: eight `hpo run`, then every kind."""
    spec = tiny_spec(name="crowd", n_trials=BUDGET, epochs=1)
    urls = [f"sqlite:///{tmp_path / f'fresh{i}.db'}" for i in range(2)]
    results = launch_crowds(tmp_path, [runs(spec, urls[0]), everyone(spec, urls[1], "crowd")])
    for url, (codes, outputs) in zip(urls, results, strict=True):
        assert_clean(codes, outputs)
        assert_exact_budget(url, "crowd", BUDGET)


# --- a database that refuses connections ---------------------------------------------------


class _Hog:
    """Holds every connection slot of a server (a superuser may use all of them)."""

    def __init__(self, url: str, n: int) -> None:
        import psycopg

        plain = url.replace("postgresql+psycopg://", "postgresql://")
        self.conns = []
        while len(self.conns) < n:
            try:
                self.conns.append(psycopg.connect(plain, autocommit=True))
            except psycopg.OperationalError:
                break  # full

    def release(self) -> None:
        for con in self.conns:
            con.close()
        self.conns = []


@pytest.mark.slow
@pytest.mark.postgres
def test_too_many_clients_at_start_up_is_waited_for_then_a_runtime_failure(small_cluster,
                                                                           tiny_spec, tmp_path):
    url, _ = small_cluster
    spec = tiny_spec(name="busy", n_trials=2, epochs=2)
    hog = _Hog(url, 10)
    try:
        assert len(hog.conns) == 10
        # nobody lets go: one progress line, then one line and exit 1 (a runtime failure)
        r = hpo("run", str(spec), "--storage", url, "--quiet", env={"HPO_DB_WAIT": "2"})
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1, r.stderr
        assert len(lines) == 2 and "too many clients" in r.stderr, r.stderr
        assert "retrying for up to 2 s" in lines[0] and "still unavailable after" in lines[1]
        # a slot frees up while it waits: it goes on and finishes
        log = tmp_path / "run.log"
        proc = subprocess.Popen([sys.executable, "-m", "hpo", "run", str(spec), "--storage", url,
                                 "--quiet"], stdout=subprocess.DEVNULL, stderr=log.open("w"),
                                env={**os.environ, "HPO_DB_WAIT": "120"})
        try:
            deadline = time.monotonic() + 60
            while "retrying" not in log.read_text():
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            hog.release()
            assert proc.wait(timeout=120) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
    finally:
        hog.release()
    err = log.read_text()
    assert err.count("retrying") == 1 and "Traceback" not in err, err
    assert_exact_budget(url, "busy", 2)


# --- storages that are not what they claim: bad input, at once -----------------------------


def test_a_file_that_is_not_sqlite_is_named(tmp_path, tiny_spec):
    notes = tmp_path / "notes.db"
    notes.write_text("these are my notes, not a database\n" * 200)
    before = notes.read_bytes()
    url = f"sqlite:///{notes}"
    commands = (["worker", "--study", "x"], ["run", str(tiny_spec())])  # open; create
    procs = [subprocess.Popen([sys.executable, "-m", "hpo", *args, "--storage", url],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for args in commands]
    for args, proc in zip(commands, procs, strict=True):
        _, err = proc.communicate(timeout=120)
        lines = err.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, (args, err)
        assert f"{notes} is not an SQLite database" in lines[0], (args, err)
    assert notes.read_bytes() == before


@pytest.mark.postgres
def test_an_unknown_database_is_bad_input_not_an_outage(pg_url, tiny_spec):
    url = pg_url.rsplit("/", 1)[0] + "/hpo_no_such_database"
    r = hpo("run", str(tiny_spec()), "--storage", url, env={"HPO_DB_WAIT": "60"})
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr  # no "retrying" line: not retried
    assert 'database "hpo_no_such_database" does not exist' in lines[0], r.stderr


def test_a_study_made_between_the_workers_two_reads_is_joined(tmp_path, tiny_spec):
    """A joining worker looks the study up by name, then (not found) lists the studies to name
    them. When a creator makes it between the two reads, the worker joins it: it is not "no
    study named 'crowd'; studies here: crowd" (exit 2) as it was once in a crowded start."""
    import optuna

    from hpo.db.storage import create_or_load_study, get_storage, load_study_spec
    from hpo.spec import load_spec

    url = f"sqlite:///{tmp_path / 'race.db'}"
    spec = load_spec(tiny_spec(name="crowd"))
    creator = get_storage(url, create_schema=True)
    create_or_load_study(creator, spec.replace(name="other"))  # the storage is not empty

    class LateStorage(optuna.storages.RDBStorage):
        first = True

        def get_study_id_from_name(self, study_name: str) -> int:
            if self.first:  # the lookup misses; the creator makes the study right after it
                self.first = False
                try:
                    return super().get_study_id_from_name(study_name)
                finally:
                    create_or_load_study(creator, spec)
            return super().get_study_id_from_name(study_name)

    joiner = LateStorage(url, skip_table_creation=True)
    assert load_study_spec(joiner, "crowd").to_dict() == spec.to_dict()
    assert not joiner.first
