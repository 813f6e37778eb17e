"""Launching optuna-dashboard safely.

optuna-dashboard has no authentication, and its API creates, renames and deletes studies
(``POST /api/studies``, ``DELETE /api/studies/{id}``). ``hpo dashboard`` therefore binds
127.0.0.1 by default and serves it **read-only**: any request other than GET/HEAD is refused with
405 unless ``--allow-writes`` is given. Pages, the study list, trials and plots are all GETs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def read_only(app: Callable) -> Callable:
    """Wrap a WSGI app so that only GET/HEAD/OPTIONS reach it; anything else gets 405."""

    def wrapped(environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET").upper()
        if method in READ_METHODS:
            return app(environ, start_response)
        body = json.dumps({"reason": "hpo dashboard is read-only; restart it with "
                                     "--allow-writes to change studies"}).encode()
        start_response("405 Method Not Allowed", [
            ("Content-Type", "application/json"), ("Content-Length", str(len(body))),
            ("Allow", "GET, HEAD, OPTIONS"),
        ])
        return [body]

    return wrapped


def make_app(storage_url: str | None, *, allow_writes: bool = False,
             artifact_dir: str | None = None) -> Callable:
    import optuna_dashboard

    from hpo.storage import check_schema, get_storage, resolve_url

    url = resolve_url(storage_url)
    storage = get_storage(url)
    check_schema(storage, url)
    artifact_store = None
    if artifact_dir:
        from optuna.artifacts import FileSystemArtifactStore

        artifact_store = FileSystemArtifactStore(artifact_dir)
    app = optuna_dashboard.wsgi(storage, artifact_store=artifact_store)
    return app if allow_writes else read_only(app)


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


def serve(args: argparse.Namespace) -> int:
    from hpo.cli import UsageError
    from hpo.storage import mask_url, resolve_url

    app = make_app(args.storage, allow_writes=args.allow_writes, artifact_dir=args.artifact_dir)
    try:
        server = make_server(args.host, args.port, app, server_class=_ThreadingServer,
                             handler_class=_QuietHandler)
    except OSError as e:
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {e.strerror}") from None
    mode = "read-write" if args.allow_writes else "read-only"
    print(f"optuna-dashboard ({mode}) for {mask_url(resolve_url(args.storage))} at "
          f"http://{args.host}:{args.port}/  (Ctrl-C stops)", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
