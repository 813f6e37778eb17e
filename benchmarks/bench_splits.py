"""Time to a near-best configuration on many data splits: seconds from the start of `hpo run`
until the best validation accuracy reaches each target (0.85, 0.87), and the best at the budget,
per split, for several specs in one invocation.

Protocol: split k is passed as both ``--seed k`` and ``--data-seed k`` (a new train/validation
shuffle and new sampler and network seeds; the book reshuffles its data on every run). Every spec
gets the same splits, interleaved split by split so that drifts in the machine's load hit all of
them alike. Each run is one ``hpo run SPEC --workers W`` process on a fresh SQLite file with the
spec's own budget (``--n-trials`` overrides it), run to the end: the best at the budget is part
of the result. The time to a target is ``datetime_complete`` of the first COMPLETE trial with a
value >= target, minus the instant the process was launched: start-up (imports, data, schema,
study, forking the workers) is included. A run that never reaches a target counts as its whole
wall time and is marked. With ``--stop`` a run is stopped (SIGTERM) once it holds the highest
target, for quick screening.

With ``--warm-from S`` each spec also runs warm started: a study of the same spec on split S is
run to its budget first, and each warm run begins with that study's best ``--warm-top``
configurations (``hpo run --warm-start``), in a copy of its storage; start-up includes the
warm start's reads and enqueues.

Splits 0-10 are where hpo's recommended spec was chosen; 100-109 were kept for reporting it.

Run: ``.venv/bin/python benchmarks/bench_splits.py --splits 100-109 --workers 2
--specs recommended,tpe-wide,tpe-pruned,book-random``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import HPO, STUDIES, header, loadavg, median, read_trials  # noqa: E402


@dataclass
class Run:
    spec: str
    split: int
    to: dict[str, float | None]  # target -> seconds from launch (None: never)
    trials_to: dict[str, int | None]  # target -> finished trials at that moment
    best: float | None
    trials: int  # finished trials at the end
    wall: float
    startup: float | None  # launch -> first trial start


def spec_path(name: str) -> Path:
    p = Path(name)
    if p.suffix == ".toml" and p.exists():
        return p.resolve()
    return STUDIES / f"{name}.toml"


def parse_splits(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-")
            out += list(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    return out


def hpo_run(spec: Path, db: str, study: str, split: int, workers: int, n_trials: int | None,
            top: int) -> list[str]:
    """The ``hpo run`` command of ``spec`` on ``split`` (sampler seed = data seed = split) as
    the study ``study`` of the SQLite file ``db``."""
    cmd = [HPO, "run", str(spec), "--storage", f"sqlite:///{db}", "--study", study, "--quiet",
           "--seed", str(split), "--data-seed", str(split), "--workers", str(workers),
           "--top", str(top)]
    return cmd + (["--n-trials", str(n_trials)] if n_trials else [])


def run_once(spec: Path, split: int, workers: int, targets: list[float], n_trials: int | None,
             stop: bool, cap: float, workdir: str, warm: tuple[str, int] | None = None) -> Run:
    """One ``hpo run`` of ``spec`` on ``split``; with ``warm = (source_db, top)``, the run's
    storage starts as a copy of ``source_db`` and the study is warm started from its study
    ``source`` (``--warm-start source --warm-start-top top``)."""
    label = spec.stem + ("+warm" if warm else "")
    db = os.path.join(workdir, f"{label}-{split}.db")
    url, study = f"sqlite:///{db}", "s"
    cmd = hpo_run(spec, db, study, split, workers, n_trials, top=1)
    if warm:
        shutil.copyfile(warm[0], db)
        cmd += ["--warm-start", "source", "--warm-start-top", str(warm[1])]
    with open(os.path.join(workdir, f"{label}-{split}.log"), "w") as log:
        t0 = time.time()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=workdir)
        while proc.poll() is None:
            time.sleep(0.25)
            if time.time() - t0 > cap:
                break
            if stop:
                rows = read_trials(url, study)
                if any(r.state == "COMPLETE" and r.value is not None and r.value >= max(targets)
                       for r in rows):
                    break
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        wall = time.time() - t0
    rows = read_trials(url, study)
    finished = sorted((r for r in rows if r.state in ("COMPLETE", "PRUNED") and r.complete),
                      key=lambda r: r.complete)
    to, trials_to = {}, {}
    for target in targets:
        hit = next((i for i, r in enumerate(finished) if r.state == "COMPLETE"
                    and r.value is not None and r.value >= target), None)
        key = f"{target:.2f}"
        to[key] = None if hit is None else finished[hit].complete - t0
        trials_to[key] = None if hit is None else hit + 1
    values = [r.value for r in finished if r.state == "COMPLETE" and r.value is not None]
    starts = [r.start for r in rows if r.start]
    return Run(label, split, to, trials_to, max(values) if values else None, len(finished),
               wall, min(starts) - t0 if starts else None)


def report(r: Run) -> None:
    got = ", ".join(f"{t}: {'-' if s is None else f'{s:.1f} s'}" for t, s in r.to.items())
    print(f"  split {r.split} {r.spec}: {got}; best {r.best} in {r.trials} trials, "
          f"{r.wall:.1f} s (load {loadavg()})", flush=True)


def source_study(spec: Path, split: int, workers: int, n_trials: int | None,
                 workdir: str) -> str:
    """Run ``spec`` on ``split`` to its budget as the study ``source`` of a new SQLite file (the
    study a warm start begins from); returns the file's path."""
    db = os.path.join(workdir, f"source-{spec.stem}-{split}.db")
    cmd = hpo_run(spec, db, "source", split, workers, n_trials, top=3)
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir, check=True)
    print(f"  warm-start source: {spec.stem} on split {split}:\n    "
          + out.stdout.strip().replace("\n", "\n    "), flush=True)
    return db


def summary(runs: list[Run], targets: list[float]) -> list[str]:
    lines = []
    head = ["spec"]
    for t in targets:
        head += [f"reached {t:.2f}", f"median s to {t:.2f}", f"worst s to {t:.2f}"]
    head += ["best at budget, median [min–max]", "trials", "start-up s"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for spec in dict.fromkeys(r.spec for r in runs):
        rs = [r for r in runs if r.spec == spec]
        cells = [spec]
        for t in targets:
            key = f"{t:.2f}"
            got = [r.to[key] for r in rs if r.to[key] is not None]
            # a run that never got there counts as its whole wall time (a lower bound)
            times = [r.to[key] if r.to[key] is not None else r.wall for r in rs]
            missed = len(rs) - len(got)
            most_missed = "+" if missed * 2 >= len(rs) else ""
            cells += [f"{len(got)}/{len(rs)}", f"{median(times):.1f}{most_missed}",
                      f"{max(times):.1f}" + ("+ (never)" if missed else "")]
        bests = [r.best for r in rs if r.best is not None]
        cells.append(f"{median(bests):.3f} [{min(bests):.2f}–{max(bests):.2f}]" if bests else "-")
        cells.append(f"{median([r.trials for r in rs]):.0f}")
        cells.append(f"{median([r.startup for r in rs if r.startup is not None]):.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def per_split(runs: list[Run], target: float) -> list[str]:
    key = f"{target:.2f}"
    specs = list(dict.fromkeys(r.spec for r in runs))
    splits = list(dict.fromkeys(r.split for r in runs))
    lines = ["| split | " + " | ".join(specs) + " |", "|---|" + "---|" * len(specs)]
    for k in splits:
        cells = []
        for s in specs:
            r = next(r for r in runs if r.spec == s and r.split == k)
            best = "-" if r.best is None else f"{r.best:.2f}"
            cells.append(f"{r.to[key]:.1f} s ({r.trials_to[key]} tr; best {best})"
                         if r.to[key] is not None else f"never (best {best})")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--specs", required=True,
                    help="comma-separated spec names in studies/ (or paths to .toml files)")
    ap.add_argument("--splits", default="100-109", help="e.g. 100-109 or 0,1,2")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--targets", default="0.85,0.87")
    ap.add_argument("--n-trials", type=int, help="override each spec's budget")
    ap.add_argument("--stop", action="store_true", help="stop a run at the highest target")
    ap.add_argument("--cap", type=float, default=600.0, help="seconds before a run is stopped")
    ap.add_argument("--json", help="also write the runs to this file")
    ap.add_argument("--warm-from", type=int, metavar="SPLIT",
                    help="also run each spec warm started (`hpo run --warm-start`) from a study "
                    "of the same spec on this split, run first to its budget")
    ap.add_argument("--warm-top", type=int, default=10, help="configurations carried over")
    args = ap.parse_args()
    specs = [spec_path(s) for s in args.specs.split(",")]
    splits = parse_splits(args.splits)
    targets = [float(t) for t in args.targets.split(",")]
    print(header(" ".join([".venv/bin/python"] + sys.argv)))
    stopped = " (stopped at the target)" if args.stop else ""
    print(f"protocol: split k as --seed k --data-seed k; {args.workers} worker(s); targets "
          f"{targets}; SQLite; a fresh process per run{stopped}\n", flush=True)
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="bench-splits-") as workdir:
        sources: dict[Path, str] = {}
        if args.warm_from is not None:
            for spec in specs:
                sources[spec] = source_study(spec, args.warm_from, args.workers, args.n_trials,
                                             workdir)
        for k in splits:
            for spec in specs:
                arms = [None] + ([(sources[spec], args.warm_top)] if sources else [])
                for warm in arms:
                    r = run_once(spec, k, args.workers, targets, args.n_trials, args.stop,
                                 args.cap, workdir, warm)
                    runs.append(r)
                    report(r)
    print(f"\nload average at end {loadavg()}\n")
    print("\n".join(summary(runs, targets)))
    for t in targets:
        print(f"\nseconds to {t:.2f} per split (finished trials then; best at the budget):\n")
        print("\n".join(per_split(runs, t)))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in runs], indent=1))


if __name__ == "__main__":
    main()
