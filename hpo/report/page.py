"""``report.html``: the summary and the plotly figures of a study on one page.

plotly.js (4.8 MB) is not inlined: it is written once beside the page as
``plotly-<version>.min.js`` (:func:`write_plotly_js`) and loaded from there, so the page itself
stays small (tens of kB for the book's study), opens offline from ``file://``, and several
reports in one directory share the one file. A page copied without it says so.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hpo.report.listing import (
    BOOK_NAMES,
    GAP_LIST,
    LEARNED_MIN,
    Row,
    Summary,
    fmt_param,
    fmt_params,
    made_at,
    n_finished,
    record_metric,
    small_gap,
    small_gap_rows,
    stale_note,
)
from hpo.report.metric import BOOK, Metric

# plotly (~0.5 s) is imported where it is used, as in hpo.report.plots: the page's module loads
# before hpo report has checked its flags and opened the study.
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


def html_text(text: str) -> str:
    """``text`` escaped for HTML, its Markdown code marks (```hpo confirm```) as ``<code>``."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def summary_intro(s: Summary) -> str:
    """The first screen of report.html: one paragraph on the study and its Best-1, and the
    warnings (no listing: the figure comes next)."""
    e = html.escape
    if not s.rows:
        return f"<p>{e(s.study)}: no COMPLETE trials yet ({s.n_trials} trials).</p>"
    b, m = s.rows[0], s.metric
    train = "" if b.train_acc is None else (
        f", train accuracy {b.train_acc:.2f} (gap {b.gap:+.2f})")
    parts = [f'<p class="lead">{s.n_complete} COMPLETE of {s.n_trials} trials. '
             f"<b>Best-1</b>: {e(m.words)} <b>{e(m.fmt(b.value))}</b> (trial {b.number})"
             f" at {e(fmt_params(b.params))}{e(train)}.</p>"]
    if s.warnings:
        parts.append('<div class="warn"><b>Edge warning:</b><ul>'
                     + "".join(f"<li>{e(w)}</li>" for w in s.warnings) + "</ul></div>")
    now = n_finished(s.counts)
    for rec, what, again in ((s.confirm, "confirmation", "hpo confirm"),
                             (s.test, "test result", "hpo test --force")):
        stale = rec and stale_note(rec, f"the {what}", again, now)
        if stale:
            parts.append(f'<div class="warn">{html_text(stale)}</div>')
    return "\n".join(parts)

def rows_table(s: Summary, rows: Sequence[Row]) -> str:
    e = html.escape
    names = list(dict.fromkeys(k for r in rows for k in r.params))
    book = s.metric.book or s.has_train_acc  # the book's columns: train acc and gap
    head = (["", s.metric.label] + [BOOK_NAMES.get(k, k) for k in names]
            + (["train acc", "gap"] if book else []) + ["trial"])
    out = ["<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in head)
           + "</tr></thead><tbody>"]
    for r in rows:
        small = s.max_gap is not None and small_gap(r, s.max_gap)
        cells = [f"Best-{r.rank}", s.metric.fmt(r.value)]
        cells += [fmt_param(r.params[k]) if k in r.params else "" for k in names]
        if book:
            cells += ["" if r.train_acc is None else f"{r.train_acc:.2f}",
                      "" if r.gap is None else f"{r.gap:+.2f}" + (" diverged" if r.diverged
                                                                  else "")]
        cells.append(str(r.number))
        cls = ' class="small-gap"' if small else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>")
    return "\n".join(out + ["</tbody></table>"])

def summary_tables(s: Summary, shown: int = 5) -> str:
    """The Best-N listing of report.html as HTML tables: the best ``shown`` rows, the
    rest (and the book-format text lines) in a collapsed ``<details>``; then the small-gap
    rows, the confirmation and the test result."""
    e = html.escape
    if not s.rows:
        return "<p>No COMPLETE trials yet.</p>"
    listed = s.rows[:s.top]
    parts = [f"<p>{e(header(s))}</p>", rows_table(s, listed[:shown])]
    parts.append(f"<details><summary>All Best-{len(listed)} rows, and the listing in the "
                 "book's format</summary>"
                 + (rows_table(s, listed) if len(listed) > shown else "")
                 + "<pre>" + e("\n".join(s.listing)) + "</pre></details>")
    if s.max_gap is not None:
        parts.append(f"<h3>{e(s.gap_title())}</h3>")
        picked = small_gap_rows(s.rows, s.max_gap, GAP_LIST)
        parts.append(rows_table(s, picked) if picked
                     else f"<p>{e(s.no_gap_text())}</p>")
    now = n_finished(s.counts)
    if s.confirm:
        parts += confirm_html(s.confirm, now)
    if s.test:
        stale = stale_note(s.test, "this test result", "hpo test --force", now)
        m = record_metric(s.test)
        parts.append("<h3>Test split (read once)</h3>" if m.book else
                     "<h3>Test (measured once)</h3>")
        result = (f"test accuracy <b>{s.test['test_acc']:.4f}</b> on {s.test['n_test']} "
                  "images" if m.book else
                  f"test {e(m.name)} <b>{e(m.fmt(s.test['test_value']))}</b> (search "
                  f"{e(m.name)} {e(m.fmt(s.test['value']))})")
        parts.append(f"<p>Trial {s.test['trial']}: {result}, made {e(made_at(s.test))}."
                     + (f' <b class="stale">{html_text(stale)}</b>' if stale else "") + "</p>")
    return "\n".join(parts)

def confirm_html(record: dict, now: int) -> list[str]:
    """The confirmation's heading, note and table (in its metric: the book's val acc or a
    user's objective's)."""
    e = html.escape
    m = record_metric(record)
    stale = stale_note(record, "this confirmation", "hpo confirm", now)
    where = (f" on {record['n_val']} validation images" if m.book else f", {m.order}")
    floor = f"{record['noise_floor_std']:.3f}" if m.book else f"{record['noise_floor_std']:.4g}"
    name = "val acc" if m.book else m.name
    body = []
    for i, r in enumerate(record["rows"], 1):
        mean = f"{r['mean']:.3f}" if m.book else m.fmt(r["mean"])
        sem = f"{r['sem']:.3f}" if m.book else f"{r['sem']:.2g}"
        search = (f"{r['search_val_acc']:.2f}" if m.book else m.fmt(r["search_value"]))
        body.append(f"<tr><td>Confirmed-{i}</td><td>{e(mean)}</td><td>{e(sem)}</td>"
                    f"<td>{e(fmt_params(r['params']))}</td><td>{e(search)}</td>"
                    f"<td>{r['trial']}</td></tr>")
    return ["<h3>Confirmation (fresh seeds)</h3>",
            f"<p>Made {e(made_at(record))}; {record['n_seeds']} fresh seeds each; noise floor "
            f"±{floor} (std){e(where)}."
            + (f' <b class="stale">{html_text(stale)}</b>' if stale else "") + "</p>",
            f"<table><thead><tr><th></th><th>mean {e(name)}</th><th>± s.e.</th>"
            f"<th>params</th><th>search {e(name)}</th><th>trial</th></tr></thead>"
            "<tbody>" + "".join(body) + "</tbody></table>"]


def header(s: Summary) -> str:
    """``Summary.header`` for a page (no Markdown marks)."""
    then = (", with the final training accuracy and the train-validation gap"
            if s.metric.book or s.has_train_acc else "")
    text = f"{s.n_complete} COMPLETE of {s.n_trials} trials, ranked by {s.ranked_by()}{then}."
    if s.max_gap is not None:
        text += (f" Highlighted rows have a gap below {s.max_gap:g} (diverged trials and "
                 f"trials that learned nothing, train acc below {LEARNED_MIN:.2f}, never "
                 "count).")
    return text


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

    body = [f"<h1>hpo report: {e(study)}</h1>", summary_intro(summary_)]
    for i, (title, caption, fig) in enumerate(figures[:1]):
        body += section(i, title, caption, fig)
    body += ["<h2>Best trials</h2>", summary_tables(summary_)]
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


def section(key: str, metric: Metric = BOOK, kind: str | None = "accuracy") -> tuple[str, str]:
    """The heading and caption of figure ``key`` (:data:`SECTIONS`); the learning curves of a
    user's objective (``kind="reported"``) are the values its trials reported."""
    if key == "best_curves" and kind == "reported":
        return ("Values reported by the best trials",
                f"The top trials' {metric.name} as each reported it per step "
                f"(trial.report), ranked by {metric.name} ({metric.order}).")
    return SECTIONS[key]
