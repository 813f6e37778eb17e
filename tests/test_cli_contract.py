"""The contract every command keeps, for inputs an audit of the CLI found mishandled: a blank
path or URL, an in-memory SQLite database, an unbounded wait, a port out of range, no command
at all, a comparison's storage folder that does not exist (exit 2, one line, nothing written);
a storage holding studies hpo did not make (listed, not a crash); SIGTERM during a command that
runs no trials (exit 143, one line)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from tests.conftest import hpo


def _one_line_refusal(r: subprocess.CompletedProcess, *words: str) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in lines[0], r.stderr
    return lines[0]


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.parametrize("args, flag", [
    (["run", "SPEC", "--storage", ""], "--storage"),
    (["best", "--storage", "  "], "--storage"),
    (["worker", "--study", "tiny", "--code-dir", ""], "--code-dir"),
    (["run", "SPEC", "--mlflow-uri", "   "], "--mlflow-uri"),
    (["run", "SPEC", "--mlflow-uri", ""], "--mlflow-uri"),
    (["dashboard", "--artifact-dir", "no-such-folder"], "--artifact-dir"),
    (["dashboard", "--artifact-dir", "SPEC"], "--artifact-dir"),
    (["report", "tiny", "--out", ""], "--out"),
    (["compare", "SPEC", "--out", " "], "--out"),
    (["experiment", "overfit", "--out", ""], "--out"),
])
def test_a_blank_or_missing_path_is_refused_naming_its_flag(tmp_path, tiny_spec, args, flag):
    # a blank --storage used to mean the default ./hpo.db, a blank --code-dir the current
    # folder, a blank --mlflow-uri a store in a folder named "   "
    spec = tiny_spec(n_trials=1)
    before = _files(tmp_path)
    r = hpo(*[str(spec) if a == "SPEC" else a for a in args], cwd=tmp_path, timeout=60)
    _one_line_refusal(r, f"{flag} must be")
    assert _files(tmp_path) == before


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:",
                                 "sqlite:///file:x?mode=memory&uri=true"])
def test_an_in_memory_sqlite_database_is_refused(tmp_path, tiny_spec, url):
    spec = tiny_spec(n_trials=1)
    before = _files(tmp_path)
    r = hpo("run", str(spec), "--storage", url, cwd=tmp_path, timeout=60)
    _one_line_refusal(r, "in-memory SQLite", "sqlite:///FILE")
    assert _files(tmp_path) == before


@pytest.mark.parametrize("wait", ["inf", "nan", "1e300", "-5"])
def test_an_unbounded_proxy_wait_is_refused(tmp_path, wait):
    # inf, nan and 1e300 used to wait for the proxy forever
    r = hpo("best", "x", "--storage", "grpc://127.0.0.1:1", env={"HPO_GRPC_WAIT": wait},
            cwd=tmp_path, timeout=60)
    _one_line_refusal(r, "$HPO_GRPC_WAIT must be in 0..86400 seconds")


def test_a_proxy_port_out_of_range_is_bad_input(tmp_path):
    r = hpo("best", "x", "--storage", "grpc://127.0.0.1:99999", env={"HPO_GRPC_WAIT": "60"},
            cwd=tmp_path, timeout=60)
    _one_line_refusal(r, "PORT in 1..65535")


def test_no_command_shows_the_help_and_says_one_is_required(tmp_path):
    r = hpo(cwd=tmp_path, timeout=60)
    assert r.returncode == 2 and "usage: hpo" in r.stdout
    _one_line_refusal(r, "a command is required", "run", "worker")


def test_a_comparisons_missing_storage_folder_is_refused_before_anything_is_said(
        tmp_path, tiny_spec):
    spec = tiny_spec(n_trials=1)
    before = _files(tmp_path)
    r = hpo("compare", str(spec), "--samplers", "random", "--n-trials", "1", "--seeds", "1",
            "--storage", f"sqlite:///{tmp_path / 'nodir' / 'x.db'}", "--out",
            str(tmp_path / "out"), cwd=tmp_path, timeout=120)
    _one_line_refusal(r, "--storage", "does not exist")
    assert _files(tmp_path) == before


@pytest.mark.slow  # a real comparison, a few seconds
def test_a_quiet_comparison_says_nothing(tmp_path, tiny_spec):
    spec = tiny_spec(n_trials=1, epochs=1)
    r = hpo("-qq", "compare", str(spec), "--samplers", "random", "--n-trials", "1", "--seeds",
            "1", "--out", str(tmp_path / "out"), "--no-test", cwd=tmp_path, timeout=300)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert "| random |" in r.stdout


def test_studies_lists_a_minimize_and_a_multi_objective_study(tmp_path):
    # a storage may hold studies hpo did not make: a multi-objective one crashed the listing,
    # and a minimized one showed its worst value as the best
    url = f"sqlite:///{tmp_path / 'o.db'}"
    low = optuna.create_study(study_name="low", storage=url, direction="minimize")
    for v in (3.0, 1.0, 2.0):
        low.enqueue_trial({})
        low.optimize(lambda t, v=v: v, n_trials=1)
    multi = optuna.create_study(study_name="multi", storage=url,
                                directions=["minimize", "maximize"])
    multi.optimize(lambda t: (1.0, 2.0), n_trials=2)
    r = hpo("studies", "--storage", url, "--json", cwd=tmp_path, timeout=60)
    assert r.returncode == 0, r.stderr
    rows = {row["study"]: row for row in json.loads(r.stdout)}
    assert rows["low"]["best_value"] == 1.0 and rows["low"]["trials"] == {"COMPLETE": 3}
    assert rows["low"]["metric"] == "value" and rows["low"]["best_val_acc"] is None
    assert rows["multi"]["best_value"] is None and rows["multi"]["trials"] == {"COMPLETE": 2}
    r = hpo("studies", "--storage", url, cwd=tmp_path, timeout=60)
    assert r.returncode == 0 and "multi" in r.stdout, r.stderr
    head, low, _ = r.stdout.splitlines()
    assert head.endswith("  best") and low.endswith("  1 value"), r.stdout


def test_studies_names_a_user_objectives_metric(tmp_path):
    (tmp_path / "f.py").write_text("def objective(trial):\n"
                                   "    return trial.suggest_float('x', 0.25, 0.5)\n")
    spec = tmp_path / "loss.toml"
    spec.write_text('name = "loss"\n[objective]\nfunction = "f.py:objective"\n'
                    'direction = "minimize"\nmetric = "loss"\n[budget]\nn_trials = 2\n')
    url = f"sqlite:///{tmp_path / 'o.db'}"
    assert hpo("run", str(spec), "--storage", url, "-q", cwd=tmp_path).returncode == 0
    best = optuna.load_study(study_name="loss", storage=url).best_value
    r = hpo("studies", "--storage", url, "--json", cwd=tmp_path, timeout=60)
    (row,) = json.loads(r.stdout)
    assert (row["metric"], row["best_val_acc"]) == ("loss", None)
    assert row["best_value"] == pytest.approx(best, rel=1e-9)
    r = hpo("studies", "--storage", url, cwd=tmp_path, timeout=60)
    assert r.stdout.splitlines()[1].endswith(f"  {best:.4g} loss"), r.stdout


def test_sigterm_during_an_experiment_exits_143_in_one_line(tmp_path):
    # `hpo experiment` ran with Python's default SIGTERM: killed by the signal, no line
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpo", "experiment", "overfit", "--dataset", "digits",
         "--epochs", "2000", "--out", str(tmp_path / "out")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    try:
        first = proc.stderr.readline()  # the gate: the first progress line, training under way
        assert first.startswith("progress: "), first
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        assert proc.wait(timeout=60) == 143, (first, rest)
    finally:
        proc.kill()
        proc.wait()
    assert rest.strip().splitlines()[-1:] == ["hpo: terminated"], rest
    assert not (tmp_path / "out" / "overfit.png").exists()


def test_a_changed_spec_on_an_existing_study_names_the_key_that_differs(tmp_path, tiny_spec):
    spec = tiny_spec(n_trials=1, epochs=1)
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    assert hpo("run", str(spec), "--storage", url, "-q", cwd=tmp_path).returncode == 0
    spec.write_text(spec.read_text().replace("high = 0.5", "high = 0.4"))
    r = hpo("run", str(spec), "--storage", url, cwd=tmp_path, timeout=120)
    _one_line_refusal(r, f"{spec}: search.lr.high is 0.4, the study's is 0.5",
                      "hpo worker --study tiny")
