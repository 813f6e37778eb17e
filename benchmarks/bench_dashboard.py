"""The dashboard's server: waitress (what `hpo dashboard` serves on) against the standard
library's threading wsgiref server (what it served on before), same app, same requests.

    .venv/bin/python benchmarks/bench_dashboard.py --storage sqlite:///hpo.db --requests 200 \
        --clients 4 --rounds 3

Both servers serve ``hpo.report.dashboard.make_app(storage)`` (read-only, page stylesheet) on a free
loopback port in this process; ``clients`` threads each send ``requests / clients`` GETs of the
study's detail (``/api/studies/1?after=0``, what the dashboard polls) and of ``/api/meta``,
alternating; the rounds alternate the servers. Prints requests per second per round and the
median ratio waitress / wsgiref.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpo.report.dashboard import listen_urls, make_app, make_server_for, run_in_thread  # noqa: E402


class _Threading(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args) -> None:
        pass


def serve_wsgiref(app):
    server = make_server("127.0.0.1", 0, app, server_class=_Threading, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}/", lambda: (server.shutdown(),
                                                              server.server_close())


def serve_waitress(app):
    server = make_server_for(app, "127.0.0.1", 0)
    return listen_urls(server)[0], run_in_thread(server)


def load(base: str, requests: int, clients: int) -> float:
    paths = ["api/studies/1?after=0", "api/meta"]
    errors: list[BaseException] = []

    def client(n: int) -> None:
        try:
            for i in range(n):
                with urllib.request.urlopen(base + paths[i % 2], timeout=60) as r:
                    r.read()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=client, args=(requests // clients,))
               for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"request failed: {errors[0]!r}")
    return (requests // clients) * clients / elapsed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--storage", required=True)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    app = make_app(args.storage)
    rates: dict[str, list[float]] = {"wsgiref": [], "waitress": []}
    for rnd in range(args.rounds):
        for name, serve in (("wsgiref", serve_wsgiref), ("waitress", serve_waitress)):
            base, stop = serve(app)
            load(base, 2 * args.clients, args.clients)  # warm up (caches, connections)
            rate = load(base, args.requests, args.clients)
            stop()
            rates[name].append(rate)
            print(f"round {rnd + 1} {name:8s} {rate:7.1f} requests/s", flush=True)
    ratios = [w / r for w, r in zip(rates["waitress"], rates["wsgiref"], strict=True)]
    print(f"median: wsgiref {statistics.median(rates['wsgiref']):.1f} req/s, waitress "
          f"{statistics.median(rates['waitress']):.1f} req/s, ratio waitress/wsgiref "
          f"{statistics.median(ratios):.2f} (per round: "
          f"{', '.join(f'{r:.2f}' for r in ratios)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
