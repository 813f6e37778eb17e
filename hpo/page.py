"""``report.html``: the summary and the plotly figures of a study on one page."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import TYPE_CHECKING

from hpo.listing import Summary

if TYPE_CHECKING:
    import plotly.graph_objects as go

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
pre { background: #f6f8fa; padding: 0.8em; overflow-x: auto; font-size: 12px; }
.warn { background: #fff4e5; border-left: 4px solid #f0a020; padding: 0.4em 1em; }
p.caption { color: #555; font-size: 14px; }
"""


def html_page(study: str, summary_: Summary, figures: Sequence[tuple[str, str, go.Figure]]) -> str:
    """One self-contained HTML page: plotly.js inline (no network), the summary, then each
    ``(title, caption, figure)``."""
    from plotly.offline import get_plotlyjs

    e = html.escape
    body = [f"<h1>hpo report: {e(study)}</h1>", "<h2>Best trials</h2>", summary_.html()]
    for i, (title, caption, fig) in enumerate(figures):
        body += [f"<h2>{e(title)}</h2>", f'<p class="caption">{e(caption)}</p>',
                 fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"figure-{i}",
                             config={"displaylogo": False})]
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f"<title>hpo report: {e(study)}</title>", f"<style>{_CSS}</style>",
        f'<script type="text/javascript">{get_plotlyjs()}</script>', "</head>", "<body>",
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
