"""A user's own objective (issue 23): the [objective] table, loading only from allowed folders,
the trial wrapper, the failure policy, define-by-run with the narrowing sampler, and the
commands (run, init, worker) on it."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpo.errors import SpecError
from hpo.objectives import make_objective
from hpo.objectives.user import (
    FAIL_REASON_ATTR,
    GuardedTrial,
    TooManyFailures,
    TrialFailed,
    UserObjective,
    code_dirs_from,
)
from hpo.spec import from_dict, load_spec
from tests.conftest import hpo

optuna.logging.set_verbosity(optuna.logging.WARNING)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

OBJECTIVE = '''
import math, os, time

def objective(trial, config, seed):
    x = trial.suggest_float("x", -3.0, 3.0)
    y = trial.suggest_float("y", -2.0, 4.0)          # define-by-run: not in [search]
    mode = config.get("mode", "ok")
    if mode == "raise" or (mode == "raise_right" and x > 1.0):
        raise ValueError(f"boom at x={x:.3f}")
    if mode == "nan":
        return float("nan")
    if mode == "text":
        return "0.5"
    gate = os.environ.get("HOLD_GATE")
    if gate:                                       # held until the test lets it go
        open(os.path.join(gate, f"held-{trial.number}"), "w").close()
        while not os.path.exists(os.path.join(gate, "go")):
            time.sleep(0.01)
    return (1 - x) ** 2 + 10 * (y - x * x) ** 2 + config.get("offset", 0.0)

NOT_CALLABLE = 3
'''


def write_spec(folder: Path, name: str = "user", *, function: str = "obj.py:objective",
               mode: str = "ok", n_trials: int = 6, extra: str = "", direction: str = "minimize",
               sampler: str = 'name = "random"', code: str = OBJECTIVE) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "obj.py").write_text(code)
    spec = folder / f"{name}.toml"
    spec.write_text(textwrap.dedent(f'''
        name = "{name}"
        seed = 3
        [objective]
        function = "{function}"
        direction = "{direction}"
        metric = "loss"
        [objective.config]
        mode = "{mode}"
        [search.x]
        low = -2.0
        high = 2.0
        [sampler]
        {sampler}
        [budget]
        n_trials = {n_trials}
        ''') + extra)
    return spec


def raw(**objective) -> dict:
    return {"name": "u", "objective": {"function": "obj.py:objective", **objective}}


# --- the spec ---------------------------------------------------------------------------------


def test_objective_table_defaults_and_stored_shape(tmp_path):
    spec = load_spec(write_spec(tmp_path))
    o = spec.objective
    assert o is not None and o.function == "obj.py:objective" and o.base == str(tmp_path)
    assert spec.direction == "minimize" and o.metric == "loss"
    d = spec.to_dict()
    assert d["objective"] == {"function": "obj.py:objective", "direction": "minimize",
                              "metric": "loss", "config": {"mode": "ok"}, "test": None}
    assert "model" not in d and "data" not in d
    again = from_dict(d, source="stored")
    assert again == spec and again.to_dict() == d  # base and source are not part of it
    plain = from_dict(raw())
    assert plain.direction == "maximize" and plain.objective.metric == "value"
    assert plain.search == () and plain.objective.config == {}


def test_book_spec_is_unchanged(tmp_path):
    spec = load_spec(Path(__file__).resolve().parents[1] / "studies" / "book-random.toml")
    assert spec.objective is None and spec.direction == "maximize"
    assert "objective" not in spec.to_dict() and "model" in spec.to_dict()


def test_search_params_of_a_user_objective_take_any_name():
    spec = from_dict({**raw(), "search": {"n_estimators": {"type": "int", "low": 10,
                                                           "high": 500, "log": True},
                                          "kernel": {"type": "categorical",
                                                     "choices": ["rbf", "linear"]}}})
    assert [p.name for p in spec.search] == ["n_estimators", "kernel"]
    with pytest.raises(SpecError, match="search.lr"):  # the book's params still need [search]
        from_dict({"name": "b", "search": {"lr": {"low": 1.0, "high": 0.5}}})


@pytest.mark.parametrize("body, key, words", [
    (raw(direction=["minimize", "maximize"]), "objective.direction", "multi-objective"),
    (raw(direction="down"), "objective.direction", "maximize, minimize"),
    ({"name": "u", "objective": {"direction": "minimize"}}, "objective.function", "required"),
    (raw(function="obj.py"), "objective.function", "FILE.py:NAME"),
    (raw(function="my-file.txt:f"), "objective.function", "neither a .py file"),
    (raw(function="obj.py:1f"), "objective.function", "FILE.py:NAME"),
    (raw(test=3), "objective.test", "string"),
    (raw(metric=""), "objective.metric", "1 to 100"),
    (raw(max_failures=0), "objective.max_failures", ">= 1"),
    (raw(colour="red"), "objective.colour", "unknown key"),
    ({**raw(), "model": {"epochs": 3}}, "model", "book's MLP"),
    ({**raw(), "data": {"dataset": "digits"}}, "data", "book's MLP"),
])
def test_objective_table_refusals(body, key, words):
    with pytest.raises(SpecError) as e:
        from_dict(body, source="s.toml")
    message = str(e.value)
    assert message.startswith(f"s.toml: {key}: ") and words in message and "\n" not in message


def test_config_must_be_storable():
    import datetime

    with pytest.raises(SpecError, match="objective.config: .*no dates"):
        from_dict(raw(config={"when": datetime.date(2026, 1, 1)}))


@pytest.mark.parametrize("function, words", [
    ("missing.py:objective", "file missing.py not found"),
    ("obj.py:nope", "obj.py has no 'nope'"),
    ("obj.py:NOT_CALLABLE", "is not callable (int)"),
    ("nosuchpkg.mod:f", "no module 'nosuchpkg'"),
    ("../outside.py:f", "lies outside the allowed folder"),
])
def test_run_refuses_a_missing_function_and_writes_nothing(tmp_path, function, words):
    (tmp_path / "outside.py").write_text("def f(trial):\n    return 1.0\n")
    spec = write_spec(tmp_path / "specs", function=function)
    db = tmp_path / "x.db"
    r = hpo("run", str(spec), "--storage", f"sqlite:///{db}")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{spec}: objective.function: " in lines[0], r.stderr
    assert words in lines[0]
    assert not db.exists()


def test_multi_objective_is_refused_in_one_line(tmp_path):
    spec = write_spec(tmp_path)
    spec.write_text(spec.read_text().replace('direction = "minimize"',
                                             'direction = ["minimize", "minimize"]'))
    r = hpo("run", str(spec), "--storage", f"sqlite:///{tmp_path / 'x.db'}")
    assert r.returncode == 2 and "multi-objective" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.db").exists()


# --- loading and trust ------------------------------------------------------------------------


def test_a_stored_spec_runs_user_code_only_from_allowed_folders(tmp_path, monkeypatch):
    write_spec(tmp_path / "code")
    stored = from_dict(load_spec(tmp_path / "code" / "user.toml").to_dict(),
                       source="study 'user'")
    with pytest.raises(SpecError, match=r"--code-dir DIR or \$HPO_CODE_DIR"):
        make_objective(stored)
    with pytest.raises(SpecError, match="file obj.py not found"):
        make_objective(stored, code_dirs=[str(tmp_path)])  # not the folder that holds it
    assert isinstance(make_objective(stored, code_dirs=[str(tmp_path / "code")]),
                      UserObjective)
    monkeypatch.setenv("HPO_CODE_DIR", str(tmp_path / "code"))
    assert code_dirs_from(None) == [str(tmp_path / "code")]
    assert code_dirs_from(["a"]) == ["a"]  # the flag wins


def test_modules_resolve_only_inside_the_allowed_folder(tmp_path):
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "objective.py").write_text("def f(trial):\n    return 2.0\n")
    ok = from_dict(raw(function="mypkg.objective:f"), source="s")
    fn = make_objective(ok, code_dirs=[str(tmp_path)])
    assert fn.fn(None) == 2.0
    (tmp_path / "json").mkdir()
    (tmp_path / "json" / "__init__.py").write_text("def loads(t):\n    return 0\n")
    with pytest.raises(SpecError, match="already imported from outside"):
        make_objective(from_dict(raw(function="json:loads"), source="s"),
                       code_dirs=[str(tmp_path)])
    with pytest.raises(SpecError, match="no module 'os'"):  # the study cannot name os.system
        make_objective(from_dict(raw(function="os:system"), source="s"),
                       code_dirs=[str(tmp_path)])


def test_an_absolute_path_outside_the_folder_is_refused(tmp_path):
    (tmp_path / "evil.py").write_text("def f(trial):\n    return 1.0\n")
    (tmp_path / "code").mkdir()
    spec = from_dict(raw(function=f"{tmp_path / 'evil.py'}:f"), source="s")
    with pytest.raises(SpecError, match="outside the allowed folder"):
        make_objective(spec, code_dirs=[str(tmp_path / "code")])


@pytest.mark.slow  # about 7-22 s on a 2-core machine: CI's slow step
def test_worker_from_the_database_needs_a_code_dir(tmp_path):
    spec = write_spec(tmp_path / "code", n_trials=3)
    url = f"sqlite:///{tmp_path / 'w.db'}"
    r = hpo("init", str(spec), "--storage", url)
    assert r.returncode == 0, r.stderr
    r = hpo("worker", "--study", "user", "--storage", url)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "--code-dir" in r.stderr, r.stderr
    r = hpo("worker", "--study", "user", "--storage", url, "--code-dir", str(tmp_path))
    assert r.returncode == 2 and "not found" in r.stderr, r.stderr
    r = hpo("worker", "--study", "user", "--storage", url,
            env={"HPO_CODE_DIR": str(tmp_path / "code")})
    assert r.returncode == 0, r.stderr
    study = optuna.load_study(study_name="user", storage=url)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 3
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert study.metric_names == ["loss"]


# --- the trial ----------------------------------------------------------------------------------


def user_objective(tmp_path: Path, mode: str = "ok", **kw) -> UserObjective:
    spec = load_spec(write_spec(tmp_path, mode=mode, **kw))
    objective = make_objective(spec)
    assert isinstance(objective, UserObjective)
    return objective


def test_spec_params_come_first_with_the_spec_bounds(tmp_path):
    objective = user_objective(tmp_path)
    study = optuna.create_study(direction="minimize")
    study.optimize(objective, n_trials=20)
    for t in study.trials:
        assert t.state == TrialState.COMPLETE
        assert -2.0 <= t.params["x"] <= 2.0  # [search.x], not the function's -3..3
        assert t.distributions["x"].low == -2.0
        assert -2.0 <= t.params["y"] <= 4.0
        assert isinstance(t.user_attrs["model_seed"], int)
    seeds = {t.user_attrs["model_seed"] for t in study.trials}
    assert len(seeds) == 20


def test_guarded_trial_is_an_optuna_trial(tmp_path):
    study = optuna.create_study()
    trial = study.ask()
    guarded = GuardedTrial(trial)
    assert isinstance(guarded, optuna.Trial)
    assert guarded.suggest_int("n", 1, 3) == trial.params["n"]
    guarded.set_user_attr("k", 1)
    assert guarded.number == trial.number and guarded.user_attrs == {"k": 1}


@pytest.mark.parametrize("mode, reason", [
    ("raise", "ValueError: boom at x="),
    ("nan", "returned nan"),
    ("text", "returned str, not a number"),
])
def test_a_failing_trial_fails_with_its_reason(tmp_path, mode, reason):
    objective = user_objective(tmp_path, mode)
    study = optuna.create_study(direction="minimize")
    study.optimize(objective, n_trials=2, catch=(TrialFailed,))
    assert [t.state for t in study.trials] == [TrialState.FAIL] * 2
    assert all(t.user_attrs[FAIL_REASON_ATTR].startswith(reason) for t in study.trials)
    with pytest.raises(TooManyFailures, match=r"obj.py:objective failed 3 trials in a row"):
        study.optimize(objective, n_trials=1, catch=(TrialFailed,))


def test_only_consecutive_failures_count(tmp_path):
    code = 'def objective(trial):\n    if trial.number % 2:\n        raise KeyError("odd")\n' \
           '    return float(trial.number)\n'
    objective = user_objective(tmp_path, code=code)
    objective.max_failures = 2
    study = optuna.create_study(direction="minimize")
    study.optimize(objective, n_trials=20, catch=(TrialFailed,))  # every other one fails
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(failed) == 10
    assert all(t.user_attrs[FAIL_REASON_ATTR] == "KeyError: 'odd'" for t in failed)


def test_rerun_with_fixed_params_and_fresh_seeds(tmp_path):
    objective = user_objective(tmp_path)
    assert objective.rerun({"x": 1.0, "y": 1.0}, seed=5) == 0.0
    with pytest.raises(SpecError, match="objective.test"):
        objective.rerun({"x": 1.0, "y": 1.0}, test=True)
    with pytest.raises(TrialFailed, match="ValueError"):
        objective.rerun({"x": 1.0}, seed=5)  # y is missing


def test_report_and_prune_work_with_the_spec_pruner(tmp_path):
    code = '''
import optuna

def objective(trial):
    x = trial.suggest_float("x", 0.0, 1.0)
    for step in range(10):
        trial.report(x * (step + 1), step)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return x * 10
'''
    spec = load_spec(write_spec(tmp_path, code=code, direction="maximize",
                                extra='[pruner]\nname = "median"\nn_startup_trials = 3\n'
                                      'n_warmup_steps = 1\ninterval_steps = 1\n'))
    from hpo.engine.loop import build_sampler_and_pruner

    sampler, pruner = build_sampler_and_pruner(spec)
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    study.optimize(make_objective(spec), n_trials=20)
    states = {t.state for t in study.trials}
    assert states == {TrialState.COMPLETE, TrialState.PRUNED}


# --- define-by-run params and the narrowing sampler ----------------------------------------------


def test_narrowing_sampler_narrows_define_by_run_params(tmp_path):
    from hpo.engine.loop import build_sampler_and_pruner, work

    spec = load_spec(write_spec(tmp_path, n_trials=30, sampler='name = "narrowing"\n'
                                'stage_trials = 10\nkeep_top = 3'))
    sampler, pruner = build_sampler_and_pruner(spec)
    study = optuna.create_study(direction="minimize", sampler=sampler, pruner=pruner)
    result = work(study, make_objective(spec), n_trials=30)
    assert result.finished == 30
    trials = sorted(study.trials, key=lambda t: t.number)
    stage0 = [t for t in trials if t.number < 10]
    best = sorted(stage0, key=lambda t: t.value)[:3]  # minimize: the lowest values
    ranges = trials[10].system_attrs["narrowing:ranges"]
    assert set(ranges) == {"x", "y"}  # y is never declared in the spec
    low, high = ranges["y"]
    assert (low, high) != (-2.0, 4.0) and high - low < 6.0
    assert low <= min(t.params["y"] for t in best) and high >= max(t.params["y"] for t in best)
    for t in trials[10:20]:
        assert low <= t.params["y"] <= high
        assert ranges["x"][0] <= t.params["x"] <= ranges["x"][1]


# --- the commands ---------------------------------------------------------------------------------


def test_run_with_failures_ends_with_exactly_its_budget(tmp_path):
    spec = write_spec(tmp_path, mode="raise_right", n_trials=12)
    url = f"sqlite:///{tmp_path / 'r.db'}"
    r = hpo("run", str(spec), "--storage", url, "--max-failures", "12")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    study = optuna.load_study(study_name="user", storage=url)
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) == 12
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert failed, "x > 1 should have failed some trials"
    for t in failed:
        assert t.user_attrs[FAIL_REASON_ATTR].startswith("ValueError: boom")
        assert f"warning: trial {t.number} failed: ValueError: boom" in r.stderr


EXITS = '''
import decimal, sys

def objective(trial):
    trial.suggest_float("x", -2.0, 2.0)
    k = trial.number % 4
    if k == 1:
        sys.exit(0)
    if k == 2:
        raise GeneratorExit("odd")
    if k == 3:
        return 10 ** 400
    return decimal.Decimal("0.5")
'''


def test_exits_and_odd_values_of_the_function_fail_only_their_trial(tmp_path):
    """sys.exit() and other BaseExceptions in the user's function left the trial RUNNING and
    ended the worker (exit 0 with nothing said, or a traceback); an int too large for a float
    ended it with a traceback. Each now fails its trial with its reason, and the worker goes
    on to exactly the budget; a Decimal is a value, as Optuna takes it."""
    spec = write_spec(tmp_path, n_trials=3, code=EXITS)
    url = f"sqlite:///{tmp_path / 'e.db'}"
    r = hpo("run", str(spec), "--storage", url, "--max-failures", "5")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    study = optuna.load_study(study_name="user", storage=url)
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) == 3 and TrialState.RUNNING not in states
    reasons = [t.user_attrs.get(FAIL_REASON_ATTR) for t in study.trials[:4]]
    assert reasons[0] is None and study.trials[0].value == 0.5
    assert reasons[1].startswith("called sys.exit(0)")
    assert reasons[2] == "GeneratorExit: odd"
    assert reasons[3] == "returned a number too large for a float (int)"

@pytest.mark.parametrize("flags, k", [((), 3), (("--max-failures", "2"), 2)])
def test_k_consecutive_failures_stop_the_worker(tmp_path, flags, k):
    spec = write_spec(tmp_path, mode="raise")
    url = f"sqlite:///{tmp_path / 'k.db'}"
    r = hpo("run", str(spec), "--storage", url, *flags)
    assert r.returncode == 1, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("hpo run: error: objective obj.py:objective failed "
                           f"{k} trials in a row"), r.stderr
    assert "ValueError: boom" in last and "Traceback" not in r.stderr
    study = optuna.load_study(study_name="user", storage=url)
    assert [t.state for t in study.trials] == [TrialState.FAIL] * k


def test_debug_shows_the_traceback(tmp_path):
    spec = write_spec(tmp_path, mode="raise")
    r = hpo("--debug", "run", str(spec), "--storage", f"sqlite:///{tmp_path / 'd.db'}")
    assert r.returncode == 1
    assert "Traceback" in r.stderr and 'obj.py", line' in r.stderr


def test_minimize_is_honoured_by_run(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    r = hpo("run", str(EXAMPLES / "quadratic.toml"), "--storage", url, "--n-trials", "30")
    assert r.returncode == 0, r.stderr
    study = optuna.load_study(study_name="rosenbrock", storage=url)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    values = [t.value for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(values) == 30 and study.best_value == min(values)
    assert study.metric_names == ["loss"]


def test_minimize_is_honoured_by_best(tmp_path):
    import json

    url = f"sqlite:///{tmp_path / 'b.db'}"
    assert hpo("run", str(EXAMPLES / "quadratic.toml"), "--storage", url,
               "--n-trials", "20").returncode == 0
    r = hpo("best", "rosenbrock", "--storage", url, "--json")
    assert r.returncode == 0, r.stderr
    study = optuna.load_study(study_name="rosenbrock", storage=url)
    first = json.loads(r.stdout)["best"][0]
    assert first["trial"] == study.best_trial.number


def test_sigterm_during_the_users_function(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    gate = tmp_path / "gate"
    gate.mkdir()
    spec = write_spec(tmp_path, n_trials=3)
    url = f"sqlite:///{tmp_path / 's.db'}"
    proc = subprocess.Popen([sys.executable, "-m", "hpo", "run", str(spec), "--storage", url],
                            env={**os.environ, "HOLD_GATE": str(gate),
                                 "OPENBLAS_NUM_THREADS": "1"},
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list(gate.glob("held-*")) and proc.poll() is None:
            assert time.monotonic() < deadline, "the trial never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    study = optuna.load_study(study_name="user", storage=url)
    assert [t.state for t in study.trials] == [TrialState.FAIL]
    assert FAIL_REASON_ATTR not in study.trials[0].user_attrs  # stopped, not the user's failure


# --- the examples ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_sklearn_example_runs(tmp_path):
    pytest.importorskip("sklearn")
    url = f"sqlite:///{tmp_path / 'svc.db'}"
    r = hpo("run", str(EXAMPLES / "digits_svc.toml"), "--storage", url, "--n-trials", "4")
    assert r.returncode == 0, r.stderr
    study = optuna.load_study(study_name="digits-svc", storage=url)
    best = study.best_trial
    assert 0.5 < best.value <= 1.0 and "kernel" in best.params
    objective = make_objective(load_spec(EXAMPLES / "digits_svc.toml"))
    assert 0.5 < objective.rerun(best.params, test=True) <= 1.0


@pytest.mark.slow
def test_torch_example_runs(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    url = f"sqlite:///{tmp_path / 'torch.db'}"
    r = hpo("run", str(EXAMPLES / "torch_mlp.toml"), "--storage", url, "--n-trials", "3")
    assert r.returncode == 0, r.stderr
    study = optuna.load_study(study_name="torch-mlp", storage=url)
    done = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) == 3
    assert all(math.isfinite(t.value) for t in done if t.state == TrialState.COMPLETE)


# --- PostgreSQL: two workers, one killed -9 -------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.slow
def test_define_by_run_objective_on_postgres_with_a_worker_killed(pg_url, tmp_path):
    """Two `hpo worker --code-dir` on a define-by-run user objective (narrowing sampler, two
    stages). The victim's first trial is held inside the user's function (a gate file) until
    it is SIGKILLed while the survivor works; the survivor fails the dead trial once its
    heartbeat is stale, runs its retry (same params, the define-by-run ``y`` too) and the study
    ends with exactly its budget, nothing RUNNING or WAITING."""
    import os
    import signal
    import subprocess
    import sys

    from tests.test_db_postgres import Probe, assert_exact, finish, has_heartbeat, held, wait_for

    n_trials, grace = 8, 3
    code = tmp_path / "code"
    spec = write_spec(code, name="killed-user", n_trials=n_trials,
                      sampler='name = "narrowing"\nstage_trials = 4\nkeep_top = 2')
    r = hpo("init", str(spec), "--storage", pg_url)
    assert r.returncode == 0, r.stderr
    gate = tmp_path / "gate"
    gate.mkdir()
    args = [sys.executable, "-m", "hpo", "worker", "--study", "killed-user", "--storage", pg_url,
            "--quiet", "--code-dir", str(code), "--heartbeat-interval", "1",
            "--grace-period", str(grace)]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    logs = [tmp_path / "victim.log", tmp_path / "survivor.log"]
    probe = Probe(pg_url, "killed-user")
    victim = subprocess.Popen(args, env={**env, "HOLD_GATE": str(gate)},
                              stdout=logs[0].open("w"), stderr=subprocess.STDOUT)
    survivor = None
    try:
        wait_for(lambda: held(gate) or victim.poll() is not None, 120,
                 "the victim's trial inside the user's function")
        (running,) = wait_for(probe.running, 10, "the victim's trial, RUNNING")
        wait_for(lambda: has_heartbeat(probe, running._trial_id), 30, "its first heartbeat")
        survivor = subprocess.Popen(args, env=env, stdout=logs[1].open("w"),
                                    stderr=subprocess.STDOUT)
        wait_for(lambda: probe.states()["COMPLETE"] >= 1 or survivor.poll() is not None, 120,
                 "the survivor's first trial")
        victim.kill()
        victim.wait(timeout=10)
        assert victim.returncode == -signal.SIGKILL
        (gate / "go").touch()  # nobody is held any more; a retry must not wait either
        outputs = finish([survivor], logs[1:], timeout=180)
        assert survivor.returncode == 0, outputs[0]
        assert "Traceback" not in outputs[0], outputs[0]

        trials = assert_exact(probe, n_trials)
        dead = probe.storage.get_trial(running._trial_id)
        assert dead.state == TrialState.FAIL and FAIL_REASON_ATTR not in dead.user_attrs
        retries = [t for t in trials if t.system_attrs.get("failed_trial") == dead.number]
        assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
        assert set(dead.params) == {"x", "y"} and retries[0].params == dead.params
        assert [t for t in trials if t.state == TrialState.FAIL] == [dead]
        stage1 = [t for t in trials if t.system_attrs.get("narrowing:stage") == 1
                  and t.state == TrialState.COMPLETE]
        assert stage1 and all("y" in t.system_attrs["narrowing:ranges"] for t in stage1)
    finally:
        for p in (victim, survivor):
            if p is not None and p.poll() is None:
                p.kill()
        probe.close()


def test_run_with_two_workers_passes_its_folder_on(tmp_path):
    """`hpo run --workers 2`: the forked workers read the spec from the study and run the
    function from the spec's folder (hpo run passes it on as their code dir)."""
    spec = write_spec(tmp_path / "code", n_trials=10, sampler='name = "narrowing"\n'
                      'stage_trials = 5\nkeep_top = 2')
    url = f"sqlite:///{tmp_path / 'two.db'}"
    r = hpo("run", str(spec), "--storage", url, "--workers", "2")
    assert r.returncode == 0, r.stderr
    study = optuna.load_study(study_name="user", storage=url)
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) == 10
    assert all(set(t.params) == {"x", "y"} for t in study.trials
               if t.state == TrialState.COMPLETE)


def test_two_workers_that_always_fail_stop_with_exit_1(tmp_path):
    spec = write_spec(tmp_path / "code", mode="raise", n_trials=10)
    r = hpo("run", str(spec), "--storage", f"sqlite:///{tmp_path / 'f.db'}", "--workers", "2")
    assert r.returncode == 1, r.stderr
    assert "failed 3 trials in a row" in r.stderr and "Traceback" not in r.stderr, r.stderr
