"""One listing for every reader of a study: hpo best, hpo report, the dashboard note."""

from __future__ import annotations

import json

import optuna
import pytest

from hpo.db.storage import study_spec
from hpo.report.listing import edge_warnings, search_limits
from tests.conftest import hpo


@pytest.mark.slow  # about 7-22 s on a 2-core machine: CI's slow step
def test_best_and_report_give_the_same_edge_warnings_on_a_shift_study(tiny_spec, sqlite_url,
                                                                       tmp_path):
    # Digits learn faster with a larger lr: the search starts in [1e-4, 1e-2], moves up and
    # ends at the edge of its hard bound 0.05 (not of [search], which it left behind).
    path = tiny_spec("shift", sampler="narrowing", n_trials=20, epochs=20, sampler_options=(
        "stage_trials = 10\nkeep_top = 3\nshift = true\n[sampler.bounds]\nlr = [1e-4, 0.05]"))
    text = path.read_text().replace("low = 1e-3\nhigh = 0.5\n", "low = 1e-4\nhigh = 1e-2\n")
    path.write_text(text)
    r = hpo("run", str(path), "--storage", sqlite_url, "--quiet")
    assert r.returncode == 0, r.stderr
    best = hpo("best", "shift", "--storage", sqlite_url, "--json")
    assert best.returncode == 0, best.stderr
    from_best = json.loads(best.stdout)["warnings"]
    out = tmp_path / "report"
    rep = hpo("report", "shift", "--storage", sqlite_url, "--out", str(out), "--no-dashboard")
    assert rep.returncode == 0, rep.stderr
    from_report = [line.split("hpo report: warning: ", 1)[1] for line in rep.stderr.splitlines()
                   if line.startswith("hpo report: warning: ")]
    assert from_best == from_report
    assert all(w in (out / "best.md").read_text() for w in from_best)
    # and what they say is measured against the hard bounds, not the starting range
    study = optuna.load_study(study_name="shift", storage=sqlite_url)
    assert study.best_params["lr"] > 1e-2
    assert from_best and all("[0.0001, 0.05]" in w for w in from_best)
    assert from_best == edge_warnings(study.trials, study_spec(study))


def test_search_limits_are_the_bounds_of_a_shift_spec():
    spec = {"search": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                       "optimizer": {"type": "categorical", "choices": ["sgd"]}},
            "sampler": {"name": "narrowing", "shift": True, "bounds": {"lr": [1e-6, 1.0]}}}
    limits = search_limits(spec)
    assert set(limits) == {"lr"}
    assert (limits["lr"].low, limits["lr"].high, limits["lr"].log) == (1e-6, 1.0, True)
    spec["sampler"] = {"name": "tpe"}
    assert (search_limits(spec)["lr"].low, search_limits(spec)["lr"].high) == (1e-4, 1e-2)


# --- one ranking, in the study's direction ------------------------------------------------------


def _study(direction: str, values: list[float], attrs: dict | None = None) -> optuna.Study:
    """An in-memory study whose trial i has value ``values[i]`` and lr 10^-(i+1)."""
    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial

    study = optuna.create_study(direction=direction)
    dist = {"lr": FloatDistribution(1e-6, 1.0, log=True)}
    for i, v in enumerate(values):
        study.add_trial(create_trial(value=v, params={"lr": 10.0 ** -(i + 1)},
                                     distributions=dist, user_attrs=dict(attrs or {})))
    return study


LOSS_SPEC = {"name": "mine", "search": {"lr": {"type": "float", "low": 1e-6, "high": 1.0,
                                              "log": True}},
             "objective": {"function": "f.py:obj", "direction": "minimize", "metric": "loss"}}


def test_every_reader_ranks_a_minimize_study_lowest_first():
    from hpo.report.listing import ranked, rows_from_trials
    from hpo.samplers.edges import edge_warnings as sampler_edge_warnings
    from hpo.samplers.ranking import best_first

    study = _study("minimize", [0.5, 0.2, 0.2, 0.9, float("inf")])
    trials = study.trials
    # lowest first, the tie (trials 1 and 2) to the lower number, the infinite value left out
    assert [t.number for t in best_first(trials, "minimize")] == [1, 2, 0, 3]
    assert [t.number for t in best_first(trials, study.direction)] == [1, 2, 0, 3]
    assert [t.number for t in ranked(trials, "minimize")] == [1, 2, 0, 3]
    assert [r.number for r in rows_from_trials(trials, "minimize")] == [1, 2, 0, 3]
    # the book's direction (and every study before user objectives) is unchanged: highest first
    assert [t.number for t in ranked(trials)] == [3, 0, 1, 2]
    # the listing and the sampler's edge rule pick the same best trial (trial 1, lr = 0.01)
    best = study.best_trial.number
    assert best == 1 == ranked(trials, study.direction)[0].number
    spec = dict(LOSS_SPEC, search={"lr": {"type": "float", "low": 1e-2, "high": 1.0,
                                          "log": True}})
    listed = edge_warnings(trials, spec)  # direction from the spec's [objective]
    assert listed == [m + ": the optimum may lie outside it" for m in
                      sampler_edge_warnings(trials, search_limits(spec), direction="minimize")]
    assert listed and listed[0].startswith("lr=0.01 sits at the lower edge")


def test_a_user_objectives_listing_names_its_metric_and_ranks_by_its_direction():
    from hpo.report.listing import study_summary, summary
    from hpo.report.metric import BOOK, Metric, metric_of

    assert metric_of({}) == BOOK == Metric("val_acc", "maximize")
    assert metric_of({"objective": {"function": "f.py:obj"}}) == Metric("value", "maximize")
    assert metric_of(LOSS_SPEC) == Metric("loss", "minimize")
    study = _study("minimize", [0.5, 0.123456, 0.9])
    info = summary(study.trials, LOSS_SPEC, "mine", user_attrs={})
    lines = info.text().splitlines()
    assert lines[0] == "Best-1(loss:0.1235) | lr:0.01  [trial 1]"
    assert [line.split("(")[1].split(")")[0] for line in lines] == [
        "loss:0.1235", "loss:0.5", "loss:0.9"]
    assert "train acc" not in info.text()  # the book's columns only when trials recorded them
    assert info.header().startswith("3 COMPLETE of 3 trials, ranked by loss (lowest first); "
                                    "each line is in the book's listing format.")
    best = json.loads(info.json())["best"][0]
    assert best == {"rank": 1, "trial": 1, "loss": 0.123456, "params": {"lr": 0.01},
                    "diverged": False}
    # the study's own direction wins over a spec that says otherwise
    again = study_summary(study, dict(LOSS_SPEC, objective={"metric": "loss",
                                                            "direction": "maximize"}))
    assert again.rows[0].number == 1


def test_report_html_names_a_user_metric():
    from hpo.report.listing import summary
    from hpo.report.page import header, rows_table, summary_intro

    study = _study("minimize", [0.5, 0.25])
    info = summary(study.trials, LOSS_SPEC, "mine", user_attrs={})
    assert "<b>Best-1</b>: loss <b>0.25</b> (trial 1)" in summary_intro(info)
    table = rows_table(info, info.rows)
    assert "<th>loss</th>" in table and "train acc" not in table and "gap" not in table
    assert header(info) == "2 COMPLETE of 2 trials, ranked by loss (lowest first)."
    # a book study's page is as before
    book = summary(_study("maximize", [0.5, 0.75], {"train_acc": 0.8}).trials,
                   {"search": LOSS_SPEC["search"]}, "book", user_attrs={})
    assert "<b>Best-1</b>: validation accuracy <b>0.75</b> (trial 1)" in summary_intro(book)
    assert "<th>val acc</th>" in rows_table(book, book.rows)
    assert header(book) == ("2 COMPLETE of 2 trials, ranked by final validation accuracy, with "
                            "the final training accuracy and the train-validation gap.")


def test_the_book_curves_only_for_trials_that_recorded_them():
    from hpo.report.plots import report_figures

    study = _study("minimize", [0.5, 0.25])
    assert report_figures(study.trials, LOSS_SPEC, 5) == {}  # no curves, no lr x weight-decay
    curved = _study("minimize", [0.5, 0.25], {"val_acc_curve": [0.1, 0.2]})
    assert list(report_figures(curved.trials, LOSS_SPEC, 5)) == ["best_curves"]
    assert list(report_figures(study.trials, {"search": LOSS_SPEC["search"]}, 5)) == [
        "best_curves"]  # a book study: as before
