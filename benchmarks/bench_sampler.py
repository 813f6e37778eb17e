"""Milliseconds per suggestion of the narrowing sampler against Optuna's random and TPE samplers,
with 100, 1,000 and 10,000 finished trials already in the study.

In-memory storage (the sampler's own cost, no database). The study is filled with
``study.add_trials`` of synthetic COMPLETE trials over the book's space (lr log-uniform in
[1e-6, 1e-2], weight decay log-uniform in [1e-8, 1e-4]) whose value follows the book's landscape
(accuracy rises with lr up to the upper edge, plus noise). Then ``--asks`` trials are run with
ask -> suggest lr -> suggest weight decay -> tell; one such trial is one "suggestion" here. The
very first ask of each study is reported on its own (after one untimed warm-up study per
sampler): it is where the narrowing sampler derives the
ranges of every stage so far (memoised afterwards) and where TPE has no cache yet.
Samplers are built by ``hpo.samplers.make_sampler`` with the options of the book's specs
(narrowing: stage_trials 100, keep_top 10, margin 0; tpe: Optuna's defaults), seed 0.

Then the narrowing sampler at its stage boundaries (what tests used to time, now measured
here): ms for the first ask of a stage whose previous stage has finished (it derives the ranges
once, then memoises them), against an ask inside a stage; and a batch ask-and-tell of three
stages from one thread, which never waits for its own untold trials (sleeps counted).

Run: ``.venv/bin/python benchmarks/bench_sampler.py [--sizes 100,1000,10000] [--asks 200]``
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import header, loadavg, median, q  # noqa: E402

SAMPLERS = {
    "random": {},
    "narrowing": {"stage_trials": 100, "keep_top": 10, "margin": 0.0},
    "tpe": {},
}


def synthetic_trials(n: int, seed: int):
    import numpy as np
    import optuna

    rng = np.random.default_rng(seed)
    dists = {
        "lr": optuna.distributions.FloatDistribution(1e-6, 1e-2, log=True),
        "weight_decay": optuna.distributions.FloatDistribution(1e-8, 1e-4, log=True),
    }
    lr = 10 ** rng.uniform(-6, -2, n)
    wd = 10 ** rng.uniform(-8, -4, n)
    acc = np.clip(0.1 + 0.7 * np.clip((np.log10(lr) + 4) / 2, 0, 1) ** 2
                  + rng.normal(0, 0.04, n), 0.0, 1.0)
    return [
        optuna.trial.create_trial(params={"lr": float(a), "weight_decay": float(b)},
                                  distributions=dists, value=float(round(v, 2)))
        for a, b, v in zip(lr, wd, acc, strict=True)
    ]


def measure(name: str, n: int, asks: int) -> tuple[float, list[float]]:
    import optuna

    from hpo.samplers import make_sampler

    sampler = make_sampler(name, seed=0, options=SAMPLERS[name])
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.add_trials(synthetic_trials(n, seed=n))
    times = []
    gc.collect()
    for _ in range(asks + 1):
        t0 = time.perf_counter()
        trial = study.ask()
        lr = trial.suggest_float("lr", 1e-6, 1e-2, log=True)
        trial.suggest_float("weight_decay", 1e-8, 1e-4, log=True)
        study.tell(trial, min(0.9, 0.1 + 0.7 * max(0.0, (math.log10(lr) + 4) / 2) ** 2))
        times.append(1e3 * (time.perf_counter() - t0))
    return times[0], times[1:]


def stage_boundaries(stage_trials: int = 100, stages: int = 5) -> dict[str, float]:
    """ms of the first ask of each stage (previous stage finished) and of the other asks; and
    a batch of three stages asked before any tell: its ms per ask and its number of sleeps."""
    import optuna

    import hpo.samplers.narrowing as narrowing_module
    from hpo.samplers import NarrowingSampler

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-6, 1e-2, log=True)
        trial.suggest_float("weight_decay", 1e-8, 1e-4, log=True)
        return min(0.9, 0.1 + 0.7 * max(0.0, (math.log10(lr) + 4) / 2) ** 2)

    study = optuna.create_study(direction="maximize", sampler=NarrowingSampler(
        stage_trials=stage_trials, keep_top=10, seed=0))
    first, inside = [], []
    for n in range(stage_trials * stages):
        t0 = time.perf_counter()
        trial = study.ask()
        study.tell(trial, objective(trial))
        (first if n % stage_trials == 0 and n else inside).append(
            1e3 * (time.perf_counter() - t0))
    sleeps: list[float] = []
    real_sleep = narrowing_module.time.sleep
    narrowing_module.time.sleep = sleeps.append
    try:
        batch = optuna.create_study(direction="maximize", sampler=NarrowingSampler(
            stage_trials=stage_trials, keep_top=10, seed=0))
        t0 = time.perf_counter()
        asked = [batch.ask() for _ in range(3 * stage_trials)]
        for trial in asked:
            trial.suggest_float("lr", 1e-6, 1e-2, log=True)
        batch_ms = 1e3 * (time.perf_counter() - t0) / len(asked)
    finally:
        narrowing_module.time.sleep = real_sleep
    return {"first": median(first), "inside": median(inside), "batch": batch_ms,
            "sleeps": float(len(sleeps))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100,1000,10000")
    ap.add_argument("--asks", type=int, default=200, help="timed trials per (sampler, size)")
    ap.add_argument("--tpe-asks", type=int, default=30, help="timed trials for TPE (slow)")
    ap.add_argument("--samplers", default=",".join(SAMPLERS))
    args = ap.parse_args()
    import logging

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # the synthetic landscape puts the best lr on the range's edge: one warning per stage
    logging.getLogger("hpo.samplers.narrowing").setLevel(logging.ERROR)
    sizes = [int(s) for s in args.sizes.split(",")]
    names = args.samplers.split(",")
    print(header(" ".join([".venv/bin/python"] + sys.argv)))
    print(f"in-memory storage; one suggestion = ask + 2 x suggest_float + tell; {args.asks} "
          f"timed trials ({args.tpe_asks} for tpe) after the first\n", flush=True)
    for name in names:  # warm-up: imports, first-call caches
        measure(name, 100, 5)
    res: dict[tuple[str, int], tuple[float, list[float]]] = {}
    for n in sizes:
        for name in names:
            res[(name, n)] = measure(name, n, args.tpe_asks if name == "tpe" else args.asks)
            first, ts = res[(name, n)]
            print(f"  {name} @ {n}: {median(ts):.3f} ms (first {first:.1f} ms), load {loadavg()}",
                  flush=True)
    print(f"\nload average at end {loadavg()}\n")
    print("| sampler | finished trials | ms per suggestion, median | p90 | first ask ms "
          "| vs random (median) | growth vs previous size |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        prev, prev_n = None, 0
        for n in sizes:
            first, ts = res[(name, n)]
            med = median(ts)
            base = median(res[("random", n)][1]) if ("random", n) in res else float("nan")
            growth = "-" if prev is None else f"{med / prev:.2f}x for {n // prev_n}x trials"
            print(f"| {name} | {n:,} | {med:.3f} | {q(ts, 0.9):.3f} | {first:.1f} "
                  f"| {med / base:.2f}x | {growth} |")
            prev, prev_n = med, n
    print("\nresult: " + " ".join(f"{name}@{n}={median(ts):.3f}ms"
                                  for (name, n), (_, ts) in res.items()))
    if "narrowing" in names:
        b = stage_boundaries()
        print("\nnarrowing at stage boundaries (stage_trials 100, 5 stages, in-memory):\n")
        print("| ask | ms, median |\n|---|---|")
        print(f"| first of a stage, previous stage finished | {b['first']:.3f} |")
        print(f"| inside a stage | {b['inside']:.3f} |")
        print(f"| batch ask-and-tell, 300 asks before any tell (one thread) | {b['batch']:.3f} "
              f"(sleeps: {b['sleeps']:.0f}) |")


if __name__ == "__main__":
    main()
