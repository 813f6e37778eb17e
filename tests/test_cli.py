"""The `hpo` command end to end on SQLite: real processes, real storage."""

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter

import optuna
import pytest

from hpo.db.storage import study_spec
from tests.conftest import ROOT, STUDIES, hpo


def _run(spec, url, *extra):
    r = hpo("run", str(spec), "--storage", url, "--quiet", *extra)
    assert r.returncode == 0, r.stderr
    return r


def _states(url: str, study: str) -> dict[str, int]:
    s = optuna.load_study(study_name=study, storage=url)
    out: dict[str, int] = {}
    for t in s.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def test_help_for_every_command():
    from hpo.cli import COMMANDS

    for cmd in COMMANDS:
        r = hpo(cmd, "--help")
        assert r.returncode == 0 and "usage: hpo" in r.stdout, cmd


def test_each_command_module_holds_its_parser_and_its_action():
    """Every module of cli's table declares its command's flags (``add_arguments``), its line
    in ``hpo --help`` (``HELP``) and its action; no command module imports another (common.py
    and flags.py are the shared helpers)."""
    import ast
    import importlib
    from pathlib import Path

    from hpo.cli import COMMANDS

    for cmd, (module_name, action) in COMMANDS.items():
        module = importlib.import_module(module_name)
        assert callable(getattr(module, "add_arguments", None)), cmd
        assert callable(getattr(module, action, None)), (cmd, action)
        assert isinstance(getattr(module, "HELP", None), str), cmd
    folder = ROOT / "hpo" / "commands"
    shared = {"hpo.commands", "hpo.commands.common", "hpo.commands.flags"}
    for path in sorted(folder.glob("*.py")):
        here = f"hpo.commands.{path.stem}"
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # from . import x / from .x import y
                    base = ".".join(["hpo.commands", base] if base else ["hpo.commands"])
                imported |= {base} | {f"{base}.{a.name}" for a in node.names}
        modules = {".".join(m.split(".")[:3]) for m in imported if m.startswith("hpo.commands.")}
        others = {m for m in modules if Path(folder, m.split(".")[2] + ".py").exists()}
        others -= shared | {here}
        assert others == set(), f"{path.name} imports other commands: {sorted(others)}"


def test_help_imports_neither_numpy_nor_optuna_nor_sqlalchemy():
    """`hpo --help` builds every command's parser, yet the heavy libraries are imported only
    when a command runs (each command module imports them inside its action)."""
    code = ("import sys\n"
            "from hpo.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = {'numpy', 'optuna', 'sqlalchemy', 'matplotlib', 'plotly'}\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & heavy), file=sys.stderr)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and "usage: hpo" in r.stdout, r.stderr
    assert r.stderr.strip() == "[]", r.stderr


def test_run_records_the_contract(tiny_spec, sqlite_url):
    spec = tiny_spec(n_trials=5)
    r = hpo("run", str(spec), "--storage", sqlite_url, "--quiet")
    assert r.returncode == 0, r.stderr
    lines = [x for x in r.stdout.splitlines() if x.startswith("Best-")]
    assert lines and lines[0].startswith("Best-1(val acc:")
    assert "lr:" in lines[0] and "weight decay:" in lines[0] and "train acc:" in lines[0]
    study = optuna.load_study(study_name="tiny", storage=sqlite_url)
    assert study.metric_names == ["val_acc"]
    assert study_spec(study)["name"] == "tiny"
    trials = study.get_trials()
    assert len(trials) == 5 and all(t.state.name == "COMPLETE" for t in trials)
    for t in trials:
        assert set(t.params) == {"lr", "weight_decay"}
        ua = t.user_attrs
        assert len(ua["train_acc_curve"]) == 5 and len(ua["val_acc_curve"]) == 5
        assert ua["val_acc_curve"][-1] == pytest.approx(t.value, abs=1e-6)
        assert ua["train_acc"] == pytest.approx(ua["train_acc_curve"][-1], abs=1e-6)
        assert isinstance(ua["model_seed"], int)
        # no pruner: the validation curve is still the trial's intermediate values
        assert t.intermediate_values == pytest.approx(
            dict(enumerate(ua["val_acc_curve"], 1)), abs=1e-6)


def test_optuna_cli_reads_what_hpo_wrote(tiny_spec, sqlite_url):
    _run(tiny_spec(n_trials=3), sqlite_url)
    optuna_cli = os.path.join(os.path.dirname(sys.executable), "optuna")
    r = subprocess.run([optuna_cli, "trials", "--storage", sqlite_url, "--study-name", "tiny",
                        "-f", "json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert len(rows) == 3 and {"lr", "weight_decay"} <= set(rows[0]["params"])


@pytest.mark.slow  # about 7-22 s on a 2-core machine: CI's slow step
def test_resume_and_best_json(tiny_spec, sqlite_url):
    spec = tiny_spec(n_trials=3)
    assert hpo("run", str(spec), "--storage", sqlite_url, "--quiet").returncode == 0
    r = hpo("run", str(spec), "--storage", sqlite_url, "--quiet", "--n-trials", "5")
    assert r.returncode == 0, r.stderr
    assert _states(sqlite_url, "tiny") == {"COMPLETE": 5}
    r = hpo("best", "tiny", "--storage", sqlite_url, "--json", "--top", "2")
    data = json.loads(r.stdout)
    assert [b["rank"] for b in data["best"]] == [1, 2]
    assert data["best"][0]["val_acc"] >= data["best"][1]["val_acc"]
    assert data["trials"] == {"COMPLETE": 5}
    r = hpo("studies", "--storage", sqlite_url)
    assert r.returncode == 0 and "tiny" in r.stdout


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_a_resumed_study_draws_new_points_and_stays_reproducible(tiny_spec, tmp_path, sampler):
    """A random stream restarted from the spec's seed would redraw a resumed study's first
    points (trial 3 = trial 0, ...): resuming reseeds from (seed, trials held), so the same
    resume of the same study draws the same new points."""
    spec = tiny_spec(sampler=sampler, n_trials=3)
    lrs = []
    for db in ("a.db", "b.db"):
        url = f"sqlite:///{tmp_path / db}"
        assert hpo("run", str(spec), "--storage", url, "--quiet").returncode == 0
        r = hpo("run", str(spec), "--storage", url, "--quiet", "--n-trials", "6")
        assert r.returncode == 0, r.stderr
        study = optuna.load_study(study_name="tiny", storage=url)
        lrs.append([t.params["lr"] for t in study.trials])
    first, second = lrs
    assert len(first) == 6 and not set(first[:3]) & set(first[3:]), first
    assert first == second  # reproducible: same seed, resumed at the same point


def test_two_workers_exact_budget(tiny_spec, sqlite_url):
    r = hpo("run", str(tiny_spec(n_trials=12)), "--storage", sqlite_url, "--workers", "2",
            "--quiet")
    assert r.returncode == 0, r.stderr
    assert "database is locked" not in r.stderr
    states = _states(sqlite_url, "tiny")
    assert states.get("COMPLETE") == 12 and "RUNNING" not in states and "WAITING" not in states


def _budget(url: str, study: str) -> int:
    return study_spec(optuna.load_study(study_name=study, storage=url))["budget"]["n_trials"]


@pytest.mark.slow  # about 7-22 s on a 2-core machine: CI's slow step
def test_worker_joins_with_stored_spec(tiny_spec, sqlite_url):
    """The budget is the study's: `hpo run` / `hpo init` record it; a worker's --n-trials caps
    that worker only and never raises (or lowers) the study's budget."""
    spec = tiny_spec(n_trials=4)
    r = hpo("init", str(spec), "--storage", sqlite_url)
    assert r.returncode == 0, r.stderr
    r = hpo("worker", "--study", "tiny", "--storage", sqlite_url, "--n-trials", "1")
    assert r.returncode == 0, r.stderr
    assert _states(sqlite_url, "tiny") == {"COMPLETE": 1} and r.stderr.count(" COMPLETE ") == 1
    assert "ran 1 trial(s); study holds 1 finished of its budget 4 (n_trials)" in r.stderr
    r = hpo("worker", "--study", "tiny", "--storage", sqlite_url, "--n-trials", "24")
    assert r.returncode == 0, r.stderr
    assert _states(sqlite_url, "tiny") == {"COMPLETE": 4}
    # one log line per trial it ran, on stderr, params to 4 significant digits
    lines = [x for x in r.stderr.splitlines() if x.startswith("trial ")]
    assert len(lines) == 3 and r.stdout == "", r.stderr
    assert re.fullmatch(r"trial [1-3] COMPLETE val_acc=0\.\d{3} lr=[0-9.e-]+ "
                        r"weight_decay=[0-9.e-]+", lines[0]), lines[0]
    lr = lines[0].split("lr=")[1].split()[0]
    assert len(lr.replace("0.", "", 1).lstrip("0").split("e")[0].replace(".", "")) <= 4, lr
    assert "ran 3 trial(s); study holds 4 finished of its budget 4 (budget)" in r.stderr
    assert _budget(sqlite_url, "tiny") == 4


@pytest.mark.slow  # about 7-22 s on a 2-core machine: CI's slow step
def test_a_worker_prints_no_line_for_a_surplus_claim(tiny_spec, sqlite_url):
    """A surplus claim (two workers took the last slot at once) ran nothing and counts nowhere:
    `hpo worker` logs one line per trial it ran and none for it (docs/compose.md, `logs -f
    worker`; tests/test_containers.py counts the lines). Here: 1 COMPLETE, another worker's
    trial RUNNING and a retry WAITING, budget 2: the worker pops the retry, whose claim fails;
    once the test finishes the RUNNING trial the study holds its budget and the worker leaves."""
    spec = tiny_spec(n_trials=2)
    r = hpo("init", str(spec), "--storage", sqlite_url)
    assert r.returncode == 0, r.stderr
    study = optuna.load_study(study_name="tiny", storage=sqlite_url)
    done = study.ask()
    study.tell(done, 0.5)
    running = study.ask()  # another worker's, young: left alone
    study.enqueue_trial({"lr": 0.01, "weight_decay": 1e-6})  # trial 2, WAITING
    proc = subprocess.Popen([sys.executable, "-m", "hpo", "worker", "--study", "tiny",
                             "--storage", sqlite_url], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and _states(sqlite_url, "tiny").get("FAIL", 0) < 1:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        study.tell(running, 0.7)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    surplus = study.trials[2]
    assert surplus.state.name == "FAIL" and surplus.system_attrs.get("hpo:surplus") is True
    assert out == "" and not [x for x in err.splitlines() if x.startswith("trial ")], err
    assert "ran 0 trial(s); study holds 2 finished of its budget 2 (budget)" in err, err


@pytest.mark.slow  # about 7-22 s on a 2-core machine: CI's slow step
def test_run_on_a_study_that_holds_its_budget_says_nothing_to_run(tiny_spec, sqlite_url):
    spec = tiny_spec(n_trials=4)
    _run(spec, sqlite_url)
    r = hpo("run", str(spec), "--storage", sqlite_url, "--quiet", "--n-trials", "2")
    assert r.returncode == 0, r.stderr
    said = r.stderr.strip().splitlines()  # then the listing's edge warnings, if any
    assert said[0] == \
        "hpo run: nothing to run: study 'tiny' already has 4 finished trials of its budget 2"
    assert all(x.startswith("hpo run: warning: ") for x in said[1:]), said
    assert "Best-" in r.stdout and "warning" not in r.stdout  # the listing still prints
    assert _states(sqlite_url, "tiny") == {"COMPLETE": 4} and _budget(sqlite_url, "tiny") == 2
    r = hpo("run", str(spec), "--storage", sqlite_url, "--quiet", "--n-trials", "5")
    assert r.returncode == 0 and _states(sqlite_url, "tiny") == {"COMPLETE": 5}, r.stderr


@pytest.mark.slow
def test_a_seed_gives_the_same_params_per_trial_number_for_any_number_of_workers(
        tiny_spec, tmp_path):
    """Random draws are a function of (seed, trial number): `--workers 2 --seed 7` twice and
    `--workers 1 --seed 7` give every trial number the same params."""
    spec = tiny_spec(n_trials=8)
    runs = []
    for i, workers in enumerate(("2", "2", "1")):
        url = f"sqlite:///{tmp_path / f'{i}.db'}"
        _run(spec, url, "--workers", workers, "--seed", "7")
        study = optuna.load_study(study_name="tiny/seed7", storage=url)
        runs.append({t.number: t.params for t in study.trials if t.state.name == "COMPLETE"})
    assert sorted(runs[0]) == list(range(8))
    assert runs[0] == runs[1] == runs[2]
    assert len({p["lr"] for p in runs[0].values()}) == 8


def _nothing_written(tmp_path, url_path):
    if not url_path.exists():
        return True
    con = sqlite3.connect(url_path)
    try:
        names = {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
        if "studies" not in names:
            return True
        return con.execute("select count(*) from studies").fetchone()[0] == 0
    finally:
        con.close()


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "nope.toml"], "spec file not found"),
        (["run", "{bad}"], "not valid TOML"),
        (["run", "{unknown_key}"], "unknown key"),
        (["run", "{low_high}"], "low must be < high"),
        (["run", "{log_zero}"], "log range needs low > 0"),
        (["run", "{sampler}"], "'grid' is not one of"),
        (["run", "{pruner}"], "'sometimes' is not one of"),
        (["run", "{spec}", "--n-trials", "0"], "--n-trials must be >= 1"),
        (["run", "{spec}", "--workers", "0"], "--workers must be >= 1"),
        (["run", "{sampler_option}"], "unknown option(s) for sampler 'random': bogus"),
        (["worker", "--study", "ghost"], "does not exist: create the study first"),
        (["best", "ghost"], "does not exist: create the study first"),
    ],
)
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, tiny_spec, args, message):
    spec = tiny_spec()
    text = spec.read_text()
    variants = {
        "bad": "name = [unclosed",
        "unknown_key": text + "\ncolour = 1\n",
        "low_high": text.replace("low = 1e-3\nhigh = 0.5", "low = 0.5\nhigh = 1e-3"),
        "log_zero": text.replace("low = 1e-3", "low = 0.0"),
        "sampler": text.replace('name = "random"', 'name = "grid"'),
        "pruner": text + '\n[pruner]\nname = "sometimes"\n',
        "sampler_option": text.replace('name = "random"', 'name = "random"\nbogus = 1'),
    }
    paths = {"spec": str(spec)}
    for k, v in variants.items():
        p = tmp_path / f"{k}.toml"
        p.write_text(v)
        paths[k] = str(p)
    db = tmp_path / "bad.db"
    args = [a.format(**paths) for a in args]
    r = hpo(*args, "--storage", f"sqlite:///{db}", cwd=tmp_path)
    assert r.returncode == 2, (r.returncode, r.stderr)
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and message in err[0], r.stderr
    assert _nothing_written(tmp_path, db)


@pytest.mark.slow  # about 7-22 s on a 2-core machine: CI's slow step
def test_unknown_study_lists_what_exists(tiny_spec, sqlite_url):
    _run(tiny_spec(n_trials=1), sqlite_url)
    for args in (["best", "ghost"], ["worker", "--study", "ghost"]):
        r = hpo(*args, "--storage", sqlite_url)
        assert r.returncode == 2 and "no study named 'ghost'; studies here: tiny" in r.stderr


@pytest.mark.slow  # about 7-22 s on a 2-core machine: CI's slow step
def test_unreachable_storage(tmp_path, tiny_spec):
    spec = tiny_spec()
    # unreachable is a runtime failure, not bad input: retried for $HPO_DB_WAIT seconds with one
    # progress line, then one line and exit 1
    r = hpo("run", str(spec), "--storage", "postgresql+psycopg://bob:secret@127.0.0.1:1/x",
            env={"HPO_DB_WAIT": "1"})
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 2, r.stderr
    assert "retrying for up to 1 s" in lines[0] and "still unavailable after" in lines[1], r.stderr
    assert "Connection refused" in lines[1] and "Traceback" not in r.stderr
    assert "secret" not in r.stderr and "bob:***@" in r.stderr
    r = hpo("run", str(spec), "--storage", f"sqlite:///{tmp_path}/no/such/dir/x.db")
    assert r.returncode == 2 and "does not exist" in r.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_leaves_nothing_running(tmp_path, tiny_spec, sqlite_url, workers):
    """With --workers 2 the workers are forked children: the SIGTERM reaches them, each fails
    its trial and exits, and none of them outlives `hpo run`."""
    spec = tiny_spec(n_trials=10_000, epochs=200)
    proc = subprocess.Popen([sys.executable, "-m", "hpo", "run", str(spec), "--storage",
                             sqlite_url, "--quiet", "--workers", workers],
                            stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        time.sleep(0.5)
        try:
            if _states(sqlite_url, "tiny").get("COMPLETE", 0) >= 1:
                break
        except KeyError:
            pass
    children = _children(proc.pid)
    assert len(children) == (2 if workers == "2" else 0), children
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    states = _states(sqlite_url, "tiny")
    assert "RUNNING" not in states and states.get("COMPLETE", 0) >= 1
    assert not any(map(_alive, children))  # none left behind to go on adding trials


def _children(pid: int) -> list[int]:
    """The child processes of ``pid`` (Linux /proc)."""
    out: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as fh:
            out += [int(x) for x in fh.read().split()]
    return out


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting to be reaped does not)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def _trials(url: str, study: str = "tiny") -> list:
    try:
        return optuna.load_study(study_name=study, storage=url).get_trials(deepcopy=False)
    except KeyError:  # not created yet
        return []


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads /proc")
def test_sigterm_of_run_with_two_workers_ten_rounds(tmp_path, tiny_spec):
    """`hpo run --workers 2` under SIGTERM, ten times: exit 143 every time, nothing RUNNING,
    and no worker outlives it. The signal comes once a trial has finished and one is running,
    at a different offset each round (0-0.45 s) so that it lands in different places (the
    objective, a storage write, the loop)."""
    spec = tiny_spec(n_trials=10_000, epochs=1)  # a trial is mostly its storage writes
    bad = []
    for i in range(10):
        url = f"sqlite:///{tmp_path / f'r{i}.db'}"
        proc = subprocess.Popen([sys.executable, "-m", "hpo", "run", str(spec), "--storage",
                                 url, "--quiet", "--workers", "2"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
        try:
            def started(url=url, proc=proc) -> bool:
                states = Counter(t.state.name for t in _trials(url))
                return (states["COMPLETE"] >= 1 and states["RUNNING"] >= 1) or \
                    proc.poll() is not None

            _wait(started, 120, "a finished and a running trial")
            workers = _children(proc.pid)
            time.sleep(0.05 * i)
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
        _wait(lambda workers=workers: not any(map(_alive, workers)), 30, "the workers to exit")
        states = Counter(t.state.name for t in _trials(url))
        lines = err.strip().splitlines()
        if proc.returncode != 143 or states["RUNNING"] or lines[-1:] != ["hpo: terminated"]:
            bad.append((i, proc.returncode, dict(states), err[-500:]))
    assert bad == [], f"{len(bad)} of 10 rounds went wrong: {bad}"


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads /proc")
def test_workers_of_a_killed_run_stop_and_hand_their_trials_back(tmp_path, tiny_spec):
    """`hpo run --workers 2` killed -9: its forked workers do not run on as orphans; each
    stops at once (parent-death signal) and hands its trial back: the trial FAIL with
    ``hpo:handed_back``, a WAITING retry with the same params for the next worker."""
    spec = tiny_spec(n_trials=4, epochs=100_000)  # trials far longer than the test
    url = f"sqlite:///{tmp_path / 'k.db'}"
    proc = subprocess.Popen([sys.executable, "-m", "hpo", "run", str(spec), "--storage", url,
                             "--quiet", "--workers", "2"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                            env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    try:
        _wait(lambda: proc.poll() is not None or len(
            [t for t in _trials(url) if t.state.name == "RUNNING" and t.params]) == 2, 120,
              "both workers to be training a trial")
        assert proc.poll() is None, "hpo run exited"
        workers = _children(proc.pid)
        running = {t.number: t.params for t in _trials(url) if t.state.name == "RUNNING"}
        proc.kill()
        proc.wait(timeout=30)
        _wait(lambda: not any(map(_alive, workers)), 60, "the orphaned workers to stop")
        _wait(lambda: not any(t.state.name == "RUNNING" for t in _trials(url)), 30,
              "no RUNNING trial")
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in workers if "workers" in locals() else []:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)  # an orphan left by a failure of this test
    trials = _trials(url)
    failed = {t.number: t for t in trials if t.state.name == "FAIL"}
    assert set(failed) == set(running), (failed, running)
    retries = [t for t in trials if t.state.name == "WAITING"]
    handed = [n for n, t in failed.items() if t.params]
    assert all("hpo:handed_back" in failed[n].system_attrs for n in handed)
    assert sorted(t.system_attrs["failed_trial"] for t in retries) == sorted(handed)
    assert all(t.params == running[t.system_attrs["failed_trial"]] for t in retries)


def test_default_storage_is_sqlite_in_cwd(tmp_path, tiny_spec):
    r = hpo("run", str(tiny_spec(n_trials=1)), "--quiet", cwd=tmp_path,
            env={"HPO_STORAGE": ""})
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "hpo.db").exists()


def test_env_storage(tmp_path, tiny_spec):
    url = f"sqlite:///{tmp_path / 'env.db'}"
    r = hpo("run", str(tiny_spec(n_trials=1)), "--quiet", cwd=tmp_path, env={"HPO_STORAGE": url})
    assert r.returncode == 0 and (tmp_path / "env.db").exists()
    assert not (tmp_path / "hpo.db").exists()


def test_shipped_spec_runs(tmp_path):
    """The README's own spec, shortened: the full book configuration trains and lists."""
    r = hpo("run", str(STUDIES / "book-random.toml"), "--storage",
            f"sqlite:///{tmp_path / 'b.db'}", "--n-trials", "3", "--quiet", cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("Best-") == 3


def test_seed_and_data_seed_name_the_study(tiny_spec, sqlite_url):
    _run(tiny_spec(n_trials=2), sqlite_url, "--seed", "3", "--data-seed", "4")
    study = optuna.load_study(study_name="tiny/data4/seed3", storage=sqlite_url)
    spec = study_spec(study)
    assert spec["seed"] == 3 and spec["data"]["seed"] == 4


def test_version_comes_from_the_package_metadata():
    from importlib import metadata

    from hpo.logs import version

    r = hpo("--version")
    assert r.returncode == 0 and r.stdout == f"hpo {version()}\n", (r.stdout, r.stderr)
    dists = metadata.packages_distributions()["hpo"]
    assert version() == metadata.version(dists[0])


@pytest.mark.slow
def test_optuna_storage_is_honoured_after_hpo_storage(tmp_path, tiny_spec):
    """--storage > $HPO_STORAGE > $OPTUNA_STORAGE (Optuna's own CLI reads it) > ./hpo.db."""
    spec = tiny_spec(n_trials=1)
    optuna_url = f"sqlite:///{tmp_path / 'optuna.db'}"
    r = hpo("run", str(spec), "-q", cwd=tmp_path,
            env={"HPO_STORAGE": "", "OPTUNA_STORAGE": optuna_url})
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "optuna.db").exists() and not (tmp_path / "hpo.db").exists()
    r = hpo("best", "--json", cwd=tmp_path, env={"HPO_STORAGE": "", "OPTUNA_STORAGE": optuna_url})
    assert r.returncode == 0 and json.loads(r.stdout)["study"] == "tiny", r.stderr
    hpo_url = f"sqlite:///{tmp_path / 'hpo-env.db'}"
    r = hpo("run", str(spec), "-q", cwd=tmp_path,
            env={"HPO_STORAGE": hpo_url, "OPTUNA_STORAGE": optuna_url})
    assert r.returncode == 0 and (tmp_path / "hpo-env.db").exists()


@pytest.mark.slow
def test_a_study_is_named_the_same_ways_everywhere(tiny_spec, sqlite_url):
    """`hpo best --study X`, Optuna's `--study-name X`, the NAME argument: one thing, on every
    command that names a study; flags go before or after NAME."""
    r = hpo("run", str(tiny_spec(n_trials=2)), "--study-name", "named", "--storage", sqlite_url,
            "-q")
    assert r.returncode == 0, r.stderr
    outputs = set()
    for args in (["best", "named"], ["best", "--study", "named"],
                 ["best", "--study-name", "named"]):
        r = hpo(*args, "--storage", sqlite_url, "--json")
        assert r.returncode == 0, (args, r.stderr)
        outputs.add(r.stdout)
    assert len(outputs) == 1 and json.loads(outputs.pop())["study"] == "named"
    r = hpo("worker", "--study-name", "named", "--storage", sqlite_url)
    assert r.returncode == 0 and "study holds 2 finished of its budget 2" in r.stderr, r.stderr
    r = hpo("confirm", "--study-name", "named", "--storage", sqlite_url, "--top", "1",
            "--seeds", "2", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["rows"], r.stderr
    r = hpo("best", "named", "--study", "other", "--storage", sqlite_url)
    assert r.returncode == 2 and "named twice" in r.stderr


@pytest.mark.parametrize("args, usage", [
    (["best", "--bogus"], "usage: hpo best "),
    (["worker", "--study", "x", "--nope"], "usage: hpo worker "),
    (["run", "s.toml", "--trials", "3"], "usage: hpo run "),
    (["test"], "usage: hpo test "),
    (["--bogus"], "usage: hpo "),
])
def test_a_bad_flag_is_answered_with_the_commands_usage(args, usage):
    r = hpo(*args)
    assert r.returncode == 2 and r.stdout == "", r.stderr
    (line,) = r.stderr.splitlines()  # one line: the error, then the usage
    assert line.startswith(f"{usage[7:].strip()}: error: ") and f"({usage}" in line, r.stderr


def test_every_commands_flags_go_before_or_after_it():
    """--debug and the log flags are taken before the command or after it, by every command,
    and the later one wins; `-v`/`-q` add up."""
    import logging

    from hpo import logs
    from hpo.cli import COMMANDS, build_parser

    positional = {"run": ["s.toml"], "init": ["s.toml"], "worker": ["--study", "x"],
                  "compare": ["s.toml"], "experiment": ["overfit"], "completion": ["bash"]}
    parser = build_parser()
    for cmd in COMMANDS:
        rest = positional.get(cmd, [])
        for argv, level, fmt in (
                ([cmd, *rest], logging.INFO, "text"),
                (["-q", cmd, *rest], logging.WARNING, "text"),
                ([cmd, *rest, "-qq"], logging.ERROR, "text"),
                (["-v", cmd, *rest, "--log-format", "JSON"], logging.DEBUG, "json"),
                (["--log-level", "error", cmd, "--log-level", "Debug", *rest], logging.DEBUG,
                 "text"),
                ([cmd, *rest, "-v", "--debug"], logging.DEBUG, "text")):
            args = parser.parse_args(argv)
            assert args.command == cmd and logs.settings(args) == (level, fmt), argv
        assert parser.parse_args([cmd, *rest, "--debug"]).debug is True
        assert parser.parse_args(["--debug", cmd, *rest]).debug is True


def test_log_level_flag_and_environment(tiny_spec, sqlite_url):
    spec = str(tiny_spec(n_trials=1))
    r = hpo("run", spec, "--storage", sqlite_url, "--log-level", "warning")
    assert r.returncode == 0, r.stderr  # no study line, no progress: only edge warnings
    assert all(x.startswith("hpo run: warning: ") for x in r.stderr.splitlines()), r.stderr
    r = hpo("run", spec, "--storage", sqlite_url, "--log-level", "loud")
    assert r.returncode == 2 and r.stderr.strip() == \
        "hpo run: error: --log-level must be one of debug, info, warning, error, critical, " \
        "got 'loud'", r.stderr
    r = hpo("best", "--storage", sqlite_url, env={"HPO_LOG_FORMAT": "xml"})
    assert r.returncode == 2 and r.stderr.strip() == \
        "hpo best: error: $HPO_LOG_FORMAT must be one of text, json, got 'xml'"
    r = hpo("best", "--storage", sqlite_url, "-q", env={"HPO_LOG_LEVEL": "debug"})
    assert r.returncode == 0 and r.stdout.startswith("Best-1("), r.stderr


@pytest.mark.slow
def test_data_dir_reaches_every_command_that_reads_data(tmp_path, tiny_spec, sqlite_url):
    """`--data-dir` (run, worker, test, confirm) is where the mnist dataset's files are read
    from: an empty folder is refused by each, naming it, before anything is written."""
    empty = tmp_path / "empty"
    empty.mkdir()
    mnist = tiny_spec(name="m", n_trials=1).read_text().replace('"digits"', '"mnist"')
    spec = tmp_path / "m.toml"
    spec.write_text(mnist)
    r = hpo("run", str(spec), "--storage", sqlite_url, "--data-dir", str(empty))
    assert r.returncode == 2 and f"MNIST data dir {empty} lacks" in r.stderr, r.stderr
    assert _nothing_written(tmp_path, tmp_path / "hpo.db")
    # a study of the digits set: --data-dir is not used, and a warning says so
    _run(tiny_spec(n_trials=1), sqlite_url, "--data-dir", str(empty))
    r = hpo("worker", "--study", "tiny", "--storage", sqlite_url, "--n-trials", "2",
            "--data-dir", str(empty))
    assert r.returncode == 0 and "--data-dir" in r.stderr and "is not used" in r.stderr
    # the mnist study's stored spec, run on a machine whose files are elsewhere
    from hpo.db import optuna_private as oc
    from hpo.db.storage import store_spec

    study = optuna.load_study(study_name="tiny", storage=sqlite_url)
    stored = dict(study_spec(study))
    stored["data"] = {**stored["data"], "dataset": "mnist"}
    store_spec(oc.storage_of(study), oc.study_id(study), stored)
    for args in (["worker", "--study", "tiny", "--n-trials", "3"], ["test", "tiny"],
                 ["confirm", "tiny", "--seeds", "2"]):
        r = hpo(*args, "--storage", sqlite_url, "--data-dir", str(empty))
        assert r.returncode == 2 and f"MNIST data dir {empty} lacks" in r.stderr, (args, r.stderr)


def test_shell_completion_from_the_parser(tmp_path):
    """`hpo completion bash` is a script bash really completes with: commands, each command's
    flags (the same parser: a new flag is completed at once), spec files."""
    r = hpo("completion", "bash")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    script = tmp_path / "hpo.bash"
    script.write_text(r.stdout)
    (tmp_path / "tiny.toml").write_text("")

    def complete(line: str) -> list[str]:
        words = line.split(" ")
        code = (f'source {script}\nCOMP_WORDS=({line}); COMP_CWORD={len(words) - 1}\n'
                f'COMP_LINE="{line}"; COMP_POINT=${{#COMP_LINE}}\n'
                f'_shtab_hpo hpo "{words[-1]}" "{words[-2]}"\nprintf "%s\\n" "${{COMPREPLY[@]}}"')
        out = subprocess.run(["bash", "-c", code], capture_output=True, text=True, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        return sorted(out.stdout.split())

    assert complete("hpo be") == ["best"]
    assert complete("hpo comp") == ["compare", "completion"]
    assert complete("hpo best --st") == ["--storage", "--study", "--study-name"]
    assert complete("hpo run --data") == ["--data-dir", "--data-seed"]
    assert complete("hpo run ti") == ["tiny.toml"]
    zsh = hpo("completion", "zsh")
    assert zsh.returncode == 0 and zsh.stdout.startswith("#compdef hpo")
    assert "--study-name" in zsh.stdout
    bad = hpo("completion", "fish")
    assert bad.returncode == 2 and "invalid choice: 'fish'" in bad.stderr
