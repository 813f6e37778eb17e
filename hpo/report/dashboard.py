"""optuna-dashboard: what hpo publishes into a study for it, and serving it safely.

**Publishing** (``hpo report``): the report's plotly figures (study system attributes
``dashboard:plot_data:<id>:<i>``), the Best-N note (``dashboard:note_ver`` /
``dashboard:note_str:<i>``); the report's PNG figures as Optuna artifacts of the study
(``optuna.artifacts.upload_artifact`` into a ``FileSystemArtifactStore``: by default the folder
``<db>-artifacts`` beside an SQLite file, :func:`default_artifact_dir`), listed by
``optuna.artifacts.get_all_artifact_meta(study)``; with ``--artifact-dir``, each top trial's
learning curve too, as an artifact of the study that optuna-dashboard also lists on its trial's
page.

**Serving** (``hpo dashboard``): optuna-dashboard's ``wsgi()`` app on waitress (a production
WSGI server, pure Python). optuna-dashboard has no authentication, and its API creates,
renames and deletes studies (``POST /api/studies``, ``DELETE /api/studies/{id}``). It is
therefore bound to 127.0.0.1 by default and served **read-only**: any request other than
GET/HEAD/OPTIONS is refused with 405 unless ``--allow-writes`` is given, and the page hides the
write buttons (:data:`READ_ONLY_CSS`). Pages, the study list, trials and plots are all GETs.
With credentials (:func:`credentials_from_env`) every request but :data:`HEALTH_PATH` needs
them (HTTP basic auth); ``hpo dashboard`` refuses a host beyond loopback without them unless
``--no-auth``. Its HTML page gets one small stylesheet (:data:`PAGE_CSS`): a trial's learning
curves (user attributes of 50 numbers) wrap inside their box instead of widening the trial page
beyond the window, and the spec fits the study's attribute card.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta, upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import FrozenTrial

from hpo.db import optuna_private as oc
from hpo.db.storage import JOIN_WAIT, check_schema, get_storage, resolve_url
from hpo.errors import UsageError

if TYPE_CHECKING:
    import optuna
    import plotly.graph_objects as go

#: optuna-dashboard graph object ids (fixed, so that a second report replaces the first).
GRAPH_IDS = {
    "best_curves": "hpo-best-curves",
    "acc_vs_params": "hpo-acc-vs-params",
    "contour": "hpo-contour",
    "stages": "hpo-stages",
}

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


#: optuna-dashboard 0.21 lays a trial's rows out as a label (``<p>``) and a value box that does
#: not wrap and may not shrink (``white-space: nowrap``, ``min-width: auto``), so one long
#: user attribute widens the whole page. This lets the value boxes wrap instead. Its attribute
#: tables (the study's user attributes: the spec ``hpo:spec``, a JSON line of ~1 kB) are at
#: least 650 px wide (``minWidth: 650``) in a card that is narrower on a half-width card, so
#: the spec was cut off at the card's edge: they may shrink to their card, and a value cell
#: (the last column) may break a line anywhere.
PAGE_CSS = (b"<style>/* hpo: long values wrap in their box */ p.MuiTypography-root + "
            b"div.MuiBox-root { min-width: 0; white-space: normal; overflow-wrap: anywhere; }"
            b' table[aria-label="simple table"] { min-width: 0 !important; }'
            b' table[aria-label="simple table"] td:last-child { overflow-wrap: anywhere; }'
            b"</style>")

#: Read-only mode: optuna-dashboard 0.21 has no read-only option of its own, so this stylesheet
#: hides its write buttons, matched by their labels and icons in its markup (create, rename
#: and delete a study; edit a note; fail a running trial; upload, edit or delete an artifact),
#: and says "read-only" in a corner. The server refuses the writes anyway (:func:`read_only`);
#: a button an optuna-dashboard release renames would show again and get 405.
WRITE_BUTTONS = (
    'button[aria-label="rename study"]', 'button[aria-label="delete study"]',
    'button:has(svg[data-testid="AddBoxIcon"])', 'button:has(svg[data-testid="EditIcon"])',
    'button:has(svg[data-testid="StopCircleIcon"])',
    'button:has(svg[data-testid="UploadFileIcon"])', 'button:has(svg[data-testid="DeleteIcon"])',
    '[role="menuitem"]:has(svg[data-testid="DeleteIcon"])',
    '[role="menuitem"]:has(svg[data-testid="EditIcon"])',
)
READ_ONLY_CSS = (
    "<style>/* hpo: read-only, the write buttons hidden */ "
    + ", ".join(WRITE_BUTTONS) + " { display: none !important; } "
    'body::after { content: "read-only"; position: fixed; right: 10px; bottom: 6px; '
    "font: 12px sans-serif; color: #888; z-index: 10000; pointer-events: none; }</style>"
).encode()


def with_page_css(app: Callable, extra: bytes = b"") -> Callable:
    """Wrap a WSGI app so that its HTML responses carry :data:`PAGE_CSS` and ``extra`` (other
    responses pass through untouched, unbuffered)."""

    def wrapped(environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        got: list[tuple[str, list[tuple[str, str]], Any]] = []

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None):
            got.append((status, headers, exc_info))
            return lambda data: None  # optuna-dashboard (bottle) never calls write()

        body = app(environ, capture)
        chunks = iter(body)
        first = next(chunks, b"") if not got else None  # start_response may come lazily
        status, headers, exc_info = got[-1]
        is_html = any(k.lower() == "content-type" and v.startswith("text/html")
                      for k, v in headers)
        if not is_html or environ.get("REQUEST_METHOD", "GET").upper() != "GET":
            start_response(status, headers, exc_info)
            return body if first is None else _chain(first, chunks, body)
        data = (first or b"") + b"".join(chunks)
        if hasattr(body, "close"):
            body.close()
        if b"</head>" in data:
            data = data.replace(b"</head>", PAGE_CSS + extra + b"</head>", 1)
            headers = [(k, v) for k, v in headers
                       if k.lower() not in ("content-length", "etag")]
            headers.append(("Content-Length", str(len(data))))
        start_response(status, headers, exc_info)
        return [data]

    return wrapped


def _chain(first: bytes, rest: Iterable[bytes], body: Any) -> Iterable[bytes]:
    try:
        yield first
        yield from rest
    finally:
        if hasattr(body, "close"):
            body.close()


#: Served without credentials for health checks (compose, Kubernetes probes); says nothing
#: about any study.
HEALTH_PATH = "/healthz"
USER_ENV = "HPO_DASHBOARD_USER"
PASSWORD_ENV = "HPO_DASHBOARD_PASSWORD"
PASSWORD_FILE_ENV = "HPO_DASHBOARD_PASSWORD_FILE"


@dataclass(frozen=True)
class Credentials:
    """HTTP basic auth credentials of the dashboard."""

    user: str
    password: str = field(repr=False)


def credentials_from_env(env: Mapping[str, str] | None = None) -> Credentials | None:
    """``$HPO_DASHBOARD_USER`` with ``$HPO_DASHBOARD_PASSWORD`` or the first line of the file
    ``$HPO_DASHBOARD_PASSWORD_FILE`` (a mounted Kubernetes Secret); None when none is set.
    Half a pair, an empty value or an unreadable file is bad input (UsageError)."""
    env = os.environ if env is None else env
    user, password = env.get(USER_ENV), env.get(PASSWORD_ENV)
    path = env.get(PASSWORD_FILE_ENV)
    if password is not None and path is not None:
        raise UsageError(f"set {PASSWORD_ENV} or {PASSWORD_FILE_ENV}, not both")
    if path is not None:
        try:
            with open(path, encoding="utf-8") as fh:
                password = fh.readline().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as e:
            why = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
            raise UsageError(f"{PASSWORD_FILE_ENV}={path}: cannot read it ({why})") from None
        if not password:
            raise UsageError(f"{PASSWORD_FILE_ENV}={path}: the file's first line is empty")
    if user is None and password is None:
        return None
    if not user:
        raise UsageError(f"a dashboard password is set but {USER_ENV} is empty or unset: "
                         "set both for HTTP basic auth")
    if ":" in user:
        raise UsageError(f"{USER_ENV} may not contain ':' (HTTP basic auth)")
    if not password:
        raise UsageError(f"{USER_ENV} is set but {PASSWORD_ENV} (or {PASSWORD_FILE_ENV}) is "
                         "empty or unset: set both for HTTP basic auth")
    return Credentials(user, password)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (127.0.0.0/8, ::1) or ``localhost``; any other
    name counts as beyond loopback."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def basic_auth(app: Callable, credentials: Credentials) -> Callable:
    """Wrap a WSGI app so that only requests carrying ``credentials`` (HTTP basic auth)
    reach it; others get 401 with a challenge."""
    want_user = credentials.user.encode()
    want_password = credentials.password.encode()

    def allowed(header: str) -> bool:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, sep, password = base64.b64decode(value.strip(), validate=True).partition(b":")
        except (ValueError, binascii.Error):
            return False
        # both compared, always: the time taken says nothing about which one was wrong
        ok_user = hmac.compare_digest(user, want_user)
        ok_password = hmac.compare_digest(password, want_password)
        return bool(sep) and ok_user and ok_password

    def wrapped(environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        if allowed(environ.get("HTTP_AUTHORIZATION", "")):
            return app(environ, start_response)
        body = b"hpo dashboard: credentials required\n"
        start_response("401 Unauthorized", [
            ("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))),
            ("WWW-Authenticate", 'Basic realm="hpo dashboard", charset="UTF-8"'),
        ])
        return [body]

    return wrapped


def with_health(app: Callable) -> Callable:
    """Answer :data:`HEALTH_PATH` with 200 ``ok`` (no credentials needed); pass the rest on."""

    def wrapped(environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == HEALTH_PATH:
            start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
            return [b"ok\n"]
        return app(environ, start_response)

    return wrapped


def make_app(storage_url: str | None, *, allow_writes: bool = False,
             artifact_dir: str | None = None, credentials: Credentials | None = None) -> Callable:
    """optuna-dashboard's ``wsgi()`` app on the storage, with hpo's layers: its page
    stylesheet; read-only (writes refused, write buttons hidden: :data:`READ_ONLY_CSS`) unless
    ``allow_writes``;
    HTTP basic auth with ``credentials``; :data:`HEALTH_PATH` open."""
    import optuna_dashboard


    url = resolve_url(storage_url)
    # started together with the `hpo run` / `hpo init` that creates the storage: wait for it
    storage = get_storage(url, join_wait=JOIN_WAIT, who="hpo dashboard")
    check_schema(storage, url)
    artifact_store = None
    if artifact_dir:

        artifact_store = FileSystemArtifactStore(artifact_dir)
    app = optuna_dashboard.wsgi(storage, artifact_store=artifact_store)
    if allow_writes:
        app = with_page_css(app)
    else:
        app = read_only(with_page_css(app, extra=READ_ONLY_CSS))
    if credentials is not None:
        app = basic_auth(app, credentials)
    return with_health(app)


#: waitress worker threads: requests served at once (they share the storage's pool of 2
#: connections, storage.py: a request beyond waits for one)
THREADS = 4


def make_server_for(app: Callable, host: str, port: int) -> Any:
    """A waitress server for ``app`` on ``host:port``, already listening (``port`` 0: a free
    one; OSError if it cannot listen). ``server.run()`` serves until a signal;
    :func:`listen_urls` says where it listens."""

    from waitress.server import create_server

    # "Task queue depth is N" on stderr whenever a few requests wait for a thread: normal for a
    # dashboard that polls, not worth a line each
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    return create_server(app, host=host, port=port, threads=THREADS, ident="hpo",
                         clear_untrusted_proxy_headers=True)


def run_in_thread(server: Any) -> Callable[[], None]:
    """Serve ``server`` from a daemon thread (tests, benchmarks); returns the function that
    stops it (closing its sockets under the running loop ends the loop with EBADF: expected)."""

    closed = threading.Event()

    def run() -> None:
        try:
            server.run()
        except (OSError, ValueError):
            if not closed.is_set():
                raise

    threading.Thread(target=run, daemon=True).start()

    def stop() -> None:
        closed.set()
        server.close()

    return stop


def listen_urls(server: Any) -> list[str]:
    """The URLs ``server`` really listens on (the bound ports, not the asked ones)."""
    listen = getattr(server, "effective_listen", None) or [
        (server.effective_host, server.effective_port)]
    return [f"http://[{h}]:{p}/" if ":" in str(h) else f"http://{h}:{p}/" for h, p in listen]


# --- publishing -------------------------------------------------------------------------------


#: Study system attribute prefix under which optuna-dashboard lists a trial's artifacts
#: (``dashboard:artifacts:<trial_id>:<artifact_id>``). Optuna's ``upload_artifact`` cannot
#: attach files to a finished trial (trial attributes are frozen), this location can.
DASHBOARD_ARTIFACTS = "dashboard:artifacts:"


def _has_artifact(study_attrs: dict[str, Any], trial: FrozenTrial, filename: str,
                  store: Any) -> bool:
    """Whether the dashboard already lists ``filename`` for ``trial`` and ``store`` holds it."""

    prefix = f"{DASHBOARD_ARTIFACTS}{oc.trial_id(trial)}:"
    values = [v for k, v in study_attrs.items() if k.startswith(prefix)]
    values += [v for k, v in trial.system_attrs.items() if k.startswith("artifacts:")]
    for value in values:
        try:
            meta = json.loads(value)
            if meta["filename"] != filename:
                continue
            store.open_reader(meta["artifact_id"]).close()
            return True
        except (TypeError, ValueError, KeyError, ArtifactNotFound):  # deleted ones are "null"
            continue
    return False


def default_artifact_dir(url: str) -> str | None:
    """Where a study's artifacts go by default: ``<dir>/<name>-artifacts`` beside an SQLite
    file (``sqlite:///out/hpo.db`` -> ``out/hpo-artifacts``); None for other storages (give
    ``--artifact-dir``)."""
    if not url.startswith("sqlite:///") or "?" in url:
        return None
    path = Path(url.removeprefix("sqlite:///"))
    if not path.name or path.name == ":memory:":
        return None
    return str(path.with_name(f"{path.stem}-artifacts"))


def upload_study_artifact(study: optuna.Study, path: Path, artifact_dir: str) -> str | None:
    """Upload ``path`` as an Optuna artifact of ``study`` into the FileSystemArtifactStore at
    ``artifact_dir`` (``optuna.artifacts.upload_artifact``); None, and nothing written, when
    the study already lists a readable artifact of that file name in that store."""

    Path(artifact_dir).mkdir(parents=True, exist_ok=True)
    store = FileSystemArtifactStore(artifact_dir)
    for meta in get_all_artifact_meta(study):
        if meta.filename == path.name:
            try:
                store.open_reader(meta.artifact_id).close()
                return None
            except ArtifactNotFound:
                continue
    return upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=study)


def upload_trial_artifact(
    study: optuna.Study, trial: FrozenTrial, path: Path, artifact_dir: str
) -> str:
    """Upload ``path`` as an Optuna artifact of the study (a finished trial's attributes are
    frozen) and list the same artifact on the (finished) ``trial``'s page in optuna-dashboard.
    Returns the artifact id."""

    store = FileSystemArtifactStore(artifact_dir)
    artifact_id = upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=study)
    meta = json.loads(oc.study_system_attrs(study)[f"artifacts:{artifact_id}"])
    oc.set_study_system_attr(study, f"{DASHBOARD_ARTIFACTS}{oc.trial_id(trial)}:{artifact_id}",
                             json.dumps(meta))
    return artifact_id


def publish(
    study: optuna.Study,
    plots: dict[str, go.Figure],
    note: str,
    curves: Sequence[tuple[FrozenTrial, Path]] = (),
    artifact_dir: str | None = None,
) -> int:
    """Save the plotly figures and the note into the study for optuna-dashboard and, with
    ``artifact_dir``, each ``(trial, png)`` as an artifact of its trial (unless the trial
    already has that file in this store).
    Returns the number of artifacts uploaded."""
    import optuna_dashboard

    for key, fig in plots.items():
        optuna_dashboard.save_plotly_graph_object(study, fig, graph_object_id=GRAPH_IDS[key])
    optuna_dashboard.save_note(study, note)
    if not artifact_dir or not curves:
        return 0

    Path(artifact_dir).mkdir(parents=True, exist_ok=True)
    store = FileSystemArtifactStore(artifact_dir)
    study_attrs = oc.study_system_attrs(study)
    uploaded = 0
    for trial, path in curves:
        if not _has_artifact(study_attrs, trial, path.name, store):
            upload_trial_artifact(study, trial, path, artifact_dir)
            uploaded += 1
    return uploaded
