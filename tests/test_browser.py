"""optuna-dashboard on a study made by `hpo run`, rendered by a real headless Chromium."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from tests.conftest import hpo

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=10000"]

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read()


@pytest.fixture
def dashboard(tiny_spec, sqlite_url):
    r = hpo("run", str(tiny_spec(n_trials=15)), "--storage", sqlite_url, "--quiet")
    assert r.returncode == 0, r.stderr
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "hpo", "dashboard", "--storage", sqlite_url,
                             "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                _get(base + "/api/meta")
                break
            except OSError:
                time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_dashboard_renders_and_has_lr_and_weight_decay(dashboard, tmp_path):
    if CHROMIUM is None:
        if os.environ.get("HPO_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium is not installed and HPO_REQUIRE_BROWSER=1")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    studies = json.loads(_get(dashboard + "/api/studies"))["study_summaries"]
    study_id = next(s["study_id"] for s in studies if s["study_name"] == "tiny")
    detail = json.loads(_get(f"{dashboard}/api/studies/{study_id}?after=0"))
    space = {p["name"] for p in detail["union_search_space"]}
    assert {"lr", "weight_decay"} <= space  # what the analytics (slice, contour) plot against
    assert len(detail["trials"]) == 15
    assert detail["objective_names"] == ["val_acc"]
    attrs = {a["key"]: a["value"] for a in detail["trials"][0]["user_attrs"]}
    assert {"train_acc", "train_acc_curve", "val_acc_curve"} <= set(attrs)  # the curves

    shot = tmp_path / "analytics.png"
    subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                    "--window-size=1200,1400", f"--screenshot={shot}",
                    f"{dashboard}/dashboard/studies/{study_id}/analytics"],
                   capture_output=True, timeout=120, check=False)
    assert shot.exists() and shot.stat().st_size > 20_000
    import matplotlib.image

    img = matplotlib.image.imread(shot)[..., :3]
    assert img.std() > 0.05  # not a blank page
    colours = np.unique((img.reshape(-1, 3) * 255).astype(np.uint8), axis=0)
    assert len(colours) > 200  # plots were drawn, not just a frame

    dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile2'}",
                          "--dump-dom", f"{dashboard}/dashboard/studies/{study_id}/analytics"],
                         capture_output=True, text=True, timeout=120, check=False).stdout
    assert "Hyperparameter Relationships" in dom and "weight_decay" in dom
