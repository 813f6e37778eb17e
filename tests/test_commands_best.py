"""`hpo best` as a newcomer meets it: without a NAME on a one-study storage, the same Best-20 as
`hpo run` and `hpo report`, params without float noise in text and in JSON."""

from __future__ import annotations

import json
import re

import optuna
import pytest
from optuna.distributions import FloatDistribution

from hpo.report import listing
from hpo.report.listing import TOP, clean_floats, fmt_param, format_row, rows_from_trials
from tests.conftest import hpo

TINY = """
name = "many"
seed = 1
[data]
dataset = "digits"
train_size = 300
[model]
hidden = [16, 16]
epochs = 5
batch_size = 50
[search.lr]
low = 1e-3
high = 0.5
log = true
[search.weight_decay]
low = 1e-8
high = 1e-4
log = true
[sampler]
name = "random"
[budget]
n_trials = 23
"""
NOISY = re.compile(r"\d\.\d*(0000000|9999999)\d")  # 0.16500000000000004, 0.7999999999999999


def _best_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("Best-")]


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """A one-study storage of 23 trials, and what `hpo run` printed."""
    tmp = tmp_path_factory.mktemp("best")
    spec = tmp / "many.toml"
    spec.write_text(TINY)
    url = f"sqlite:///{tmp / 'hpo.db'}"
    r = hpo("run", str(spec), "--storage", url, "--quiet")
    assert r.returncode == 0, r.stderr
    return url, tmp, r.stdout


@pytest.mark.slow  # about 7-22 s on a 2-core machine: CI's slow step
def test_run_best_and_report_list_the_same_best_20(many):
    url, tmp, printed = many
    from_run = _best_lines(printed)
    assert len(from_run) == TOP == 20
    b = hpo("best", "--storage", url)  # the storage holds one study: no NAME needed
    assert b.returncode == 0, b.stderr
    assert b.stdout == printed
    rep = hpo("report", "many", "--storage", url, "--out", str(tmp / "rep"), "--no-dashboard")
    assert rep.returncode == 0, rep.stderr
    md = (tmp / "rep" / "best.md").read_text()
    assert md.startswith("# Best-20 of study `many`")
    assert _best_lines(md) == from_run
    for line in from_run:  # params as a person reads them
        assert not NOISY.search(line), line
        for value in re.findall(r"(?:lr|weight decay):([^,| ]+)", line):
            assert len(value) <= 10 and float(value) > 0, line  # 0.008985, 1.573e-05


def test_json_carries_no_float_noise(many):
    url, _, _ = many
    out = hpo("best", "many", "--storage", url, "--json", "--max-gap", "0.5")
    assert out.returncode == 0, out.stderr
    assert not NOISY.search(out.stdout), out.stdout
    data = json.loads(out.stdout)
    assert len(data["best"]) == TOP
    study = optuna.load_study(study_name="many", storage=url)
    for row in data["best"]:
        t = study.trials[row["trial"]]
        assert abs(row["val_acc"] - t.value) <= 1e-11 * t.value
        assert abs(row["gap"] - (t.user_attrs["train_acc"] - t.value)) < 1e-11
        for k, v in row["params"].items():
            assert abs(v - t.params[k]) <= 1e-11 * abs(t.params[k])
    studies = hpo("studies", "--storage", url, "--json")
    assert studies.returncode == 0 and not NOISY.search(studies.stdout)


@pytest.mark.slow  # about 7-22 s on a 2-core machine: CI's slow step
def test_best_without_name_needs_one_study(tiny_spec, sqlite_url, tmp_path):
    empty = hpo("best", "--storage", f"sqlite:///{tmp_path / 'none.db'}")
    assert empty.returncode == 2 and len(empty.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "none.db").exists()
    for name in ("one", "two"):
        r = hpo("run", str(tiny_spec(name=name, n_trials=1)), "--storage", sqlite_url, "--quiet")
        assert r.returncode == 0, r.stderr
    r = hpo("best", "--storage", sqlite_url)
    assert r.returncode == 2 and r.stdout == ""
    (line,) = r.stderr.strip().splitlines()
    assert line == ("hpo best: error: this storage holds 2 studies (one, two): name one, e.g. "
                    "hpo best one (hpo studies lists them)")


def test_noisy_floats_read_as_a_person_would():
    assert fmt_param(0.15000000000000002) == "0.15"
    assert fmt_param(0.008984529773922553) == "0.008985"
    assert fmt_param(2.55964209015266e-08) == "2.56e-08"
    assert fmt_param(64) == "64" and fmt_param("sgd") == "sgd"
    assert clean_floats({"gap": 0.16500000000000004, "xs": [0.7999999999999999, 3],
                         "nan": float("nan")})["gap"] == 0.165
    assert clean_floats([0.7999999999999999])[0] == 0.8
    dists = {"lr": FloatDistribution(1e-6, 1e-2, log=True),
             "dropout": FloatDistribution(0.0, 0.5, step=0.05)}
    t = optuna.trial.create_trial(params={"lr": 0.008984529773922553,
                                          "dropout": 0.15000000000000002},
                                  distributions=dists, value=0.74,
                                  user_attrs={"train_acc": 0.9125})
    t.number = 0
    (row,) = rows_from_trials([t])
    assert format_row(row) == ("Best-1(val acc:0.74) | lr:0.008985, dropout:0.15 | "
                               "train acc:0.91, gap:+0.17  [trial 0]")
    s = listing.summary([t], {}, "s")
    assert "dropout:0.15 " in s.markdown() and '"dropout": 0.15' in s.json()


def _add(study, number_value_train, lr):
    """Finished trials added to ``study`` directly: (value, train_acc) each, at ``lr``."""
    dists = {"lr": FloatDistribution(1e-3, 0.5, log=True),
             "weight_decay": FloatDistribution(1e-8, 1e-4, log=True)}
    for value, train in number_value_train:
        study.add_trial(optuna.trial.create_trial(
            params={"lr": lr, "weight_decay": 1.2345678e-6}, distributions=dists, value=value,
            user_attrs={"train_acc": train}))


@pytest.mark.slow  # about 7-22 s on a 2-core machine: CI's slow step
def test_warnings_on_stderr_one_naming_for_small_gaps_and_worker_lines(tiny_spec, sqlite_url):
    """`hpo best` prints its edge warning on stderr (as `hpo report` does), the `--max-gap`
    section names each trial by its overall rank (Best-2, never Gap-best-1) and leaves out the
    trials that learned nothing (train acc 0.10), and `hpo worker` prints params as the listing
    does (4 significant digits)."""
    spec = tiny_spec(name="edgy", n_trials=5)
    assert hpo("init", str(spec), "--storage", sqlite_url).returncode == 0
    study = optuna.load_study(study_name="edgy", storage=sqlite_url)
    _add(study, [(0.80, 0.95), (0.70, 0.72)], lr=0.4987654321)  # Best-1 at lr's upper edge
    _add(study, [(0.17, 0.10)], lr=0.01)  # learned nothing; gap -0.07
    b = hpo("best", "edgy", "--storage", sqlite_url, "--max-gap", "0.05")
    assert b.returncode == 0, b.stderr
    assert "warning" not in b.stdout
    assert b.stderr.splitlines() == [
        "hpo best: warning: lr=0.499 sits at the upper edge of its original range [0.001, 0.5]: "
        "the optimum may lie outside it"]
    section = b.stdout.split("Best with train-val gap < 0.05 (overall ranks):\n", 1)[1]
    assert [line.split("(")[0] for line in section.splitlines()] == ["Best-2"]
    assert "[trial 1]" in section and "Gap-best" not in b.stdout
    data = json.loads(hpo("best", "edgy", "--storage", sqlite_url, "--json",
                          "--max-gap", "0.05").stdout)
    assert [(r["rank"], r["trial"]) for r in data["best_small_gap"]] == [(2, 1)]

    w = hpo("worker", "--study", "edgy", "--storage", sqlite_url, "--n-trials", "5")
    assert w.returncode == 0, w.stderr
    lines = [x for x in w.stderr.splitlines() if x.startswith("trial ")]  # log lines: stderr
    assert len(lines) == 2
    done = optuna.load_study(study_name="edgy", storage=sqlite_url).trials
    for line in lines:
        t = done[int(line.split()[1])]
        assert line == (f"trial {t.number} COMPLETE val_acc={t.value:.3f} "
                        + " ".join(f"{k}={listing.fmt_param(v)}" for k, v in t.params.items()))
        for v in re.findall(r"=([0-9.e+-]+)", line.split(" ", 3)[3]):  # not 0.0008288912837852258
            assert float(v) == float(f"{float(v):.4g}") and len(v) <= 9, line


@pytest.mark.slow  # about 7-22 s on a 2-core machine: CI's slow step
def test_spec_is_a_system_attr_so_optuna_studies_stays_readable(tiny_spec, sqlite_url):
    """The spec's JSON lives in a system attribute; `optuna studies` shows a 12-digit key in its
    user_attrs column instead of kB of JSON. A study made before (the spec in a user attribute)
    is still read by hpo: its worker runs, `hpo best` and `hpo studies` list it."""
    import subprocess
    import sys
    from pathlib import Path

    from hpo.db.storage import SPEC_KEY_ATTR, spec_key, study_spec
    from hpo.spec import load_spec

    new = tiny_spec(name="new", n_trials=1)
    assert hpo("init", str(new), "--storage", sqlite_url).returncode == 0
    study = optuna.load_study(study_name="new", storage=sqlite_url)
    spec = load_spec(new).to_dict()
    assert "hpo:spec" not in study.user_attrs
    assert study.user_attrs == {SPEC_KEY_ATTR: spec_key(spec)} and len(spec_key(spec)) == 12
    assert study_spec(study) == spec

    def optuna_studies() -> list[str]:
        return subprocess.run([str(Path(sys.executable).with_name("optuna")), "studies",
                               "--storage", sqlite_url], capture_output=True, text=True,
                              check=True).stdout.splitlines()

    (new_line,) = [x for x in optuna_studies() if "| new " in x]
    assert spec_key(spec) in new_line and len(new_line) < 120, new_line
    old = load_spec(tiny_spec(name="old", n_trials=1)).to_dict()
    made = optuna.create_study(study_name="old", storage=sqlite_url, direction="maximize")
    made.set_user_attr("hpo:spec", old)  # as hpo stored it before
    assert len(next(x for x in optuna_studies() if "| old " in x)) > 600  # what it was

    w = hpo("worker", "--study", "old", "--storage", sqlite_url, "--quiet")
    assert w.returncode == 0, w.stderr
    b = hpo("best", "old", "--storage", sqlite_url)
    assert b.returncode == 0 and b.stdout.startswith("Best-1("), b.stderr
    s = json.loads(hpo("studies", "--storage", sqlite_url, "--json").stdout)
    assert {r["study"]: (r["sampler"], r["budget"]) for r in s} == \
        {"new": ("random", 1), "old": ("random", 1)}
