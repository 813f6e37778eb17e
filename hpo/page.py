"""``report.html``: the summary and the plotly figures of a study on one page.

plotly.js (4.8 MB) is not inlined: it is written once beside the page as
``plotly-<version>.min.js`` (:func:`write_plotly_js`) and loaded from there, so the page itself
stays small (tens of kB for the book's study), opens offline from ``file://``, and several
reports in one directory share the one file. A page copied without it says so.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hpo.listing import Summary

if TYPE_CHECKING:
    import plotly.graph_objects as go

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; color: #222;
       padding: 0 1em; }
h1 { margin-bottom: 0.2em; }
p.lead { font-size: 17px; margin-top: 0.3em; }
pre { background: #f6f8fa; padding: 0.8em; overflow-x: auto; font-size: 12px; }
.warn { background: #fff4e5; border-left: 4px solid #f0a020; padding: 0.3em 1em; margin: 0.5em 0; }
.warn ul { margin: 0.2em 0; }
p.caption { color: #555; font-size: 14px; }
table { border-collapse: collapse; font-size: 14px; margin: 0.5em 0; }
th, td { padding: 0.25em 0.8em; border-bottom: 1px solid #ddd; text-align: right; }
th { background: #f6f8fa; }
td:first-child, th:first-child { text-align: left; }
tr.small-gap td { background: #eaf6ea; }
details { margin: 0.8em 0; }
summary { cursor: pointer; color: #0550ae; }
b.stale { color: #b35900; }
"""


def plotly_js_name() -> str:
    """The file name of the plotly.js that plotly (Python) ships: ``plotly-4.1.1.min.js``."""
    from plotly.offline import get_plotlyjs_version

    return f"plotly-{get_plotlyjs_version()}.min.js"


def write_plotly_js(out: Path) -> Path:
    """Write plotly.js beside the page (once: an existing file of the same size is kept)."""
    from plotly.offline import get_plotlyjs

    path = Path(out) / plotly_js_name()
    js = get_plotlyjs().encode("utf-8")
    if not (path.exists() and path.stat().st_size == len(js)):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(js)
        tmp.replace(path)
    return path


_MISSING_JS = """<script>if (typeof Plotly === "undefined") {
  document.addEventListener("DOMContentLoaded", function () {
    var p = document.createElement("p"); p.className = "warn";
    p.textContent = "The figures need %s beside this page (hpo report writes it there); "
      + "the PNG files in the same directory show the same figures.";
    document.body.insertBefore(p, document.body.children[1]);
  });
}</script>"""


def html_page(study: str, summary_: Summary, figures: Sequence[tuple[str, str, go.Figure]],
              plotly_js: str | None = None) -> str:
    """One HTML page, what matters first: a one-paragraph summary (Best-1, warnings), the
    first ``(title, caption, figure)`` (the book's learning curves), the best trials as an HTML
    table (the full Best-N and the book-format listing collapsed), then the other figures.
    Drawn by the plotly.js file ``plotly_js`` beside the page (:func:`write_plotly_js`; default
    :func:`plotly_js_name`). No network is needed."""
    e = html.escape
    src = plotly_js or plotly_js_name()

    def section(i: int, title: str, caption: str, fig: go.Figure) -> list[str]:
        return [f"<h2>{e(title)}</h2>", f'<p class="caption">{e(caption)}</p>',
                fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"figure-{i}",
                            config={"displaylogo": False})]

    body = [f"<h1>hpo report: {e(study)}</h1>", summary_.html_intro()]
    for i, (title, caption, fig) in enumerate(figures[:1]):
        body += section(i, title, caption, fig)
    body += ["<h2>Best trials</h2>", summary_.html()]
    for i, (title, caption, fig) in enumerate(figures[1:], 1):
        body += section(i, title, caption, fig)
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f"<title>hpo report: {e(study)}</title>", f"<style>{_CSS}</style>",
        f'<script type="text/javascript" src="{e(src)}"></script>',
        _MISSING_JS % src, "</head>", "<body>",
        *body, "</body>", "</html>", ""])


#: Heading and caption of each figure in the HTML page.
SECTIONS = {
    "best_curves": ("Learning curves of the best trials",
                    "The book's figure (section 6.5.3): the top trials' validation (solid) and "
                    "training (dashed) accuracy per epoch."),
    "acc_vs_params": ("Validation accuracy against lr and weight decay",
                      "Final validation accuracy against each hyperparameter; colour is the "
                      "other one. The band of good values is where to narrow the ranges."),
    "contour": ("Validation accuracy over lr x weight decay",
                "Validation accuracy interpolated linearly between the trials (in log space); "
                "white points are the trials, the star is Best-1."),
    "stages": ("Narrowing stages",
               "Each narrowing stage's ranges (rectangles) and its trials, in the stage's "
               "colour."),
}
