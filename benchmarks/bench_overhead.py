"""Per-trial overhead of `hpo run`: the time a trial spends outside training (sampler, storage,
Optuna and hpo plumbing) as a fraction of its wall time, on SQLite and on PostgreSQL.

Each configuration (storage x spec) runs in a fresh child process that calls
``hpo.commands.run.run`` exactly as ``hpo run SPEC --quiet --n-trials N`` does (one worker,
heartbeats on, the product's own storage options), with timers patched around:

* ``hpo.objectives.book.fit`` -> *training* (building the net, 50 epochs, the per-epoch evaluation);
* the sampler's methods -> *sampler*;
* every method of Optuna's ``_CachedStorage`` (what ``RDBStorage`` is wrapped in) -> *storage*,
  by method (``_read_trials_from_remote_storage`` is the SQL part of ``get_all_trials``);
* ``Trial.report`` / ``Trial.should_prune`` (the pruning callback) -> *pruning*;
* ``hpo.db.storage.state_counts`` (the worker loop's one-query trial count on an RDBStorage, which
  bypasses ``_CachedStorage``) -> *storage: hpo state_counts*.

Timers count self time (a storage call made by the sampler is storage, not sampler), on the main
thread only (the heartbeat thread runs beside the trial). Whatever is not inside a timer is
Optuna's and hpo's own Python (study.optimize per trial, the worker loop, tell's bookkeeping).
*The storage's part* is the sum of the storage timers (every ``storage:`` item) over the wall
time: what the worker waits on the database for (a write the writer thread of
:mod:`hpo.db.behind` commits while the next trial runs is not waited for, and not counted).
The trial wall time is measured from the end of one ``study.optimize(n_trials=1)`` call of the
worker loop to the end of the next, so the worker loop between trials is included. The first
``--warmup`` trials (imports, first queries) are reported separately and left out of the
steady-state figures.

Run: ``.venv/bin/python benchmarks/bench_overhead.py [--trials 40] [--storages sqlite,postgres]``
(``HPO_BENCH_SRC=/path/to/patched/copy`` measures a candidate fix: see benchmarks/_common.py)
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PYTHON, STUDIES, header, loadavg, median, pg_database  # noqa: E402

SPECS = {  # label -> (spec file, pruner replacement or None)
    "narrowing": ("book-narrowing.toml", None),
    "narrowing + median": ("book-narrowing.toml", "median"),
    "tpe": ("tpe.toml", None),
    "tpe + median": ("tpe-pruned.toml", None),
}
SQL_STATEMENTS = "SQL statements"
SQL_CONNECTS = "new database connections"
MEDIAN_BLOCK = ('[pruner]\nname = "median"\nn_startup_trials = 5\nn_warmup_steps = 5\n'
                'interval_steps = 5\n')


# --- the child: one configuration, instrumented ------------------------------------------------


class Timers:
    """Self-time accumulators keyed by name, main thread only."""

    def __init__(self) -> None:
        self.acc: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.stack: list[list] = []
        self.main = threading.main_thread()

    def wrap(self, name: str, fn):
        timers = self

        @functools.wraps(fn)
        def wrapper(*a, **kw):
            if threading.current_thread() is not timers.main:
                return fn(*a, **kw)
            frame = [time.perf_counter(), 0.0]
            timers.stack.append(frame)
            try:
                return fn(*a, **kw)
            finally:
                elapsed = time.perf_counter() - frame[0]
                timers.stack.pop()
                timers.acc[name] = timers.acc.get(name, 0.0) + elapsed - frame[1]
                timers.calls[name] = timers.calls.get(name, 0) + 1
                if timers.stack:
                    timers.stack[-1][1] += elapsed

        return wrapper

    def patch(self, owner, attr: str, name: str) -> None:
        setattr(owner, attr, self.wrap(name, getattr(owner, attr)))


def child(spec_path: str, url: str, n_trials: int) -> dict:
    import optuna
    from optuna.storages import _CachedStorage

    import hpo.objectives.book
    from hpo.commands import run as runner
    from hpo.engine import loop as trials
    from hpo.samplers.narrowing import NarrowingSampler

    t = Timers()
    t.patch(hpo.objectives.book, "fit", "training")
    t.patch(optuna.trial.Trial, "report", "pruning: report")
    t.patch(optuna.trial.Trial, "should_prune", "pruning: should_prune")
    if hasattr(trials, "state_counts"):  # the worker loop's own SQL count (budget, claim)
        t.patch(trials, "state_counts", "storage: hpo state_counts (SQL count)")
    for cls in (NarrowingSampler, optuna.samplers.TPESampler, optuna.samplers.RandomSampler):
        for m in ("before_trial", "infer_relative_search_space", "sample_relative",
                  "sample_independent", "after_trial"):
            if m in cls.__dict__:
                t.patch(cls, m, "sampler")
    for m, fn in list(vars(_CachedStorage).items()):
        if callable(fn) and (not m.startswith("_") or m in (
                "_get_stale_trial_ids", "_read_trials_from_remote_storage")):
            t.patch(_CachedStorage, m, f"storage: {m.lstrip('_')}")

    # every SQL statement and every new database connection, on any thread (the heartbeat
    # thread included): counts only, no time
    from sqlalchemy import event
    from sqlalchemy.engine import Engine
    from sqlalchemy.pool import Pool

    lock = threading.Lock()

    def counter(name: str):
        def count(*_args) -> None:
            with lock:
                t.calls[name] = t.calls.get(name, 0) + 1

        return count

    event.listen(Engine, "before_cursor_execute", counter(SQL_STATEMENTS))
    event.listen(Pool, "connect", counter(SQL_CONNECTS))

    marks: list[tuple[float, dict[str, float]]] = []
    orig_optimize = optuna.study.Study.optimize

    def optimize(self, *a, **kw):
        try:
            return orig_optimize(self, *a, **kw)
        finally:
            marks.append((time.perf_counter(), dict(t.acc), dict(t.calls)))

    optuna.study.Study.optimize = optimize
    # the worker loop is called by the engine (hpo.engine.study) since the engine's split;
    # by hpo.commands.run before it
    import importlib

    caller = (importlib.import_module("hpo.engine.study")
              if importlib.util.find_spec("hpo.engine.study") else runner)
    orig_work = caller.work

    def work(*a, **kw):
        marks.append((time.perf_counter(), dict(t.acc), dict(t.calls)))
        return orig_work(*a, **kw)

    caller.work = work
    args = argparse.Namespace(
        spec=spec_path, storage=url, study="overhead", n_trials=n_trials, workers=1,
        seed=None, data_seed=None, timeout=None, top=1, quiet=True,
        heartbeat_interval=None, grace_period=None)
    with contextlib.redirect_stdout(io.StringIO()):
        runner.run(args)
    study = optuna.load_study(study_name="overhead", storage=url)
    states = [tr.state.name for tr in study.get_trials(deepcopy=False)]
    per_trial = []
    for (t0, a0, c0), (t1, a1, c1) in zip(marks, marks[1:], strict=False):
        d = {k: a1.get(k, 0.0) - a0.get(k, 0.0) for k in set(a0) | set(a1)}
        d = {k: v for k, v in d.items() if v}
        d["wall"] = t1 - t0
        d["calls"] = {k: c1.get(k, 0) - c0.get(k, 0) for k in set(c0) | set(c1)}
        per_trial.append(d)
    return {"per_trial": per_trial, "states": states}


# --- the parent ---------------------------------------------------------------------------------


def spec_file(label: str, workdir: str, studies: Path = STUDIES) -> str:
    name, pruner = SPECS[label]
    src = (studies / name).read_text()
    if pruner is None:
        return str(studies / name)
    text = src.replace('[pruner]\nname = "none"\n', MEDIAN_BLOCK)
    assert text != src, "pruner block not found"
    path = os.path.join(workdir, f"{Path(name).stem}-{pruner}.toml")
    Path(path).write_text(text)
    return path


def run_child(label: str, storage: str, n: int, workdir: str, studies: Path = STUDIES) -> dict:
    spec = spec_file(label, workdir, studies)

    def go(url: str) -> dict:
        cmd = [PYTHON, __file__, "--child", json.dumps([spec, url, n])]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode:
            raise RuntimeError(f"child failed ({label}, {storage}):\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    if storage == "sqlite":
        name = f"overhead-{label.replace(' ', '')}-{len(os.listdir(workdir))}.db"
        db = os.path.join(workdir, name)
        return go(f"sqlite:///{db}")
    with pg_database("bench_overhead") as url:
        return go(url)


def summarise(res: dict, warmup: int) -> dict:
    trials = res["per_trial"]
    steady = trials[warmup:]
    wall = sum(d["wall"] for d in steady)
    train = sum(d.get("training", 0.0) for d in steady)
    over = [d["wall"] - d.get("training", 0.0) for d in steady]
    frac = [(d["wall"] - d.get("training", 0.0)) / d["wall"] for d in steady]
    keys = sorted({k for d in steady for k in d} - {"wall", "training", "calls"})
    parts = {k: sum(d.get(k, 0.0) for d in steady) / len(steady) for k in keys}
    calls = {k: sum(d["calls"].get(k, 0) for d in steady) / len(steady) for k in keys}
    timed = sum(parts.values())
    parts["optuna/hpo Python (untimed)"] = sum(over) / len(steady) - timed
    pruned = res["states"].count("PRUNED")
    sql = {k: sum(d["calls"].get(k, 0) for d in steady) / len(steady)
           for k in (SQL_STATEMENTS, SQL_CONNECTS)}
    storage = sum(v for k, v in parts.items() if k.startswith("storage:"))
    return {
        "storage_frac": storage * len(steady) / wall,
        "n": len(steady), "wall_ms": 1e3 * wall / len(steady),
        "train_ms": 1e3 * train / len(steady), "over_ms_med": 1e3 * median(over),
        "over_ms_mean": 1e3 * sum(over) / len(steady), "frac": (wall - train) / wall,
        "frac_med": median(frac), "frac_max": max(frac), "parts": parts,
        "warm_ms": [1e3 * (d["wall"] - d.get("training", 0.0)) for d in trials[:warmup]],
        "pruned": pruned, "total": len(res["states"]), "calls": calls, "sql": sql,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--storages", default="sqlite,postgres")
    ap.add_argument("--specs", default=",".join(SPECS))
    ap.add_argument("--breakdown", type=int, default=8, help="largest overhead items listed")
    ap.add_argument("--studies", type=Path, default=STUDIES,
                    help="folder of the spec files (default: the checkout's studies/); e.g. a "
                    "copy of another commit's specs, to compare code on the same specs")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        spec, url, n = json.loads(args.child)
        print(json.dumps(child(spec, url, n)))
        return

    print(header(" ".join([".venv/bin/python"] + sys.argv)))
    print(f"{args.trials} trials per configuration, one worker (hpo.commands.run.run as `hpo run "
          f"--quiet`), the first {args.warmup} left out\n", flush=True)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as workdir:
        for storage in args.storages.split(","):
            for label in args.specs.split(","):
                s = summarise(run_child(label, storage, args.trials, workdir, args.studies),
                              args.warmup)
                results[(storage, label)] = s
                print(f"  {storage} {label}: overhead {s['over_ms_mean']:.1f} ms/trial of "
                      f"{s['wall_ms']:.0f} ms ({100 * s['frac']:.1f}%; the storage's part "
                      f"{100 * s['storage_frac']:.1f}%), load {loadavg()}", flush=True)
    print(f"\nload average at end {loadavg()}\n")
    print("| storage | spec | trials (pruned) | trial wall ms (mean) | training ms (mean) "
          "| overhead ms/trial mean (median) | overhead % of wall (per-trial median, max) "
          "| the storage's part, % of wall | first trials' overhead ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (storage, label), s in results.items():
        print(f"| {storage} | {label} | {s['total']} ({s['pruned']}) | {s['wall_ms']:.0f} "
              f"| {s['train_ms']:.0f} | {s['over_ms_mean']:.1f} ({s['over_ms_med']:.1f}) "
              f"| **{100 * s['frac']:.1f}%** ({100 * s['frac_med']:.1f}%, "
              f"{100 * s['frac_max']:.1f}%) | {100 * s['storage_frac']:.1f}% "
              f"| {', '.join(f'{x:.0f}' for x in s['warm_ms'])} |")
    print("\nWhere the overhead goes, ms per trial (self time; mean over the steady trials; "
          "calls per trial in brackets):\n")
    labels = list(results)
    keys: dict[str, float] = {}
    for s in results.values():
        for k, v in s["parts"].items():
            keys[k] = max(keys.get(k, 0.0), v)
    top = sorted(keys, key=keys.get, reverse=True)[: args.breakdown]
    print("| item | " + " | ".join(f"{st} {lb}" for st, lb in labels) + " |")
    print("|---|" + "---|" * len(labels))
    for k in top:
        cells = []
        for x in labels:
            ms, n = 1e3 * results[x]["parts"].get(k, 0.0), results[x]["calls"].get(k)
            cells.append(f"{ms:.1f}" + (f" ({n:.1f})" if n else ""))
        print(f"| {k} | " + " | ".join(cells) + " |")
    rest = {x: 1e3 * sum(v for k, v in results[x]["parts"].items() if k not in top)
            for x in labels}
    print("| everything else | " + " | ".join(f"{rest[x]:.1f}" for x in labels) + " |")
    print("\nPer trial, all threads (the heartbeat thread's too), counts only:\n")
    print("| count | " + " | ".join(f"{st} {lb}" for st, lb in labels) + " |")
    print("|---|" + "---|" * len(labels))
    for k in (SQL_STATEMENTS, SQL_CONNECTS):
        print(f"| {k} | " + " | ".join(f"{results[x]['sql'][k]:.1f}" for x in labels) + " |")
    print("\nresult: " + " ".join(f"{st}/{lb.replace(' ', '')}={100 * s['frac']:.1f}%"
                                  for (st, lb), s in results.items()))
    print("storage's part: " + " ".join(
        f"{st}/{lb.replace(' ', '')}={100 * s['storage_frac']:.1f}%"
        for (st, lb), s in results.items()))


if __name__ == "__main__":
    main()
