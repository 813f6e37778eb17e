"""Trials per second of `hpo run --workers W` on PostgreSQL (and SQLite), 1 vs 2 workers.

The book's spec (studies/book-random.toml) with a fixed budget (``--trials``, 60), one fresh
database per run, W = 1 and 2 alternated ``--repeats`` times. Two rates per run:

* *end to end*: trials / wall seconds of the whole ``hpo run`` command (start-up of the parent
  and of every worker process included);
* *steady*: trials / (last ``datetime_complete`` - first ``datetime_start``), read from the
  storage: the rate once the workers are running.

The machine has 2 cores, so 2 workers is the most that can scale here (a 4-worker figure would
only measure time-slicing).

Run: ``.venv/bin/python benchmarks/bench_scaling.py [--trials 60] [--repeats 2]``
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import HPO, STUDIES, header, loadavg, median, pg_database, read_trials  # noqa: E402


def one_run(url: str, workers: int, trials: int, spec: str, cwd: str) -> dict:
    cmd = [HPO, "run", str(STUDIES / spec), "--storage", url, "--study", "scaling",
           "--n-trials", str(trials), "--workers", str(workers), "--quiet"]
    t0 = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=cwd)
    wall = time.time() - t0
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    rows = [r for r in read_trials(url, "scaling") if r.state in ("COMPLETE", "PRUNED")]
    assert len(rows) == trials, (len(rows), trials)
    span = max(r.complete for r in rows) - min(r.start for r in rows)
    return {"wall": wall, "e2e": trials / wall, "steady": trials / span,
            "startup": min(r.start for r in rows) - t0,
            "train_s": median([r.complete - r.start for r in rows])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--storages", default="postgres,sqlite")
    ap.add_argument("--spec", default="book-random.toml")
    args = ap.parse_args()
    print(header(" ".join([".venv/bin/python"] + sys.argv)))
    print(f"{args.spec}, {args.trials} trials per run, W = 1 and 2 alternated, {args.repeats} "
          f"repeats; {os.cpu_count()} cores, so no 4-worker figure\n", flush=True)
    res: dict[tuple[str, int], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as workdir:
        for rep in range(args.repeats):
            for storage in args.storages.split(","):
                for w in (1, 2):
                    if storage == "sqlite":
                        r = one_run(f"sqlite:///{workdir}/s-{rep}-{w}.db", w, args.trials,
                                    args.spec, workdir)
                    else:
                        with pg_database("bench_scaling") as url:
                            r = one_run(url, w, args.trials, args.spec, workdir)
                    res.setdefault((storage, w), []).append(r)
                    print(f"  {storage} W={w} run {rep}: {r['wall']:.1f} s, end to end "
                          f"{r['e2e']:.2f} trials/s, steady {r['steady']:.2f} trials/s, "
                          f"load {loadavg()}", flush=True)
    print(f"\nload average at end {loadavg()}\n")
    print("| storage | workers | wall s (median) | trials/s end to end | trials/s steady "
          "| launch -> first trial s | median trial s | speed-up vs 1 worker (end to end / "
          "steady) |")
    print("|---|---|---|---|---|---|---|---|")
    summary = []
    for (storage, w), rs in res.items():
        base = res[(storage, 1)]
        e2e, steady = median([r["e2e"] for r in rs]), median([r["steady"] for r in rs])
        su = (e2e / median([r["e2e"] for r in base]),
              steady / median([r["steady"] for r in base]))
        print(f"| {storage} | {w} | {median([r['wall'] for r in rs]):.1f} | {e2e:.2f} "
              f"| {steady:.2f} | {median([r['startup'] for r in rs]):.2f} "
              f"| {median([r['train_s'] for r in rs]):.3f} | **{su[0]:.2f}x** / {su[1]:.2f}x |")
        if w == 2:
            summary.append(f"{storage}_e2e={su[0]:.2f}x {storage}_steady={su[1]:.2f}x")
    print("\nresult: " + " ".join(summary))


if __name__ == "__main__":
    main()
