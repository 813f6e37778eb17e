"""Faults of the machine around a study, for real: the storage's side of them (first part,
fast, in the default run) and whole fault classes (``-m faults``, in CI: a worker cut off from
PostgreSQL by the network, the disk filling under SQLite, PostgreSQL killed -9 and restarted).

Every test waits on states it can see (the database's rows, files, exit codes), never on a sleep
sized to the machine; each fault-class test prints its figures (time to recover, trials lost),
the numbers in docs/faults.md."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from hpo.db import optuna_private as oc
from hpo.db.retry import OUTAGE
from hpo.db.storage import get_storage, sweep_stale_trials
from tests.conftest import free_port, hpo

optuna.logging.set_verbosity(optuna.logging.WARNING)


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(params=["sqlite", "postgresql"])
def any_url(request, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'f.db'}"
    return request.getfixturevalue("pg_url")


# --- the storage's side ---------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_stale_age_is_the_databases_clock_only(any_url: str) -> None:
    """Two trials that never beat, made by workers whose clocks are a day behind and a day
    ahead (their ``datetime_start``): neither clock counts. A sweep gives each a heartbeat row
    stamped by the database; one grace period later on the database's clock both are failed
    and their retries enqueued."""
    grace = 2
    storage = get_storage(any_url, heartbeat=True, heartbeat_interval=1, grace_period=grace,
                          create_schema=True)
    study = optuna.create_study(storage=storage, study_name="clock")
    behind, ahead = study.ask(), study.ask()  # ask() starts no heartbeat thread: no rows
    rdb = oc.rdb_of(study)
    with rdb.engine.begin() as conn:
        for trial, skew in ((behind, -1), (ahead, 1)):
            start = oc.storage_of(study).get_trial(oc.trial_id(trial)).datetime_start
            conn.execute(sqlalchemy.text("UPDATE trials SET datetime_start = :s WHERE "
                                         "trial_id = :t"),
                         {"s": start + timedelta(days=skew), "t": oc.trial_id(trial)})
    sweep_stale_trials(study)
    states = {t.number: t.state for t in study.get_trials()}
    assert states == {0: TrialState.RUNNING, 1: TrialState.RUNNING}  # not failed at once
    with rdb.engine.connect() as conn:
        assert conn.execute(sqlalchemy.text("SELECT count(*) FROM trial_heartbeats")
                            ).scalar_one() == 2

    def both_failed() -> bool:
        sweep_stale_trials(study)
        return [t.state for t in study.get_trials()[:2]] == [TrialState.FAIL] * 2

    began = time.monotonic()
    wait_until(both_failed, 60, "the adopted trials to go stale")
    assert time.monotonic() - began >= grace - 1  # one grace period (the DB clock's seconds)
    retries = [t for t in study.get_trials() if t.state == TrialState.WAITING]
    assert sorted(t.system_attrs["failed_trial"] for t in retries) == [0, 1]


def test_a_final_write_lost_to_a_locked_database_is_retried_with_its_held_writes(
        tmp_path: Path, capsys) -> None:
    """The trial's final write meets a database another process holds (SQLite busy, a
    transient error): hpo's storage says so in one line and retries it within ``$HPO_DB_WAIT``,
    and the write that goes through stores COMPLETE with the held ``model_seed``."""
    url = f"sqlite:///{tmp_path / 'l.db'}"
    storage = get_storage(url, create_schema=True, engine={"connect_args": {"timeout": 0.05}})
    study = optuna.create_study(storage=storage, study_name="locked", direction="maximize")
    trial = study.ask()
    tid = oc.trial_id(trial)
    trial.set_user_attr("model_seed", 11)
    OUTAGE.reset()
    holder = sqlite3.connect(tmp_path / "l.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    result: list = []
    writer = threading.Thread(target=lambda: result.append(
        storage.set_trial_state_values(tid, TrialState.COMPLETE, [0.5])))
    try:
        writer.start()
        wait_until(lambda: OUTAGE.since is not None, 60, "the final write to fail once")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    writer.join(timeout=60)
    assert result == [True]
    (line,) = capsys.readouterr().err.splitlines()
    assert "storage unavailable (OperationalError: database is locked)" in line, line
    done = optuna.load_study(study_name="locked", storage=url).trials[0]
    assert done.state == TrialState.COMPLETE and done.user_attrs == {"model_seed": 11}
    assert OUTAGE.since is None  # the write restarted the clock


@pytest.mark.slow
def test_a_read_only_sqlite_file_is_exit_1_in_one_line(tiny_spec, tmp_path: Path) -> None:
    """A study on an SQLite file the worker may read but not write (immutable, ``chattr +i``,
    which binds root too; else opened read-only, ``mode=ro``): one attempt, one line, exit 1,
    nothing written."""
    db = tmp_path / "ro.db"
    url = f"sqlite:///{db}"
    spec = tiny_spec(name="ro", n_trials=3)
    r = hpo("init", str(spec), "--storage", url, timeout=120)
    assert r.returncode == 0, r.stderr
    immutable = shutil.which("chattr") is not None and subprocess.run(
        ["chattr", "+i", str(db)], capture_output=True).returncode == 0
    try:
        worker_url = url if immutable else f"sqlite:///file:{db}?mode=ro&uri=true"
        r = hpo("worker", "--study", "ro", "--storage", worker_url,
                env={"HPO_DB_WAIT": "300"}, timeout=240)
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(db)], check=True)
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines() == [
        "hpo worker: error: the database refused a write (OperationalError: attempt to write a "
        "readonly database)"], r.stderr
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT count(*) FROM trials").fetchone() == (0,)


@pytest.mark.slow
def test_reads_that_succeed_do_not_keep_a_write_outage_alive(tmp_path: Path, monkeypatch,
                                                             capsys) -> None:
    """Another process holds the SQLite file's write lock for good: every read of the trial
    loop succeeds, every write fails (busy, transient). The loop's outage clock is not restarted
    by the reads, so it ends after ``$HPO_DB_WAIT`` with one line (a runtime failure), having
    created no trial (it used to retry for ever, counting each successful read as recovery)."""
    from hpo.engine.loop import work
    from hpo.errors import RuntimeFailure

    monkeypatch.setenv("HPO_DB_WAIT", "2")
    url = f"sqlite:///{tmp_path / 'busy.db'}"
    storage = get_storage(url, create_schema=True, engine={"connect_args": {"timeout": 0.05}})
    study = optuna.create_study(storage=storage, study_name="busy")
    holder = sqlite3.connect(tmp_path / "busy.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(RuntimeFailure, match=r"storage unavailable for \d+ s"):
            work(study, lambda t: t.suggest_float("x", 0, 1), n_trials=3, poll=0.05)
        assert study.get_trials() == []  # reads still work; no trial was made
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "database is locked" in err[0], err


# --- fault classes (-m faults) --------------------------------------------------------------------


def _need(condition: bool, why: str) -> None:
    if not condition:
        if os.environ.get("HPO_REQUIRE_FAULTS") == "1":
            pytest.fail(why)
        pytest.skip(why)


def _run(*cmd: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    full = (["ip", "netns", "exec", netns] if netns else []) + list(cmd)
    r = subprocess.run(full, capture_output=True, text=True, timeout=120)
    if check:
        assert r.returncode == 0, f"{' '.join(full)}: {r.stderr}"
    return r


def figures(fault: str, **values) -> None:
    """One line of figures per fault class (collected for docs/faults.md with ``-s``)."""
    print(f"\nFAULT-FIGURES {fault}: " + ", ".join(f"{k}={v}" for k, v in values.items()),
          flush=True)


class PrivatePg:
    """A private PostgreSQL cluster from ``initdb`` (trust auth, fsync off), listening on
    ``address`` (in the network namespace ``netns``, when given) and on a Unix socket in its
    own folder: the test reaches it through the socket from any namespace."""

    def __init__(self, address: str = "127.0.0.1", netns: str | None = None) -> None:
        _need(os.geteuid() == 0 and shutil.which("runuser") is not None
              and os.path.exists(PG_BIN / "initdb"),
              "a private PostgreSQL cluster needs root, runuser and the server binaries")
        self.base = Path(tempfile.mkdtemp(prefix="hpo-faults-pg-"))
        shutil.chown(self.base, "postgres", "postgres")
        self.data, self.log = self.base / "data", self.base / "server.log"
        self.address, self.netns, self.port = address, netns, free_port()
        self._pg("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        with open(self.data / "pg_hba.conf", "a") as hba:  # the worker's side of the veth
            hba.write(f"host all all {address}/24 trust\n")
        self.start()

    def _pg(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return _run("runuser", "-u", "postgres", "--", str(PG_BIN / tool), *args,
                    netns=self.netns, check=check)

    def start(self) -> None:
        """Start the server as a child of this process (not daemonized by ``pg_ctl``: a server
        killed -9 is then reaped here, not left a zombie that its lock file points to), and
        wait until it accepts connections on its socket."""
        cmd = ["runuser", "-u", "postgres", "--", str(PG_BIN / "postgres"), "-D",
               str(self.data), "-p", str(self.port), "-c", f"listen_addresses={self.address}",
               "-c", f"unix_socket_directories={self.base}", "-c", "max_connections=40",
               "-c", "fsync=off"]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        self.server = subprocess.Popen(cmd, stdout=self.log.open("a"), stderr=subprocess.STDOUT)

        def ready() -> bool:
            if self.server.poll() is not None:
                pytest.fail(f"the server exited ({self.server.returncode}): "
                            f"{self.log.read_text()[-2000:]}")
            return subprocess.run([str(PG_BIN / "pg_isready"), "-q", "-h", str(self.base), "-p",
                                   str(self.port)], timeout=30).returncode == 0

        wait_until(ready, 120, "the private PostgreSQL server to accept connections")

    @property
    def tcp_url(self) -> str:
        return f"postgresql+psycopg://postgres@{self.address}:{self.port}/postgres"

    @property
    def socket_url(self) -> str:
        return f"postgresql+psycopg://postgres@/postgres?host={self.base}&port={self.port}"

    def pids(self) -> list[int]:
        """The postmaster and every process it forked (its backends)."""
        pid_file = self.data / "postmaster.pid"
        if not pid_file.exists():
            return []
        main = int(pid_file.read_text().split()[0])
        try:
            with open(f"/proc/{main}/task/{main}/children") as fh:
                return [main, *map(int, fh.read().split())]
        except FileNotFoundError:
            return []

    def kill9(self) -> None:
        """SIGKILL the server and all its processes at once (a crash of the database host's
        PostgreSQL), and wait until they are gone. Killed one by one, a backend still alive
        could commit a client's write after that client's other connection had seen the crash,
        which no real crash does; so the backends are stopped first (SIGSTOP: their clients
        see nothing yet), then the postmaster is killed, then the backends. (The postmaster is
        never stopped: ``runuser`` would stop itself with it and never reap it.)"""
        pids = self.pids()
        assert pids, "the server is not running"
        main = pids[0]
        stopped: set[int] = set()
        for _ in range(20):  # the backends now, and any forked while they were being stopped
            new = self.processes() - stopped - {main}
            if not new:
                break
            for pid in new:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
            stopped |= new
        assert stopped, "none of the server's processes found"  # it has background workers
        os.kill(main, signal.SIGKILL)
        stopped |= self.processes() - {main}  # one forked as the postmaster died
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.server.wait(timeout=60)  # the postmaster's parent (runuser) ends with it
        wait_until(lambda: not any(_alive(p) for p in stopped), 60,
                   "the killed server's backends to be gone")

    def processes(self) -> set[int]:
        """Every live process of this server, the postmaster's and its backends' (their
        working directory is the data directory)."""
        data = os.path.realpath(self.data)
        found: set[int] = set()
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{entry}/cwd") == data:
                        found.add(int(entry))
        return found

    def close(self) -> None:
        if getattr(self, "server", None) is not None and self.server.poll() is None:
            for pid in self.pids()[:1]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGQUIT)  # immediate shutdown
            try:
                self.server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill9()
        shutil.rmtree(self.base, ignore_errors=True)


def _alive(pid: int) -> bool:
    """Whether a process runs (a zombie does not: its parent may be a PID 1 that never reaps)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


#: The server's binaries: where /usr/local/bin/initdb points (Debian's), else Debian's newest.
PG_BIN = (Path(os.path.realpath("/usr/local/bin/initdb")).parent
          if os.path.exists("/usr/local/bin/initdb") else
          Path(f"/usr/lib/postgresql/{sorted(os.listdir('/etc/postgresql'), key=float)[-1]}/bin")
          if os.path.isdir("/etc/postgresql") else Path("/nonexistent"))


class Rows:
    """The study's trials read straight from the database, through a connection of its own;
    None while the server does not answer."""

    def __init__(self, url: str, study: str) -> None:
        self.engine = sqlalchemy.create_engine(url, pool_pre_ping=True, connect_args={
            "connect_timeout": 3, "application_name": "probe"})
        self.study = study

    def states(self) -> Counter | None:
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(sqlalchemy.text(
                    "SELECT t.state, count(*) FROM trials t JOIN studies s USING (study_id) "
                    "WHERE s.study_name = :s GROUP BY t.state"), {"s": self.study}).all()
        except sqlalchemy.exc.OperationalError:
            return None
        return Counter({getattr(state, "name", state): n for state, n in rows})

    def state_of(self, number: int) -> str | None:
        try:
            with self.engine.connect() as conn:
                row = conn.execute(sqlalchemy.text(
                    "SELECT t.state FROM trials t JOIN studies s USING (study_id) "
                    "WHERE s.study_name = :s AND t.number = :n"),
                    {"s": self.study, "n": number}).first()
        except sqlalchemy.exc.OperationalError:
            return None
        return None if row is None else getattr(row[0], "name", row[0])

    def running_numbers(self) -> list[int]:
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(sqlalchemy.text(
                "SELECT t.number FROM trials t JOIN studies s USING (study_id) "
                "WHERE s.study_name = :s AND t.state = 'RUNNING'"), {"s": self.study})]

    def close(self) -> None:
        self.engine.dispose()


def _spawn(log: Path, *args: str, netns: str | None = None, env: dict | None = None,
           preexec=None) -> subprocess.Popen:
    full_env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
                **(env or {})}
    cmd = (["ip", "netns", "exec", netns] if netns else []) + [sys.executable, "-m", "hpo",
                                                              *args]
    return subprocess.Popen(cmd, env=full_env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            preexec_fn=preexec)


def _exact(rows: Rows, n_trials: int) -> Counter:
    states = rows.states()
    assert states is not None
    assert states["COMPLETE"] == n_trials, states
    assert states["RUNNING"] == 0 and states["WAITING"] == 0, states
    return states


def _finish(procs: list[subprocess.Popen], logs: list[Path], timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail("still running:\n" + "\n".join(log.read_text()[-3000:] for log in logs))
    return [log.read_text() for log in logs]


@pytest.fixture
def netns_pair():
    """Two network namespaces made for the test, joined by a veth pair with addresses in a
    10.x/30 the test picks: ``db`` (the server's side) and ``wk`` (the worker's side)."""
    _need(os.geteuid() == 0 and shutil.which("ip") is not None,
          "network namespaces need root and iproute2 (ip)")
    tag = uuid.uuid4().hex[:6]
    db_ns, wk_ns = f"hpo-db-{tag}", f"hpo-wk-{tag}"
    db_dev, wk_dev = f"hdb{tag}", f"hwk{tag}"
    net = f"10.{random.randint(64, 250)}.{random.randint(0, 250)}"
    db_ip, wk_ip = f"{net}.1", f"{net}.2"
    made: list[str] = []
    try:
        for ns in (db_ns, wk_ns):
            r = _run("ip", "netns", "add", ns, check=False)
            _need(r.returncode == 0, f"cannot make a network namespace: {r.stderr.strip()}")
            made.append(ns)
            _run("ip", "link", "set", "lo", "up", netns=ns)
        _run("ip", "link", "add", db_dev, "type", "veth", "peer", "name", wk_dev)
        _run("ip", "link", "set", db_dev, "netns", db_ns)
        _run("ip", "link", "set", wk_dev, "netns", wk_ns)
        for ns, dev, ip in ((db_ns, db_dev, db_ip), (wk_ns, wk_dev, wk_ip)):
            _run("ip", "addr", "add", f"{ip}/30", "dev", dev, netns=ns)
            _run("ip", "link", "set", dev, "up", netns=ns)
        yield {"db": db_ns, "wk": wk_ns, "db_ip": db_ip, "wk_dev": wk_dev}
    finally:
        for ns in made:  # deleting a namespace deletes its end of the pair, and so the pair
            _run("ip", "netns", "del", ns, check=False)


@pytest.mark.faults
@pytest.mark.slow
def test_a_worker_cut_off_by_the_network_drops_its_stale_result(tiny_spec, tmp_path,
                                                                 netns_pair):
    """Worker A (in its own network namespace) runs a trial against a private PostgreSQL in
    another; the link between them goes down mid-trial and stays down until a second worker B
    (on the server's Unix socket) has failed A's trial as stale (grace 3 s, the database's
    clock) and re-queued it; then the link comes back. The study ends with exactly its budget;
    A says in one line that its result is dropped, and exits 0."""
    n_trials, grace = 6, 3
    pg = PrivatePg(address=netns_pair["db_ip"], netns=netns_pair["db"])
    rows = None
    procs: list[subprocess.Popen] = []
    try:
        spec = tiny_spec(name="netcut", n_trials=n_trials, epochs=3000)  # a second or more
        r = hpo("init", str(spec), "--storage", pg.socket_url, timeout=120)
        assert r.returncode == 0, r.stderr
        rows = Rows(pg.socket_url, "netcut")
        hb = ["--heartbeat-interval", "1", "--grace-period", str(grace)]
        env = {"HPO_DB_WAIT": "300"}
        logs = [tmp_path / "a.log", tmp_path / "b.log"]
        procs.append(_spawn(logs[0], "worker", "--study", "netcut", "--storage", pg.tcp_url,
                            *hb, netns=netns_pair["wk"], env=env))
        wait_until(lambda: rows.running_numbers() or procs[0].poll() is not None, 120,
                   "worker A to run a trial")
        assert procs[0].poll() is None, logs[0].read_text()
        (cut_trial,) = rows.running_numbers()
        _run("ip", "link", "set", netns_pair["wk_dev"], "down", netns=netns_pair["wk"])
        cut_at = time.monotonic()
        assert rows.state_of(cut_trial) == "RUNNING", "the trial ended before the cut"
        procs.append(_spawn(logs[1], "worker", "--study", "netcut", "--storage", pg.socket_url,
                            *hb, env=env))
        wait_until(lambda: rows.state_of(cut_trial) == "FAIL", 120,
                   "worker B to fail the cut-off trial as stale")
        failed_after = time.monotonic() - cut_at
        _run("ip", "link", "set", netns_pair["wk_dev"], "up", netns=netns_pair["wk"])
        up_at = time.monotonic()
        a_log = logs[0]
        wait_until(lambda: "its result here is dropped" in a_log.read_text()
                   or procs[0].poll() is not None, 180, "worker A to come back")
        back_after = time.monotonic() - up_at
        outputs = _finish(procs, logs, 300)
        assert [p.returncode for p in procs] == [0, 0], "\n".join(outputs)
        states = _exact(rows, n_trials)
        assert outputs[0].count("its result here is dropped") == 1, outputs[0]
        assert "Traceback" not in outputs[0] + outputs[1], outputs
        figures("network-cut", link_down_s=f"{up_at - cut_at:.1f}",
                trial_failed_after_s=f"{failed_after:.1f}",
                worker_back_after_link_up_s=f"{back_after:.1f}",
                trials_lost=n_trials - states["COMPLETE"], failed_and_retried=states["FAIL"])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        if rows is not None:
            rows.close()
        pg.close()


@pytest.mark.faults
@pytest.mark.slow
def test_postgres_killed_9_mid_run_and_restarted(tiny_spec, tmp_path):
    """Two workers on a private PostgreSQL; the server and all its processes are killed -9
    mid-run, then started again (crash recovery). Both workers retry through it (a connection
    failure), and the study ends with exactly its budget, exit 0."""
    n_trials = 12
    pg = PrivatePg()
    rows = None
    procs: list[subprocess.Popen] = []
    try:
        spec = tiny_spec(name="crash", n_trials=n_trials, epochs=1500)
        r = hpo("init", str(spec), "--storage", pg.tcp_url, timeout=120)
        assert r.returncode == 0, r.stderr
        rows = Rows(pg.socket_url, "crash")
        hb = ["--heartbeat-interval", "1", "--grace-period", "4"]
        logs = [tmp_path / f"w{i}.log" for i in range(2)]
        procs = [_spawn(log, "worker", "--study", "crash", "--storage", pg.tcp_url, *hb,
                        env={"HPO_DB_WAIT": "120"}) for log in logs]
        wait_until(lambda: (rows.states() or {}).get("COMPLETE", 0) >= 3
                   or any(p.poll() is not None for p in procs), 180, "3 finished trials")
        assert all(p.poll() is None for p in procs), "\n".join(x.read_text() for x in logs)
        done_before = rows.states()["COMPLETE"]
        assert done_before < n_trials, "the study finished before the crash"
        pg.kill9()
        killed_at = time.monotonic()
        rows.engine.dispose()
        # down until both workers have met the outage (each says so in its one line)
        wait_until(lambda: all("storage unavailable" in log.read_text() for log in logs), 120,
                   "both workers to notice the crash")
        pg.start()
        up_at = time.monotonic()
        wait_until(lambda: (rows.states() or {}).get("COMPLETE", 0) > done_before, 180,
                   "a trial to finish after the restart")
        recovered_after = time.monotonic() - up_at
        outputs = _finish(procs, logs, 300)
        assert [p.returncode for p in procs] == [0, 0], "\n".join(outputs)
        states = _exact(rows, n_trials)
        for out in outputs:
            assert "Traceback" not in out and out.count("storage unavailable") == 1, out
        figures("postgres-kill-9", down_s=f"{up_at - killed_at:.1f}",
                next_complete_after_restart_s=f"{recovered_after:.1f}",
                trials_lost=n_trials - states["COMPLETE"], failed_and_retried=states["FAIL"])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        if rows is not None:
            rows.close()
        pg.close()


@pytest.mark.faults
@pytest.mark.slow
def test_the_disk_filling_under_sqlite(tiny_spec, tmp_path):
    """``hpo run`` on SQLite with a file-size limit (``ulimit -f``, RLIMIT_FSIZE) a little
    above the database's size: once a write needs more, the run ends with exit 1 and one line
    (no retry: a full disk is not a lost connection); the database still opens and passes
    SQLite's integrity check; a later run completes the study with exactly its budget."""
    import resource

    n_trials = 30
    db = tmp_path / "full.db"
    url = f"sqlite:///{db}"
    spec = tiny_spec(name="full", n_trials=n_trials)
    r = hpo("init", str(spec), "--storage", url, timeout=120)
    assert r.returncode == 0, r.stderr
    sizes = [p.stat().st_size for p in tmp_path.glob("full.db*")]
    limit = max(sizes) + 48 * 1024  # room for a few trials, not for thirty

    def small_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    log = tmp_path / "full.log"
    began = time.monotonic()
    proc = _spawn(log, "run", str(spec), "--storage", url, "--quiet", "--heartbeat-interval",
                  "1", "--grace-period", "2", preexec=small_disk)
    out = _finish([proc], [log], 300)[0]
    failed_after = time.monotonic() - began
    assert proc.returncode == 1, out
    errors = [line for line in out.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "Traceback" not in out, out
    assert "disk" in errors[0] or "full" in errors[0], errors[0]
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        done_at_fault = dict(con.execute("SELECT state, count(*) FROM trials GROUP BY state"))
    assert done_at_fault.get("COMPLETE", 0) < n_trials, done_at_fault
    again = time.monotonic()
    r = hpo("run", str(spec), "--storage", url, "--quiet", "--heartbeat-interval", "1",
            "--grace-period", "2", timeout=300)
    completed_in = time.monotonic() - again
    assert r.returncode == 0, r.stderr
    with sqlite3.connect(db) as con:
        states = dict(con.execute("SELECT state, count(*) FROM trials GROUP BY state"))
    assert states.get("COMPLETE") == n_trials, states
    assert not states.get("RUNNING") and not states.get("WAITING"), states
    figures("sqlite-disk-full", failed_after_s=f"{failed_after:.1f}",
            complete_at_fault=done_at_fault.get("COMPLETE", 0),
            later_run_completed_in_s=f"{completed_in:.1f}",
            trials_lost=n_trials - states["COMPLETE"], failed_and_retried=states.get("FAIL", 0))
