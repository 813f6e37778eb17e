"""One listing for every reader of a study: hpo best, hpo report, the dashboard note."""

from __future__ import annotations

import json

import optuna

from hpo.db.storage import study_spec
from hpo.report.listing import edge_warnings, search_limits
from tests.conftest import hpo


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
