"""optuna-dashboard: what hpo publishes into a study for it, and serving it safely.

**Publishing** (``hpo report``): the report's plotly figures (study system attributes
``dashboard:plot_data:<id>:<i>``), the Best-N note (``dashboard:note_ver`` /
``dashboard:note_str:<i>``); the report's PNG figures as Optuna artifacts of the study
(``optuna.artifacts.upload_artifact`` into a ``FileSystemArtifactStore``: by default the folder
``<db>-artifacts`` beside an SQLite file, :func:`default_artifact_dir`), listed by
``optuna.artifacts.get_all_artifact_meta(study)``; with ``--artifact-dir``, each top trial's
learning curve too, as an artifact of the study that optuna-dashboard also lists on its trial's
page.

**Serving** (``hpo dashboard``): optuna-dashboard has no authentication, and its API creates,
renames and deletes studies (``POST /api/studies``, ``DELETE /api/studies/{id}``). It is
therefore bound to 127.0.0.1 by default and served **read-only**: any request other than
GET/HEAD/OPTIONS is refused with 405 unless ``--allow-writes`` is given. Pages, the study list,
trials and plots are all GETs. Its HTML page gets one small stylesheet (:data:`PAGE_CSS`): a
trial's learning curves (user attributes of 50 numbers) wrap inside their box instead of
widening the trial page beyond the window.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from optuna.trial import FrozenTrial

from hpo import optuna_compat as oc

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
#: user attribute widens the whole page. This lets the value boxes wrap instead.
PAGE_CSS = (b"<style>/* hpo: long values wrap in their box */ p.MuiTypography-root + "
            b"div.MuiBox-root { min-width: 0; white-space: normal; overflow-wrap: anywhere; }"
            b"</style>")


def with_page_css(app: Callable) -> Callable:
    """Wrap a WSGI app so that its HTML responses carry :data:`PAGE_CSS` (other responses pass
    through untouched, unbuffered)."""

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
            data = data.replace(b"</head>", PAGE_CSS + b"</head>", 1)
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


def make_app(storage_url: str | None, *, allow_writes: bool = False,
             artifact_dir: str | None = None) -> Callable:
    import optuna_dashboard

    from hpo.storage import JOIN_WAIT, check_schema, get_storage, resolve_url

    url = resolve_url(storage_url)
    # started together with the `hpo run` / `hpo init` that creates the storage: wait for it
    storage = get_storage(url, join_wait=JOIN_WAIT, who="hpo dashboard")
    check_schema(storage, url)
    artifact_store = None
    if artifact_dir:
        from optuna.artifacts import FileSystemArtifactStore

        artifact_store = FileSystemArtifactStore(artifact_dir)
    app = with_page_css(optuna_dashboard.wsgi(storage, artifact_store=artifact_store))
    return app if allow_writes else read_only(app)


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


def make_server_for(app: Callable, host: str, port: int) -> WSGIServer:
    """A threading WSGI server for ``app`` on ``host:port`` (OSError if it cannot listen)."""
    return make_server(host, port, app, server_class=_ThreadingServer,
                       handler_class=_QuietHandler)


# --- publishing -------------------------------------------------------------------------------


#: Study system attribute prefix under which optuna-dashboard lists a trial's artifacts
#: (``dashboard:artifacts:<trial_id>:<artifact_id>``). Optuna's ``upload_artifact`` cannot
#: attach files to a finished trial (trial attributes are frozen), this location can.
DASHBOARD_ARTIFACTS = "dashboard:artifacts:"


def _has_artifact(study_attrs: dict[str, Any], trial: FrozenTrial, filename: str,
                  store: Any) -> bool:
    """Whether the dashboard already lists ``filename`` for ``trial`` and ``store`` holds it."""
    from optuna.artifacts.exceptions import ArtifactNotFound

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
    from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta, upload_artifact
    from optuna.artifacts.exceptions import ArtifactNotFound

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
    from optuna.artifacts import FileSystemArtifactStore, upload_artifact

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
    from optuna.artifacts import FileSystemArtifactStore

    Path(artifact_dir).mkdir(parents=True, exist_ok=True)
    store = FileSystemArtifactStore(artifact_dir)
    study_attrs = oc.study_system_attrs(study)
    uploaded = 0
    for trial, path in curves:
        if not _has_artifact(study_attrs, trial, path.name, store):
            upload_trial_artifact(study, trial, path, artifact_dir)
            uploaded += 1
    return uploaded
