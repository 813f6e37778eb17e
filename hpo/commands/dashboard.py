"""``hpo dashboard``: optuna-dashboard on the storage, read-only unless told otherwise."""

from __future__ import annotations

import argparse
import os
import sys

from hpo.dashboard import default_artifact_dir, make_app, make_server_for
from hpo.errors import UsageError
from hpo.storage import mask_url, resolve_url


def dashboard(args: argparse.Namespace) -> int:
    beside = default_artifact_dir(resolve_url(args.storage))  # where hpo report stores them
    artifacts = args.artifact_dir or (beside if beside and os.path.isdir(beside) else None)
    app = make_app(args.storage, allow_writes=args.allow_writes, artifact_dir=artifacts)
    try:
        server = make_server_for(app, args.host, args.port)
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
