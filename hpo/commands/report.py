"""``hpo report NAME``: the book's figures for a study, as PNGs, one HTML page and dashboard
plots (figures: :mod:`hpo.report.figures` and :mod:`hpo.report.plots`; the page:
:mod:`hpo.report.page`; publishing:
:mod:`hpo.report.dashboard`; the listing: :mod:`hpo.report.listing`)."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from hpo.commands import flags
from hpo.commands.common import open_storage, output_dir
from hpo.errors import UsageError

if TYPE_CHECKING:
    import plotly.graph_objects as go
    from matplotlib.figure import Figure
    from optuna.trial import FrozenTrial

HELP = "figures and an HTML page for a study"


def add_arguments(p: flags.Parser) -> None:
    p.description = ("The book's Best-20 learning-curve grid, accuracy against lr and weight "
                     "decay, a contour, narrowing stages; PNG + HTML, and the same figures in "
                     "optuna-dashboard.")
    flags.study_arg(p, help="the study", required=True)
    flags.storage(p)
    flags.folders(p.add_argument("--out", type=flags.filled("a folder"), metavar="DIR",
                                 help="where the files go (default: out/report/<NAME>)"))
    p.add_argument("--top", type=flags.TOP, metavar="K", help=flags.TOP_HELP)
    p.add_argument("--max-gap", type=flags.FRACTION, metavar="G",
                   help="mark trials whose train-validation gap is below G")
    p.add_argument("--no-dashboard", action="store_true",
                   help="do not publish the figures and note to optuna-dashboard")
    flags.folders(p.add_argument("--artifact-dir", metavar="DIR",
                                 help="also upload each top trial's learning curve as a trial "
                                      "artifact"))


def report(args: argparse.Namespace) -> int:
    """``hpo report NAME``: PNGs, best.md and report.html in ``--out``; the plotly figures and
    the listing in optuna-dashboard unless ``--no-dashboard``."""
    import tempfile

    import optuna

    from hpo.db.storage import load_study_spec, resolve_url
    from hpo.report.dashboard import (
        GRAPH_IDS,
        default_artifact_dir,
        publish,
        upload_study_artifact,
    )
    from hpo.report.figures import (
        acc_vs_params_figure,
        best_curves_figure,
        contour_figure,
        curve_figure,
        stages_figure,
    )
    from hpo.report.listing import TOP, n_finished, ranked, state_names, summary
    from hpo.report.metric import metric_of
    from hpo.report.page import html_page, section, write_plotly_js
    from hpo.report.plane import PLANE, curve_kind, numeric_plane
    from hpo.report.plots import report_figures

    top = TOP if args.top is None else args.top
    out = output_dir("--out", args.out or Path("out", "report", *args.study.split("/")))
    if args.artifact_dir and not args.no_dashboard:
        output_dir("--artifact-dir", args.artifact_dir)
    storage = open_storage(args)
    spec = load_study_spec(storage, args.study).to_dict()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create --out {out}: {e.strerror}") from None
    study = optuna.load_study(study_name=args.study, storage=storage)
    trials = study.get_trials(deepcopy=False)
    written: list[Path] = []

    def save(fig: Figure, name: str) -> None:
        fig.savefig(out / name)
        written.append(out / name)

    metric = metric_of(spec, study.direction)
    kind = curve_kind(trials, metric)
    best = ranked(trials, metric.direction)
    shown = min(top, len(best))
    if kind == "accuracy":
        save(best_curves_figure(trials, top, title=f"{args.study}: Best-{shown}, validation "
                                "(solid) and training (dashed) accuracy",
                                direction=metric.direction, metric=metric), "best_curves.png")
    elif kind == "reported":
        save(best_curves_figure(trials, top, title=f"{args.study}: Best-{shown}, the "
                                f"{metric.name} each trial reported per step",
                                direction=metric.direction, metric=metric, kind=kind),
             "best_curves.png")
    else:
        print("hpo report: no trial reported intermediate values (trial.report): no learning "
              "curves", file=sys.stderr)
    plots: dict[str, go.Figure] = report_figures(trials, spec, top)
    if numeric_plane(spec):
        save(acc_vs_params_figure(trials, spec), "acc_vs_params.png")
        save(contour_figure(trials, spec), "contour.png")
        staged = stages_figure(trials, spec)
        if staged is not None:
            save(staged, "stages.png")
    elif metric.book:
        print(f"hpo report: the study does not search both {' and '.join(PLANE)}: no "
              "accuracy-vs-params, contour or stages figures", file=sys.stderr)

    info = summary(trials, spec, args.study, top, args.max_gap, study.user_attrs,
                   study.direction)
    note = info.markdown()
    (out / "best.md").write_text(note, encoding="utf-8")
    written.append(out / "best.md")
    js = write_plotly_js(out)
    page = html_page(args.study, info,
                     [(*section(k, metric, kind), fig) for k, fig in plots.items()], js.name)
    (out / "report.html").write_text(page, encoding="utf-8")
    written += [out / "report.html", js]
    for path in written:
        print(f"hpo report: wrote {path}", file=sys.stderr)
    for line in info.warning_lines("hpo report"):
        print(line, file=sys.stderr)

    if args.no_dashboard:
        if args.artifact_dir:
            print("hpo report: --artifact-dir ignored with --no-dashboard", file=sys.stderr)
        return 0
    curves: list[tuple[FrozenTrial, Path]] = []
    if args.artifact_dir and kind is not None:
        (out / "curves").mkdir(exist_ok=True)
        for t in best[:top]:
            path = out / "curves" / f"learning_curve_trial{t.number}.png"
            curve_figure(t, metric, kind).savefig(path)
            curves.append((t, path))
    cards = report_figures(trials, spec, top, card=True)  # sized for the dashboard's cards
    uploaded = publish(study, cards, note, curves, args.artifact_dir)
    print(f"hpo report: published {len(plots)} figures ({', '.join(GRAPH_IDS[k] for k in plots)})"
          f" and the Best-{len(info.listing)} note to optuna-dashboard for study "
          f"{args.study!r}", file=sys.stderr)
    if args.artifact_dir:
        print(f"hpo report: uploaded {uploaded} learning curves to {args.artifact_dir} "
              f"({len(curves) - uploaded} already there); serve them with "
              f"`hpo dashboard --artifact-dir {args.artifact_dir}`", file=sys.stderr)
    store = args.artifact_dir or default_artifact_dir(resolve_url(args.storage))
    if store is None:
        print("hpo report: figures not stored as Optuna artifacts: give --artifact-dir DIR "
              "(the default, beside the database, exists for SQLite only)", file=sys.stderr)
        return 0
    # one set of figures per number of finished trials: a report of a grown study adds its own
    done = n_finished(state_names(trials))
    with tempfile.TemporaryDirectory() as tmp:
        new = []
        for path in (p for p in written if p.suffix == ".png"):
            tagged = Path(tmp, f"{path.stem}-{done}trials{path.suffix}")
            shutil.copyfile(path, tagged)
            new.append(upload_study_artifact(study, tagged, store))
    print(f"hpo report: stored {sum(a is not None for a in new)} figures as Optuna artifacts "
          f"of study {args.study!r} in {store} ({sum(a is None for a in new)} already there; "
          "optuna.artifacts.get_all_artifact_meta lists them)", file=sys.stderr)
    return 0

