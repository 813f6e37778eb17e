"""A small model of the storage (issue 26, item 6), fitted to bench_storage.py's cells.

Two fits, each checked against one cell it was not fitted on (``--hold-out``, default 16
clients):

1. **Cost per transaction.** The PostgreSQL server's CPU per trial is (transactions per trial)
   x (CPU per transaction): ``db_ms = x * c``, over the PostgreSQL-direct cells of every client
   kind apart from the held-out ones: ``c_quiet`` (least squares through the origin, cells of at
   most ``--quiet`` clients: the server not time-sliced with its clients), ``c_busy`` (all), and
   ``c(n) = c1 + c2 log2 n`` (a transaction costs more as more clients share the cores).
   Checked: ``x * c(n)`` of the held-out hpo cell against its measured database CPU.
2. **The throughput curve of this machine.** ``n / X(n) = T1 + D * (n - 1)``: one client
   finishes a trial every ``T1`` seconds, each more client adds ``D`` seconds of the shared
   bottleneck per trial, so ``X`` tends to ``1 / D`` trials/s. Fitted (linear least squares)
   on the hpo PostgreSQL-direct cells apart from the held-out one, which it then predicts.
   On this 2-core machine the bottleneck is the cores that clients and server share:
   ``D`` is compared with (client + database CPU per trial) / cores.

Then, past this machine: a dedicated PostgreSQL server spends ``x * c`` of CPU per trial, so one
core serves ``T / (x * c)`` workers of a ``T``-second trial; the proxy tier spends its own
``p`` ms per trial (its cells) and the database behind it the same ``x * c``; several databases
(studies spread over them, a study on one database) multiply it. The table sizes each
for 10, 100 and 1,000 workers of a 0.3 s and of a 30 s trial.

Run: ``.venv/bin/python benchmarks/storage_model.py CELLS.json`` (CELLS.json from
``bench_storage.py --json``).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path


def _lsq_origin(xs: list[float], ys: list[float]) -> float:
    return sum(x * y for x, y in zip(xs, ys, strict=True)) / sum(x * x for x in xs)


def _lsq(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """(intercept, slope) of the least-squares line."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = (sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
             / sum((x - mx) ** 2 for x in xs))
    return my - slope * mx, slope


def fit(cells: list[dict], hold_out: int, quiet: int, cores: int) -> dict:
    pg = [c for c in cells
          if c["storage"] == "postgres" and math.isfinite(c.get("xacts", math.nan))]
    train = [c for c in pg if c["clients"] != hold_out]
    held = [c for c in pg if c["clients"] == hold_out and c["kind"] == "hpo"]
    c_busy = _lsq_origin([c["xacts"] for c in train], [c["db_ms"] for c in train])
    q = [c for c in train if c["clients"] <= quiet]
    c_quiet = _lsq_origin([c["xacts"] for c in q], [c["db_ms"] for c in q])
    # the cost of a transaction grows as the server is time-sliced with more clients:
    # c(n) = c1 + c2 * log2(n), fitted on the per-cell db_ms / xacts of every client kind
    c1, c2 = _lsq([math.log2(c["clients"]) for c in train],
                  [c["db_ms"] / c["xacts"] for c in train])
    hpo = sorted((c for c in pg if c["kind"] == "hpo"), key=lambda c: c["clients"])
    tr = [c for c in hpo if c["clients"] != hold_out]
    t1, d = _lsq([c["clients"] - 1 for c in tr], [c["clients"] / c["tps"] for c in tr])
    out = {"c_busy_ms": c_busy, "c_quiet_ms": c_quiet, "c1_ms": c1, "c2_ms": c2,
           "T1_s": t1, "D_s": d,
           "held_out": hold_out, "cores": cores, "curve": []}
    for c in hpo:
        n = c["clients"]
        out["curve"].append({"clients": n, "tps": c["tps"], "model_tps": n / (t1 + d * (n - 1)),
                             "fitted": n != hold_out, "xacts": c["xacts"], "db_ms": c["db_ms"],
                             "model_db_ms": c["xacts"] * (c1 + c2 * math.log2(n)),
                             "client_ms": c["client_ms"]})
    if held:
        h = held[0]
        out["check"] = {"clients": hold_out, "tps": h["tps"],
                        "model_tps": hold_out / (t1 + d * (hold_out - 1)),
                        "db_ms": h["db_ms"],
                        "model_db_ms": h["xacts"] * (c1 + c2 * math.log2(hold_out))}
    sat = [c for c in hpo if c["clients"] >= 8]
    out["D_from_cpu_s"] = statistics.fmean(
        (c["client_ms"] + c["db_ms"]) / 1000 / cores for c in sat) if sat else math.nan
    prox = [c for c in cells if c["storage"] == "proxy" and c["kind"] == "hpo"]
    out["proxy_ms"] = statistics.median(c["proxy_ms"] for c in prox) if prox else math.nan
    out["proxy_xacts"] = (statistics.median(c["xacts"] for c in prox
                                            if math.isfinite(c.get("xacts", math.nan)))
                          if prox else math.nan)
    out["proxy_tps_max"] = max((c["tps"] for c in prox), default=math.nan)
    return out


def report(m: dict, xacts: float, trial_s: float) -> str:
    lines = []
    lines.append(f"cost per transaction: c_quiet {m['c_quiet_ms']:.2f} ms (cells of at most "
                 f"the quiet count of clients), c_busy {m['c_busy_ms']:.2f} ms (all cells "
                 f"but the {m['held_out']}-client ones); with the clients: c(n) = "
                 f"{m['c1_ms']:.2f} + {m['c2_ms']:.3f} x log2(n) ms")
    lines.append(f"throughput curve: n / X(n) = {m['T1_s'] * 1000:.1f} ms + "
                 f"{m['D_s'] * 1000:.2f} ms x (n - 1): at most {1 / m['D_s']:.0f} trials/s on "
                 f"this machine; D from CPU (client + database per trial / {m['cores']} cores, "
                 f"8-32 clients): {m['D_from_cpu_s'] * 1000:.2f} ms")
    lines.append("")
    lines.append("| hpo clients | trials/s measured | model | transactions/trial | database "
                 "ms/trial measured | model (x * c(n)) | in the fit |")
    lines.append("|---|---|---|---|---|---|---|")
    for r in m["curve"]:
        lines.append(f"| {r['clients']} | {r['tps']:.1f} | {r['model_tps']:.1f} | "
                     f"{r['xacts']:.1f} | {r['db_ms']:.2f} | {r['model_db_ms']:.2f} | "
                     f"{'yes' if r['fitted'] else '**no: the check**'} |")
    if "check" in m:
        ch = m["check"]
        lines.append("")
        lines.append(f"check on the {ch['clients']}-client cell (not fitted): trials/s "
                     f"{ch['tps']:.1f} measured, {ch['model_tps']:.1f} predicted "
                     f"({100 * (ch['model_tps'] / ch['tps'] - 1):+.0f}%); database CPU "
                     f"{ch['db_ms']:.2f} ms/trial measured, {ch['model_db_ms']:.2f} predicted "
                     f"({100 * (ch['model_db_ms'] / ch['db_ms'] - 1):+.0f}%)")
    lines.append("")
    lines.append(f"Past this machine (x = {xacts:.1f} transactions per trial, the book's trial "
                 f"taken as {trial_s:.2f} s; hpo proxy {m['proxy_ms']:.1f} ms of CPU per "
                 f"trial, at most {m['proxy_tps_max']:.0f} trials/s per proxy process here):")
    lines.append("")
    lines.append("| trial | workers | trials/s | PostgreSQL cores (c_quiet - c_busy) | workers "
                 "per PostgreSQL core | direct connections | proxy processes (1 core each) |"
                 " databases of 8 cores |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for t in (0.3, 30.0):
        for n in (10, 100, 1000):
            rate = n / t
            lo, hi = rate * xacts * m["c_quiet_ms"] / 1000, rate * xacts * m["c_busy_ms"] / 1000
            per_lo = t / (xacts * m["c_busy_ms"] / 1000)
            per_hi = t / (xacts * m["c_quiet_ms"] / 1000)
            proxies = rate * m["proxy_ms"] / 1000
            dbs = max(1, math.ceil(hi / 8))
            lines.append(f"| {t:g} s | {n} | {rate:.0f} | {lo:.2f} - {hi:.2f} | "
                         f"{per_lo:.0f} - {per_hi:.0f} | {2 * n} | {math.ceil(proxies)} "
                         f"({proxies:.1f} cores) | {dbs} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cells", type=Path, help="bench_storage.py --json output")
    ap.add_argument("--hold-out", type=int, default=16, help="clients of the check cell")
    ap.add_argument("--quiet", type=int, default=2, help="at most this many clients: quiet")
    ap.add_argument("--cores", type=int, default=2, help="cores of the benchmark's machine")
    ap.add_argument("--xacts", type=float, default=None,
                    help="transactions per trial to size with (default: the calibration's)")
    ap.add_argument("--trial", type=float, default=None,
                    help="the book's trial in s (default: the calibration's)")
    args = ap.parse_args()
    data = json.loads(args.cells.read_text())
    m = fit(data["cells"], args.hold_out, args.quiet, args.cores)
    cals = data.get("calibrations") or []
    xacts = args.xacts or (statistics.median(c["xacts"] for c in cals) if cals else 3.0)
    trial = args.trial or (statistics.median(c["trial_s"] for c in cals) if cals else 0.3)
    print(f"storage_model.py {args.cells} --hold-out {args.hold_out} --quiet {args.quiet}\n")
    print(report(m, xacts, trial))


if __name__ == "__main__":
    main()
