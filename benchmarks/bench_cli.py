"""CLI start-up: `hpo --help`, the import time of the heavy modules, and where the start-up of a
real `hpo run` goes before its first trial.

* ``hpo --help`` (the console script), ``python -c pass`` and ``python -c "import hpo.cli"``:
  wall time of ``--runs`` (20) fresh processes each, median / min / max.
* Import time of each heavy module on its own, in a fresh process (``--import-runs`` each,
  median): what a real command pays on top of the interpreter.
* ``python -X importtime -m hpo run ... --n-trials 1``: the imports a real ``hpo run`` does,
  grouped by top-level package (cumulative microseconds of the first import of each).
* The phases of ``hpo run`` up to its first trial, timed in a child process that runs
  ``hpo.commands.run.run`` with timers around each step (fresh SQLite file, so the schema is
  created),
  and the cost of Optuna's schema-compatibility check (``RDBStorage`` with and without
  ``skip_compatibility_check`` on the same, existing schema).

Run: ``.venv/bin/python benchmarks/bench_cli.py [--runs 20]``
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import HPO, PYTHON, ROOT, STUDIES, header, loadavg, median  # noqa: E402

HEAVY = ["numpy", "optuna", "sqlalchemy.orm", "alembic.migration", "psycopg", "tqdm",
         "threadpoolctl", "hpo.nn.data", "hpo.spec", "hpo.db.storage", "hpo.objectives.book",
         "hpo.samplers", "hpo.engine.loop", "hpo.report.listing"]


def wall(cmd: list[str], runs: int, **kw) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
                       **kw)
        out.append(time.perf_counter() - t0)
    return out


def import_time(module: str, runs: int) -> float:
    code = (f"import time; t = time.perf_counter(); import {module}; "
            "print(time.perf_counter() - t)")
    return median([float(subprocess.run([PYTHON, "-c", code], capture_output=True, text=True,
                                        check=True, cwd=ROOT).stdout) for _ in range(runs)])


def importtime_groups(workdir: str) -> tuple[float, dict[str, float]]:
    """-X importtime of a real `hpo run --n-trials 1`: total and per top-level package (ms)."""
    db = f"sqlite:///{workdir}/imp.db"
    out = subprocess.run([PYTHON, "-X", "importtime", "-m", "hpo", "run",
                          str(STUDIES / "tpe.toml"), "--storage", db, "--n-trials", "1",
                          "--quiet"], capture_output=True, text=True, check=True, cwd=ROOT)
    groups: dict[str, float] = {}
    total = 0.0
    for line in out.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( +)(\S+)$", line)
        if not m:
            continue
        self_us, name = int(m.group(1)), m.group(4)
        top = name.split(".")[0]
        groups[top] = groups.get(top, 0.0) + self_us / 1e3
        total += self_us / 1e3
    return total, groups


PHASES_CHILD = r"""
import json, sys, time
marks = [("python started", time.time())]
import argparse
from hpo.commands import run as runner   # the command's module (hpo.cli imports it lazily)
import hpo.objectives.book, hpo.spec, hpo.db.storage
marks.append(("import hpo.commands.run, hpo.objectives.book (optuna, numpy)", time.time()))

def timed(owner, attr, label):
    fn = getattr(owner, attr)
    def wrapper(*a, **kw):
        t0 = time.time()
        try:
            return fn(*a, **kw)
        finally:
            marks.append((label, time.time(), t0))
    setattr(owner, attr, wrapper)

timed(hpo.spec, "load_spec", "load_spec (TOML, validation)")
timed(runner, "build_sampler_and_pruner", "sampler + pruner")
orig_init = hpo.objectives.book.Objective.__init__
def init(self, *a, **kw):
    t0 = time.time(); orig_init(self, *a, **kw)
    marks.append(("Objective: load the data split", time.time(), t0))
hpo.objectives.book.Objective.__init__ = init
timed(runner, "worker_storage",
      "RDBStorage: import sqlalchemy + alembic, create the schema, stamp its version")
timed(hpo.db.storage, "create_or_load_study", "create the study, store the spec")
def work(*a, **kw):
    marks.append(("(rest: signals, logging, counting)", time.time()))
    raise SystemExit(0)
runner.work = work
args = argparse.Namespace(spec=sys.argv[1], storage=sys.argv[2], study=None, n_trials=1,
    workers=1, seed=None, data_seed=None, timeout=None, top=1, quiet=True,
    heartbeat_interval=None, grace_period=None)
try:
    runner.run(args)
except SystemExit:
    pass
import optuna
t0 = time.time(); optuna.storages.RDBStorage(sys.argv[3])  # imports warm: the schema alone
print(json.dumps({"marks": marks, "schema": time.time() - t0}))
"""

COMPAT_CHILD = (
    "import sys, time; import optuna; t = time.perf_counter(); "
    "optuna.storages.RDBStorage(sys.argv[1], skip_table_creation=True, "
    "skip_compatibility_check=sys.argv[2] == '1'); print(time.perf_counter() - t)"
)


def compat_cost(url: str, runs: int) -> tuple[float, float]:
    """Fresh-process seconds of RDBStorage on an existing schema, with / without Optuna's
    schema-compatibility check (alternated)."""
    on, off = [], []
    for _ in range(runs):
        for flag, out in (("0", on), ("1", off)):
            r = subprocess.run([PYTHON, "-c", COMPAT_CHILD, url, flag], capture_output=True,
                               text=True, check=True, cwd=ROOT)
            out.append(float(r.stdout))
    return median(on), median(off)


def phases(workdir: str, i: int) -> tuple[list[tuple[str, float]], float, float]:
    db = f"sqlite:///{workdir}/phases-{i}.db"
    db2 = f"sqlite:///{workdir}/phases-{i}-schema.db"
    t0 = time.time()
    out = subprocess.run([PYTHON, "-c", PHASES_CHILD, str(STUDIES / "tpe.toml"), db, db2],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    data = json.loads(out.stdout.strip().splitlines()[-1])
    marks = data["marks"]
    rows = [("interpreter start-up", marks[0][1] - t0)]
    last = marks[0][1]
    for m in marks[1:]:
        if len(m) == 3:  # (label, end, start): a timed call; the gap before it is "other"
            label, end, start = m
            if start - last > 0.002:
                rows.append(("(between steps)", start - last))
            rows.append((label, end - start))
        else:
            label, end = m
            rows.append((label, end - last))
        last = end
    return rows, data["schema"], last - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--import-runs", type=int, default=5)
    ap.add_argument("--phase-runs", type=int, default=5)
    args = ap.parse_args()
    print(header(" ".join([".venv/bin/python"] + sys.argv)) + "\n", flush=True)

    rows = []
    for label, cmd in [("python -c pass", [PYTHON, "-c", "pass"]),
                       ("python -c 'import hpo.cli'", [PYTHON, "-c", "import hpo.cli"]),
                       ("hpo --help", [HPO, "--help"]),
                       ("hpo --version", [HPO, "--version"])]:
        ts = wall(cmd, args.runs, cwd=ROOT)
        rows.append((label, ts))
        print(f"  {label}: {median(ts):.3f} s, load {loadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as workdir:
        db = f"sqlite:///{workdir}/cli.db"
        subprocess.run([HPO, "run", str(STUDIES / "tpe.toml"), "--storage", db, "--n-trials",
                        "1", "--quiet"], capture_output=True, check=True)
        for label, cmd in [("hpo studies (1 study, SQLite)", [HPO, "studies", "--storage", db]),
                           ("hpo best tpe (SQLite)", [HPO, "best", "tpe", "--storage", db])]:
            ts = wall(cmd, max(5, args.runs // 4), cwd=ROOT)
            rows.append((label, ts))
            print(f"  {label}: {median(ts):.3f} s", flush=True)
        n1 = [f"{workdir}/run1-{i}.db" for i in range(max(5, args.runs // 4))]
        ts = []
        for path in n1:
            t0 = time.perf_counter()
            subprocess.run([HPO, "run", str(STUDIES / "tpe.toml"), "--storage",
                            f"sqlite:///{path}", "--n-trials", "1", "--quiet"],
                           capture_output=True, check=True)
            ts.append(time.perf_counter() - t0)
        rows.append(("hpo run tpe.toml --n-trials 1 (fresh SQLite, one 0.3 s trial)", ts))
        print(f"  hpo run --n-trials 1: {median(ts):.3f} s", flush=True)

        imports = {m: import_time(m, args.import_runs) for m in HEAVY}
        total, groups = importtime_groups(workdir)
        phase_runs = [phases(workdir, i) for i in range(args.phase_runs)]
        compat = compat_cost(db, args.import_runs)

    print(f"\nload average at end {loadavg()}\n")
    print("| command | wall s median | min | max | runs |")
    print("|---|---|---|---|---|")
    for label, ts in rows:
        print(f"| {label} | **{median(ts):.3f}** | {min(ts):.3f} | {max(ts):.3f} "
              f"| {len(ts)} |")

    print(f"\nImport of each module alone in a fresh process (median of {args.import_runs}; "
          "a module's time includes what it imports):\n")
    print("| module | import s |")
    print("|---|---|")
    for m, s in imports.items():
        print(f"| {m} | {s:.3f} |")

    print(f"\nImports of a real `hpo run tpe.toml --n-trials 1` (-X importtime, self times "
          f"summed by top-level package; all imports: {total / 1e3:.3f} s):\n")
    print("| package | ms |")
    print("|---|---|")
    big = sorted(groups.items(), key=lambda kv: -kv[1])
    for name, ms in big[:10]:
        print(f"| {name} | {ms:.0f} |")
    print(f"| everything else | {sum(ms for _, ms in big[10:]):.0f} |")

    labels = [label for label, _ in phase_runs[0][0]]
    print(f"\n`hpo run` from launch to its first trial, fresh SQLite file (median of "
          f"{args.phase_runs} runs):\n")
    print("| phase | s |")
    print("|---|---|")
    for j, label in enumerate(labels):
        vals = [r[0][j][1] for r in phase_runs if len(r[0]) > j and r[0][j][0] == label]
        print(f"| {label} | {median(vals):.3f} |")
    print(f"| **launch -> first trial** | **{median([r[2] for r in phase_runs]):.3f}** |")
    print(f"\nOf the RDBStorage phase, creating the schema alone (imports already done, another "
          f"fresh file): {median([r[1] for r in phase_runs]):.3f} s.")
    print(f"RDBStorage on an existing schema in a fresh process (import optuna done, median of "
          f"{args.import_runs}): {compat[0]:.3f} s with Optuna's schema-compatibility check, "
          f"{compat[1]:.3f} s with skip_compatibility_check=True.")
    help_med = median(rows[2][1])
    print(f"\nresult: hpo_help={help_med:.3f}s python_pass={median(rows[0][1]):.3f}s "
          f"run_first_trial={median([r[2] for r in phase_runs]):.3f}s "
          f"imports_hpo_run={total / 1e3:.3f}s "
          f"target_0.5s={'met' if help_med <= 0.5 else 'missed'}")


if __name__ == "__main__":
    main()
