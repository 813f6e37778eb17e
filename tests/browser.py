"""Headless Chromium against optuna-dashboard and report.html: find the browser, serve hpo's
dashboard app with a measuring script, read back what the page laid out, take screenshots.

Used by tests/test_browser.py and by scripts/dashboard_screenshots.py (the PNGs under docs/).
The measuring script is served by the test server only (``hpo dashboard`` never has it): it is
loaded from the page's own origin, as optuna-dashboard's Content-Security-Policy requires, and
writes a JSON summary of the page into ``<pre id="hpo-probe">``, which ``--dump-dom`` returns.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--virtual-time-budget=10000"]
HINT = ("install it (Debian/Ubuntu: apt-get install -y chromium) or set HPO_CHROMIUM to a "
        "Chrome/Chromium binary; CI (.ci/run) installs it and sets HPO_REQUIRE_BROWSER=1, which "
        "turns a missing browser into a failure")


def find_chromium() -> str | None:
    """``$HPO_CHROMIUM``, else the first of chromium, chromium-browser, google-chrome on PATH."""
    env = os.environ.get("HPO_CHROMIUM")
    if env:
        return env
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


#: Measures every plotly card of the page (its box, the plot, every text drawn in it) and the
#: page's width against the window's; rewritten every (virtual) second, the last one is dumped.
PROBE_JS = b"""
(function () {
  function box(el) {
    var r = el.getBoundingClientRect();
    return {x: r.left, y: r.top, w: r.width, h: r.height, right: r.right, bottom: r.bottom};
  }
  function probe() {
    var out = {path: location.pathname, scroll_width: document.documentElement.scrollWidth,
               window_width: window.innerWidth, cards: {}};
    document.querySelectorAll('[id^="user-defined-plot:"]').forEach(function (div) {
      var svg = div.querySelector("svg.main-svg");
      var texts = [].map.call(div.querySelectorAll(
          ".gtitle, .g-xtitle text, .g-ytitle text, .annotation-text, .legendtext, " +
          ".cbtitle text, .xtick text, .ytick text"), function (t) {
        var b = box(t); b.text = t.textContent; return b;
      });
      out.cards[div.id.split(":")[1]] = {box: box(div), plot: svg ? box(svg) : null,
                                         texts: texts};
    });
    out.tables = [].map.call(document.querySelectorAll('table[aria-label="simple table"]'),
                             function (t) {
      var card = t.parentElement;  // the table's container (overflow hidden: the card's edge)
      return {table: box(t), container: box(card),
              cells: [].map.call(t.querySelectorAll("td"), function (td) {
                var b = box(td); b.text = td.textContent; return b; })};
    });
    out.write_buttons = [].filter.call(document.querySelectorAll(
        'button[aria-label="rename study"], button[aria-label="delete study"], ' +
        'button:has(svg[data-testid="AddBoxIcon"]), button:has(svg[data-testid="EditIcon"])'),
        function (b) { return b.getClientRects().length > 0; }).map(function (b) {
      return b.getAttribute("aria-label") || b.textContent || "(icon)"; });
    var pre = document.getElementById("hpo-probe");
    // hidden: its one long line of JSON would otherwise widen the page it measures
    if (!pre) { pre = document.createElement("pre"); pre.id = "hpo-probe";
                pre.style.display = "none";
                document.body.appendChild(pre); }
    pre.textContent = JSON.stringify(out);
  }
  setInterval(probe, 1000);
})();
"""


def _probed(app):
    """``app`` with ``/hpo-probe.js`` served and loaded by every HTML page."""

    def wrapped(environ, start_response):
        if environ.get("PATH_INFO") == "/hpo-probe.js":
            start_response("200 OK", [("Content-Type", "application/javascript"),
                                      ("Content-Length", str(len(PROBE_JS)))])
            return [PROBE_JS]
        got = []
        body = b"".join(app(environ, lambda s, h, e=None: got.append((s, h))))
        status, headers = got[-1]
        if b"</head>" in body:
            body = body.replace(b"</head>", b'<script src="/hpo-probe.js"></script></head>', 1)
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            headers.append(("Content-Length", str(len(body))))
        start_response(status, headers)
        return [body]

    return wrapped


@contextmanager
def dashboard(storage_url: str, allow_writes: bool = False) -> Iterator[str]:
    """Serve ``hpo dashboard``'s app (read-only unless ``allow_writes``, with its page
    stylesheet) plus the probe on a free local port, on waitress as ``hpo dashboard`` does;
    yields the base URL."""
    from hpo.report.dashboard import listen_urls, make_app, make_server_for, run_in_thread

    server = make_server_for(_probed(make_app(storage_url, allow_writes=allow_writes)),
                             "127.0.0.1", 0)
    stop = run_in_thread(server)
    try:
        yield listen_urls(server)[0].rstrip("/")
    finally:
        stop()


def run_chromium(chromium: str, profile: Path, *args: str, timeout: float = 120) -> str:
    r = subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", *args],
                       capture_output=True, text=True, timeout=timeout, check=False)
    return r.stdout


def dump_dom(chromium: str, profile: Path, url: str, width: int = 1400,
             height: int = 2400) -> str:
    return run_chromium(chromium, profile, f"--window-size={width},{height}", "--dump-dom", url)


def probe(chromium: str, profile: Path, url: str, width: int = 1400,
          height: int = 2400) -> dict[str, Any]:
    """What the probe measured on ``url`` (a window of ``width`` x ``height``)."""
    dom = dump_dom(chromium, profile, url, width, height)
    m = re.search(r'<pre id="hpo-probe"[^>]*>(.*?)</pre>', dom, re.S)
    assert m, f"no probe output from {url}"
    return json.loads(html.unescape(m.group(1)))


def screenshot(chromium: str, profile: Path, url: str, path: Path, width: int = 1400,
               height: int = 2400) -> Path:
    run_chromium(chromium, profile, f"--window-size={width},{height}", f"--screenshot={path}",
                 url)
    return path


def crop(path: Path, rect: dict[str, float], out: Path, pad: int = 8) -> Path:
    """Cut ``rect`` (a probe box, CSS px = screenshot px) out of the screenshot ``path``."""
    from PIL import Image

    with Image.open(path) as im:
        box = (max(0, int(rect["x"]) - pad), max(0, int(rect["y"]) - pad),
               min(im.width, int(rect["right"]) + pad), min(im.height, int(rect["bottom"]) + pad))
        im.crop(box).save(out)
    return out


def outside(card: dict[str, Any], slack: float = 1.0) -> list[str]:
    """The texts of a probed card drawn (partly) outside its box, and the plot if it is
    taller or wider than the box."""
    b = card["box"]
    bad = [t["text"] for t in card["texts"]
           if t["w"] > 0 and (t["x"] < b["x"] - slack or t["right"] > b["right"] + slack
                              or t["y"] < b["y"] - slack or t["bottom"] > b["bottom"] + slack)]
    p = card["plot"]
    if p is None:
        return ["(no plot drawn)"]
    if p["h"] > b["h"] + slack or p["w"] > b["w"] + slack:
        bad.append(f"plot {p['w']:.0f}x{p['h']:.0f} in a box of {b['w']:.0f}x{b['h']:.0f}")
    return bad
