"""docker-compose.yml in real containers: the engine, the image built from the Dockerfile, the
compose file as users run it (`docker compose`, Compose v2).

Marked ``containers`` (deselected by the default ``pytest`` run; ``pytest -m containers``). They
need a container engine with the images ``scripts/containers-up`` builds: hpo:local (the project's
Dockerfile) and local/postgres:15 (stand-in for postgres:16: no registry here). Without an engine
they skip; with ``HPO_REQUIRE_DOCKER=1`` (CI) they fail instead. A stale hpo:local (built from an
older hpo/, studies/, pyproject.toml or Dockerfile) fails them: rerun ``scripts/containers-up``.

Each test is its own compose project (``-p hpo-it-XXXXXX``: containers, network and volume of its
own, a random database password, the dashboard on a free loopback port) and ends with ``down -v``
however it went. The files: docker-compose.yml, then docker/compose.offline.yml (the local
PostgreSQL image), then tests/containers/compose.test.yml (mounts the test specs into ``init``),
or, for a user's objective, docker-compose.objective.yml instead.
The database is read with ``psql`` inside the postgres container (its port is not published).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.containers

FILES = [ROOT / "docker-compose.yml", ROOT / "docker" / "compose.offline.yml",
         ROOT / "tests" / "containers" / "compose.test.yml"]
IMAGES = ("hpo:local", "local/postgres:15")
SLOW_SPEC = "studies/tests/slow.toml"  # tests/containers/slow.toml, mounted into init
BOOK_SPEC = "studies/book-random.toml"  # copied into the image
TRIAL_LINE = re.compile(r"^trial (\d+) (COMPLETE|PRUNED|FAIL) ", re.M)


# --- the engine and the images ------------------------------------------------------------------


def source_hash() -> str:
    """What scripts/containers-up puts in hpo:local's ``org.hpo.source`` label: sha256 of the
    ``sha256sum`` listing of hpo/, studies/, pyproject.toml and the Dockerfile (sorted paths)."""
    paths = [p.relative_to(ROOT).as_posix() for d in ("hpo", "studies")
             for p in (ROOT / d).rglob("*")
             if p.is_file() and p.suffix != ".pyc" and "__pycache__" not in p.parts]
    paths += ["pyproject.toml", "Dockerfile"]
    listing = "".join(f"{hashlib.sha256((ROOT / p).read_bytes()).hexdigest()}  {p}\n"
                      for p in sorted(paths))
    return hashlib.sha256(listing.encode()).hexdigest()


def _run(*cmd: str, timeout: float = 60, check: bool = False,
         **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r


def _engine_problem() -> str | None:
    """Why the container tests cannot run here, or None. Only a missing engine is a reason to
    skip; missing or stale images are failures (see ``engine``)."""
    if shutil.which("docker") is None:
        return "no docker CLI"
    try:
        r = _run("docker", "info", "--format", "{{.ServerVersion}}", timeout=20)
    except subprocess.TimeoutExpired:
        return "docker info timed out"
    if r.returncode != 0:
        return f"no container engine answers: {r.stderr.strip().splitlines()[-1:]}"
    return None


@pytest.fixture(scope="session")
def engine() -> None:
    problem = _engine_problem()
    if problem:
        if os.environ.get("HPO_REQUIRE_DOCKER") == "1":
            pytest.fail(f"{problem}, and HPO_REQUIRE_DOCKER=1 (run scripts/containers-up)")
        pytest.skip(problem)
    r = _run("docker", "compose", "version", "--short")
    assert r.returncode == 0 and r.stdout.startswith("2."), (
        f"`docker compose` (Compose v2) is missing: run scripts/containers-up\n{r.stderr}")
    for image in IMAGES:
        r = _run("docker", "image", "inspect", image)
        assert r.returncode == 0, f"image {image} is missing: run scripts/containers-up"
    r = _run("docker", "image", "inspect", "hpo:local", "--format",
             '{{index .Config.Labels "org.hpo.source"}}', check=True)
    assert r.stdout.strip() == source_hash(), (
        "hpo:local was built from other sources than this tree: run scripts/containers-up")


# --- one compose project per test ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    """One compose project: ``docker compose -p NAME --env-file ENV -f ... ARGS``."""

    def __init__(self, tmp_path: Path, files: list[Path] = FILES, **env: str) -> None:
        self.name = f"hpo-it-{secrets.token_hex(3)}"
        self.files = files
        self.port = _free_port()
        self.env_file = tmp_path / "compose.env"
        text = (ROOT / ".env.example").read_text()
        self.login = ("hpo", secrets.token_hex(8))
        values = {"POSTGRES_PASSWORD": secrets.token_hex(12),
                  "HPO_DASHBOARD_PORT": str(self.port), "HPO_DASHBOARD_USER": self.login[0],
                  "HPO_DASHBOARD_PASSWORD": self.login[1], **env}
        for key, value in values.items():
            text, n = re.subn(rf"^{key}=.*$", f"{key}={value}", text, flags=re.M)
            if not n:
                text += f"\n{key}={value}\n"
        self.env_file.write_text(text)
        self.study = values.get("HPO_STUDY", "book-random")

    def compose(self, *args: str, timeout: float = 180, check: bool = True,
                profile: bool = False) -> subprocess.CompletedProcess:
        files = [x for f in self.files for x in ("-f", str(f))]
        clean = {k: v for k, v in os.environ.items()
                 if not k.startswith(("HPO_", "POSTGRES_", "COMPOSE_"))}
        cmd = ["docker", "compose", "-p", self.name, "--env-file", str(self.env_file), *files,
               *(["--profile", "proxy"] if profile else []), *args]
        return _run(*cmd, timeout=timeout, check=check, cwd=ROOT, env=clean)

    def up(self, *args: str, profile: bool = False) -> None:
        self.compose("up", "-d", "--no-build", *args, profile=profile, timeout=300)

    def containers(self, service: str) -> list[str]:
        """IDs of the service's containers, running or not, in replica order."""
        r = self.compose("ps", "-a", "--format", "json", service, profile=True)
        rows = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
        rows.sort(key=lambda c: c["Name"])
        return [c["ID"] for c in rows]

    def sql(self, query: str) -> list[list[str]]:
        r = self.compose("exec", "-T", "postgres", "sh", "-c",
                         'psql -U "$POSTGRES_USER" -d "$POSTGRES_DB" -AtF"|" -c "$0"', query)
        return [line.split("|") for line in r.stdout.splitlines() if line]

    def states(self) -> dict[str, int]:
        rows = self.sql("SELECT t.state, count(*) FROM trials t JOIN studies s USING (study_id) "
                        f"WHERE s.study_name = '{self.study}' GROUP BY t.state")
        return {state: int(n) for state, n in rows}

    def logs(self, container: str) -> str:
        r = _run("docker", "logs", container, timeout=30)
        return r.stdout + r.stderr

    def dump(self) -> str:
        r = self.compose("logs", "--no-color", "--tail", "30", profile=True, check=False)
        return r.stdout[-6000:]

    def leftovers(self) -> dict[str, list[str]]:
        """Containers, networks and volumes that still carry this project's label."""
        label = f"label=com.docker.compose.project={self.name}"
        out = {}
        for kind, cmd in (("containers", ["ps", "-a"]), ("networks", ["network", "ls"]),
                          ("volumes", ["volume", "ls"])):
            r = _run("docker", *cmd, "-q", "--filter", label, check=True)
            out[kind] = r.stdout.split()
        return out

    def remove(self) -> None:
        """Whatever happened: remove everything of the project (all profiles, volumes)."""
        self.compose("down", "-v", "--remove-orphans", "--timeout", "5", profile=True,
                     check=False, timeout=120)
        left = self.leftovers()
        for c in left["containers"]:
            _run("docker", "rm", "-f", "-v", c)
        for n in left["networks"]:
            _run("docker", "network", "rm", n)
        for v in left["volumes"]:
            _run("docker", "volume", "rm", "-f", v)


@pytest.fixture
def stack(engine, tmp_path) -> Iterator[Callable[..., Stack]]:
    made: list[Stack] = []

    def make(files: list[Path] = FILES, **env: str) -> Stack:
        s = Stack(tmp_path, files, **env)
        made.append(s)
        return s

    yield make
    for s in made:
        s.remove()


def inspect(container: str) -> dict:
    r = _run("docker", "inspect", container, check=True)
    return json.loads(r.stdout)[0]


def wait_for(predicate: Callable[[], object], timeout: float, what: str,
             stack: Stack | None = None, every: float = 0.5) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}"
                + (f"\n{stack.dump()}" if stack else ""))


def exited(containers: list[str]) -> bool:
    return all(inspect(c)["State"]["Status"] == "exited" for c in containers)


def exit_codes(containers: list[str]) -> list[int]:
    return [inspect(c)["State"]["ExitCode"] for c in containers]


def assert_exact(s: Stack, budget: int) -> dict[str, int]:
    states = s.states()
    assert states.get("COMPLETE", 0) == budget, states
    assert not states.get("RUNNING") and not states.get("WAITING"), states
    return states


def kill_mid_trial(s: Stack, container: str, timeout: float = 120) -> None:
    """SIGKILL ``container`` in the middle of a trial: once it has printed a finished trial, 0.5 s
    after that line (the next trial starts within ~0.1 s, and a slow-spec trial takes ~2 s of CPU,
    ~3 s with 3 workers on 2 cores).
    The caller checks afterwards that a trial was indeed failed."""
    deadline = time.monotonic() + timeout
    seen, since = 0, time.monotonic()
    while time.monotonic() < deadline:
        n = len(TRIAL_LINE.findall(s.logs(container)))
        if n != seen:
            seen, since = n, time.monotonic()
        elif seen and time.monotonic() - since >= 0.5:
            _run("docker", "kill", container, check=True)
            return
        time.sleep(0.1)
    pytest.fail(f"{container} printed no trial in {timeout:.0f} s\n{s.dump()}")


def retried(s: Stack) -> list[list[str]]:
    """(failed trial number, number of the trial that re-ran its params) pairs: Optuna's retry
    callback records ``failed_trial`` on the re-queued trial."""
    return s.sql("SELECT a.value_json, t.number, t.state FROM trial_system_attributes a "
                 "JOIN trials t USING (trial_id) WHERE a.key = 'failed_trial'")


def http(url: str, method: str = "GET", body: bytes | None = None,
         auth: tuple[str, str] | None = None) -> int:
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


# --- the tests ----------------------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_stack_runs_the_budget_exactly_and_down_v_removes_it(stack):
    """postgres, init, 3 workers, dashboard: exactly 20 trials; the dashboard answers on its
    loopback port and refuses writes; `down -v` leaves nothing of the project."""
    s = stack(HPO_SPEC=BOOK_SPEC, HPO_STUDY="book-random", HPO_N_TRIALS="20", HPO_WORKERS="3")
    s.up()
    workers = s.containers("worker")
    assert len(workers) == 3
    wait_for(lambda: exited(workers), 300, "3 workers to finish 20 trials", s)
    assert exit_codes(workers) == [0, 0, 0], s.dump()
    assert exit_codes(s.containers("init")) == [0]
    assert_exact(s, 20)
    logs = "".join(s.logs(w) for w in workers)
    assert len(TRIAL_LINE.findall(logs)) == 20, logs[-3000:]
    assert logs.count("study holds 20 finished of its budget 20 (budget)") == 3

    # the dashboard: healthy, on 127.0.0.1 only, read-only; the database is not published
    dashboard = inspect(s.containers("dashboard")[0])
    wait_for(lambda: inspect(dashboard["Id"])["State"].get("Health", {}).get("Status")
             == "healthy", 90, "the dashboard's healthcheck", s)
    bindings = dashboard["NetworkSettings"]["Ports"]["8080/tcp"]
    assert [(b["HostIp"], b["HostPort"]) for b in bindings] == [("127.0.0.1", str(s.port))]
    base = f"http://127.0.0.1:{s.port}"
    assert http(f"{base}/api/meta") == 401  # the login of .env is asked for
    assert http(f"{base}/api/meta", auth=s.login) == 200
    auth = "Basic " + base64.b64encode(":".join(s.login).encode()).decode()
    req = urllib.request.Request(f"{base}/api/studies", headers={"Authorization": auth})
    with urllib.request.urlopen(req, timeout=10) as resp:
        studies = json.load(resp)["study_summaries"]
    assert [st["study_name"] for st in studies] == ["book-random"]
    assert http(f"{base}/api/studies", "POST", b'{"study_name": "x", "directions": '
                b'["minimize"]}', auth=s.login) == 405
    assert http(f"{base}/api/studies/{studies[0]['study_id']}", "DELETE", auth=s.login) == 405
    assert [st[0] for st in s.sql("SELECT study_name FROM studies")] == ["book-random"]
    postgres = inspect(s.containers("postgres")[0])
    assert not any(postgres["NetworkSettings"]["Ports"].values())

    s.compose("down", "-v")
    assert s.leftovers() == {"containers": [], "networks": [], "volumes": []}


@pytest.mark.timeout(600)
def test_killed_worker_trial_is_failed_after_60s_and_rerun(stack):
    """`docker kill` (SIGKILL) of a worker container in the middle of a trial: its trial is failed
    once its heartbeat is 60 s stale, re-run with the same parameters, and the study still ends
    with exactly its budget."""
    budget = 12
    s = stack(HPO_SPEC=SLOW_SPEC, HPO_STUDY="slow", HPO_N_TRIALS=str(budget), HPO_WORKERS="3")
    s.up()
    workers = s.containers("worker")
    victim = workers[0]
    kill_mid_trial(s, victim)
    killed_at = time.monotonic()
    victim_state = inspect(victim)
    assert victim_state["State"]["ExitCode"] == 137
    others = workers[1:]
    wait_for(lambda: exited(others), 300, "the other workers to finish the budget", s)
    elapsed = time.monotonic() - killed_at
    assert exit_codes(others) == [0, 0], s.dump()
    states = assert_exact(s, budget)
    # the killed worker's trial, and nothing else (a surplus trial, failed by the budget's claim
    # when two workers start the last slot at once, is not an error)
    (fails,), = s.sql("SELECT count(*) FROM trials t WHERE t.state = 'FAIL' AND NOT EXISTS "
                      "(SELECT 1 FROM trial_system_attributes a WHERE a.trial_id = t.trial_id "
                      "AND a.key = 'hpo:surplus')")
    assert fails == "1", (states, s.sql(
        "SELECT t.number, string_agg(a.key, ',') FROM trials t LEFT JOIN trial_system_attributes "
        "a USING (trial_id) WHERE t.state = 'FAIL' GROUP BY t.number"))
    pairs = retried(s)
    assert len(pairs) == 1, pairs
    (failed, rerun, state), = pairs
    assert state == "COMPLETE"
    params = s.sql("SELECT t.number, p.param_name, p.param_value FROM trial_params p JOIN trials t "
                   f"USING (trial_id) WHERE t.number IN ({failed}, {rerun}) ORDER BY 2, 1")
    by_name: dict[str, set[str]] = {}
    for _number, name, value in params:
        by_name.setdefault(name, set()).add(value)
    assert set(by_name) == {"lr", "weight_decay"} and all(len(v) == 1 for v in by_name.values())
    assert elapsed >= 60, f"the trial was failed {elapsed:.0f} s after the kill: before 60 s?"
    # Docker counts `docker kill` as a manual stop: `restart: on-failure` does not bring it back
    assert inspect(victim)["RestartCount"] == 0 and victim_state["State"]["Status"] == "exited"


@pytest.fixture(scope="module")
def stopped(engine, tmp_path_factory) -> Iterator[dict]:
    """3 workers on the slow spec, all in a trial, then `docker compose stop` (SIGTERM through
    tini, the `init: true` PID 1): what the two tests below look at (one stack for both)."""
    s = Stack(tmp_path_factory.mktemp("stopped"), HPO_SPEC=SLOW_SPEC, HPO_STUDY="slow",
              HPO_N_TRIALS="30", HPO_WORKERS="3")
    try:
        s.up()
        workers = s.containers("worker")
        wait_for(lambda: s.states().get("COMPLETE", 0) >= 2 and s.states().get("RUNNING") == 3,
                 240, "2 finished trials and 3 running", s, every=0.2)
        t0 = time.monotonic()
        s.compose("stop", "worker")
        took = time.monotonic() - t0
        yield {"stack": s, "workers": workers, "took": took, "states": s.states(),
               "info": [inspect(w) for w in workers], "logs": [s.logs(w) for w in workers]}
    finally:
        s.remove()


@pytest.mark.timeout(600)
def test_stop_fails_running_trials_and_exits_143(stopped):
    """docs/compose.md: `stop` sends SIGTERM; each worker fails its running trial and exits 143
    (nothing is left RUNNING) and is not restarted."""
    states = stopped["states"]
    assert not states.get("RUNNING") and not states.get("WAITING"), states
    assert states.get("FAIL", 0) >= 1, states  # the interrupted trials
    for info, log in zip(stopped["info"], stopped["logs"], strict=True):
        assert info["HostConfig"]["Init"] is True  # tini is PID 1 and forwards SIGTERM
        assert info["State"]["Status"] == "exited"
        assert info["State"]["ExitCode"] == 143, log[-2000:]
        assert info["RestartCount"] == 0
        assert log.rstrip().endswith("hpo: terminated"), log[-2000:]
    assert stopped["took"] < 10, "SIGTERM did not stop the workers: Compose had to SIGKILL"


@pytest.mark.timeout(600)
def test_stop_prints_one_line_and_no_traceback(stopped):
    """What a stopped worker prints after its last finished trial: one line, no traceback."""
    for log in stopped["logs"]:
        trials = list(TRIAL_LINE.finditer(log))
        after = log[log.index("\n", trials[-1].end()) + 1:] if trials else log
        assert "Traceback" not in log, log[-3000:]
        assert after.splitlines() == ["hpo: terminated"], after[-3000:]


@pytest.mark.timeout(900)
def test_proxy_profile_runs_stops_resumes_and_down_v_removes_it(stack):
    """The `proxy` profile: 3 proxied workers, `stop` mid-study (exit 143, nothing RUNNING), `up`
    again to resume, exactly the budget; `down -v --profile proxy` removes everything, proxy
    included (a plain `down -v` leaves the proxy's container and network behind)."""
    budget = 10
    s = stack(HPO_SPEC=SLOW_SPEC, HPO_STUDY="slow", HPO_N_TRIALS=str(budget),
              HPO_PROXY_WORKERS="3")
    s.up("--scale", "worker=0", profile=True)
    assert s.containers("worker") == []
    workers = s.containers("worker-proxied")
    assert len(workers) == 3
    proxy = s.containers("proxy")[0]
    env = inspect(workers[0])["Config"]["Env"]
    assert any(re.fullmatch(r"HPO_STORAGE=grpc://proxy:\d+", e) for e in env), env
    assert not any(e.startswith("POSTGRES_") or "postgresql" in e for e in env), env
    wait_for(lambda: s.states().get("COMPLETE", 0) >= 2 and s.states().get("RUNNING") == 3,
             240, "2 finished trials and 3 running", s, every=0.2)
    s.compose("stop", "worker-proxied", profile=True)
    states = s.states()
    assert not states.get("RUNNING") and states.get("FAIL", 0) >= 1, states
    assert exit_codes(workers) == [143, 143, 143]
    assert inspect(proxy)["State"]["Status"] == "running"

    s.up("--scale", "worker=0", profile=True)  # resume: the same containers start again
    assert s.containers("worker-proxied") == workers
    wait_for(lambda: exited(workers), 300, "the proxied workers to finish the budget", s)
    assert exit_codes(workers) == [0, 0, 0], s.dump()
    assert_exact(s, budget)
    # the database's clients: the proxy (at most HPO_PROXY_POOL_SIZE = 4 connections) and the
    # dashboard, never a proxied worker
    def ip(container: str) -> str:
        networks = inspect(container)["NetworkSettings"]["Networks"]
        return next(iter(networks.values()))["IPAddress"]

    rows = s.sql("SELECT client_addr, count(*) FROM pg_stat_activity WHERE client_addr IS NOT "
                 "NULL AND datname = current_database() GROUP BY 1")
    clients = {addr: int(n) for addr, n in rows}
    assert set(clients) <= {ip(proxy), ip(s.containers("dashboard")[0])}, clients
    assert 1 <= clients.get(ip(proxy), 0) <= 4, clients

    s.compose("down", "-v", profile=True)
    assert s.leftovers() == {"containers": [], "networks": [], "volumes": []}


@pytest.mark.timeout(600)
def test_killed_proxied_worker_trial_is_failed_and_rerun(stack):
    budget = 12
    s = stack(HPO_SPEC=SLOW_SPEC, HPO_STUDY="slow", HPO_N_TRIALS=str(budget),
              HPO_PROXY_WORKERS="3")
    s.up("--scale", "worker=0", profile=True)
    workers = s.containers("worker-proxied")
    kill_mid_trial(s, workers[0])
    # direct workers get 60 s grace; give the proxy the same plus its 10 s sweep and the re-run
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline and not exited(workers[1:]):
        time.sleep(1)
    states = s.states()
    assert exited(workers[1:]), f"the other proxied workers are still waiting: {states}"
    assert exit_codes(workers[1:]) == [0, 0]
    assert_exact(s, budget)
    assert len(retried(s)) == 1



# --- a user's own objective: docker-compose.objective.yml ---------------------------------------

OBJECTIVE_FILES = [ROOT / "docker-compose.yml", ROOT / "docker" / "compose.offline.yml",
                   ROOT / "docker-compose.objective.yml"]


def _wheel(folder: Path, name: str, version: str, files: dict[str, str]) -> str:
    """A pure-Python wheel written by hand (what `pip wheel` makes of a one-module project): a
    requirement of the user's objective that no index serves, installed from the folder's
    wheels/ only."""
    dist = f"{name.replace('-', '_')}-{version}"
    info = f"{dist}.dist-info"
    contents = {**files,
                f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
                f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: hpo-tests\n"
                                 "Root-Is-Purelib: true\nTag: py3-none-any\n"}
    record = []
    for path, text in contents.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    contents[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    wheel = f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(folder / wheel, "w") as z:
        for path, text in contents.items():
            z.writestr(path, text)
    return wheel


def _objective_folder(folder: Path) -> None:
    """examples/quadratic.toml as it is, beside a quadratic.py of the user's that needs a package
    of its own (requirements.txt, and the package's wheel in wheels/)."""
    (folder / "wheels").mkdir(parents=True)
    shutil.copy(ROOT / "examples" / "quadratic.toml", folder / "quadratic.toml")
    (folder / "quadratic.py").write_text(
        "from rosen_helper import rosenbrock  # requirements.txt: not part of hpo's image\n\n\n"
        "def objective(trial, config):\n"
        "    x = trial.suggest_float('x', -2.0, 2.0)\n"
        "    y = trial.suggest_float('y', -1.0, 3.0)\n"
        "    return rosenbrock(x, y, config['a'], config['b'])\n")
    (folder / "requirements.txt").write_text("rosen-helper==0.1\n")
    _wheel(folder / "wheels", "rosen-helper", "0.1", {
        "rosen_helper.py": "def rosenbrock(x, y, a, b):\n"
                           "    return (a - x) ** 2 + b * (y - x * x) ** 2\n"})
    for p in [folder, *folder.rglob("*")]:  # readable by the image's user 10001
        p.chmod(0o755 if p.is_dir() else 0o644)


def test_objective_dockerfile_is_the_compose_files():
    """docker/objective.Dockerfile (docs/kubernetes.md) and docker-compose.objective.yml's inline
    copy give the same instructions (comments aside; Compose's `$$` is a `$`)."""
    import yaml

    def instructions(text: str) -> list[str]:
        return [line.strip() for line in text.splitlines()
                if line.strip() and not line.lstrip().startswith("#")]

    compose = yaml.safe_load((ROOT / "docker-compose.objective.yml").read_text().replace(
        "!reset", ""))
    inline = compose["services"]["init"]["build"]["dockerfile_inline"].replace("$$", "$")
    assert instructions(inline) == instructions(
        (ROOT / "docker" / "objective.Dockerfile").read_text())


@pytest.mark.timeout(600)
def test_user_objective_runs_in_the_stack_with_its_requirements(stack, tmp_path, monkeypatch):
    """docker-compose.objective.yml: the user's folder (examples/quadratic.toml, its own
    quadratic.py needing a package from requirements.txt) built into an image FROM hpo:local,
    mounted read-only at /objective; `init` gets the spec from there, 2 workers run the code
    from HPO_CODE_DIR=/objective on PostgreSQL: exactly the budget, minimized, nothing RUNNING."""
    # Compose builds `dockerfile_inline` with the engine's BuildKit: the classic builder
    # (DOCKER_BUILDKIT=0, what scripts/containers-up uses for `docker build`) cannot
    monkeypatch.delenv("DOCKER_BUILDKIT", raising=False)
    folder = tmp_path / "my-objective"
    _objective_folder(folder)
    budget = 30
    s = stack(OBJECTIVE_FILES, HPO_OBJECTIVE_DIR=str(folder), HPO_OBJECTIVE_SPEC="quadratic.toml",
              HPO_OBJECTIVE_IMAGE=f"hpo-objective-it:{secrets.token_hex(3)}",
              HPO_STUDY="rosenbrock", HPO_N_TRIALS=str(budget), HPO_WORKERS="2")
    image = re.search(r"^HPO_OBJECTIVE_IMAGE=(.+)$", s.env_file.read_text(), re.M).group(1)
    try:
        s.compose("build", "init", timeout=300)
        s.up()
        workers = s.containers("worker")
        assert len(workers) == 2
        wait_for(lambda: exited(workers), 300, f"2 workers to finish {budget} trials", s)
        assert exit_codes(s.containers("init")) == [0], s.dump()
        assert exit_codes(workers) == [0, 0], s.dump()
        assert_exact(s, budget)
        assert s.sql("SELECT d.direction FROM study_directions d JOIN studies t USING "
                     "(study_id) WHERE t.study_name = 'rosenbrock'") == [["MINIMIZE"]]
        (best,), = s.sql("SELECT min(v.value) FROM trial_values v JOIN trials t USING "
                         "(trial_id) WHERE t.state = 'COMPLETE'")
        assert 0 <= float(best) < 10, best  # the valley's floor is 0; 30 trials get near it
        logs = "".join(s.logs(w) for w in workers)
        assert len(TRIAL_LINE.findall(logs)) == budget, logs[-3000:]
        for w in [*workers, *s.containers("init")]:
            info = inspect(w)
            assert info["Config"]["Image"] == image
            (mount,) = [m for m in info["Mounts"] if m["Destination"] == "/objective"]
            assert mount["Source"] == str(folder) and mount["RW"] is False, mount
        env = inspect(workers[0])["Config"]["Env"]
        assert "HPO_CODE_DIR=/objective" in env, env
        # the requirement is in hpo's venv in the image, not in the user's folder
        r = _run("docker", "run", "--rm", "--entrypoint", "python", image, "-c",
                 "import rosen_helper; print(rosen_helper.__file__)", check=True)
        assert r.stdout.strip().startswith("/opt/hpo/lib/"), r.stdout
    finally:
        s.remove()
        _run("docker", "image", "rm", "-f", image, timeout=120)

# --- the Kubernetes pods' containers, under their security contexts, on the engine ---------------


def _docker_run_args(c: dict, pod: dict, env: dict[str, str], name: str, network: str,
                     project: str) -> list[str]:
    """``docker run`` options for a Kubernetes container: its user, read-only root, dropped
    capabilities, no privilege escalation, memory and CPU limits, /tmp emptyDir as a tmpfs."""
    sc, psc = c["securityContext"], pod["securityContext"]
    limits = c["resources"]["limits"]
    args = ["docker", "run", "--name", name, "--network", network,
            "--label", f"com.docker.compose.project={project}",
            "--user", f"{psc['runAsUser']}:{psc['runAsGroup']}",
            "--memory", limits["memory"].replace("Mi", "m").replace("Gi", "g"),
            "--cap-drop", "ALL"]
    if sc["allowPrivilegeEscalation"] is False:
        args += ["--security-opt", "no-new-privileges"]
    if sc.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    if any(m["mountPath"] == "/tmp" for m in c.get("volumeMounts", [])):
        args += ["--tmpfs", "/tmp"]
    if "cpu" in limits:
        args += ["--cpus", limits["cpu"]]
    for key, value in env.items():
        args += ["-e", f"{key}={value}"]
    return args


@pytest.mark.timeout(600)
@pytest.mark.parametrize("kustomization", ["base", "overlays/objective"])
def test_k8s_pods_run_in_containers_under_their_security_context(engine, tmp_path,
                                                                   kustomization):
    """deploy/k8s/base's hpo containers (init containers included) as containers of hpo:local
    with the manifests' user, read-only root filesystem, `drop: [ALL]` capabilities,
    no-new-privileges and limits, their env expanded as Kubernetes does from the ConfigMap and
    a Secret pointing at a database container named `postgres`: the init Job, 2 workers (the
    base's parallelism) and the dashboard, whose readiness probe answers. The database is the
    local stand-in image (not postgres:16 under the StatefulSet's security context).
    overlays/objective: the same with the init Job and the workers on the image of a user's
    objective, built as docs/kubernetes.md says (docker/objective.Dockerfile, hpo's examples/
    as the user's folder): the spec and the code from /objective in the image."""
    from tests.test_kubernetes import K8S, container_env, expand, pod_spec, render

    docs = {(d["kind"], d["metadata"]["name"]): d for d in render(K8S / kustomization)}
    project = f"hpo-it-{secrets.token_hex(3)}"
    if kustomization == "overlays/objective":
        (c,) = pod_spec(docs[("Job", "hpo-workers")])["containers"]
        _run("docker", "build", "-f", str(ROOT / "docker" / "objective.Dockerfile"), "-t",
             c["image"], str(ROOT / "examples"), timeout=300, check=True)
    network = f"{project}_k8s"
    password = secrets.token_hex(12)
    budget = 8
    cms = {"hpo-study": {**docs[("ConfigMap", "hpo-study")]["data"],
                         "HPO_N_TRIALS": str(budget)}}
    sec = {"hpo-db": {"POSTGRES_USER": "hpo", "POSTGRES_PASSWORD": password,
                      "POSTGRES_DB": "hpo", "POSTGRES_HOST": "postgres",
                      "POSTGRES_PORT": "5432"},
           "hpo-dashboard": {"HPO_DASHBOARD_USER": "hpo",
                             "HPO_DASHBOARD_PASSWORD": secrets.token_hex(8)}}
    port = _free_port()

    def run(doc: dict, c: dict, name: str, detach: bool, publish: str = "") -> str:
        env = container_env(c, cms, sec)
        cmd = _docker_run_args(c, pod_spec(doc), env, name, network, project)
        if publish:
            cmd += ["-p", publish]
        if "command" in c:
            cmd += ["--entrypoint", c["command"][0]]
        cmd += ["-d"] if detach else []
        cmd.append(c["image"])
        cmd += [expand(a, env) for a in [*c.get("command", [])[1:], *c.get("args", [])]]
        r = _run(*cmd, timeout=300)
        assert r.returncode == 0, f"{name} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
        return r.stdout

    def pod(doc: dict, name: str, publish: str = "") -> str:
        spec = pod_spec(doc)
        for i, c in enumerate(spec.get("initContainers", [])):
            run(doc, c, f"{name}-init{i}", detach=False)
        (c,) = spec["containers"]
        run(doc, c, name, detach=True, publish=publish)
        return name

    _run("docker", "network", "create", "--label", f"com.docker.compose.project={project}",
         network, check=True)
    try:
        _run("docker", "run", "-d", "--name", f"{project}-postgres", "--network", network,
             "--network-alias", "postgres", "--label",
             f"com.docker.compose.project={project}", "-e", "POSTGRES_USER=hpo", "-e",
             f"POSTGRES_PASSWORD={password}", "-e", "POSTGRES_DB=hpo", "local/postgres:15",
             check=True)
        init = pod(docs[("Job", "hpo-init")], f"{project}-init")
        wait_for(lambda: exited([init]), 120, "the init Job's container")
        assert exit_codes([init]) == [0], _run("docker", "logs", init).stderr
        job = docs[("Job", "hpo-workers")]
        workers = [pod(job, f"{project}-worker-{i}") for i in range(job["spec"]["parallelism"])]
        dashboard = pod(docs[("Deployment", "hpo-dashboard")], f"{project}-dashboard",
                        publish=f"127.0.0.1:{port}:8080")
        wait_for(lambda: exited(workers), 300, "the workers to finish the budget")
        assert exit_codes(workers) == [0] * len(workers), [
            _run("docker", "logs", w).stderr[-2000:] for w in workers]
        info = inspect(workers[0])
        assert info["HostConfig"]["ReadonlyRootfs"] is True
        assert info["Config"]["User"] == "10001:10001"

        def psql(query: str) -> list[str]:
            return _run("docker", "exec", f"{project}-postgres", "psql", "-U", "hpo", "-d", "hpo",
                        "-Atc", query, check=True).stdout.split()

        # exactly the budget, and nothing else but surplus trials (two workers that start the
        # last slot at once: the later one's claim fails it with hpo:surplus; not an error)
        states = psql("SELECT t.state, count(*) FROM trials t WHERE NOT EXISTS (SELECT 1 FROM "
                      "trial_system_attributes a WHERE a.trial_id = t.trial_id AND "
                      "a.key = 'hpo:surplus') GROUP BY t.state")
        assert states == [f"COMPLETE|{budget}"], (states, psql(
            "SELECT t.number || ':' || t.state || ':' || coalesce(string_agg(a.key, ','), '') "
            "FROM trials t LEFT JOIN trial_system_attributes a USING (trial_id) "
            "WHERE t.state <> 'COMPLETE' GROUP BY t.number, t.state"))
        assert psql("SELECT count(*) FROM trials t JOIN trial_system_attributes a USING "
                    "(trial_id) WHERE a.key = 'hpo:surplus' AND t.state <> 'FAIL'") == ["0"]
        probe = pod_spec(docs[("Deployment", "hpo-dashboard")])["containers"][0]
        path = probe["readinessProbe"]["httpGet"]["path"]
        wait_for(lambda: _probe(f"http://127.0.0.1:{port}{path}") == 200, 60,
                 "the dashboard's readiness probe")
        login = tuple(sec["hpo-dashboard"].values())
        assert http(f"http://127.0.0.1:{port}/api/studies", "POST", b"{}") == 401
        assert http(f"http://127.0.0.1:{port}/api/studies", "POST", b"{}", auth=login) == 405
        assert inspect(dashboard)["State"]["Running"] is True
    finally:
        label = f"label=com.docker.compose.project={project}"
        ids = _run("docker", "ps", "-aq", "--filter", label).stdout.split()
        if ids:
            _run("docker", "rm", "-f", "-v", *ids, timeout=120)
        _run("docker", "network", "rm", network)
        if kustomization == "overlays/objective":
            _run("docker", "image", "rm", "-f", c["image"], timeout=120)


def _probe(url: str) -> int | None:
    try:
        return http(url)
    except OSError:
        return None
