"""Workers that die or are stopped under `hpo run`: forked workers get their parent's heartbeat
settings (a killed one's trial is failed after *that* grace period and re-run), a stop prints
one line and no traceback, and the workers' temporary log folder goes on every way out.

Real processes and signals on real SQLite files; the forked workers are found as the children
of the `hpo run` process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import trial_states

optuna.logging.set_verbosity(optuna.logging.WARNING)


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        return [int(x) for x in fh.read().split()]


def trials(url: str, study: str) -> list[optuna.trial.FrozenTrial]:
    storage = optuna.storages.RDBStorage(url, skip_table_creation=True)
    try:
        return storage.get_all_trials(storage.get_study_id_from_name(study))
    finally:
        storage.engine.dispose()


def running(url: str, study: str) -> int:
    """RUNNING trials of the study, read without writing (the run may be creating it)."""
    return trial_states(url, study).get("RUNNING", 0)


def start_run(spec: Path, url: str, tmp: Path, *extra: str) -> subprocess.Popen:
    """`hpo run` in the background, with its temporary files under ``tmp``."""
    tmp.mkdir(exist_ok=True)
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "TMPDIR": str(tmp)}
    return subprocess.Popen([sys.executable, "-m", "hpo", "run", str(spec), "--storage", url,
                             "--quiet", *extra], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None:
            pytest.fail(f"hpo run exited ({proc.returncode}) while waiting for {what}: "
                        f"{proc.stderr.read()}")
        time.sleep(0.1)
    proc.kill()
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


@pytest.mark.slow
def test_a_killed_forked_worker_is_failed_after_its_parents_grace_period(tiny_spec, sqlite_url,
                                                                        tmp_path):
    """`hpo run --workers 2 --heartbeat-interval 1 --grace-period 3`: one forked worker is
    SIGKILLed mid-trial. Its trial is failed by the 3 s grace period the parent was given (not
    the default 60 s) and re-run with the same params; the run ends with exactly its budget and
    exit 0 (the dead worker is reported in one line with its last output)."""
    grace, n_trials = 3, 4
    spec = tiny_spec(name="forked", n_trials=n_trials, epochs=4000)  # ~1.5 s a trial
    proc = start_run(spec, sqlite_url, tmp_path / "tmp", "--workers", "2",
                     "--heartbeat-interval", "1", "--grace-period", str(grace))
    try:
        wait_for(lambda: running(sqlite_url, "forked") == 2, 120, "two running trials",
                 proc)
        victim = children(proc.pid)[0]
        time.sleep(0.3)  # mid-trial, with a heartbeat
        os.kill(victim, signal.SIGKILL)
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "was killed by SIGKILL" in err and "Traceback" not in err, err
    done = trials(sqlite_url, "forked")
    states = Counter(t.state for t in done)
    assert states[TrialState.COMPLETE] == n_trials, states
    assert states[TrialState.RUNNING] == states[TrialState.WAITING] == 0, states
    (dead,) = [t for t in done if t.state == TrialState.FAIL and "hpo:surplus" not in
               t.system_attrs]
    age = (dead.datetime_complete - dead.datetime_start).total_seconds()
    assert grace <= age < 60, f"failed {age:.1f} s after it started: not the 3 s grace period"
    (retry,) = [t for t in done if t.system_attrs.get("failed_trial") == dead.number]
    assert retry.state == TrialState.COMPLETE and retry.params == dead.params
    assert list((tmp_path / "tmp").iterdir()) == []  # the workers' log folder is gone


def test_sigterm_of_a_run_with_workers_prints_one_line_and_leaves_no_files(tiny_spec,
                                                                          sqlite_url, tmp_path):
    spec = tiny_spec(name="stopped", n_trials=10_000, epochs=200)
    proc = start_run(spec, sqlite_url, tmp_path / "tmp", "--workers", "2")
    try:
        wait_for(lambda: running(sqlite_url, "stopped") == 2, 120, "two running trials",
                 proc)
        assert list((tmp_path / "tmp").iterdir()), "the workers' log folder was not made"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    lines = err.strip().splitlines()
    assert lines[-1] == "hpo: terminated" and "Traceback" not in err, err
    assert len(lines) == 1, err  # --quiet: no study line; the one line of the stop
    assert not running(sqlite_url, "stopped")
    assert list((tmp_path / "tmp").iterdir()) == []


def test_ctrl_c_of_a_one_worker_run_prints_no_traceback(tiny_spec, sqlite_url, tmp_path):
    """Optuna logs the trial a KeyboardInterrupt failed with its traceback; hpo prints one
    line, and the trial is FAIL, not RUNNING."""
    spec = tiny_spec(name="interrupted", n_trials=3, epochs=8000)
    proc = start_run(spec, sqlite_url, tmp_path / "tmp")
    try:
        wait_for(lambda: running(sqlite_url, "interrupted"), 120, "a running trial", proc)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert lines == ["hpo: interrupted"], err  # --quiet: no study line, one line of the stop
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    states = Counter(t.state for t in trials(sqlite_url, "interrupted"))
    assert states[TrialState.FAIL] == 1 and states[TrialState.RUNNING] == 0, states
