"""`hpo report`: the book's figures, best.md, report.html and what optuna-dashboard shows."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path
from wsgiref.util import setup_testing_defaults

import numpy as np
import optuna
import optuna_dashboard
import pytest
from matplotlib.image import imread
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial

from hpo.cli import main
from hpo.db.storage import study_spec
from hpo.report import figures, listing, plane, plots
from hpo.report import page as page_module
from hpo.report.listing import best_rows, format_row, ranked
from tests.conftest import hpo

SPEC = {"search": {"lr": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True},
                   "weight_decay": {"type": "float", "low": 1e-8, "high": 1e-4, "log": True}}}
DISTS = {"lr": FloatDistribution(1e-6, 1e-2, log=True),
         "weight_decay": FloatDistribution(1e-8, 1e-4, log=True)}


def _trial(number: int, value: float, lr: float, wd: float, train: float | None = None,
           diverged: bool = False, system_attrs: dict | None = None) -> FrozenTrial:
    attrs: dict = {"val_acc_curve": [value / 2, value],
                   "train_acc_curve": [value / 2, value if train is None else train]}
    if train is not None:
        attrs["train_acc"] = train
    if diverged:
        attrs["diverged"] = True
    t = optuna.trial.create_trial(params={"lr": lr, "weight_decay": wd}, distributions=DISTS,
                                  value=value, user_attrs=attrs, system_attrs=system_attrs or {})
    t.number = number
    return t


def _random_trials(n: int, seed: int = 0) -> list[FrozenTrial]:
    rng = np.random.default_rng(seed)
    return [_trial(i, float(rng.uniform(0.1, 0.9)), float(10 ** rng.uniform(-6, -2)),
                   float(10 ** rng.uniform(-8, -4)), train=float(rng.uniform(0.1, 1.0)))
            for i in range(n)]


def _check_png(path: Path, min_colours: int = 20) -> None:
    """A real picture: big enough, not blank, many colours."""
    assert path.stat().st_size > 10_000, path
    img = imread(path)
    assert img.shape[0] >= 300 and img.shape[1] >= 400, (path, img.shape)
    rgb = (img[..., :3] * 255).astype(np.uint8).reshape(-1, 3)
    assert rgb.std() > 10, path
    assert len(np.unique(rgb, axis=0)) >= min_colours, path


def _get(storage, path: str, artifact_dir: str | None = None) -> tuple[str, bytes]:
    """GET ``path`` from optuna-dashboard's WSGI app, in process."""
    store = None
    if artifact_dir:
        from optuna.artifacts import FileSystemArtifactStore

        store = FileSystemArtifactStore(artifact_dir)
    app = optuna_dashboard.wsgi(storage, artifact_store=store)
    environ: dict = {}
    setup_testing_defaults(environ)
    environ.update(REQUEST_METHOD="GET", PATH_INFO=path, QUERY_STRING="")
    status: list[str] = []
    body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
    return status[0], body


def _study_api(url: str, name: str, artifact_dir: str | None = None) -> dict:
    storage = optuna.storages.RDBStorage(url)
    study_id = storage.get_study_id_from_name(name)
    status, body = _get(storage, f"/api/studies/{study_id}", artifact_dir)
    assert status.startswith("200"), status
    return json.loads(body)


def _strict_json(text: str):
    """json.loads that refuses NaN/Infinity (the browser's JSON.parse does too)."""
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def _listing_block(md: str) -> list[str]:
    """The lines of the first ```text block of best.md."""
    block = md.split("```text\n", 1)[1].split("```", 1)[0]
    return block.strip().splitlines()


def _trial_no(line: str) -> int:
    return int(re.search(r"\[trial (\d+)\]", line).group(1))


def _expected_small_gap(trials: list[FrozenTrial], g: float) -> list[int]:
    """Recomputed from the trials: COMPLETE, not diverged, learned something (train acc at
    least twice chance), train_acc - val_acc < g."""
    return [t.number for t in ranked(trials)
            if "train_acc" in t.user_attrs and not t.user_attrs.get("diverged")
            and t.user_attrs["train_acc"] >= 0.2 and t.user_attrs["train_acc"] - t.value < g]


# --- builders on synthetic trials -------------------------------------------------------------


@pytest.mark.parametrize("n, top, shown", [(25, 20, 20), (7, 20, 7), (12, 5, 5)])
def test_best_curves_grid_has_one_titled_axes_per_top_trial(n, top, shown):
    trials = _random_trials(n)
    fig = figures.best_curves_figure(trials, top=top)
    titled = [ax for ax in fig.axes if ax.get_title()]
    assert len(fig.axes) == len(titled) == shown
    best = ranked(trials)
    for i, ax in enumerate(titled):
        assert ax.get_title() == f"Best-{i + 1} ({best[i].value:.2f})"
        assert ax.get_ylim() == (0.0, 1.0)
        solid, dashed = ax.get_lines()
        assert list(solid.get_ydata()) == best[i].user_attrs["val_acc_curve"]
        assert solid.get_linestyle() == "-" and dashed.get_linestyle() == "--"


def test_curves_measured_every_k_epochs_are_drawn_at_their_epochs():
    t = _trial(0, 0.8, 1e-3, 1e-6)
    t.user_attrs["curve_epochs"] = [25, 50]  # [model] eval_every = 25
    for fig in (figures.best_curves_figure([t], top=1), figures.curve_figure(t)):
        lines = [ln for ax in fig.axes for ln in ax.get_lines()]
        assert lines and all(list(ln.get_xdata()) == [25, 50] for ln in lines)
    traces = plots.best_curves_plotly([t], top=1).data
    assert len(traces) == 2 and all(list(tr.x) == [25, 50] for tr in traces)
    del t.user_attrs["curve_epochs"]
    assert [list(ln.get_xdata()) for ln in figures.curve_figure(t).axes[0].get_lines()] == \
        [[1, 2], [1, 2]]


def test_figures_use_log_axes_and_survive_degenerate_studies(tmp_path):
    trials = _random_trials(30)
    acc = figures.acc_vs_params_figure(trials, SPEC)
    assert [a.get_xscale() for a in acc.axes[:2]] == ["log", "log"]
    contour = figures.contour_figure(trials, SPEC)
    assert (contour.axes[0].get_xscale(), contour.axes[0].get_yscale()) == ("log", "log")
    assert figures.stages_figure(trials, SPEC) is None  # not a narrowing study
    # two trials cannot be interpolated, zero trials have nothing to show: no exception
    for few in (trials[:2], []):
        for build in (figures.acc_vs_params_figure, figures.contour_figure,
                      plots.acc_vs_params_plotly, plots.contour_plotly):
            build(few, SPEC)
        figures.best_curves_figure(few).savefig(tmp_path / "x.png")
        plots.best_curves_plotly(few)


def test_summary_marks_small_gaps_and_skips_diverged_and_unknown():
    trials = [
        _trial(0, 0.80, 1e-3, 1e-6, train=0.95),               # gap 0.15
        _trial(1, 0.78, 1e-3, 1e-6, train=0.80),               # gap 0.02: marked
        _trial(2, 0.70, 1e-3, 1e-6),                           # no train_acc: never marked
        _trial(3, 0.10, 1e-3, 1e-6, train=0.10, diverged=True),  # gap 0 but diverged
        _trial(4, 0.60, 1e-3, 1e-6, train=0.55),               # negative gap: marked
        _trial(5, 0.17, 1e-3, 1e-6, train=0.10),               # learned nothing: never marked
        _trial(6, 0.20, 1e-3, 1e-6, train=0.12),               # learned nothing: never marked
    ]
    s = listing.summary(trials, SPEC, "s", top=20, max_gap=0.05)
    marked = [_trial_no(x) for x in s.listing if x.endswith(listing.gap_mark(0.05))]
    assert marked == [1, 4] == _expected_small_gap(trials, 0.05)
    assert [_trial_no(x) for x in s.small_gap] == [1, 4]
    md = s.markdown()
    assert "## Best with train-val gap < 0.05" in md and md.count("[trial 1]") == 2
    unmarked = listing.summary(trials, SPEC, "s", top=20).markdown()
    assert "<- gap" not in unmarked and "Best with train-val gap" not in unmarked
    none = listing.summary(trials[:1], SPEC, "s", max_gap=0.01)
    assert ("No COMPLETE trial that learned something (train acc >= 0.20) has a "
            "train-validation gap below 0.01") in none.markdown()


def test_edge_warning_for_a_best_trial_near_an_edge():
    inside = [_trial(0, 0.9, 1e-4, 1e-6), _trial(1, 0.5, 9.5e-3, 1e-6)]
    assert listing.edge_warnings(inside, SPEC) == []
    edge = [_trial(0, 0.5, 1e-4, 1e-6), _trial(1, 0.9, 9.5e-3, 1e-6)]
    (message,) = listing.edge_warnings(edge, SPEC)
    assert message.startswith("lr=0.0095 sits at the upper edge")
    assert "[1e-06, 0.01]" in message and message.endswith("the optimum may lie outside it")
    assert message in listing.summary(edge, SPEC, "s").markdown()


def test_summary_shows_confirmation_noise_floor_and_test():
    trials = [_trial(0, 0.80, 1e-3, 1e-6, train=0.95), _trial(1, 0.78, 1e-3, 1e-6, train=0.80)]
    attrs = {
        "hpo:confirm": {"n_seeds": 3, "noise_floor_std": 0.031, "n_val": 100, "winner": 1,
                        "rows": [{"trial": 1, "params": {"lr": 1e-3}, "mean": 0.77, "sem": 0.01,
                                  "search_val_acc": 0.78},
                                 {"trial": 0, "params": {"lr": 1e-3}, "mean": 0.74, "sem": 0.02,
                                  "search_val_acc": 0.80}]},
        "hpo:test": {"at": "2026-11-28T00:00:00+00:00", "trial": 1, "test_acc": 0.7512,
                     "n_test": 1000},
    }
    md = listing.summary(trials, SPEC, "s", user_attrs=attrs).markdown()
    assert "## Confirmation and test" in md and "±0.031 (std)" in md
    assert "Confirmed-1(val acc:0.770 ± 0.010)" in md and "[trial 1]" in md
    assert "trial 1 test acc 0.7512 on 1000 images" in md
    assert "Confirmation and test" not in listing.summary(trials, SPEC, "s").markdown()


def test_stages_tolerate_missing_narrowing_attrs():
    ranges = {"lr": [1e-4, 1e-3], "weight_decay": [1e-7, 1e-5]}
    trials = [
        _trial(0, 0.5, 1e-5, 1e-6, system_attrs={"narrowing:stage": 0}),
        _trial(1, 0.6, 2e-4, 1e-6, system_attrs={"narrowing:stage": 1,
                                                  "narrowing:ranges": ranges}),
        _trial(2, 0.7, 3e-4, 2e-6, system_attrs={"narrowing:stage": 2}),
        _trial(3, 0.7, 3e-4, 2e-6, system_attrs={"narrowing:stage": 2,
                                                  "narrowing:ranges": {"lr": [1e-4, 2e-4]}}),
    ]
    found = plane.stages(trials, SPEC)
    assert [s.number for s in found] == [0, 1, 2]
    assert found[0].ranges == {"lr": (1e-6, 1e-2), "weight_decay": (1e-8, 1e-4)}  # the spec's
    assert found[1].ranges == {"lr": (1e-4, 1e-3), "weight_decay": (1e-7, 1e-5)}
    assert found[2].ranges is None and len(found[2].trials) == 2
    assert figures.stages_figure(trials, SPEC) is not None
    assert plots.stages_plotly(trials, SPEC) is not None


# --- the command on real studies --------------------------------------------------------------


@pytest.mark.slow
def test_report_on_a_random_study(tiny_spec, sqlite_url, tmp_path, capsys):
    r = hpo("run", str(tiny_spec(name="rnd", n_trials=25)), "--storage", sqlite_url, "--quiet")
    assert r.returncode == 0, r.stderr
    study = optuna.load_study(study_name="rnd", storage=sqlite_url)
    trials = study.get_trials()
    gaps = sorted(t.user_attrs["train_acc"] - t.value for t in ranked(trials)[:20])
    g = float(f"{statistics.median(gaps):.3f}")  # some trials on each side

    # --no-dashboard: files only, nothing written into the study
    out = tmp_path / "plain"
    r = hpo("report", "rnd", "--storage", sqlite_url, "--out", str(out), "--max-gap", str(g),
            "--no-dashboard")
    assert r.returncode == 0, r.stderr
    assert f"wrote {out / 'best_curves.png'}" in r.stderr and r.stdout == ""
    for name in ("best_curves.png", "acc_vs_params.png", "contour.png"):
        _check_png(out / name)
    assert not (out / "stages.png").exists()
    storage = optuna.storages.RDBStorage(sqlite_url)
    assert not any(k.startswith("dashboard:")
                   for k in storage.get_study_system_attrs(study._study_id))
    api = _study_api(sqlite_url, "rnd")
    assert api["plotly_graph_objects"] == [] and api["note"]["body"] == ""

    # best.md: the `hpo best` lines, marked exactly where the recomputed gap is below g
    md = (out / "best.md").read_text()
    lines = _listing_block(md)
    assert [x.split("  <- ")[0] for x in lines] == [format_row(r) for r in best_rows(study, 20)]
    small = set(_expected_small_gap(trials, g))
    assert 0 < sum(x.endswith(listing.gap_mark(g)) for x in lines) < len(lines)
    for line in lines:
        assert line.endswith(listing.gap_mark(g)) == (_trial_no(line) in small), line
    section = md.split(f"## Best with train-val gap < {g:g}", 1)[1]
    assert [_trial_no(x) for x in _listing_block(section)] == \
        _expected_small_gap(trials, g)[:listing.GAP_LIST]
    warnings = listing.edge_warnings(trials, study_spec(study))
    for w in warnings:
        assert w in md

    # report.html: light and offline, with the plotly figures' JSON and the listing; its one
    # script file is plotly.js, written beside it (nothing is fetched from the network)
    page = (out / "report.html").read_text()
    assert (out / "report.html").stat().st_size < 1_000_000
    sources = re.findall(r"<script[^>]*\ssrc\s*=\s*[\"']([^\"']+)", page)
    assert sources == [page_module.plotly_js_name()]
    js = out / sources[0]
    assert js.stat().st_size > 1_000_000 and b"plotly" in js.read_bytes()[:2000].lower()
    assert f"wrote {js}" in r.stderr
    assert not re.search(r"<link[^>]*\shref\s*=\s*[\"']https?:", page)
    assert page.count("Plotly.newPlot(") == 3 and '"type":"contour"' in page
    assert "Best-1(val acc:" in page and "Best with train-val gap &lt;" in page
    for w in warnings:
        assert w in page

    # publish (in process, as `hpo report`): figures, note and learning-curve artifacts
    art = tmp_path / "artifacts"
    args = ["report", "rnd", "--storage", sqlite_url, "--out", str(tmp_path / "pub"),
            "--max-gap", str(g), "--top", "5", "--artifact-dir", str(art)]
    assert main(args) == 0
    api = _study_api(sqlite_url, "rnd", str(art))
    graphs = {g_["id"]: _strict_json(g_["graph_object"]) for g_ in api["plotly_graph_objects"]}
    assert set(graphs) == {"hpo-best-curves", "hpo-acc-vs-params", "hpo-contour"}
    assert graphs["hpo-acc-vs-params"]["layout"]["xaxis"]["type"] == "log"
    assert any(t["type"] == "contour" for t in graphs["hpo-contour"]["data"])
    assert api["note"]["body"] == (tmp_path / "pub" / "best.md").read_text()
    assert api["note"]["body"].count("Best-") >= 5
    top5 = {t.number for t in ranked(trials)[:5]}
    with_art = {t["number"]: t["artifacts"] for t in api["trials"] if t["artifacts"]}
    assert set(with_art) == top5
    meta = with_art[ranked(trials)[0].number][0]
    assert meta["filename"] == f"learning_curve_trial{ranked(trials)[0].number}.png"
    trial_id = next(t["trial_id"] for t in api["trials"] if t["artifacts"])
    artifact_id = next(t["artifacts"][0]["artifact_id"] for t in api["trials"]
                       if t["trial_id"] == trial_id)
    status, png = _get(storage, f"/artifacts/{study._study_id}/{trial_id}/{artifact_id}",
                       str(art))
    assert status.startswith("200") and png.startswith(b"\x89PNG")

    # a second report replaces the figures and the note; it uploads no curve twice
    assert main(args) == 0
    again = _study_api(sqlite_url, "rnd", str(art))
    assert len(again["plotly_graph_objects"]) == 3 and again["note"]["version"] == 2
    assert sum(len(t["artifacts"]) for t in again["trials"]) == 5

    # Optuna's own artifact API lists the report's figures and the curves (each once: the
    # second report at the same trial count added nothing) and reads them back
    from optuna.artifacts import FileSystemArtifactStore, download_artifact, get_all_artifact_meta

    metas = get_all_artifact_meta(study)
    n = len(trials)
    assert sorted(m.filename for m in metas) == sorted(
        [f"{f}-{n}trials.png" for f in ("best_curves", "acc_vs_params", "contour")]
        + [f"learning_curve_trial{k}.png" for k in top5])
    fig = next(m for m in metas if m.filename.startswith("best_curves-"))
    download_artifact(artifact_store=FileSystemArtifactStore(str(art)),
                      artifact_id=fig.artifact_id, file_path=str(tmp_path / "got.png"))
    assert (tmp_path / "got.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert fig.mimetype == "image/png"
    # without --artifact-dir the figures go beside the SQLite file (hpo-artifacts/)
    assert main(["report", "rnd", "--storage", sqlite_url, "--out", str(tmp_path / "pub2")]) == 0
    beside = Path(sqlite_url.removeprefix("sqlite:///")).with_name("hpo-artifacts")
    assert len(list(beside.iterdir())) == 3
    assert len(get_all_artifact_meta(study)) == len(metas) + 3

    capsys.readouterr()
    assert main(["report", "nope", "--storage", sqlite_url, "--out", str(tmp_path / "x")]) == 2
    assert "no study named 'nope'; studies here: rnd" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow  # about 7-22 s on a 2-core machine: CI's slow step
def test_report_on_a_narrowing_study(tiny_spec, sqlite_url, tmp_path):
    spec = tiny_spec(name="nar", sampler="narrowing", n_trials=24)
    text = spec.read_text().replace('name = "narrowing"\n',
                                    'name = "narrowing"\nstage_trials = 8\nkeep_top = 3\n')
    spec.write_text(text)
    r = hpo("run", str(spec), "--storage", sqlite_url, "--quiet")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    r = hpo("report", "nar", "--storage", sqlite_url, "--out", str(out))
    assert r.returncode == 0, r.stderr
    _check_png(out / "stages.png")
    assert "## Best with train-val gap" not in (out / "best.md").read_text()

    study = optuna.load_study(study_name="nar", storage=sqlite_url)
    trials = study.get_trials()
    found = plane.stages(trials, study_spec(study))
    assert [s.number for s in found] == [0, 1, 2] and [len(s.trials) for s in found] == [8] * 3
    for s in found[1:]:
        recorded = trials[8 * s.number].system_attrs["narrowing:ranges"]
        assert s.ranges == {k: tuple(v) for k, v in recorded.items()}
        for t in s.trials:  # every trial lies in its stage's rectangle
            assert all(s.ranges[k][0] <= t.params[k] <= s.ranges[k][1] for k in s.ranges)
    api = _study_api(sqlite_url, "nar")
    graphs = {g["id"]: _strict_json(g["graph_object"]) for g in api["plotly_graph_objects"]}
    assert set(graphs) == {"hpo-best-curves", "hpo-acc-vs-params", "hpo-contour", "hpo-stages"}
    rects = [t for t in graphs["hpo-stages"]["data"] if t.get("fill") == "toself"]
    assert len(rects) == 3


def test_report_bad_input_is_one_line_and_exit_2(tiny_spec, sqlite_url, tmp_path):
    r = hpo("report", "nope", "--storage", sqlite_url)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "does not exist" in r.stderr
    r = hpo("report", "x", "--storage", sqlite_url, "--top", "0")
    assert r.returncode == 2 and "--top must be >= 1" in r.stderr
    assert not (tmp_path / "out").exists()


def test_report_page_opens_on_a_summary_and_the_main_figure_with_html_tables():
    """report.html's first screen: a one-paragraph summary (Best-1) and the warnings, then the
    book's figure; no Markdown marks, no monospace listing before it; the best trials as HTML
    tables, the full Best-N and the book's text listing collapsed in <details>; a confirmation
    made before the latest trials is marked stale."""
    trials = _random_trials(25)
    trials.append(_trial(25, 0.99, 9.9e-3, 1e-6, train=1.0))  # Best-1 at lr's upper edge
    confirm = {"n_seeds": 2, "noise_floor_std": 0.01, "n_val": 60, "winner": 25, "top": 1,
               "at": "2026-12-07T07:00:00+00:00", "n_finished": 20,
               "rows": [{"trial": 25, "params": {"lr": 9.9e-3, "weight_decay": 1e-6},
                         "mean": 0.9, "sem": 0.01, "search_val_acc": 0.99}]}
    s = listing.summary(trials, SPEC, "s", top=20, max_gap=0.05,
                        user_attrs={listing.CONFIRM_ATTR: confirm})
    figs = plots.report_figures(trials, SPEC, 20)
    page = page_module.html_page("s", s, [(*page_module.SECTIONS[k], f) for k, f in figs.items()])
    body = page.split("<body>", 1)[1]
    first = body.split('id="figure-0"', 1)[0]
    assert "<pre" not in first and "`" not in first and "<table" not in first
    assert "<b>Best-1</b>: validation accuracy <b>0.99</b> (trial 25)" in first
    assert "lr=0.0099 sits at the upper edge" in first
    assert "STALE: the confirmation was made at 20 finished trials; the study now holds 26" \
        in first
    assert first.count("<h2>") == 1  # the figure's own heading: nothing else before it
    rest = body.split('id="figure-0"', 1)[1].split('id="figure-1"', 1)[0]
    assert "`" not in body.split("<script", 1)[0]
    tables = re.findall(r"<table>.*?</table>", rest, re.S)
    assert len(tables) == 4  # Best-5, all Best-20 (collapsed), small gap, confirmation
    assert tables[0].count("<tr") == 1 + 5 and tables[1].count("<tr") == 1 + 20
    details = rest.split("<details>", 1)[1].split("</details>", 1)[0]
    assert tables[1] in details and "<pre>" in details and "Best-20(val acc:" in details
    assert "<pre" not in rest.replace(details, "")
