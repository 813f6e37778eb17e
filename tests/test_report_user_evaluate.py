"""hpo confirm, hpo test, the warm start and hpo report on a study of a user's own objective
(issue 23 item 2): direction-aware, named by the study's metric, the code loaded only from the
allowed folders."""

from __future__ import annotations

import json
import random
import textwrap
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

import hpo
from hpo.db.keys import CONFIRM_ATTR, TEST_ATTR
from hpo.report.evaluate import confirm_seed
from hpo.report.listing import edge_warnings, fmt_param, ranked
from tests.conftest import hpo as cli

optuna.logging.set_verbosity(optuna.logging.WARNING)

CODE = '''
import random

def objective(trial, seed):
    x = trial.suggest_float("x", -3.0, 3.0)
    y = trial.suggest_float("y", 0.001, 10.0, log=True)   # define-by-run
    kind = trial.suggest_categorical("kind", ["a", "b"])  # define-by-run
    for step in range(3):
        trial.report((x - 1) ** 2 + 0.1 * (3 - step), step)
    return noisy(x, y, kind, seed)

def noisy(x, y, kind, seed):
    return ((x - 1) ** 2 + 0.01 * (y - 1) ** 2 + (0.5 if kind == "b" else 0.0)
            + random.Random(seed).gauss(0.0, 0.01))

def test(trial, seed):
    return (trial.suggest_float("x", -3.0, 3.0) - 1) ** 2 + 0.25

def plain(trial):                      # no seed, no reports
    return (trial.suggest_float("x", -3.0, 3.0) - 1) ** 2
'''


def write(folder: Path, name: str, *, function: str = "obj.py:objective",
          test: str | None = "obj.py:test", n_trials: int = 8, seed: int = 1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "obj.py").write_text(CODE)
    test_line = f'test = "{test}"' if test else ""
    spec = folder / f"{name}.toml"
    spec.write_text(textwrap.dedent(f'''
        name = "{name}"
        seed = {seed}
        [objective]
        function = "{function}"
        direction = "minimize"
        metric = "loss"
        {test_line}
        [search.x]
        low = -2.0
        high = 2.0
        [sampler]
        name = "random"
        [budget]
        n_trials = {n_trials}
        '''))
    return spec


def run(tmp_path: Path, name: str = "u", **kw) -> tuple[str, optuna.Study]:
    url = f"sqlite:///{tmp_path / 'u.db'}"
    study = hpo.run(write(tmp_path / "code", name, **kw), storage=url)
    return url, study


def noisy(x: float, y: float, kind: str, seed: int) -> float:
    return ((x - 1) ** 2 + 0.01 * (y - 1) ** 2 + (0.5 if kind == "b" else 0.0)
            + random.Random(seed).gauss(0.0, 0.01))


@pytest.mark.slow  # about 7-22 s on a 2-core machine: CI's slow step
def test_confirm_reruns_the_best_with_fresh_seeds_in_the_studys_direction(tmp_path):
    url, study = run(tmp_path)
    code = str(tmp_path / "code")
    r = cli("confirm", "u", "--storage", url, "--top", "3", "--seeds", "3", "--json",
            "--code-dir", code)
    assert r.returncode == 0, r.stderr
    record = json.loads(r.stdout)
    assert record["metric"] == "loss" and record["direction"] == "minimize"
    top3 = ranked(study.get_trials(), "minimize")[:3]
    assert {row["trial"] for row in record["rows"]} == {t.number for t in top3}
    means = [row["mean"] for row in record["rows"]]
    assert means == sorted(means) and record["winner"] == record["rows"][0]["trial"]
    for row in record["rows"]:
        t = study.trials[row["trial"]]
        assert row["seeds"] == [confirm_seed(1, t.number, j) for j in range(3)]
        assert t.user_attrs["model_seed"] not in row["seeds"]
        p = t.params
        assert row["values"] == pytest.approx(
            [noisy(p["x"], p["y"], p["kind"], s) for s in row["seeds"]])
        assert row["search_value"] == pytest.approx(t.value)
    stored = optuna.load_study(study_name="u", storage=url).user_attrs[CONFIRM_ATTR]
    assert stored["winner"] == record["winner"] and stored["n_finished"] == 8
    r = cli("best", "u", "--storage", url, "--top", "1")
    assert "Confirmed-1(loss:" in r.stdout and "lowest first" in r.stdout, r.stdout
    assert "STALE" not in r.stdout
    hpo.run(write(tmp_path / "code", "u", n_trials=9), storage=url)  # the study moves on
    r = cli("best", "u", "--storage", url, "--top", "1")
    assert "STALE: this confirmation was made at 8 finished trials" in r.stdout, r.stdout


def test_confirm_of_a_function_without_seed_is_refused_and_writes_nothing(tmp_path):
    url, _ = run(tmp_path, function="obj.py:plain")
    r = cli("confirm", "u", "--storage", url, "--code-dir", str(tmp_path / "code"))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "takes no `seed`" in r.stderr
    assert "fresh seeds" in r.stderr, r.stderr
    assert CONFIRM_ATTR not in optuna.load_study(study_name="u", storage=url).user_attrs


@pytest.mark.slow  # about 7-22 s on a 2-core machine: CI's slow step
def test_confirm_and_test_load_code_only_from_an_allowed_folder(tmp_path, monkeypatch):
    url, _ = run(tmp_path)
    env = {"HPO_CODE_DIR": ""}
    for command in ("confirm", "test"):
        r = cli(command, "u", "--storage", url, env=env)
        assert r.returncode == 2 and "--code-dir DIR or $HPO_CODE_DIR" in r.stderr, r.stderr
    attrs = optuna.load_study(study_name="u", storage=url).user_attrs
    assert CONFIRM_ATTR not in attrs and TEST_ATTR not in attrs
    r = cli("test", "u", "--storage", url, env={"HPO_CODE_DIR": str(tmp_path / "code")})
    assert r.returncode == 0, r.stderr


def test_test_runs_the_test_function_once_on_the_best_trial(tmp_path):
    url, study = run(tmp_path)
    code = str(tmp_path / "code")
    best = ranked(study.get_trials(), "minimize")[0]
    r = cli("test", "u", "--storage", url, "--code-dir", code, "--json")
    assert r.returncode == 0, r.stderr
    record = json.loads(r.stdout)
    assert record["trial"] == best.number and record["metric"] == "loss"
    assert record["test_value"] == pytest.approx((best.params["x"] - 1) ** 2 + 0.25)
    assert record["value"] == pytest.approx(best.value) and record["n_finished"] == 8
    r = cli("test", "u", "--storage", url, "--code-dir", code)
    assert r.returncode == 2 and "already evaluated" in r.stderr and record["at"] in r.stderr
    r = cli("best", "u", "--storage", url, "--top", "1")
    assert f"trial {best.number} test loss " in r.stdout, r.stdout


def test_test_without_a_test_function_is_refused_and_writes_nothing(tmp_path):
    url, _ = run(tmp_path, test=None)
    r = cli("test", "u", "--storage", url, "--code-dir", str(tmp_path / "code"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "objective.test: not set" in r.stderr, r.stderr
    assert TEST_ATTR not in optuna.load_study(study_name="u", storage=url).user_attrs


def test_warm_start_carries_define_by_run_params_in_the_earlier_direction(tmp_path):
    url, first = run(tmp_path, "first")
    top3 = ranked(first.get_trials(), "minimize")[:3]
    spec = write(tmp_path / "code", "second", n_trials=5, seed=2)
    r = cli("run", str(spec), "--storage", url, "--warm-start", "first", "--warm-start-top", "3")
    assert r.returncode == 0, r.stderr
    assert "3 of its best 3 configuration(s) run first (3 as they were" in r.stderr, r.stderr
    second = optuna.load_study(study_name="second", storage=url)
    for t, source in zip(second.trials[:3], top3, strict=True):
        assert t.params == source.params and set(t.params) == {"x", "y", "kind"}
        assert t.user_attrs["hpo:warm_start"] == f"first#{source.number}"
    assert len([t for t in second.trials if t.state == TrialState.COMPLETE]) == 5


def test_edge_warnings_cover_spec_and_define_by_run_params():
    spec = {"objective": {"function": "obj.py:objective", "direction": "minimize",
                          "metric": "loss"},
            "search": {"x": {"type": "float", "low": -2.0, "high": 2.0}}}
    dists = {"x": FloatDistribution(-2.0, 2.0), "y": FloatDistribution(0.001, 10.0, log=True),
             "kind": CategoricalDistribution(["a", "b"])}
    trials = [create_trial(value=v, params=p, distributions=dists) for v, p in (
        (0.5, {"x": 1.99, "y": 9.9, "kind": "a"}),   # the best when minimizing
        (3.0, {"x": 0.0, "y": 1.0, "kind": "b"}))]
    found = edge_warnings(trials, spec, "minimize")
    assert any(w.startswith("x=1.99 sits at the upper edge of its original range [-2, 2]")
               for w in found), found
    assert any(w.startswith("y=9.9 sits at the upper edge of its original range [0.001, 10]")
               for w in found), found
    assert edge_warnings(trials, spec, "maximize") == []  # x=0, y=1: inside both


def test_report_on_a_minimize_user_study(tmp_path):
    url, study = run(tmp_path)
    out = tmp_path / "report"
    r = cli("report", "u", "--storage", url, "--no-dashboard", "--out", str(out))
    assert r.returncode == 0, r.stderr
    page = (out / "report.html").read_text()
    assert "ranked by loss (lowest first)" in page
    assert "Values reported by the best trials" in page  # trial.report -> the curves
    best = ranked(study.get_trials(), "minimize")
    rows = [page.index(f"<td>Best-{i}</td>") for i in (1, 2, 3)]
    assert rows == sorted(rows)
    first = page[rows[0]:rows[1]]
    assert f"<td>{best[0].number}</td>" in first and f"{best[0].value:.4g}" in first
    shown = fmt_param(best[0].params["y"])  # the params as a person reads them: 4 digits
    assert f"<td>{shown}</td>" in first and len(shown.strip("-0.").replace(".", "")) <= 4
    assert (out / "best_curves.png").exists()
    assert not (out / "acc_vs_params.png").exists() and not (out / "contour.png").exists()
    assert "lr and weight_decay" not in r.stderr


def test_report_on_a_user_study_without_reports(tmp_path):
    url, _ = run(tmp_path, function="obj.py:plain")
    out = tmp_path / "report"
    r = cli("report", "u", "--storage", url, "--no-dashboard", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "no learning curves" in r.stderr and not (out / "best_curves.png").exists()
    assert "ranked by loss (lowest first)" in (out / "report.html").read_text()
