"""optuna-dashboard on a study made by `hpo run`, and report.html, rendered by a real headless
Chromium: the analytics page, the report's cards sized to their content, a trial page as wide as
the window, the report page drawn offline.

Without a browser these tests skip outside CI (the skip says how to install one); with
HPO_REQUIRE_BROWSER=1 (CI) a missing browser fails them.
"""

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import optuna
import pytest

from hpo.db.storage import spec_key, study_spec
from tests import browser
from tests.conftest import hpo

CHROMIUM = browser.find_chromium()
FLAGS = [f for f in browser.FLAGS if f != "--hide-scrollbars"]

pytestmark = pytest.mark.slow

TINY = """
name = "tiny"
seed = 1
[data]
dataset = "digits"
train_size = 300
[model]
hidden = [16, 16]
epochs = 5
batch_size = 50
[search.lr]
low = 1e-3
high = 0.5
log = true
[search.weight_decay]
low = 1e-8
high = 1e-4
log = true
[sampler]
name = "random"
[budget]
n_trials = 25
"""


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


def _need_chromium() -> str:
    if CHROMIUM is None:
        if os.environ.get("HPO_REQUIRE_BROWSER") == "1":
            pytest.fail(f"no Chromium found and HPO_REQUIRE_BROWSER=1: {browser.HINT}")
        pytest.skip(f"no Chromium found: {browser.HINT}")
    return CHROMIUM


def test_dashboard_renders_and_has_lr_and_weight_decay(dashboard, tmp_path):
    _need_chromium()
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


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """A 25-trial study with `hpo report` published into it (and its report.html)."""
    tmp = tmp_path_factory.mktemp("reported")
    spec = tmp / "rep.toml"
    spec.write_text(TINY.replace('name = "tiny"', 'name = "rep"'))
    url = f"sqlite:///{tmp / 'rep.db'}"
    r = hpo("run", str(spec), "--storage", url, "--quiet")
    assert r.returncode == 0, r.stderr
    r = hpo("report", "rep", "--storage", url, "--out", str(tmp / "report"))
    assert r.returncode == 0, r.stderr
    return url, tmp


def test_report_cards_fit_their_boxes_and_trial_pages_the_window(reported, tmp_path):
    """optuna-dashboard draws each published figure in a box 450 px high: every figure, title,
    axis label and legend of the report must lie inside its box (before, the Best-20 grid was
    920 px high and showed 10 of 20 panels, the contour lost its x label). A trial page must be
    no wider than the window (the 50-number learning curves used to widen it)."""
    chromium = _need_chromium()
    url, _ = reported
    with browser.dashboard(url) as base:
        page = f"{base}/dashboard/studies/1"
        seen = browser.probe(chromium, tmp_path / "p1", page)
        cards = seen["cards"]
        assert set(cards) == {"hpo-best-curves", "hpo-acc-vs-params", "hpo-contour"}
        for name, card in cards.items():
            assert browser.outside(card) == [], name
            assert card["plot"]["h"] >= card["box"]["h"] - 1, name  # and it fills its box
        panels = sorted(t["text"] for t in cards["hpo-best-curves"]["texts"]
                        if re.fullmatch(r"Best-\d+ \(\d\.\d\d\)", t["text"]))
        assert len(panels) == 20 and {p.split(" ")[0] for p in panels} == \
            {f"Best-{i}" for i in range(1, 21)}
        contour = {t["text"] for t in cards["hpo-contour"]["texts"]}
        assert {"lr", "weight decay"} <= contour

        shot = browser.screenshot(chromium, tmp_path / "p2", page, tmp_path / "study.png")
        card = browser.crop(shot, cards["hpo-best-curves"]["box"], tmp_path / "card.png")
        import matplotlib.image

        img = matplotlib.image.imread(card)[..., :3]
        assert img.shape[0] >= 440 and img.std() > 0.05  # the card itself, drawn

        best = optuna.load_study(study_name="rep", storage=url).best_trial.number
        trial = browser.probe(chromium, tmp_path / "p3",
                              f"{page}/trials?numbers={best}", width=1000, height=900)
        assert trial["scroll_width"] <= trial["window_width"], trial


def test_report_page_draws_its_figures_offline(reported, tmp_path):
    """report.html opened from disk, with the network off: plotly.js beside it draws every
    figure."""
    chromium = _need_chromium()
    _, tmp = reported
    page = tmp / "report" / "report.html"
    assert page.stat().st_size < 1_000_000
    dom = browser.run_chromium(chromium, tmp_path / "p", "--window-size=1200,1200",
                               "--dump-dom", page.as_uri())
    for i in range(3):  # best curves, acc vs params, contour: each drawn as an SVG by plotly
        div = dom.split(f'id="figure-{i}"', 1)[1].split('id="figure-', 1)[0]
        assert "main-svg" in div, i
    assert "The figures need" not in dom.split("<body", 1)[1].split("<script", 1)[0]


def test_read_only_hides_write_buttons_and_the_spec_fits_its_card(reported, tmp_path):
    """Read-only (the default): the study list shows no create / rename / delete button, and
    the study page's attribute card fits its box (the ~1 kB JSON line of ``hpo:spec`` used to
    run past the card's right edge; the JSON is now a system attribute and the card shows its
    12-digit key, ``hpo:spec_sha256``); with --allow-writes the buttons are there."""
    chromium = _need_chromium()
    url, _ = reported
    with browser.dashboard(url) as base:
        listing = browser.probe(chromium, tmp_path / "p1", f"{base}/dashboard", 1000, 600)
        assert listing["write_buttons"] == []
        study = browser.probe(chromium, tmp_path / "p2", f"{base}/dashboard/studies/1", 1400)
    (table,) = [t for t in study["tables"]
                if any(c["text"] == "hpo:spec_sha256" for c in t["cells"])]
    spec_cell = table["cells"][-1]
    rep = optuna.load_study(study_name="rep", storage=url)
    assert spec_cell["text"] == spec_key(study_spec(rep))
    assert table["table"]["right"] <= table["container"]["right"] + 1, table
    assert spec_cell["right"] <= table["container"]["right"] + 1, table
    with browser.dashboard(url, allow_writes=True) as base:
        listing = browser.probe(chromium, tmp_path / "p3", f"{base}/dashboard", 1000, 600)
    assert {"rename study", "delete study"} <= set(listing["write_buttons"]), listing
