"""``hpo proxy``: Optuna's gRPC storage proxy in front of the database (:mod:`hpo.db.proxy`)."""

from __future__ import annotations

import argparse
import logging
import threading
import time

from hpo.commands import flags
from hpo.errors import UsageError

log = logging.getLogger("hpo.proxy")

HELP = "Optuna's gRPC storage proxy in front of the database"


def add_arguments(p: flags.Parser) -> None:
    p.description = ("Serve the storage to workers over gRPC (workers use --storage "
                     "grpc://HOST:PORT), so hundreds of workers share a few database "
                     "connections.")
    flags.storage(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=flags.count(65535, span=True), default=13000,
                   help="port to listen on")
    p.add_argument("--pool-size", type=flags.count(1000), default=4, metavar="N",
                   help="database connections the proxy may hold")


def proxy(args: argparse.Namespace) -> int:
    """``hpo proxy``: serve the storage over gRPC until interrupted."""
    import optuna

    from hpo.db.proxy import check_port_free, heartbeat_settings, make_storage, sweeper
    from hpo.db.storage import mask_url, resolve_url
    from hpo.signals import raise_at_once

    url = resolve_url(args.storage)
    if url.startswith("grpc://"):
        raise UsageError("hpo proxy needs a database URL (--storage, $HPO_STORAGE or "
                         f"$OPTUNA_STORAGE), not another proxy: {url}")
    interval, grace = heartbeat_settings()
    check_port_free(args.host, args.port)
    storage = make_storage(url, args.pool_size, interval, grace)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    raise_at_once()  # SIGTERM: exit 143 with one line (not a silent death by the signal)
    stop = threading.Event()
    # the first sweep waits a grace period: after a restart of the proxy, every live worker
    # beats again before anything is judged stale
    threading.Thread(target=sweeper, args=(storage, float(interval), stop, float(grace)),
                     daemon=True, name="hpo-stale-sweeper").start()
    log.info("hpo proxy: serving %s at grpc://%s:%d with at most %d database connection(s); "
             "failing stale trials of hpo studies every %d s (grace %d s; proxied workers "
             "beat through the proxy)", mask_url(url), args.host, args.port, args.pool_size,
             interval, grace)
    started = time.monotonic()
    try:
        optuna.storages.run_grpc_proxy_server(storage, host=args.host, port=args.port)
    except RuntimeError as e:  # grpcio: "Failed to bind to address"
        if time.monotonic() - started < 5:
            raise UsageError(f"cannot listen on {args.host}:{args.port}: {e}") from None
        raise
    finally:
        stop.set()
    return 0
