"""Several workers on one study, for real: concurrent start, killed workers, a database restart,
SIGTERM, SQLite with local workers, and the read-only dashboard.

Every PostgreSQL test runs in a fresh database (the ``pg_url`` fixture); workers are real
``python -m hpo worker`` processes with their output in files under ``tmp_path``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from hpo.db.storage import study_spec
from tests.conftest import hpo

optuna.logging.set_verbosity(optuna.logging.WARNING)


# --- helpers ------------------------------------------------------------------------------------


def _probe_args(url: str) -> dict:
    """The probe's connections name themselves (a test cutting the workers' sessions spares
    them)."""
    return {"application_name": "probe"} if url.startswith("postgresql") else {}


class Probe:
    """Reads a study's trials straight from the database (survives a server restart)."""

    def __init__(self, url: str, study: str) -> None:
        self.storage = optuna.storages.RDBStorage(
            url, skip_table_creation=True, engine_kwargs={
                "pool_pre_ping": True, "connect_args": _probe_args(url)})
        self.study = study

    def trials(self) -> list[FrozenTrial]:
        study_id = self.storage.get_study_id_from_name(self.study)
        return self.storage.get_all_trials(study_id, deepcopy=False)

    def states(self) -> Counter:
        return Counter(t.state.name for t in self.trials())

    def running(self) -> list[FrozenTrial]:
        return [t for t in self.trials() if t.state == TrialState.RUNNING]

    def close(self) -> None:
        self.storage.engine.dispose()


def init(spec: Path, url: str, study: str | None = None, n_trials: int | None = None) -> None:
    """``hpo init``: the schema and the study, once, before any worker."""
    args = ["init", str(spec), "--storage", url]
    if study:
        args += ["--study", study]
    if n_trials:
        args += ["--n-trials", str(n_trials)]
    r = hpo(*args, timeout=120)
    assert r.returncode == 0, r.stderr


def spawn(log: Path, *args: str, prelude: list[str] | None = None) -> subprocess.Popen:
    """``python -m hpo ARGS`` in the background, output to ``log``."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, *(prelude or ["-m", "hpo"]), *args]
    return subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def finish(procs: list[subprocess.Popen], logs: list[Path], timeout: float) -> list[str]:
    """Wait for every process (killing all on timeout) and return their outputs."""
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        tails = "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in logs)
        pytest.fail(f"processes still running after {timeout} s:\n{tails}")
    return [log.read_text() for log in logs]


def assert_exact(probe: Probe, n_trials: int) -> list[FrozenTrial]:
    """Exactly ``n_trials`` COMPLETE, nothing RUNNING or WAITING; every FAIL is accounted for
    (a surplus claim, or a dead worker's trial that was retried)."""
    trials = probe.trials()
    states = Counter(t.state.name for t in trials)
    assert states["COMPLETE"] == n_trials, states
    assert states["RUNNING"] == 0 and states["WAITING"] == 0, states
    return trials


def worker_args(url: str, study: str, *extra: str) -> list[str]:
    return ["worker", "--study", study, "--storage", url, "--quiet", *extra]


# Pre-imports everything heavy, reports ready, then starts `hpo` the moment the go-file appears:
# the workers' first storage calls happen within milliseconds of each other.
GATE = """
import os, runpy, sys, time
import numpy, optuna, sqlalchemy, psycopg, sklearn.datasets, hpo.objectives.book, hpo.engine.loop
ready, go = sys.argv[1], sys.argv[2]
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.002)
sys.argv = ["hpo", *sys.argv[3:]]
runpy.run_module("hpo", run_name="__main__", alter_sys=True)
"""


# Runs `hpo` with every trial numbered FIRST or above held after it has drawn its params (they are
# stored: the trial is RUNNING with params and heartbeats) until the file GATE/go exists; each
# held trial first writes GATE/held-<number>. The test decides when a trial goes on (or that it
# never does), whatever the machine's speed.
HOLD = """
import os, runpy, sys, time
import hpo.objectives.book
gate, first = sys.argv[1], int(sys.argv[2])
suggest = hpo.objectives.book.suggest
def held(trial, space):
    params = suggest(trial, space)
    if trial.number >= first:
        open(os.path.join(gate, f"held-{trial.number}"), "w").close()
        while not os.path.exists(os.path.join(gate, "go")):
            time.sleep(0.01)
    return params
hpo.objectives.book.suggest = held
sys.argv = ["hpo", *sys.argv[3:]]
runpy.run_module("hpo", run_name="__main__", alter_sys=True)
"""


def held(gate: Path) -> list[int]:
    """Numbers of the trials held at ``gate`` so far."""
    return sorted(int(p.name.split("-")[1]) for p in gate.glob("held-*"))


def has_heartbeat(probe: Probe, trial_id: int) -> bool:
    from sqlalchemy import text

    with probe.storage.engine.connect() as con:
        return con.execute(text("SELECT count(*) FROM trial_heartbeats WHERE trial_id = :t"),
                           {"t": trial_id}).scalar() > 0


# --- PostgreSQL ---------------------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.slow
def test_eight_workers_started_at_the_same_instant(tiny_spec, pg_url, tmp_path):
    """After `hpo init`, eight `hpo worker` released at the same instant (forked from one
    launcher, tests/test_startup.py) share the study: all exit 0, exactly the budget."""
    from tests.test_startup import launch_crowds

    n_trials, n_workers = 24, 8
    spec = tiny_spec(name="stampede", n_trials=n_trials, epochs=3)
    init(spec, pg_url)
    ((codes, outputs),) = launch_crowds(
        tmp_path, [[{"argv": worker_args(pg_url, "stampede")}] * n_workers])
    assert codes == [0] * n_workers, "\n".join(outputs)
    for out in outputs:  # surplus claims are routine: not logged
        assert "Traceback" not in out, out
    probe = Probe(pg_url, "stampede")
    try:
        trials = assert_exact(probe, n_trials)
    finally:
        probe.close()
    # the only FAIL trials allowed are surplus claims, failed before sampling anything
    for t in trials:
        if t.state == TrialState.FAIL:
            assert t.system_attrs.get("hpo:surplus") is True and not t.params, t


@pytest.mark.postgres
@pytest.mark.slow
def test_killed_worker_trial_is_failed_and_retried(tiny_spec, pg_url, tmp_path):
    """A worker is SIGKILLed mid-trial while a second one is ready to go. The survivor runs the
    other slot of the budget, then waits at the budget (1 finished + 1 RUNNING) until the dead
    trial's heartbeat is stale: the trial is failed, its retry (WAITING, same params) must run.
    The victim's trial is held after drawing its params (``HOLD``) until it is killed: it
    cannot finish first, however fast the machine."""
    n_trials, grace = 2, 3
    spec = tiny_spec(name="killed", n_trials=n_trials)
    init(spec, pg_url)
    probe = Probe(pg_url, "killed")
    hb = ["--heartbeat-interval", "1", "--grace-period", str(grace)]
    ready, go, gate = tmp_path / "ready", tmp_path / "go", tmp_path / "gate"
    gate.mkdir()
    logs = [tmp_path / "survivor.log"]
    survivor = spawn(logs[0], str(ready), str(go), *worker_args(pg_url, "killed", *hb),
                     prelude=["-c", GATE])
    try:
        wait_for(lambda: ready.exists() or survivor.poll() is not None, 60, "the survivor")
        victim_proc = spawn(tmp_path / "victim.log", str(gate), "0",
                            *worker_args(pg_url, "killed", *hb), prelude=["-c", HOLD])
        try:
            wait_for(lambda: held(gate) or victim_proc.poll() is not None, 60,
                     "the victim's trial to draw its params")
            (running,) = wait_for(probe.running, 10, "the victim's trial, RUNNING")
            wait_for(lambda: has_heartbeat(probe, running._trial_id), 30, "its first heartbeat")
        finally:
            victim_proc.kill()
        victim_proc.wait(timeout=10)
        go.touch()
        assert victim_proc.returncode == -signal.SIGKILL
        victim = running
        assert probe.storage.get_trial(victim._trial_id).state == TrialState.RUNNING

        outputs = finish([survivor], logs, timeout=60)
        assert survivor.returncode == 0, outputs[0]

        trials = assert_exact(probe, n_trials)
        dead = probe.storage.get_trial(victim._trial_id)
        assert dead.state == TrialState.FAIL
        # failed only once its heartbeat was stale: at least the grace period after it started
        assert (dead.datetime_complete - dead.datetime_start).total_seconds() >= grace
        retries = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
        assert len(retries) == 1, [t.system_attrs for t in trials]
        assert retries[0].state == TrialState.COMPLETE
        assert dead.params and retries[0].params == dead.params  # the same point, run again
    finally:
        if survivor.poll() is None:
            survivor.kill()
        probe.close()


@pytest.mark.postgres
@pytest.mark.slow
def test_a_paused_worker_drops_its_stale_result_once_and_carries_on(tiny_spec, pg_url,
                                                                     tmp_path):
    """A worker is paused (SIGSTOP) mid-trial, past the grace period: a second worker fails the
    trial as stale and runs its retry. Resumed (SIGCONT), the paused worker finishes the trial,
    its end is refused, it says so in one line (its result dropped) and goes on; both exit 0
    and the study ends with exactly its budget. The paused trial is held after drawing its
    params (``HOLD``) until the test lets it go, whatever the machine's speed."""
    n_trials, grace = 4, 3
    spec = tiny_spec(name="paused", n_trials=n_trials)
    init(spec, pg_url)
    probe = Probe(pg_url, "paused")
    hb = ["--heartbeat-interval", "1", "--grace-period", str(grace)]
    gate = tmp_path / "gate"
    gate.mkdir()
    logs = [tmp_path / "paused.log", tmp_path / "other.log"]
    procs = [spawn(logs[0], str(gate), "0", *worker_args(pg_url, "paused", *hb),
                   prelude=["-c", HOLD])]
    try:
        wait_for(lambda: held(gate) or procs[0].poll() is not None, 60,
                 "the first trial to draw its params")
        (paused,) = wait_for(probe.running, 10, "the paused worker's trial, RUNNING")
        wait_for(lambda: has_heartbeat(probe, paused._trial_id), 30, "its first heartbeat")
        procs[0].send_signal(signal.SIGSTOP)
        (gate / "go").touch()  # once resumed, the trial goes on
        procs.append(spawn(logs[1], *worker_args(pg_url, "paused", *hb)))
        wait_for(lambda: probe.storage.get_trial(paused._trial_id).state == TrialState.FAIL,
                 120, "the other worker to fail the paused trial as stale")
        procs[0].send_signal(signal.SIGCONT)
        outputs = finish(procs, logs, timeout=180)
        assert [p.returncode for p in procs] == [0, 0], outputs
        trials = assert_exact(probe, n_trials)
        assert outputs[0].count("its result here is dropped") == 1, outputs[0]
        assert "Traceback" not in outputs[0] + outputs[1], outputs
        retries = [t for t in trials if t.system_attrs.get("failed_trial") == paused.number]
        assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE, retries
        assert retries[0].params == paused.params  # the same point, run again
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
        probe.close()


@pytest.mark.postgres
@pytest.mark.slow
def test_workers_survive_a_postgres_restart(tiny_spec, pg_cluster, tmp_path):
    """Two workers on a private server (initdb: restarting it touches no other test's server)
    that restarts while both hold a trial in flight: exactly the budget, nothing RUNNING or
    WAITING (a retry enqueued for a trial whose slot was not needed after all is closed)."""
    pg_url = pg_cluster.url
    n_trials = 20
    spec = tiny_spec(name="restart", n_trials=n_trials)
    init(spec, pg_url)
    probe = Probe(pg_url, "restart")
    hb = ["--heartbeat-interval", "1", "--grace-period", "4"]
    gate = tmp_path / "gate"
    gate.mkdir()
    logs = [tmp_path / f"worker-{i}.log" for i in range(2)]
    # trials 0-2 run; from trial 3 on, each worker holds its trial (RUNNING, params drawn,
    # beating) until the server has restarted: the restart lands while both trials are in
    # flight, and the study cannot have finished before it
    procs = [spawn(log, str(gate), "3", *worker_args(pg_url, "restart", *hb),
                   prelude=["-c", HOLD]) for log in logs]
    try:
        wait_for(lambda: len(held(gate)) >= 2 or any(p.poll() is not None for p in procs), 120,
                 "both workers to hold a trial after the first 3")
        assert probe.states()["COMPLETE"] == 3, probe.states()
        r = pg_cluster.restart()
        assert r.returncode == 0, r.stderr
        assert all(p.poll() is None for p in procs), "a worker stopped at the restart"
        (gate / "go").touch()
        outputs = finish(procs, logs, timeout=240)
        assert [p.returncode for p in procs] == [0, 0], "\n".join(outputs)
        assert_exact(probe, n_trials)
        # the outage is one line per worker at most (the loop and the heartbeat thread share
        # it), never a traceback
        for out in outputs:
            assert "Traceback" not in out and out.count("storage unavailable") <= 1, out
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        probe.close()


@pytest.mark.postgres
@pytest.mark.slow  # about 7-22 s on a 2-core machine: CI's slow step
def test_sigterm_fails_the_running_trial(tiny_spec, pg_url, tmp_path):
    spec = tiny_spec(name="term", n_trials=3, epochs=4000)
    init(spec, pg_url)
    probe = Probe(pg_url, "term")
    log = tmp_path / "worker.log"
    proc = spawn(log, *worker_args(pg_url, "term"))
    try:
        (running,) = wait_for(probe.running, 60, "a running trial")
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        assert proc.returncode == 143, log.read_text()
        assert log.read_text().strip().splitlines() == ["hpo: terminated"]  # no traceback
        assert probe.storage.get_trial(running._trial_id).state == TrialState.FAIL
        states = probe.states()
        assert states["RUNNING"] == 0 and states["WAITING"] == 0, states
    finally:
        if proc.poll() is None:
            proc.kill()
        probe.close()


@pytest.mark.postgres
@pytest.mark.slow  # about 7-22 s on a 2-core machine: CI's slow step
def test_a_role_that_may_not_write_values_is_exit_1_after_one_attempt(tiny_spec, pg_url,
                                                                     tmp_path):
    """A worker whose role may not INSERT or UPDATE ``trial_values``: its first trial's final
    write is refused (42501). One attempt, one line, exit 1, and none left RUNNING (the trial
    is failed; the role may still update ``trials``). Not retried however long
    ``$HPO_DB_WAIT`` is. The end is committed while the next trial runs (hpo/db/behind.py), so
    that next trial may have started before the refusal is known: at most two trials, both
    FAIL."""
    from tests.test_db_retry import role_without

    spec = tiny_spec(name="denied", n_trials=3)
    init(spec, pg_url)
    probe = Probe(pg_url, "denied")
    try:
        with role_without(pg_url, "INSERT, UPDATE ON trial_values") as url:
            r = hpo(*worker_args(url, "denied"), env={"HPO_DB_WAIT": "300"}, timeout=240)
        assert r.returncode == 1, r.stderr
        (line,) = r.stderr.strip().splitlines()
        assert line == ("hpo worker: error: the database refused a write (InsufficientPrivilege: "
                        "permission denied for table trial_values)"), r.stderr
        states = probe.states()
        assert sum(states.values()) <= 2 and states["FAIL"] == sum(states.values()), states
    finally:
        probe.close()


@pytest.mark.postgres
@pytest.mark.slow
def test_sessions_cut_by_the_server_mid_run_are_retried(tiny_spec, pg_url, tmp_path):
    """The server ends every session of the worker (``pg_terminate_backend``, 57P01: what a
    failover or an idle-session killer does) while a trial runs, three times: each is retried
    (a connection-level failure), and the study ends with exactly its budget, exit 0."""
    import psycopg

    n_trials = 6
    spec = tiny_spec(name="cut", n_trials=n_trials, epochs=1500)
    init(spec, pg_url)
    probe = Probe(pg_url, "cut")
    log = tmp_path / "worker.log"
    proc = spawn(log, *worker_args(pg_url, "cut", "--heartbeat-interval", "1",
                                   "--grace-period", "10"))
    plain = pg_url.replace("postgresql+psycopg://", "postgresql://")
    cuts = 0
    try:
        with psycopg.connect(plain, autocommit=True) as con:
            for number in range(3):
                wait_for(lambda n=number: any(t.number >= n for t in probe.running())
                         or proc.poll() is not None, 120, f"trial {number} to run")
                if proc.poll() is not None:
                    break
                pids = [r[0] for r in con.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid() AND application_name NOT LIKE 'probe%'")]
                for pid in pids:
                    con.execute("SELECT pg_terminate_backend(%s)", (pid,))
                cuts += bool(pids)
        proc.wait(timeout=240)
        out = log.read_text()
        assert proc.returncode == 0, out
        assert cuts >= 1, "no session was cut: the run finished first"
        assert "Traceback" not in out, out
        assert_exact(probe, n_trials)
    finally:
        if proc.poll() is None:
            proc.kill()
        probe.close()


# --- SQLite: hpo init, local workers, the dashboard (no PostgreSQL needed) ----------------------


@pytest.mark.slow  # about 7-22 s on a 2-core machine: CI's slow step
def test_init_creates_the_study_once_and_checks_its_input(tiny_spec, sqlite_url, tmp_path):
    spec = tiny_spec(name="made", n_trials=5)
    r = hpo("init", str(spec), "--storage", sqlite_url, "--study", "made-here", "--n-trials", "7")
    assert r.returncode == 0, r.stderr
    assert "made-here" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    study = optuna.load_study(study_name="made-here", storage=sqlite_url)
    assert study_spec(study)["budget"]["n_trials"] == 7
    assert study.metric_names == ["val_acc"] and study.trials == []
    # again, with a new budget: loaded, not re-created; the budget is recorded
    r = hpo("init", str(spec), "--storage", sqlite_url, "--study", "made-here", "--n-trials", "9")
    assert r.returncode == 0, r.stderr
    study = optuna.load_study(study_name="made-here", storage=sqlite_url)
    assert study_spec(study)["budget"]["n_trials"] == 9
    assert len(optuna.get_all_study_names(sqlite_url)) == 1
    # a different spec under the same name, a zero budget, a proxy URL: refused, nothing written
    other = tmp_path / "other.toml"  # same name, another model
    other.write_text(spec.read_text().replace("epochs = 5", "epochs = 7"))
    assert other.read_text() != spec.read_text()
    for args in (["--study", "made-here"], ["--n-trials", "0"]):
        r = hpo("init", str(other), "--storage", sqlite_url, *args)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = hpo("init", str(spec), "--storage", "grpc://127.0.0.1:1")
    assert r.returncode == 2 and "gRPC" in r.stderr, r.stderr
    assert optuna.get_all_study_names(sqlite_url) == ["made-here"]
    missing = f"sqlite:///{tmp_path / 'none.db'}"
    r = hpo("init", str(tmp_path / "nope.toml"), "--storage", missing)
    assert r.returncode == 2 and not (tmp_path / "none.db").exists(), r.stderr


@pytest.mark.slow
def test_four_local_workers_on_one_sqlite_file(tiny_spec, sqlite_url):
    n_trials = 40
    spec = tiny_spec(name="lite", n_trials=n_trials, epochs=3)
    r = hpo("run", str(spec), "--storage", sqlite_url, "--workers", "4", "--quiet", timeout=240)
    output = r.stdout + r.stderr
    assert r.returncode == 0, output
    assert "database is locked" not in output
    assert "hpo run: worker" not in output, output  # a worker crashed or was killed
    study = optuna.load_study(study_name="lite", storage=sqlite_url)
    states = Counter(t.state.name for t in study.get_trials(deepcopy=False))
    assert states["COMPLETE"] == n_trials, states
    assert states["RUNNING"] == 0 and states["WAITING"] == 0, states


def test_workers_do_not_repeat_each_others_draws(tiny_spec, sqlite_url):
    r = hpo("run", str(tiny_spec(name="draws", n_trials=8, epochs=2)), "--storage", sqlite_url,
            "--workers", "2", "--quiet", timeout=240)
    assert r.returncode == 0, r.stderr
    study = optuna.load_study(study_name="draws", storage=sqlite_url)
    fresh = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
             if "failed_trial" not in t.system_attrs]  # a retry repeats its params on purpose
    points = [(t.params["lr"], t.params["weight_decay"]) for t in fresh]
    assert len(points) == 8 and len(set(points)) == len(points), sorted(points)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, method: str = "GET", body: dict | None = None) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _dashboard(url: str, log: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = spawn(log, "dashboard", "--storage", url, "--port", str(port), *extra)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"dashboard exited with {proc.returncode}: {log.read_text()}")
        try:
            return _request(base + "/api/meta")[0] == 200
        except OSError:
            return False

    wait_for(up, 60, "the dashboard to answer /api/meta")
    return proc, base


@pytest.mark.slow  # about 7-22 s on a 2-core machine: CI's slow step
def test_dashboard_is_read_only_unless_told(tiny_spec, sqlite_url, tmp_path):
    r = hpo("run", str(tiny_spec(name="dash", n_trials=2)), "--storage", sqlite_url, "--quiet")
    assert r.returncode == 0, r.stderr
    new_study = {"study_name": "made-by-post", "directions": ["maximize"]}

    proc, base = _dashboard(sqlite_url, tmp_path / "ro.log")
    try:
        status, body = _request(base + "/api/studies")
        assert status == 200
        (summary,) = [s for s in json.loads(body)["study_summaries"] if s["study_name"] == "dash"]
        study_id = summary["study_id"]
        status, body = _request(f"{base}/api/studies/{study_id}")
        assert status == 200
        assert json.loads(body)["objective_names"] == ["val_acc"]  # the metric name hpo sets
        assert _request(base + "/api/studies", "POST", new_study)[0] == 405
        assert _request(f"{base}/api/studies/{study_id}", "DELETE")[0] == 405
        assert _request(f"{base}/api/studies/{study_id}")[0] == 200  # still there
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    names = {s.study_name for s in optuna.get_all_study_summaries(sqlite_url)}
    assert names == {"dash"}

    proc, base = _dashboard(sqlite_url, tmp_path / "rw.log", "--allow-writes")
    try:
        assert _request(base + "/api/studies", "POST", new_study)[0] == 201
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    names = {s.study_name for s in optuna.get_all_study_summaries(sqlite_url)}
    assert names == {"dash", "made-by-post"}


@pytest.mark.postgres
def test_state_counts_read_postgres_enum_states(pg_url):
    """The worker loop's one-query counts (a native enum column on PostgreSQL) agree with the
    trials, for every state, and the claim query counts only lower numbers."""
    from hpo.db.storage import get_storage, state_counts
    from hpo.engine.loop import count_states

    storage = get_storage(pg_url, create_schema=True)
    study = optuna.create_study(storage=storage, study_name="counts", direction="maximize")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    study.optimize(lambda t: 1 / 0, n_trials=1, catch=(ZeroDivisionError,))
    study.enqueue_trial({"x": 0.5})
    study.ask()  # the enqueued trial: RUNNING
    study.tell(study.ask(), state=TrialState.PRUNED)
    study.enqueue_trial({"x": 0.25})  # WAITING
    trials = study.trials
    assert state_counts(study) == Counter(t.state for t in trials)
    assert set(state_counts(study)) == set(TrialState)
    assert state_counts(study, below=4) == Counter(t.state for t in trials[:4])
    assert count_states(study) == (4, 2, 1)
    storage.engine.dispose()


@pytest.mark.postgres
def test_a_worker_opens_no_connection_per_trial(pg_url):
    """The trial's thread and its heartbeat thread each keep a pooled connection: none is
    opened (a TCP connection and a server process) and closed again per trial."""
    from sqlalchemy import event

    from hpo.db.storage import get_storage
    from hpo.engine.loop import work

    storage = get_storage(pg_url, heartbeat=True, create_schema=True)
    study = optuna.create_study(storage=storage, study_name="conns", direction="maximize")
    connects: list[float] = []
    event.listen(storage.engine, "connect", lambda *_: connects.append(time.monotonic()))

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0, 1)
        time.sleep(0.02)  # the heartbeat thread records its first beat meanwhile
        trial.set_user_attr("x2", x * x)
        return x

    work(study, objective, n_trials=2)
    opened = len(connects)
    work(study, objective, n_trials=12)
    assert len(connects) - opened <= 1, len(connects) - opened
    assert opened <= 2
    storage.engine.dispose()
