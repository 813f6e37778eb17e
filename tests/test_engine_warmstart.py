"""Warm start: a new study begins with the best configurations of an earlier one."""

from __future__ import annotations

import optuna
import pytest

from hpo.report.listing import fmt_params, ranked
from tests.conftest import hpo


@pytest.mark.slow  # about 7-22 s on a 2-core machine: CI's slow step
def test_a_new_study_runs_the_earlier_studys_best_first(tiny_spec, sqlite_url):
    r = hpo("run", str(tiny_spec("first", n_trials=6)), "--storage", sqlite_url, "--quiet")
    assert r.returncode == 0, r.stderr
    first = optuna.load_study(study_name="first", storage=sqlite_url)
    top3 = ranked(first.trials)[:3]
    spec = tiny_spec("second", n_trials=5)
    r = hpo("run", str(spec), "--storage", sqlite_url, "--warm-start", "first",
            "--warm-start-top", "3")  # not -q: that would keep only warnings
    assert r.returncode == 0, r.stderr
    assert ("warm start from 'first': 3 of its best 3 configuration(s) run first (3 as they "
            "were, 0 with params re-drawn, 0 skipped):") in r.stderr
    for t in top3:
        assert f"  trial {t.number} as it was: {fmt_params(t.params)}" in r.stderr
    second = optuna.load_study(study_name="second", storage=sqlite_url)
    assert len(second.trials) == 5
    for t, source in zip(second.trials[:3], top3, strict=True):
        assert t.params == source.params
        assert t.user_attrs["hpo:warm_start"] == f"first#{source.number}"
    assert "hpo:warm_start" not in second.trials[3].user_attrs
    record = second.user_attrs["hpo:warm_start"]
    assert record["study"] == "first" and record["trials"] == [t.number for t in top3]
    # resumed: nothing enqueued twice
    r = hpo("run", str(spec), "--storage", sqlite_url, "--warm-start", "first",
            "--n-trials", "6")
    assert r.returncode == 0 and "skipped" in r.stderr, r.stderr
    second = optuna.load_study(study_name="second", storage=sqlite_url)
    assert len(second.trials) == 6
    assert sum("hpo:warm_start" in t.user_attrs for t in second.trials) == 3


@pytest.mark.slow  # about 7-22 s on a 2-core machine: CI's slow step
def test_only_values_the_new_space_can_take_are_carried(tiny_spec, sqlite_url):
    r = hpo("run", str(tiny_spec("wide", n_trials=4)), "--storage", sqlite_url, "--quiet")
    assert r.returncode == 0, r.stderr
    narrow = tiny_spec("narrow", n_trials=4)
    text = narrow.read_text()
    narrow.write_text(text.replace("low = 1e-3\nhigh = 0.5", "low = 1e-3\nhigh = 2e-3"))
    r = hpo("run", str(narrow), "--storage", sqlite_url, "--warm-start", "wide",
            "--warm-start-top", "4")  # not -q: the "as it was" lines are info
    assert r.returncode == 0, r.stderr
    wide = optuna.load_study(study_name="wide", storage=sqlite_url)
    new = optuna.load_study(study_name="narrow", storage=sqlite_url)
    for t in new.trials:
        assert 1e-3 <= t.params["lr"] <= 2e-3  # every lr inside the new range
    carried = [t for t in new.trials if "hpo:warm_start" in t.user_attrs]
    assert carried  # weight decays carried over even where the lr was out of range
    by_number = {t.number: t for t in wide.trials}
    for t in carried:
        source = by_number[int(t.user_attrs["hpo:warm_start"].split("#")[1])]
        assert t.params["weight_decay"] == source.params["weight_decay"]
    # it says which ran as they were and which had lr re-drawn, and why
    top4 = ranked(wide.trials)[:4]
    lines = r.stderr.splitlines()
    head = next(x for x in lines if x.startswith("warm start from 'wide':"))
    outside = [t for t in top4 if not 1e-3 <= t.params["lr"] <= 2e-3]
    assert outside  # the test needs a best lr outside the new range
    assert head == (f"warm start from 'wide': 4 of its best 4 configuration(s) run first "
                    f"({4 - len(outside)} as they were, {len(outside)} with params re-drawn, "
                    f"0 skipped):")
    for t in outside:
        assert (f"  trial {t.number} with lr re-drawn by the sampler (lr "
                f"{fmt_params({'x': t.params['lr']})[2:]} is outside the new range "
                f"[0.001, 0.002]); kept weight decay:"
                f"{fmt_params({'x': t.params['weight_decay']})[2:]}") in lines, lines
    record = new.user_attrs["hpo:warm_start"]
    assert sorted(record["redrawn"]) == sorted(str(t.number) for t in outside)
    assert record["skipped"] == {}


def test_a_configuration_with_nothing_that_fits_is_skipped(tiny_spec):
    """Unit: a config whose every param is outside the new space is skipped, with the reason."""
    from optuna.distributions import FloatDistribution

    from hpo.engine.warmstart import plan
    from hpo.spec import load_spec

    spec = load_spec(tiny_spec("n"))  # lr in [1e-3, 0.5], weight decay in [1e-8, 1e-4]
    d = {"lr": FloatDistribution(1e-6, 1.0, log=True),
         "momentum": FloatDistribution(0.0, 1.0)}
    t = optuna.trial.create_trial(params={"lr": 0.9, "momentum": 0.5}, distributions=d,
                                  value=0.5)
    t.number = 7
    (c,) = plan(spec, [t])
    assert c.skipped and c.line() == ("trial 7 skipped: none of its params fits (lr 0.9 is "
                                      "outside the new range [0.001, 0.5]; momentum not "
                                      "searched by the new spec)")


@pytest.mark.slow  # about 7-22 s on a 2-core machine: CI's slow step
def test_a_bad_source_is_refused_before_anything_is_written(tiny_spec, sqlite_url, tmp_path):
    spec = tiny_spec("x", n_trials=2)
    r = hpo("run", str(spec), "--storage", sqlite_url, "--warm-start", "ghost")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "hpo.db").exists()
    assert hpo("run", str(spec), "--storage", sqlite_url, "--quiet").returncode == 0
    r = hpo("run", str(spec), "--storage", sqlite_url, "--warm-start", "x")
    assert r.returncode == 2 and "name another study" in r.stderr, r.stderr
    r = hpo("run", str(tiny_spec("y")), "--storage", sqlite_url, "--warm-start", "ghost")
    assert r.returncode == 2 and "ghost" in r.stderr, r.stderr
    assert optuna.get_all_study_names(sqlite_url) == ["x"]


def test_warm_start_top_alone_is_refused(tiny_spec, sqlite_url, tmp_path):
    """--warm-start-top without --warm-start would be silently ignored: bad input instead."""
    r = hpo("run", str(tiny_spec("x", n_trials=2)), "--storage", sqlite_url,
            "--warm-start-top", "3")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        "hpo run: error: --warm-start-top needs --warm-start STUDY (the study to start from)"]
    assert not (tmp_path / "hpo.db").exists()


def test_params_a_users_spec_does_not_declare_are_carried_with_a_note():
    """Unit: into a user's function (define-by-run) a param the new spec does not declare is
    carried, and its line says it is used only if the function asks for it by that name (a
    book study's lr into a function that asks for x was said to run "as it was")."""
    from optuna.distributions import FloatDistribution

    from hpo.engine.warmstart import plan
    from hpo.spec import from_dict

    spec = from_dict({"name": "u", "objective": {"function": "f.py:objective"},
                      "search": {"x": {"low": 0.0, "high": 1.0}}}, source="u.toml")
    d = {"lr": FloatDistribution(1e-6, 1.0, log=True), "x": FloatDistribution(0.0, 1.0)}
    t = optuna.trial.create_trial(params={"lr": 0.01, "x": 0.5}, distributions=d, value=0.5)
    t.number = 3
    (c,) = plan(spec, [t])
    assert c.params == {"lr": 0.01, "x": 0.5} and c.undeclared == ("lr",)
    assert c.line().startswith("trial 3 as it was: ")
    assert c.line().endswith("(lr not declared by the new spec: used only if its function "
                             "asks for them)")
