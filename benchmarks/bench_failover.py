"""Start-up crowds and dead workers: does a study still end with exactly its budget, and how
long does a dead worker's trial hold its slot?

Two measurements, each against a *baseline* source tree in the same invocation (``--baseline
REF``: that git ref of this repository, extracted to a temporary folder and put first on the
workers' PYTHONPATH; default ``main``):

1. **Crowded cold start.** ``--crowd`` (8) ``hpo run SPEC`` processes started together (cold
   interpreters, one ``Popen`` after the other) on an EMPTY storage: a fresh PostgreSQL
   database, and a SQLite file that does not exist yet; ``--rounds`` (3) rounds each. Counts
   the processes that exit non-zero, and whether the study ends with exactly its budget.
2. **A worker killed mid-trial** (SIGKILL), per topology: two direct ``hpo worker`` on
   PostgreSQL; two workers behind ``hpo proxy``; ``hpo run --workers 2`` (forked workers).
   Measures, from the kill: seconds until the dead trial is FAIL, seconds until its retry
   (same params) is COMPLETE, and whether the study ends with exactly its budget, nothing
   RUNNING. ``--interval``/``--grace`` (heartbeat) are given to every process, the proxy
   included; a run that does not finish within ``--cap`` seconds is reported as stalled.

Run: ``.venv/bin/python benchmarks/bench_failover.py [--rounds 3] [--interval 1 --grace 3]
[--pg-admin postgresql://postgres@127.0.0.1:PORT/postgres]``
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    ONE_BLAS_THREAD,
    PG_ADMIN,
    PYTHON,
    ROOT,
    header,
    loadavg,
    read_trials,
)

SPEC = """
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
name = "random"
[budget]
n_trials = {n_trials}
"""


def spec_file(folder: Path, name: str, epochs: int, n_trials: int) -> str:
    path = folder / f"{name}.toml"
    path.write_text(SPEC.format(name=name, epochs=epochs, n_trials=n_trials))
    return str(path)


def env_for(src: str | None, **extra: str) -> dict[str, str]:
    env = {**os.environ, **ONE_BLAS_THREAD, **extra}
    if src:
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def hpo_cmd(*args: str) -> list[str]:
    return [PYTHON, "-m", "hpo", *args]


def trials(url: str, study: str) -> list:
    """``read_trials``, riding out a restart of the shared server (other people's tests)."""
    for _ in range(60):
        try:
            return read_trials(url, study)
        except Exception:  # noqa: BLE001 - psycopg.OperationalError while it restarts
            time.sleep(1)
    return read_trials(url, study)


def exact(url: str, study: str, n_trials: int) -> str:
    states = [r.state for r in trials(url, study)]
    done, running = states.count("COMPLETE"), states.count("RUNNING") + states.count("WAITING")
    return "yes" if done == n_trials and running == 0 else f"no ({done} done, {running} left)"


# --- 1. crowded cold start --------------------------------------------------------------------


def crowd_round(src: str | None, url: str, spec: str, crowd: int, workdir: str) -> tuple[int, str]:
    env = env_for(src, HPO_DB_WAIT="60")
    procs = [subprocess.Popen(hpo_cmd("run", spec, "--storage", url, "--quiet"), env=env,
                              cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for _ in range(crowd)]
    codes = [p.wait(timeout=600) for p in procs]
    crashed = sum(1 for c in codes if c != 0)
    return crashed, exact(url, "crowd", 8) if crashed < crowd else "no study"


# --- 2. a worker killed mid-trial -------------------------------------------------------------


@contextlib.contextmanager
def pg_database(admin: str, prefix: str) -> Iterator[str]:
    """A fresh database on the server of ``admin`` (a plain postgresql:// URL); dropped after."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as con:
        con.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + "/" + name
    finally:
        with psycopg.connect(admin, autocommit=True) as con:
            con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("hpo proxy did not listen")


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        return [int(x) for x in fh.read().split()]


def kill_run(src: str | None, topology: str, url: str, spec: str, hb: list[str], grace: int,
             cap: float, workdir: str) -> dict:
    """Start two workers of ``topology``, SIGKILL one mid-trial, follow the dead trial."""
    n_trials = 4
    env = env_for(src, HPO_HEARTBEAT_INTERVAL=hb[1], HPO_GRACE_PERIOD=hb[3])
    subprocess.run(hpo_cmd("init", spec, "--storage", url), env=env, check=True,
                   capture_output=True)
    procs: list[subprocess.Popen] = []

    def start(*args: str) -> subprocess.Popen:
        p = subprocess.Popen(hpo_cmd(*args), env=env, cwd=workdir, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        procs.append(p)
        return p

    try:
        target = url
        if topology == "proxied":
            port = free_port()
            wait_port(port, start("proxy", "--storage", url, "--port", str(port)))
            target = f"grpc://127.0.0.1:{port}"
        if topology == "forked":
            parent = start("run", spec, "--storage", url, "--workers", "2", "--quiet", *hb)
            workers = [parent]
        else:
            workers = [start("worker", "--study", "failover", "--storage", target, "--quiet",
                             *hb) for _ in range(2)]
        deadline = time.monotonic() + 120
        while sum(r.state == "RUNNING" for r in trials(url, "failover")) < 2:
            if time.monotonic() > deadline:
                raise RuntimeError("two trials never ran at once")
            time.sleep(0.05)
        time.sleep(0.5)  # mid-trial
        before = {r.number for r in trials(url, "failover") if r.state == "RUNNING"}
        victim = children(workers[0].pid)[0] if topology == "forked" else workers[0].pid
        os.kill(victim, signal.SIGKILL)
        killed = time.time()
        # the victim's trial: the one of the two that does not finish normally
        failed_at = retried_at = None
        while time.time() - killed < cap:
            rows = trials(url, "failover")
            dead = [r for r in rows if r.number in before and r.state == "FAIL"]
            if dead and failed_at is None:
                failed_at = dead[0].complete or time.time()
            if failed_at is not None and sum(r.state == "COMPLETE" for r in rows) >= n_trials \
                    and not any(r.state in ("RUNNING", "WAITING") for r in rows):
                retried_at = max(r.complete for r in rows if r.complete)
                break
            time.sleep(0.2)
        for p in procs:  # the surviving worker(s) exit at the budget; the proxy is stopped
            if p.args[3] != "proxy":
                try:
                    p.wait(timeout=30 if retried_at else 1)
                except subprocess.TimeoutExpired:
                    pass
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    p.kill()
        return {"fail": None if failed_at is None else failed_at - killed,
                "done": None if retried_at is None else retried_at - killed,
                "exact": exact(url, "failover", n_trials)}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def fmt(x: float | None, cap: float) -> str:
    return f"not within {cap:g} s" if x is None else f"{x:.1f}"


def extract(ref: str, into: str) -> str:
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "hpo"], check=True,
                         capture_output=True).stdout
    os.makedirs(into)
    subprocess.run(["tar", "-x", "-C", into], input=tar, check=True)
    return into


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", default="main", help="git ref of the baseline (main)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--crowd", type=int, default=8)
    ap.add_argument("--interval", type=int, default=1)
    ap.add_argument("--grace", type=int, default=3)
    ap.add_argument("--cap", type=float, default=90.0)
    ap.add_argument("--parts", default="crowd,kill")
    ap.add_argument("--pg-admin", default=PG_ADMIN,
                    help="a database on the PostgreSQL server to use (the test server); a "
                         "private cluster keeps other people's restarts out of the figures")
    args = ap.parse_args()
    print(header(" ".join([".venv/bin/python"] + sys.argv)), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-failover-") as tmp:
        base = extract(args.baseline, os.path.join(tmp, "baseline"))
        workdir = os.path.join(tmp, "work")
        os.makedirs(workdir)
        sources = [(f"baseline ({args.baseline})", base), ("this tree", None)]
        if "crowd" in args.parts:
            spec = spec_file(Path(tmp), "crowd", 2, 8)
            print(f"\n### Crowded cold start: {args.crowd} `hpo run` at once on an empty "
                  f"storage, 8 trials\n\n| source | storage | round | processes failed | "
                  "exact budget |\n|---|---|---|---|---|", flush=True)
            for label, src in sources:
                for storage in ("postgres", "sqlite"):
                    for k in range(args.rounds):
                        if storage == "postgres":
                            with pg_database(args.pg_admin, "crowd") as url:
                                crashed, ok = crowd_round(src, url, spec, args.crowd, workdir)
                        else:
                            url = f"sqlite:///{tmp}/crowd-{label[:4]}-{k}.db"
                            crashed, ok = crowd_round(src, url, spec, args.crowd, workdir)
                        print(f"| {label} | {storage} | {k + 1} | {crashed}/{args.crowd} | "
                              f"{ok} |", flush=True)
        if "kill" in args.parts:
            spec = spec_file(Path(tmp), "failover", 5000, 4)
            hb = ["--heartbeat-interval", str(args.interval), "--grace-period", str(args.grace)]
            print(f"\n### A worker killed mid-trial (heartbeat {args.interval} s, grace "
                  f"{args.grace} s; trials ~2 s; budget 4; load {loadavg()})\n\n"
                  "| source | topology | kill -> trial FAIL (s) | kill -> study done (s) | "
                  "exact budget |\n|---|---|---|---|---|", flush=True)
            for label, src in sources:
                for topology in ("direct", "proxied", "forked"):
                    with pg_database(args.pg_admin, "failover") as url:
                        r = kill_run(src, topology, url, spec, hb, args.grace, args.cap,
                                     workdir)
                    print(f"| {label} | {topology} | {fmt(r['fail'], args.cap)} | "
                          f"{fmt(r['done'], args.cap)} | {r['exact']} |", flush=True)


if __name__ == "__main__":
    main()
