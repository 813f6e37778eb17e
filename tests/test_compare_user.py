"""`hpo compare` on a user's own objective (`[objective]`): minimize and maximize, a declared and
a define-by-run search space, several samplers across seeds, two workers, --resume.

The objectives are pure Python (no training), so a cell costs the engine's own time only."""

import json
import re

import numpy as np
import optuna
import pytest

from hpo.db.keys import SURPLUS_ATTR
from hpo.engine.compare import evaluates_test, study_name
from hpo.spec import load_spec
from tests.conftest import hpo

FUNCTIONS = '''
import math


def bowl(trial, config):
    """A shifted bowl, minimized: x is declared in [search], y is define-by-run."""
    x = trial.suggest_float("x", -3.0, 3.0)
    y = trial.suggest_float("y", -3.0, 3.0)
    return (x - config["cx"]) ** 2 + (y + 0.5) ** 2 + 0.1


def bowl_test(trial, config):
    """The bowl "on test data": the same point (the trial's params), a slightly moved centre."""
    x = trial.suggest_float("x", -3.0, 3.0)
    y = trial.suggest_float("y", -3.0, 3.0)
    return (x - config["cx"] - 0.1) ** 2 + (y + 0.5) ** 2 + 0.1


def branches(trial):
    """Define-by-run only (no [search]): a categorical branch with its own parameters; a score
    in [0, 1], maximized."""
    kind = trial.suggest_categorical("kind", ["log", "int"])
    if kind == "log":
        u = trial.suggest_float("u", 1e-4, 1e2, log=True)
        return 1.0 / (1.0 + abs(math.log10(u) + 1.0))
    v = trial.suggest_int("v", 0, 20)
    return 0.5 - abs(v - 7) / 40.0
'''

MINIMIZE = '''
name = "bowl"
seed = 0

[objective]
function = "fns.py:bowl"
direction = "minimize"
metric = "loss"
{test}

[objective.config]
cx = 0.7

[search.x]
type = "float"
low = -3.0
high = 3.0

[sampler]
name = "narrowing"
stage_trials = 6
keep_top = 3
'''

DEFINE_BY_RUN = '''
name = "branches"
seed = 3

[objective]
function = "fns.py:branches"
direction = "maximize"
metric = "score"
'''

SAMPLERS = ["random", "narrowing"]


def write(folder, spec_text: str, name: str):
    (folder / "fns.py").write_text(FUNCTIONS)
    path = folder / name
    path.write_text(spec_text)
    return path


def finished_states(url: str, name: str) -> tuple[list[str], list[str]]:
    """(states of the study's counted trials, states of all its trials)."""
    study = optuna.load_study(study_name=name, storage=url)
    trials = study.get_trials(deepcopy=False)
    counted = [t.state.name for t in trials if SURPLUS_ATTR not in t.system_attrs]
    return counted, [t.state.name for t in trials]


def table_column(stdout: str, header: str) -> dict[str, str]:
    """One column of the Markdown table `hpo compare` prints: {arm: cell}."""
    rows = [[c.strip() for c in line.strip("|").split("|")]
            for line in stdout.splitlines() if line.startswith("|")]
    i = rows[0].index(header)
    return {r[0]: r[i] for r in rows[2:]}


def ranks_of(finals: dict[str, list[float]], lower_first: bool) -> dict[str, float]:
    from scipy.stats import rankdata

    labels = list(finals)
    ranks: dict[str, list[float]] = {s: [] for s in labels}
    for k in range(len(finals[labels[0]])):
        values = [finals[s][k] if lower_first else -finals[s][k] for s in labels]
        for s, r in zip(labels, rankdata(values), strict=True):
            ranks[s].append(float(r))
    return {s: float(np.mean(r)) for s, r in ranks.items()}


@pytest.fixture(scope="module")
def minimized(tmp_path_factory):
    """A minimize user objective over 2 samplers x 2 seeds, 2 workers per cell."""
    tmp = tmp_path_factory.mktemp("cmpuser")
    spec = write(tmp, MINIMIZE.format(test=""), "bowl.toml")
    url = f"sqlite:///{tmp / 'u.db'}"
    out = tmp / "out"
    args = ["compare", str(spec), "--storage", url, "--samplers", ",".join(SAMPLERS),
            "--n-trials", "12", "--seeds", "2", "--workers", "2", "--target", "1.5",
            "--confirm", "2", "--out", str(out)]
    r = hpo(*args, "--quiet")
    assert r.returncode == 0, r.stderr
    return url, out, r, args


def test_minimize_cells_hold_exactly_their_budget_and_nothing_running(minimized):
    url, _, _, _ = minimized
    for s in SAMPLERS:
        for k in range(2):
            counted, every = finished_states(url, study_name("bowl", s, k))
            assert counted == ["COMPLETE"] * 12, (s, k, counted)
            assert "RUNNING" not in every, (s, k, every)


def test_minimize_summary_names_the_metric_and_curves_never_increase(minimized):
    url, out, _, _ = minimized
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["metric"], summary["direction"]) == ("loss", "minimize")
    assert set(summary["runs"]) == set(SAMPLERS)
    for s, runs in summary["runs"].items():
        assert sorted(r["seed"] for r in runs) == [0, 1]
        for r in runs:
            curve = r["best_so_far"]
            assert len(curve) == 12
            assert np.all(np.diff(curve) <= 0), (s, r["seed"], curve)
            study = optuna.load_study(study_name=r["name"], storage=url)
            values = [t.value for t in study.trials if t.state.name == "COMPLETE"]
            assert curve[-1] == pytest.approx(min(values))
            assert min(values) >= 0.1  # the bowl's floor: a minimum, not a maximum
            # no test function named: the test split is not touched; bowl takes no seed
            assert r["test_acc"] is None and r["confirmed_val"] is None
            assert "hpo:test" not in study.user_attrs and "hpo:confirm" not in study.user_attrs
    md = (out / "summary.md").read_text()
    assert "| sampler | best loss @10 | best loss @12 | trials to 1.50 |" in md
    assert "Best loss so far" in md
    assert table_column(md, "test loss of chosen") == {s: "-" for s in SAMPLERS}


def test_minimize_table_ranks_ascending(minimized):
    _, out, r, _ = minimized
    summary = json.loads((out / "summary.json").read_text())
    finals = {s: [run["best_so_far"][-1] for run in sorted(runs, key=lambda x: x["seed"])]
              for s, runs in summary["runs"].items()}
    shown = {s: float(v) for s, v in table_column(r.stdout, "mean rank").items()}
    assert shown == pytest.approx(ranks_of(finals, lower_first=True))
    # the first checkpoint's median is the lower one of each arm's two seeds' middle
    median10 = {s: float(v.split()[0]) for s, v in table_column(r.stdout,
                                                                "best loss @10").items()}
    for s, runs in summary["runs"].items():
        assert median10[s] == pytest.approx(np.median([x["best_so_far"][9] for x in runs]),
                                            abs=5e-4)
    # a loss target above 1 (the book's accuracy allows [0, 1]) is reached at or below it
    reached = table_column(r.stdout, "reached")
    for s, runs in summary["runs"].items():
        hits = [next((i for i, v in enumerate(x["best_so_far"]) if v <= 1.5), None) for x in runs]
        assert reached[s] == f"{sum(h is not None for h in hits)}/2"
    assert "--confirm 2 skipped" in r.stderr  # said once, not per cell
    assert r.stderr.count("--confirm 2 skipped") == 1


@pytest.mark.slow  # about 7-22 s on a 2-core machine: CI's slow step
def test_minimize_resume_continues_every_cell(minimized, tmp_path):
    url, out, first, args = minimized
    more = [a if a != "12" else "15" for a in args]
    more[more.index("--out") + 1] = str(tmp_path / "more")
    r = hpo(*more, "--resume", "--quiet")
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "more" / "summary.json").read_text())
    before = json.loads((out / "summary.json").read_text())
    for s in SAMPLERS:
        for k in range(2):
            counted, every = finished_states(url, study_name("bowl", s, k))
            assert counted == ["COMPLETE"] * 15 and "RUNNING" not in every
        for old, new in zip(sorted(before["runs"][s], key=lambda x: x["seed"]),
                            sorted(summary["runs"][s], key=lambda x: x["seed"]), strict=True):
            assert new["best_so_far"][:12] == old["best_so_far"]  # the first 12 kept
            assert new["best_so_far"][-1] <= old["best_so_far"][-1]


def test_a_target_outside_0_1_is_refused_for_the_book_only(tmp_path, tiny_spec):
    r = hpo("compare", str(tiny_spec()), "--target", "1.5", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "hpo compare: error: --target: must be in [0, 1] for the book's validation accuracy, "
        "got 1.5"]
    assert not (tmp_path / "o").exists()


@pytest.mark.slow  # about 7-22 s on a 2-core machine: CI's slow step
def test_define_by_run_maximize_across_samplers(tmp_path):
    """No [search] at all: every parameter is asked for by the function, behind a categorical
    branch; four samplers, maximized, the higher final best ranks first."""
    spec = write(tmp_path, DEFINE_BY_RUN, "branches.toml")
    url = f"sqlite:///{tmp_path / 'd.db'}"
    samplers = ["random", "narrowing", "tpe", "qmc"]
    r = hpo("compare", str(spec), "--storage", url, "--samplers", ",".join(samplers),
            "--n-trials", "8", "--seeds", "2", "--target", "0.9", "--out",
            str(tmp_path / "out"), "--quiet")
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (summary["metric"], summary["direction"]) == ("score", "maximize")
    for s in samplers:
        for k in range(2):
            name = study_name("branches", s, k)
            counted, every = finished_states(url, name)
            assert counted == ["COMPLETE"] * 8 and "RUNNING" not in every, (s, k, every)
            study = optuna.load_study(study_name=name, storage=url)
            kinds = {t.params["kind"] for t in study.trials}
            assert kinds <= {"log", "int"}
            for t in study.trials:  # each branch's own parameter, and only it
                assert set(t.params) == {"kind", "u" if t.params["kind"] == "log" else "v"}
        for run in summary["runs"][s]:
            curve = run["best_so_far"]
            assert np.all(np.diff(curve) >= 0), (s, curve)
    finals = {s: [run["best_so_far"][-1] for run in sorted(runs, key=lambda x: x["seed"])]
              for s, runs in summary["runs"].items()}
    shown = {s: float(v) for s, v in table_column(r.stdout, "mean rank").items()}
    assert shown == pytest.approx(ranks_of(finals, lower_first=False))
    assert re.search(r"\| sampler \| best score @8 \|", r.stdout)


def test_a_named_test_function_measures_each_cell_once(tmp_path):
    """`[objective] test`: each cell's chosen trial goes through the test function once, and
    the table's last column holds its values (a spec without one: '-', above)."""
    spec = write(tmp_path, MINIMIZE.format(test='test = "fns.py:bowl_test"'), "bowl.toml")
    assert evaluates_test(load_spec(str(spec)))
    url = f"sqlite:///{tmp_path / 't.db'}"
    r = hpo("compare", str(spec), "--storage", url, "--samplers", "random,tpe",
            "--n-trials", "6", "--seeds", "1", "--target", "0.5", "--out",
            str(tmp_path / "out"), "--quiet")
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    for s in ("random", "tpe"):
        study = optuna.load_study(study_name=study_name("bowl", s, 0), storage=url)
        record = study.user_attrs["hpo:test"]
        best = study.best_trial
        assert record["trial"] == best.number
        expected = (best.params["x"] - 0.8) ** 2 + (best.params["y"] + 0.5) ** 2 + 0.1
        assert record["test_value"] == pytest.approx(expected)
        assert summary["runs"][s][0]["test_acc"] == pytest.approx(expected)
        shown = table_column(r.stdout, "test loss of chosen")[s]
        assert float(shown.split()[0]) == pytest.approx(expected, abs=5e-4)


SEEDED = '''

def seeded(trial, config, seed):
    """The bowl with a little seed noise: a function that takes `seed` can be confirmed."""
    import random

    x = trial.suggest_float("x", -3.0, 3.0)
    return (x - config["cx"]) ** 2 + 0.1 + random.Random(seed).random() * 1e-3
'''


def test_confirm_reruns_a_user_objective_that_takes_a_seed(tmp_path):
    spec = write(tmp_path, MINIMIZE.format(test="").replace("fns.py:bowl", "fns.py:seeded"),
                 "seeded.toml")
    (tmp_path / "fns.py").write_text(FUNCTIONS + SEEDED)
    url = f"sqlite:///{tmp_path / 'c.db'}"
    r = hpo("compare", str(spec), "--storage", url, "--samplers", "random", "--n-trials", "6",
            "--seeds", "1", "--target", "1.5", "--confirm", "2", "--confirm-seeds", "2",
            "--no-test", "--out", str(tmp_path / "out"), "--quiet")
    assert r.returncode == 0, r.stderr
    assert "skipped" not in r.stderr, r.stderr
    study = optuna.load_study(study_name=study_name("bowl", "random", 0), storage=url)
    record = study.user_attrs["hpo:confirm"]
    means = [row["mean"] for row in record["rows"]]
    assert len(means) == 2 and means == sorted(means)  # the lowest mean first: minimize
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["runs"]["random"][0]["confirmed_val"] == pytest.approx(means[0])
