"""How far one database goes: trials per second and database CPU per trial with 1..32 concurrent
clients, for SQLite, PostgreSQL direct, and PostgreSQL through hpo's gRPC proxy.

The objective is trivial, so the storage is all there is. Three kinds of client processes:

* ``hpo``: the real ``hpo worker --study`` (the worker loop, its budget checked as a trial is
  created, heartbeats every 10 s, the stale-trial checks, hpo's storage settings: a pool of 2,
  a ping only after 30 s idle) on
  benchmarks/specs/storage-trivial.toml: the book's search space, random sampler and recorded
  attributes (50-point accuracy curves) with a network so small that training takes ~1 ms.
  Through the proxy: ``--storage grpc://...``. This is what deployed workers do to the database.
* ``hpo-fn``: the real ``hpo worker --study`` on benchmarks/specs/storage-fn.toml, whose
  objective is a user's own function (storage_fn.py) doing exactly what the ``optuna``
  clients' objective does: the same two parameters, the same four user attributes, a constant.
  Against ``optuna``, the storage and the worker loop are all that differ.
* ``optuna``: Optuna's public API alone, ``study.optimize(objective, n_trials=1)`` in a loop on
  ``hpo.db.storage.get_storage(url, heartbeat=True)``, the objective suggesting ``lr`` and
  ``weight_decay`` and writing the same four user attributes, then returning a constant. Unlike
  hpo's loop, Optuna's ``ask()`` reads the study's new trials each time (to find WAITING ones),
  so every client reads every other client's trials.

Per cell (client kind x storage x clients): a fresh database and study; the clients start and,
once each has finished a trial, the window opens for ``--seconds``. Over the window:

* trials/s: trials finished in the window / window;
* database CPU per trial: user + system CPU of the PostgreSQL server's processes (postmaster,
  backends, background workers; exited children through the postmaster's cutime/cstime), read
  from /proc/<pid>/stat, / trials. The server is a private cluster started by this script
  (initdb with default settings, fsync on, max_connections 200) so that nothing else runs on it;
  its idle CPU is measured first. SQLite has no server: its engine runs inside the clients;
* proxy CPU per trial (the ``hpo proxy`` process, default pool of 4 connections);
* transactions per trial (PostgreSQL, direct or behind the proxy: ``pg_stat_database`` of the
  cell's database over the window; backends report it at most once a second: an estimate);
* client CPU per trial (every client process's CPU over the window: hpo or Optuna, the storage
  layer, and for SQLite the database engine itself).

``--calibrate`` also runs 2 ``hpo worker`` on ``studies/book-random.toml`` (the book's real trial,
~0.3 s) for 40 trials on the same server, ``--repeats`` times: its database CPU per trial,
against the trivial one.

Needs root (the private cluster runs as the ``postgres`` user through runuser) and the PostgreSQL
server binaries. Run:

    .venv/bin/python benchmarks/bench_storage.py [--clients 1,2,4,8,16,32] [--seconds 6]
        [--storages sqlite,postgres,proxy] [--kinds hpo,hpo-fn,optuna] [--calibrate]
        [--plot benchmarks/storage.png] [--json cells.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import HPO, PYTHON, ROOT, STUDIES, header, loadavg  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
STUDY = "bench-storage"
TRIVIAL_SPEC = ROOT / "benchmarks" / "specs" / "storage-trivial.toml"
FN_SPEC = ROOT / "benchmarks" / "specs" / "storage-fn.toml"  # the "hpo-fn" kind
SPECS = {"hpo": TRIVIAL_SPEC, "hpo-fn": FN_SPEC}
READY_TIMEOUT = 180.0
ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# --- the client -----------------------------------------------------------------------------------


def client(url: str) -> None:
    """One client process: warm up, say ready, wait for "go T_END", run until T_END, report."""
    import optuna

    from hpo.db.storage import get_storage

    storage = get_storage(url, heartbeat=True)
    # the very function the "hpo-fn" workers run (benchmarks/specs/storage_fn.py)
    sys.path.insert(0, str(FN_SPEC.parent))
    from storage_fn import objective

    study = optuna.load_study(study_name=STUDY, storage=storage,
                              sampler=optuna.samplers.RandomSampler())
    study.optimize(objective, n_trials=1)  # warm-up: connections, caches, first queries
    print("ready", flush=True)
    line = sys.stdin.readline().split()
    assert line and line[0] == "go", line
    t_end = float(line[1])
    cpu0, n = time.process_time(), 0
    while time.time() < t_end:
        study.optimize(objective, n_trials=1)
        if time.time() <= t_end:
            n += 1
    print(json.dumps({"trials": n, "cpu": time.process_time() - cpu0}), flush=True)


# --- process CPU from /proc -----------------------------------------------------------------------


def _stat(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2:].split()  # fields from 3 (state) on


def proc_cpu(pid: int, children_done: bool = False) -> float:
    """utime + stime of ``pid`` in seconds (+ its waited-for children's with children_done)."""
    f = _stat(pid)
    ticks = int(f[11]) + int(f[12])  # fields 14, 15
    if children_done:
        ticks += int(f[13]) + int(f[14])  # cutime, cstime (16, 17)
    return ticks / CLK_TCK


def server_cpu(postmaster: int) -> float:
    """CPU seconds of a PostgreSQL server: the postmaster with its exited children, plus every
    live child (backends, checkpointer, WAL writer, autovacuum...)."""
    total = proc_cpu(postmaster, children_done=True)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(_stat(int(entry))[1]) == postmaster:  # ppid
                total += proc_cpu(int(entry))
    return total


# --- a private PostgreSQL cluster -----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin() -> Path:
    version = sorted(os.listdir("/etc/postgresql"), key=float)[-1]
    return Path(f"/usr/lib/postgresql/{version}/bin")


def _as_postgres(*cmd: str, timeout: float = 120) -> subprocess.CompletedProcess:
    r = subprocess.run(["runuser", "-u", "postgres", "--", *cmd], capture_output=True,
                       text=True, timeout=timeout)
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stdout}{r.stderr}")
    return r


@contextlib.contextmanager
def private_cluster() -> Iterator[tuple[str, int, str]]:
    """(admin URL, postmaster pid, server version) of a fresh cluster on a free port."""
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        raise SystemExit("bench_storage.py needs root and runuser (a private PostgreSQL cluster "
                         "runs as the postgres user)")
    base = Path(tempfile.mkdtemp(prefix="bench-storage-pg-"))
    shutil.chown(base, "postgres", "postgres")
    data, port = base / "data", _free_port()
    bin_dir = _pg_bin()
    _as_postgres(str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                 "-E", "UTF8", "--locale=C.UTF-8")
    _as_postgres(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(base / "server.log"), "-w",
                 "-o", f"-p {port} -c listen_addresses=127.0.0.1 -k {base} "
                       "-c max_connections=200", "start")
    try:
        pid = int((data / "postmaster.pid").read_text().split()[0])
        version = _as_postgres(str(bin_dir / "postgres"), "--version").stdout.split()[2]
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres", pid, version
    finally:
        subprocess.run(["runuser", "-u", "postgres", "--", str(bin_dir / "pg_ctl"), "-D",
                        str(data), "-m", "immediate", "-w", "stop"], capture_output=True,
                       timeout=120)
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def database(admin: str, name: str) -> Iterator[str]:
    import psycopg

    with psycopg.connect(admin, autocommit=True) as con:
        con.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + "/" + name
    finally:
        with psycopg.connect(admin, autocommit=True) as con:
            con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def create_study(kind: str, url: str, workdir: Path) -> None:
    """The study, once, before any client: ``hpo init`` (records the spec that ``hpo worker``
    reads) or Optuna's ``create_study``."""
    if kind in SPECS:
        subprocess.run([HPO, "init", str(SPECS[kind]), "--storage", url, "--study", STUDY],
                       check=True, capture_output=True, cwd=workdir, timeout=300,
                       env={**os.environ, **ONE_THREAD})
        return
    import optuna

    from hpo.db.storage import get_storage

    storage = get_storage(url, create_schema=True)
    optuna.create_study(study_name=STUDY, storage=storage, direction="maximize")
    engine = getattr(storage, "engine", None)
    if engine is not None:
        engine.dispose()


def count_complete(url: str) -> int:
    """COMPLETE trials in the database (read directly, not through the proxy)."""
    sql = "SELECT count(*) FROM trials WHERE state = 'COMPLETE'"
    if url.startswith("sqlite:///"):
        import sqlite3

        con = sqlite3.connect(f"file:{url.split('sqlite:///', 1)[1]}?mode=ro", uri=True,
                              timeout=60)
        try:
            return con.execute(sql).fetchone()[0]
        finally:
            con.close()
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as con:
        return con.execute(sql).fetchone()[0]


@contextlib.contextmanager
def proxy(url: str, log: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """``hpo proxy`` (default pool of 4 connections) in front of ``url``."""
    port = _free_port()
    env = {**os.environ, **ONE_THREAD}
    p = subprocess.Popen([PYTHON, "-m", "hpo", "proxy", "--storage", url, "--port", str(port)],
                         env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if p.poll() is not None:
                raise RuntimeError(f"hpo proxy exited {p.returncode}: {log.read_text()}")
            time.sleep(0.2)
        yield f"grpc://127.0.0.1:{port}", p
    finally:
        p.send_signal(signal.SIGINT)
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


# --- one cell -------------------------------------------------------------------------------------


def _summary(n_clients: int, trials: int, window: float, cpu_db: float, cpu_px: float,
             cpu_clients: float, xacts: float = float("nan")) -> dict:
    per = (lambda cpu: 1000 * cpu / trials) if trials else (lambda cpu: float("nan"))
    return {"clients": n_clients, "trials": trials, "window": window, "tps": trials / window,
            "db_ms": per(cpu_db), "proxy_ms": per(cpu_px), "client_ms": per(cpu_clients),
            "db_cores": cpu_db / window, "proxy_cores": cpu_px / window,
            "xacts": xacts / trials if trials else float("nan")}


def _xacts(stat: tuple[str, str] | None) -> float:
    """The server's transaction counter of the cell's database (``stat``: admin URL, name);
    backends report it at most once a second, so over a window of a few seconds it is a
    +-1 s estimate (NaN without PostgreSQL)."""
    return float(_transactions(*stat)) if stat else float("nan")


def run_hpo_cell(url: str, db_url: str, n_clients: int, seconds: float, postmaster: int | None,
                 proxy_pid: int | None, log: Path, stat: tuple[str, str] | None = None) -> dict:
    """``n_clients`` real ``hpo worker`` processes; the window opens once each has printed its
    first finished trial; trials are counted in the database."""
    # the "hpo-fn" kind's function is trusted from its folder (hpo worker --code-dir)
    env = {**os.environ, **ONE_THREAD, "HPO_CODE_DIR": str(FN_SPEC.parent)}
    # a finished trial is logged on stderr ("trial 3 COMPLETE ..."): read there, kept in ``log``
    procs = [subprocess.Popen([HPO, "worker", "--study", STUDY, "--storage", url], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              cwd=ROOT)
             for _ in range(n_clients)]
    started = [threading.Event() for _ in procs]
    out = log.open("w")
    write = threading.Lock()

    def drain(p: subprocess.Popen, first: threading.Event) -> None:
        for line in p.stderr:
            if line.startswith("trial "):
                first.set()
            else:
                with write:
                    out.write(line)
                    out.flush()

    for p, ev in zip(procs, started, strict=True):
        threading.Thread(target=drain, args=(p, ev), daemon=True).start()
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        for p, ev in zip(procs, started, strict=True):
            if not ev.wait(max(0.1, deadline - time.monotonic())):
                raise RuntimeError(f"an hpo worker ran no trial (exit {p.poll()}): "
                                   f"{log.read_text()[-2000:]}")
        time.sleep(0.5)
        n0, t0 = count_complete(db_url), time.time()
        db0 = server_cpu(postmaster) if postmaster else 0.0
        px0 = proc_cpu(proxy_pid) if proxy_pid else 0.0
        cl0 = sum(proc_cpu(p.pid) for p in procs)
        x0 = _xacts(stat)
        time.sleep(seconds)
        cl1 = sum(proc_cpu(p.pid) for p in procs)
        x1 = _xacts(stat)
        db = (server_cpu(postmaster) - db0) if postmaster else float("nan")
        px = (proc_cpu(proxy_pid) - px0) if proxy_pid else float("nan")
        n1, window = count_complete(db_url), time.time() - t0
        if any(p.poll() is not None for p in procs):
            raise RuntimeError(f"an hpo worker died: {log.read_text()[-2000:]}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    return _summary(n_clients, n1 - n0, window, db, px, cl1 - cl0, x1 - x0)


def run_optuna_cell(url: str, n_clients: int, seconds: float, postmaster: int | None,
                    proxy_pid: int | None, stat: tuple[str, str] | None = None) -> dict:
    """``n_clients`` processes of :func:`client`; each counts its own trials in the window."""
    env = {**os.environ, **ONE_THREAD}
    cmd = [PYTHON, str(Path(__file__).resolve()), "--client", url]
    procs = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env=env, cwd=ROOT) for _ in range(n_clients)]
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        for p in procs:
            ready, _, _ = select.select([p.stdout], [], [], max(0.1, deadline - time.monotonic()))
            line = p.stdout.readline() if ready else ""
            if line.strip() != "ready":
                raise RuntimeError(f"a client did not get ready (exit {p.poll()}): {line!r}")
        time.sleep(0.5)  # let the warm-up settle
        cpu_db0 = server_cpu(postmaster) if postmaster else 0.0
        cpu_px0 = proc_cpu(proxy_pid) if proxy_pid else 0.0
        x0 = _xacts(stat)
        t0 = time.time()
        t_end = t0 + seconds
        for p in procs:
            p.stdin.write(f"go {t_end}\n")
            p.stdin.flush()
        time.sleep(max(0.0, t_end - time.time()))
        cpu_db = (server_cpu(postmaster) - cpu_db0) if postmaster else float("nan")
        cpu_px = (proc_cpu(proxy_pid) - cpu_px0) if proxy_pid else float("nan")
        x1 = _xacts(stat)
        window = time.time() - t0
        results = []
        for p in procs:
            out, _ = p.communicate(timeout=120)
            results.append(json.loads(out.strip().splitlines()[-1]))
            if p.returncode:
                raise RuntimeError(f"a client exited {p.returncode}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    trials = sum(r["trials"] for r in results)
    return _summary(n_clients, trials, window, cpu_db, cpu_px, sum(r["cpu"] for r in results),
                    x1 - x0)


def calibrate(admin: str, postmaster: int, workdir: Path, n_trials: int = 40) -> dict:
    """The real book trial: `hpo init` + 2 `hpo worker` on book-random, server CPU per trial."""
    env = {**os.environ, **ONE_THREAD}
    with database(admin, "calibrate") as url:
        subprocess.run([HPO, "init", str(STUDIES / "book-random.toml"), "--storage", url,
                        "--study", "cal", "--n-trials", str(n_trials)], check=True, env=env,
                       capture_output=True, cwd=workdir, timeout=300)
        xacts0 = _transactions(admin, "calibrate")
        cpu0, t0 = server_cpu(postmaster), time.time()
        procs = [subprocess.Popen([HPO, "worker", "--study", "cal", "--storage", url, "--quiet"],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  cwd=workdir) for _ in range(2)]
        for p in procs:
            p.wait(timeout=600)
        cpu, wall = server_cpu(postmaster) - cpu0, time.time() - t0
        time.sleep(1.5)  # the workers' backends report their last transactions as they close
        xacts = _transactions(admin, "calibrate") - xacts0
        import psycopg

        with psycopg.connect(url.replace("+psycopg", "")) as con:
            n = con.execute("SELECT count(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
            span = con.execute("SELECT EXTRACT(EPOCH FROM max(datetime_complete) - "
                               "min(datetime_start)) FROM trials").fetchone()[0]
    return {"trials": n, "wall": wall, "db_ms": 1000 * cpu / n, "trial_s": 2 * float(span) / n,
            "xacts": xacts / n}


def _transactions(admin: str, name: str) -> int:
    """Transactions (commits + rollbacks) the server has counted in database ``name``."""
    import psycopg

    with psycopg.connect(admin) as con:
        return con.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE "
                           "datname = %s", (name,)).fetchone()[0]


# --- the report -----------------------------------------------------------------------------------


LABELS = {"sqlite": "SQLite (WAL)", "postgres": "PostgreSQL direct",
          "proxy": "PostgreSQL via hpo proxy (pool 4)"}
STYLE = {"sqlite": "o", "postgres": "s", "proxy": "^"}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 6))
    for kind, line in (("hpo", "-"), ("hpo-fn", "--"), ("optuna", ":")):
        for storage in ("sqlite", "postgres", "proxy"):
            rs = [r for r in rows if r["storage"] == storage and r["kind"] == kind]
            if not rs:
                continue
            xs = [r["clients"] for r in rs]
            label = f"{LABELS[storage]}, {kind} clients"
            color = {"sqlite": "C0", "postgres": "C1", "proxy": "C2"}[storage]
            a.plot(xs, [r["tps"] for r in rs], STYLE[storage] + line, color=color, label=label)
            if storage != "sqlite":
                b.plot(xs, [r["db_ms"] for r in rs], STYLE[storage] + line, color=color,
                       label=f"PostgreSQL server, {label.split(', ')[0].split(' ', 1)[1]}, "
                             f"{kind}")
            if storage == "proxy":
                b.plot(xs, [r["proxy_ms"] for r in rs], "x" + line, color="C3",
                       label=f"hpo proxy process, {kind}")
    for ax in (a, b):
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 2, 4, 8, 16, 32], ["1", "2", "4", "8", "16", "32"])
        ax.set_xlabel("concurrent client processes")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
    a.set_ylabel("trials per second (trivial objective)")
    a.set_title("throughput of one database (shared 2-core machine)")
    b.set_ylabel("CPU ms per trial")
    b.set_yscale("log")
    ticks = [1, 2, 3, 5, 10, 20, 40, 60, 100, 200]
    top = max([r["db_ms"] for r in rows if r["storage"] != "sqlite"]
              + [r["proxy_ms"] for r in rows if r["storage"] == "proxy"] + [10])
    ticks = [t for t in ticks if t <= 2 * top]
    b.set_yticks(ticks, [str(t) for t in ticks])
    b.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    b.set_title("PostgreSQL server (and proxy) CPU per trial")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def medians(rows: list[dict]) -> list[dict]:
    """One row per (kind, storage, clients): the median of every measure over the repeats."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["kind"], r["storage"], r["clients"]), []).append(r)
    out = []
    for (kind, storage, n), rs in groups.items():
        m = {key: statistics.median(r[key] for r in rs) for key in rs[0]
             if isinstance(rs[0][key], float | int) and key != "clients"}
        out.append({**m, "kind": kind, "storage": storage, "clients": n, "runs": len(rs)})
    return out


def idle_server(postmaster: int, seconds: float = 3.0) -> float:
    """Cores the private server uses with no client at all (background processes)."""
    c0, t0 = server_cpu(postmaster), time.time()
    time.sleep(seconds)
    return (server_cpu(postmaster) - c0) / (time.time() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--client", metavar="URL", help=argparse.SUPPRESS)
    ap.add_argument("--clients", default="1,2,4,8,16,32")
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--storages", default="sqlite,postgres,proxy")
    ap.add_argument("--kinds", default="hpo,optuna")
    ap.add_argument("--repeats", type=int, default=1, help="cells repeated, medians reported")
    ap.add_argument("--calibrate", action="store_true")
    ap.add_argument("--plot", metavar="PNG", help="also draw the cells here (the committed "
                    "figure, benchmarks/storage.png, is the full 1-32 client run's)")
    ap.add_argument("--json", help="also write the cells (medians) and calibrations here, for "
                    "benchmarks/storage_model.py")
    args = ap.parse_args()
    if args.client:
        client(args.client)
        return
    # SIGTERM unwinds like Ctrl-C: the private cluster, the proxy and the clients are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(header(" ".join([".venv/bin/python"] + sys.argv)), flush=True)
    counts = [int(c) for c in args.clients.split(",")]
    storages, kinds = args.storages.split(","), args.kinds.split(",")
    rows: list[dict] = []
    with private_cluster() as (admin, postmaster, version), \
            tempfile.TemporaryDirectory(prefix="bench-storage-") as tmp:
        work = Path(tmp)
        idle = idle_server(postmaster)
        print(f"PostgreSQL {version}: private cluster (initdb defaults, fsync on, "
              f"max_connections 200), idle {idle:.3f} cores; {args.seconds:g} s per cell\n",
              flush=True)
        cells = [(rep, n, kind, storage) for rep in range(args.repeats) for n in counts
                 for kind in kinds for storage in storages]
        for rep, n, kind, storage in cells:  # interleaved: clients outer, kinds, storages inner
            name = f"r{rep}_b{n}_{kind}_{storage}"
            log = work / f"{name}.log"
            if storage == "sqlite":
                url = f"sqlite:///{work / name}.db"
                create_study(kind, url, work)
                r = (run_hpo_cell(url, url, n, args.seconds, None, None, log)
                     if kind in SPECS else
                     run_optuna_cell(url, n, args.seconds, None, None))
            else:
                with database(admin, name) as url:
                    create_study(kind, url, work)
                    stat = (admin, name)
                    if storage == "postgres":
                        r = (run_hpo_cell(url, url, n, args.seconds, postmaster, None, log, stat)
                             if kind in SPECS else
                             run_optuna_cell(url, n, args.seconds, postmaster, None, stat))
                    else:
                        with proxy(url, work / f"{name}-proxy.log") as (grpc, px):
                            r = (run_hpo_cell(grpc, url, n, args.seconds, postmaster,
                                              px.pid, log, stat)
                                 if kind in SPECS else
                                 run_optuna_cell(grpc, n, args.seconds, postmaster,
                                                 px.pid, stat))
            r.update(storage=storage, kind=kind)
            rows.append(r)
            print(f"  run {rep}: {kind:6} {storage:8} {n:2} clients: {r['tps']:7.1f} trials/s, db "
                  f"{r['db_ms']:.2f} ms/trial ({r['db_cores']:.2f} cores, "
                  f"{r['xacts']:.1f} transactions/trial), proxy "
                  f"{r['proxy_ms']:.2f} ms/trial, clients {r['client_ms']:.1f} "
                  f"ms/trial; load {loadavg()}", flush=True)
        cals = [calibrate(admin, postmaster, work) for _ in range(args.repeats)
                if args.calibrate]
    print(f"\nload average at end {loadavg()}\n")
    rows = medians(rows)
    print(f"medians of {args.repeats} run(s) per cell\n")
    print("| client | storage | processes | trials/s | vs 1 process | database CPU ms/trial "
          "| database cores busy | transactions/trial | proxy CPU ms/trial | client CPU ms/trial |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for kind in kinds:
        for storage in storages:
            rs = [r for r in rows if r["storage"] == storage and r["kind"] == kind]
            one = rs[0]["tps"]
            for r in rs:
                pg = storage != "sqlite"
                db = f"{r['db_ms']:.2f}" if pg else "-"
                cores = f"{r['db_cores']:.2f}" if pg else "-"
                px = f"{r['proxy_ms']:.2f}" if storage == "proxy" else "-"
                xa = f"{r['xacts']:.1f}" if pg else "-"
                print(f"| {kind} | {storage} | {r['clients']} | {r['tps']:.1f} | "
                      f"{r['tps'] / one:.2f}x | {db} | {cores} | {xa} | {px} | "
                      f"{r['client_ms']:.1f} |")
    for mine in [k for k in kinds if k in SPECS]:
        if "optuna" not in kinds:
            break
        print(f"\n| storage | processes | {mine} trials/s | Optuna trials/s | {mine} / Optuna |")
        print("|---|---|---|---|---|")
        for storage in storages:
            for n in counts:
                h, o = ([r["tps"] for r in rows if r["storage"] == storage and r["kind"] == k
                         and r["clients"] == n][0] for k in (mine, "optuna"))
                print(f"| {storage} | {n} | {h:.1f} | {o:.1f} | {h / o:.2f}x |")
    for i, cal in enumerate(cals):
        print(f"\ncalibration {i}: 2 `hpo worker` on book-random, {cal['trials']} trials in "
              f"{cal['wall']:.1f} s, {cal['trial_s']:.3f} s per trial per worker, database CPU "
              f"{cal['db_ms']:.2f} ms per trial, {cal['xacts']:.1f} transactions per trial "
              f"(idle server {idle:.3f} cores)")
    if args.json:
        Path(args.json).write_text(json.dumps({"cells": rows, "calibrations": cals,
                                               "idle_cores": idle}, indent=1))
    if args.plot and rows:
        plot(rows, Path(args.plot))
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
