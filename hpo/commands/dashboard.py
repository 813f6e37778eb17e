"""``hpo dashboard``: optuna-dashboard on the storage, on waitress, read-only unless told
otherwise; beyond loopback only with credentials (or ``--no-auth``)."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from hpo.commands import flags
from hpo.errors import Terminated, UsageError

HELP = "serve optuna-dashboard on the storage (read-only)"


def add_arguments(p: flags.Parser) -> None:
    p.description = ("Serve optuna-dashboard on the storage with waitress, read-only unless "
                     "--allow-writes. With HPO_DASHBOARD_USER and HPO_DASHBOARD_PASSWORD (or "
                     "HPO_DASHBOARD_PASSWORD_FILE) set it asks for those credentials (HTTP basic "
                     "auth); a --host beyond loopback needs them, or --no-auth.")
    flags.storage(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; beyond loopback: credentials "
                        "or --no-auth)")
    p.add_argument("--port", type=flags.PORT, default=8080,
                   help="default 8080; 0 picks a free port")
    p.add_argument("--allow-writes", action="store_true",
                   help="let the dashboard create, rename, delete studies and write notes")
    flags.folders(p.add_argument("--artifact-dir", type=flags.existing_folder, metavar="DIR",
                                 help="serve trial artifacts from DIR"))
    p.add_argument("--no-auth", action="store_true",
                   help="listen beyond loopback without credentials (anyone who can reach it "
                        "reads every study)")


def dashboard(args: argparse.Namespace) -> int:
    stop: list[int] = []

    def on_signal(signum, frame):  # noqa: ARG001
        stop.append(signum)
        # waitress's run() returns on KeyboardInterrupt (Terminated is one); outside it, the
        # exception ends the command: 143 / 130 with one line (errors.run_command)
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()

    # first, before the slow imports (optuna, SQLAlchemy): a SIGTERM at any moment is 143
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    from hpo.db.storage import mask_url, resolve_url
    from hpo.report.dashboard import (
        PASSWORD_ENV,
        PASSWORD_FILE_ENV,
        USER_ENV,
        credentials_from_env,
        default_artifact_dir,
        is_loopback,
        listen_urls,
        make_app,
        make_server_for,
    )

    credentials = credentials_from_env()
    if credentials is None and not args.no_auth and not is_loopback(args.host):
        raise UsageError(f"--host {args.host} is beyond loopback: set {USER_ENV} and "
                         f"{PASSWORD_ENV} (or {PASSWORD_FILE_ENV}) for HTTP basic auth, or "
                         "pass --no-auth to serve it to anyone who can reach it")
    beside = default_artifact_dir(resolve_url(args.storage))  # where hpo report stores them
    artifacts = args.artifact_dir or (beside if beside and os.path.isdir(beside) else None)
    app = make_app(args.storage, allow_writes=args.allow_writes, artifact_dir=artifacts,
                   credentials=credentials)
    try:
        server = make_server_for(app, args.host, args.port)  # bound here: the real port is known
    except OSError as e:
        raise UsageError(f"--host {args.host} --port {args.port}: cannot listen there "
                         f"({e.strerror or e})") from None
    mode = "read-write" if args.allow_writes else "read-only"
    auth = f"basic auth as {credentials.user}" if credentials else "no auth"
    print(f"optuna-dashboard ({mode}, {auth}) for {mask_url(resolve_url(args.storage))} at "
          f"{', '.join(listen_urls(server))}  (Ctrl-C stops)", file=sys.stderr, flush=True)
    try:
        server.run()
    finally:
        server.close()
    if stop:
        raise Terminated() if stop[0] == signal.SIGTERM else KeyboardInterrupt()
    return 0
