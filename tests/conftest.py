"""Shared fixtures: a CLI runner that runs `hpo` in a subprocess, and PostgreSQL databases."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STUDIES = ROOT / "studies"
PG_URL = os.environ.get("HPO_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def hpo(*args: str, env: dict | None = None, cwd: str | os.PathLike | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real `hpo` command (python -m hpo) and capture its output."""
    full_env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "hpo", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=timeout)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'hpo.db'}"


def trial_states(url: str, study: str | None = None) -> dict[str, int]:
    """Trials per state of ``study`` (every study's when None) in the SQLite file of ``url``,
    read only: polling a study while ``hpo`` creates its storage must not write (Optuna's
    ``RDBStorage``, even with ``skip_table_creation``, stamps the schema version, and that
    races with the creator, which then says so in a line of its own). {} when there is no
    schema yet."""
    import sqlite3

    path = url.removeprefix("sqlite:///")
    if not os.path.exists(path):
        return {}
    sql = "SELECT t.state, count(*) FROM trials t JOIN studies s ON s.study_id = t.study_id"
    args: tuple = ()
    if study is not None:
        sql += " WHERE s.study_name = ?"
        args = (study,)
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            return dict(con.execute(sql + " GROUP BY t.state", args).fetchall())
        finally:
            con.close()
    except sqlite3.Error:  # no schema yet, or the file is being made
        return {}


@pytest.fixture
def tiny_spec(tmp_path: Path):
    """Write a fast spec (8x8 digits, small net, few epochs) and return a factory for variants."""

    def make(name: str = "tiny", sampler: str = "random", n_trials: int = 6, extra: str = "",
             epochs: int = 5, sampler_options: str = "") -> Path:
        path = tmp_path / f"{name}.toml"
        path.write_text(f'''
name = "{name}"
seed = 1
[data]
dataset = "digits"
train_size = 300
validation_rate = 0.2
[model]
hidden = [16, 16]
epochs = {epochs}
batch_size = 50
[search.lr]
low = 1e-3
high = 0.5
log = true
[search.weight_decay]
low = 1e-8
high = 1e-4
log = true
[sampler]
name = "{sampler}"
{sampler_options}
[budget]
n_trials = {n_trials}
{extra}
''')
        return path

    return make


def _pg_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(_plain(PG_URL), connect_timeout=3):
            return True
    except Exception:
        return False


def _plain(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def require_pg() -> None:
    """Skip (or fail, with HPO_REQUIRE_POSTGRES=1) when the test server is not reachable."""
    if not _pg_available():
        if os.environ.get("HPO_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL not reachable at {PG_URL} and HPO_REQUIRE_POSTGRES=1")
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}")


@contextlib.contextmanager
def fresh_pg_database() -> Iterator[str]:
    """A new, empty database on the test server (its URL); dropped afterwards."""
    import psycopg

    name = f"hpo_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(_plain(PG_URL), autocommit=True) as con:
        con.execute(f'CREATE DATABASE "{name}"')
    base = PG_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(_plain(PG_URL), autocommit=True) as con:
            con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url():
    """A fresh, empty PostgreSQL database on the test server; dropped afterwards."""
    require_pg()
    with fresh_pg_database() as url:
        yield url


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin() -> Path:
    version = sorted(os.listdir("/etc/postgresql"), key=float)[-1]
    return Path(f"/usr/lib/postgresql/{version}/bin")


def _as_postgres(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", "postgres", "--", *cmd], capture_output=True,
                          text=True, timeout=120)


class Cluster:
    """A private PostgreSQL server made with initdb (see :func:`small_cluster`): its URL and log,
    and a restart that touches no other server."""

    def __init__(self, base: Path, max_connections: int = 10) -> None:
        self.base, self.bin = base, _pg_bin()
        self.data, self.log, self.port = base / "data", base / "server.log", free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self.opts = (f"-p {self.port} -c max_connections={max_connections} -k {base} "
                     f"-c listen_addresses=127.0.0.1")

    def pg_ctl(self, *args: str) -> subprocess.CompletedProcess:
        return _as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                            "-w", *args)

    def start(self) -> None:
        r = self.pg_ctl("-o", self.opts, "start")
        assert r.returncode == 0, r.stderr + (self.log.read_text() if self.log.exists() else "")

    def restart(self, mode: str = "fast") -> subprocess.CompletedProcess:
        return self.pg_ctl("-m", mode, "-o", self.opts, "restart")


@contextlib.contextmanager
def _private_cluster() -> Iterator[Cluster]:
    if os.geteuid() != 0 or shutil.which("runuser") is None or not os.path.isdir(
            "/etc/postgresql"):
        why = "a private PostgreSQL cluster needs root, runuser and the PostgreSQL server binaries"
        if os.environ.get("HPO_REQUIRE_POSTGRES") == "1":
            pytest.fail(why)
        pytest.skip(why)
    base = Path(tempfile.mkdtemp(prefix="hpo-pg-"))  # /tmp: reachable by the postgres user
    shutil.chown(base, "postgres", "postgres")
    cluster = Cluster(base)
    r = _as_postgres(str(cluster.bin / "initdb"), "-D", str(cluster.data), "-A", "trust", "-U",
                     "postgres", "--no-sync")
    assert r.returncode == 0, r.stderr
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.pg_ctl("-m", "immediate", "stop")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def small_cluster():
    """A private PostgreSQL cluster with max_connections=10 on a free port: (url, log path)."""
    with _private_cluster() as cluster:
        yield cluster.url, cluster.log


@pytest.fixture
def pg_cluster():
    """The same private cluster, as a :class:`Cluster` (it can be restarted)."""
    with _private_cluster() as cluster:
        yield cluster
