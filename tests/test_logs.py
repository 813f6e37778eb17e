"""hpo's log lines (hpo.logs): levels, text and JSON records, one JSON object per finished trial
for `hpo worker` and `hpo run` (its forked workers' lines included), Optuna's logger too."""

from __future__ import annotations

import io
import json
import logging

import optuna
import pytest

from hpo import logs
from tests.conftest import hpo

TRIAL_KEYS = {"time", "event", "study", "trial", "state", "value", "params", "worker"}


@pytest.fixture
def captured():
    """hpo's handler writing into a string for one test, removed after it."""
    stream = io.StringIO()

    def use(level: int, fmt: str) -> io.StringIO:
        logs.configure(level, fmt, stream=stream)
        return stream

    yield use
    root = logging.getLogger()
    for h in [h for h in root.handlers if h.get_name() == "hpo"]:
        root.removeHandler(h)
    optuna.logging.enable_default_handler()
    optuna.logging.disable_propagation()
    optuna.logging.set_verbosity(logging.INFO)


def _finished_study() -> optuna.Study:
    study = optuna.create_study(study_name="s", direction="maximize")
    study.optimize(lambda t: t.suggest_float("lr", 1e-4, 1.0, log=True), n_trials=1)
    return study


def test_a_trial_as_text_and_as_json(captured):
    study = _finished_study()
    trial = study.trials[0]
    stream = captured(logging.INFO, "text")
    logs.log_trial(study, trial)
    text = stream.getvalue().strip()
    assert text == f"trial 0 COMPLETE val_acc={trial.value:.3f} lr={float(f'{trial.value:.4g}')!r}"

    stream = captured(logging.INFO, "json")
    logs.log_trial(study, trial)
    doc = json.loads(stream.getvalue().splitlines()[-1])
    assert set(doc) == TRIAL_KEYS
    assert doc["event"] == "trial" and doc["study"] == "s" and doc["trial"] == 0
    assert doc["state"] == "COMPLETE" and doc["value"] == pytest.approx(trial.value, rel=1e-11)
    assert doc["params"]["lr"] == pytest.approx(trial.params["lr"], rel=1e-11)
    assert doc["worker"] == logs.worker_id() and doc["time"].endswith("+00:00")


def test_levels_and_json_for_every_record(captured):
    stream = captured(logging.WARNING, "json")
    log = logging.getLogger("hpo.test")
    log.info("not shown at warning")
    log.warning("shown %d", 1)
    optuna.logging.get_logger("optuna.test").warning("from optuna")
    lines = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert [(d["level"], d["logger"], d["message"]) for d in lines] == \
        [("warning", "hpo.test", "shown 1"), ("warning", "optuna.test", "from optuna")]
    # at info Optuna's per-trial lines stay quiet (hpo's replace them); -v shows them
    captured(logging.INFO, "text")
    logs.configure_optuna(logging.INFO)
    assert optuna.logging.get_verbosity() == logging.WARNING
    logs.configure_optuna(logging.DEBUG)
    assert optuna.logging.get_verbosity() == logging.DEBUG


def test_relog_takes_trial_lines_only(captured):
    stream = captured(logging.INFO, "text")
    line = json.dumps({"time": "t", "event": "trial", "study": "s", "trial": 4,
                       "state": "PRUNED", "value": None, "params": {"lr": 0.1234567},
                       "worker": "w:1"})
    assert logs.relog_trial(line)
    assert not logs.relog_trial('{"level": "info", "message": "x"}')
    assert not logs.relog_trial("trial 4 PRUNED")
    assert stream.getvalue() == "trial 4 PRUNED val_acc=- lr=0.1235\n"


def _trial_docs(stderr: str) -> list[dict]:
    docs = [json.loads(line) for line in stderr.splitlines()]  # every line is JSON
    return [d for d in docs if d.get("event") == "trial"]


@pytest.mark.slow
def test_worker_json_lines(tiny_spec, sqlite_url):
    r = hpo("init", str(tiny_spec(n_trials=3)), "--storage", sqlite_url)
    assert r.returncode == 0, r.stderr
    r = hpo("worker", "--study", "tiny", "--storage", sqlite_url, "--log-format", "json")
    assert r.returncode == 0 and r.stdout == "", r.stderr
    docs = _trial_docs(r.stderr)
    study = optuna.load_study(study_name="tiny", storage=sqlite_url)
    assert [d["trial"] for d in docs] == [t.number for t in study.trials]
    for d, t in zip(docs, study.trials, strict=True):
        assert set(d) == TRIAL_KEYS and d["state"] == t.state.name
        assert d["value"] == pytest.approx(t.value, rel=1e-11) and d["study"] == "tiny"
    assert len({d["worker"] for d in docs}) == 1


HELD = '''
import os, time

def objective(trial):
    lr = trial.suggest_float("lr", 0.001, 0.5, log=True)
    gate = os.environ["HOLD_GATE"]
    open(os.path.join(gate, f"held-{os.getpid()}"), "w").close()
    deadline = time.monotonic() + 120  # a bound, not a pace: the assertion says what is wrong
    while len(os.listdir(gate)) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    return lr
'''


@pytest.mark.slow
def test_run_json_lines_from_forked_workers(tmp_path, sqlite_url):
    """`hpo run --workers 2 --log-format json`: each worker's finished trials, one JSON object
    per line, with the worker that ran it; progress and the study line are JSON too. Each
    worker's first trial is held until both workers hold one (a gate of files), so that both
    run trials however busy the machine is (one worker ran all 8 on a loaded CI machine)."""
    gate = tmp_path / "gate"
    gate.mkdir()
    (tmp_path / "held.py").write_text(HELD)
    spec = tmp_path / "tiny.toml"
    spec.write_text('name = "tiny"\nseed = 1\n[objective]\nfunction = "held.py:objective"\n'
                    '[search.lr]\nlow = 0.001\nhigh = 0.5\nlog = true\n'
                    '[budget]\nn_trials = 8\n')
    r = hpo("run", str(spec), "--storage", sqlite_url, "--workers", "2",
            "--log-format", "json", env={"HOLD_GATE": str(gate)})
    assert r.returncode == 0, r.stderr
    docs = _trial_docs(r.stderr)
    study = optuna.load_study(study_name="tiny", storage=sqlite_url)
    finished = [t.number for t in study.trials if t.state.name == "COMPLETE"]
    assert len(finished) == 8 and sorted(d["trial"] for d in docs) == finished, r.stderr
    assert len({d["worker"] for d in docs}) == 2  # both workers ran trials, each says so
    messages = [json.loads(x).get("message", "") for x in r.stderr.splitlines()]
    assert any(m.startswith("study 'tiny' on sqlite") for m in messages)
    assert any(m.startswith("progress: 8/8 trials") for m in messages)
    assert r.stdout.startswith("Best-1(")  # results stay on stdout
