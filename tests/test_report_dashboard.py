"""`hpo dashboard`: the URL it really listens on, waitress, HTTP basic auth beyond loopback,
the read-only page, and SIGTERM / Ctrl-C (143 / 130, one line)."""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from hpo.errors import UsageError
from hpo.report import dashboard
from tests.conftest import hpo

URL_LINE = re.compile(r"at (http://[0-9.]+:(\d+)/) ")


def _request(url: str, method: str = "GET", auth: tuple[str, str] | None = None,
             ) -> tuple[int, Any, bytes]:
    headers = {}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
    req = urllib.request.Request(url, method=method, headers=headers,
                                 data=b"{}" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def _start(log: Path, *args: str, env: dict[str, str] | None = None
           ) -> tuple[subprocess.Popen, str]:
    """`hpo dashboard ARGS` in the background; waits (gate: its line with the URL, 120 s) and
    returns the process and the URL it printed."""
    full_env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
                **(env or {})}
    for key in (dashboard.USER_ENV, dashboard.PASSWORD_ENV, dashboard.PASSWORD_FILE_ENV):
        if env is None or key not in env:
            full_env.pop(key, None)
    proc = subprocess.Popen([sys.executable, "-m", "hpo", "dashboard", *args], env=full_env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        m = URL_LINE.search(log.read_text())
        if m:
            return proc, m.group(1)
        if proc.poll() is not None:
            pytest.fail(f"hpo dashboard exited with {proc.returncode}: {log.read_text()}")
        time.sleep(0.1)
    proc.kill()
    pytest.fail(f"no URL line from hpo dashboard in 120 s: {log.read_text()}")


def _stop(proc: subprocess.Popen, sig: int) -> int:
    proc.send_signal(sig)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


@pytest.fixture(scope="module")
def study_db(tmp_path_factory) -> str:
    """A storage with one study ("dash") of two finished trials, made by `hpo run`."""
    tmp = tmp_path_factory.mktemp("dash")
    spec = tmp / "dash.toml"
    spec.write_text('name = "dash"\n[data]\ndataset = "digits"\ntrain_size = 100\n'
                    '[model]\nhidden = [8]\nepochs = 2\nbatch_size = 50\n'
                    '[search.lr]\nlow = 1e-3\nhigh = 0.5\nlog = true\n'
                    '[sampler]\nname = "random"\n[budget]\nn_trials = 2\n')
    url = f"sqlite:///{tmp / 'dash.db'}"
    r = hpo("run", str(spec), "--storage", url, "--quiet")
    assert r.returncode == 0, r.stderr
    return url


def test_port_0_prints_the_port_it_listens_on_and_sigterm_is_143(study_db, tmp_path):
    log = tmp_path / "d.log"
    proc, url = _start(log, "--storage", study_db, "--port", "0")
    try:
        port = int(URL_LINE.search(log.read_text()).group(2))
        assert port != 0
        status, headers, body = _request(url + "api/meta")
        assert status == 200 and headers["Server"] == "hpo"  # waitress, named hpo
        assert _request(url + "healthz")[:3:2] == (200, b"ok\n")
        status, _, page = _request(url + "dashboard")
        assert status == 200
        assert dashboard.PAGE_CSS in page and dashboard.READ_ONLY_CSS in page
        assert _request(url + "api/studies", "POST")[0] == 405
    finally:
        code = _stop(proc, signal.SIGTERM)
    out = log.read_text().splitlines()
    assert code == 143, out
    assert out[-1] == "hpo: terminated" and len(out) == 2, out
    assert "(read-only, no auth)" in out[0]


def test_ctrl_c_is_130_with_one_line(study_db, tmp_path):
    log = tmp_path / "d.log"
    proc, url = _start(log, "--storage", study_db, "--port", "0", "--allow-writes")
    try:
        status, _, page = _request(url + "dashboard")
        assert status == 200
        assert dashboard.PAGE_CSS in page and dashboard.READ_ONLY_CSS not in page
    finally:
        code = _stop(proc, signal.SIGINT)
    out = log.read_text().splitlines()
    assert code == 130, out
    assert out[-1] == "hpo: interrupted" and len(out) == 2, out
    assert "(read-write, no auth)" in out[0]


def test_beyond_loopback_it_refuses_to_listen_without_credentials(tmp_path):
    db = tmp_path / "none.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPO_DASHBOARD_")}
    r = subprocess.run([sys.executable, "-m", "hpo", "dashboard", "--storage", f"sqlite:///{db}",
                        "--host", "0.0.0.0", "--port", "0"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and r.stdout == ""
    assert "--host 0.0.0.0 is beyond loopback" in r.stderr
    assert "HPO_DASHBOARD_USER" in r.stderr and "--no-auth" in r.stderr
    assert not db.exists()  # refused before anything was opened


@pytest.mark.parametrize("env, message", [
    ({"HPO_DASHBOARD_USER": "ann"}, "HPO_DASHBOARD_PASSWORD (or HPO_DASHBOARD_PASSWORD_FILE) is"),
    ({"HPO_DASHBOARD_PASSWORD": "pw"}, "HPO_DASHBOARD_USER is empty or unset"),
    ({"HPO_DASHBOARD_USER": "ann", "HPO_DASHBOARD_PASSWORD_FILE": "/nonexistent/pw"},
     "HPO_DASHBOARD_PASSWORD_FILE=/nonexistent/pw: cannot read it (No such file or directory)"),
])
def test_half_a_credential_is_bad_input(tmp_path, env, message):
    db = tmp_path / "none.db"
    base = {k: v for k, v in os.environ.items() if not k.startswith("HPO_DASHBOARD_")}
    r = subprocess.run([sys.executable, "-m", "hpo", "dashboard", "--storage", f"sqlite:///{db}",
                        "--port", "0"], capture_output=True, text=True, env={**base, **env},
                       timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and message in r.stderr, r.stderr
    assert not db.exists()


def test_beyond_loopback_with_credentials_asks_for_them(study_db, tmp_path):
    secret = tmp_path / "password"
    secret.write_text("s3cret pass\n")  # a mounted Secret: the first line, newline dropped
    log = tmp_path / "d.log"
    proc, _ = _start(log, "--storage", study_db, "--host", "0.0.0.0", "--port", "0",
                     env={"HPO_DASHBOARD_USER": "ann", "HPO_DASHBOARD_PASSWORD_FILE": str(secret)})
    try:
        line = log.read_text().splitlines()[0]
        assert "basic auth as ann" in line and "s3cret" not in line
        port = re.search(r"http://0\.0\.0\.0:(\d+)/", line).group(1)
        url = f"http://127.0.0.1:{port}/"
        status, headers, _ = _request(url + "api/studies")
        assert status == 401 and headers["WWW-Authenticate"].startswith('Basic realm="hpo')
        assert _request(url + "api/studies", auth=("ann", "wrong"))[0] == 401
        assert _request(url + "api/studies", auth=("bob", "s3cret pass"))[0] == 401
        status, _, body = _request(url + "api/studies", auth=("ann", "s3cret pass"))
        assert status == 200 and b'"dash"' in body
        assert _request(url + "healthz")[0] == 200  # probes need no credentials
        # read-only still holds for the one who logged in
        assert _request(url + "api/studies", "POST", auth=("ann", "s3cret pass"))[0] == 405
    finally:
        assert _stop(proc, signal.SIGTERM) == 143


@pytest.mark.slow
def test_no_auth_is_said_out_loud(study_db, tmp_path):
    log = tmp_path / "d.log"
    proc, _ = _start(log, "--storage", study_db, "--host", "0.0.0.0", "--port", "0",
                     "--no-auth")
    try:
        line = log.read_text().splitlines()[0]
        assert "(read-only, no auth)" in line
        port = re.search(r"http://0\.0\.0\.0:(\d+)/", line).group(1)
        assert _request(f"http://127.0.0.1:{port}/api/studies")[0] == 200
    finally:
        assert _stop(proc, signal.SIGTERM) == 143


def test_a_port_in_use_is_one_line(study_db, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = hpo("dashboard", "--storage", study_db, "--port", str(port), timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1
    assert f"--port {port}: cannot listen there (Address already in use)" in r.stderr


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("LOCALHOST", True), ("0.0.0.0", False), ("::", False),
    ("10.0.0.5", False), ("dashboard.example.org", False),
])
def test_is_loopback(host, loopback):
    assert dashboard.is_loopback(host) is loopback


def test_credentials_from_env(tmp_path):
    assert dashboard.credentials_from_env({}) is None
    creds = dashboard.credentials_from_env({"HPO_DASHBOARD_USER": "ann",
                                            "HPO_DASHBOARD_PASSWORD": "pw"})
    assert creds == dashboard.Credentials("ann", "pw") and "pw" not in repr(creds)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    for env, match in [
        ({"HPO_DASHBOARD_USER": "a:b", "HPO_DASHBOARD_PASSWORD": "pw"}, "may not contain ':'"),
        ({"HPO_DASHBOARD_USER": "ann", "HPO_DASHBOARD_PASSWORD": "pw",
          "HPO_DASHBOARD_PASSWORD_FILE": str(empty)}, "not both"),
        ({"HPO_DASHBOARD_USER": "ann", "HPO_DASHBOARD_PASSWORD_FILE": str(empty)},
         "first line is empty"),
        ({"HPO_DASHBOARD_USER": "", "HPO_DASHBOARD_PASSWORD": "pw"}, "USER is empty or unset"),
    ]:
        with pytest.raises(UsageError, match=match):
            dashboard.credentials_from_env(env)


def test_basic_auth_layer_in_process():
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"in"]

    wrapped = dashboard.basic_auth(app, dashboard.Credentials("ann", "pw:with:colons"))
    seen = []

    def call(header):
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/"}
        if header is not None:
            environ["HTTP_AUTHORIZATION"] = header
        body = b"".join(wrapped(environ, lambda s, h, e=None: seen.append(s)))
        return seen[-1].split()[0], body

    good = "Basic " + base64.b64encode(b"ann:pw:with:colons").decode()
    assert call(good) == ("200", b"in")
    assert call(good.replace("Basic", "basic")) == ("200", b"in")
    for header in (None, "", "Bearer x", "Basic !!!", "Basic " + base64.b64encode(b"ann").decode(),
                   "Basic " + base64.b64encode(b"ann:pw").decode()):
        assert call(header)[0] == "401", header
