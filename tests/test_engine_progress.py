"""The progress bar of `hpo run`: finished trials, best value, pruned trials, narrowing stage."""

from __future__ import annotations

import os
import re
import sys

import optuna
import pytest

from hpo.engine.progress import postfix, stage_of
from tests.conftest import ROOT, hpo

sys.path.insert(0, str(ROOT / "scripts"))
import readme_sample  # noqa: E402


def hpo_on_a_terminal(*args: str) -> tuple[int, str, str]:
    """Run `hpo` with its stderr on a real pseudo-terminal 160 columns wide (as in a shell):
    (code, stdout, what the terminal showed)."""
    r = readme_sample.on_a_terminal([sys.executable, "-m", "hpo", *args], columns=160,
                                    env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
                                    timeout=300)
    return r.returncode, r.stdout, r.stderr


def test_postfix_and_stage_arithmetic():
    assert postfix(0.7412) == "best val acc 0.741"
    assert postfix(0.7, pruned=12, stage=(2, 3)) == "best val acc 0.700, pruned 12, stage 2/3"
    assert postfix(None, pruned=0) == "pruned 0"
    # 300 trials in stages of 100: trials 0-99 are stage 1 of 3, the last finished one stays 3
    assert [stage_of(d, 300, 100) for d in (0, 99, 100, 299, 300)] == \
        [(1, 3), (1, 3), (2, 3), (3, 3), (3, 3)]
    assert stage_of(7, 10, 4) == (2, 3)  # a last, shorter stage counts


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
def test_bar_shows_pruned_trials_and_the_stage(tiny_spec, sqlite_url, workers):
    spec = tiny_spec(name="bar", sampler="narrowing", n_trials=8, epochs=4, sampler_options=(
        "stage_trials = 4\nkeep_top = 2\n[pruner]\nname = \"median\"\nn_startup_trials = 2\n"
        "n_warmup_steps = 1\ninterval_steps = 1"))
    code, _, shown = hpo_on_a_terminal("run", str(spec), "--storage", sqlite_url,
                                       "--workers", workers)
    assert code == 0, shown
    frames = [f for f in re.split(r"[\r\n]", shown) if "%|" in f]
    assert frames, shown
    last = frames[-1]
    study = optuna.load_study(study_name="bar", storage=sqlite_url)
    pruned = sum(t.state.name == "PRUNED" for t in study.trials)
    assert "8/8" in last and f"pruned {pruned}, stage 2/2" in last, last
    assert f"best val acc {study.best_value:.3f}" in last
    code, _, shown = hpo_on_a_terminal("run", str(spec), "--storage", sqlite_url, "--quiet")
    assert code == 0 and "%|" not in shown and not re.search(r"pruned \d", shown), shown


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
def test_without_a_terminal_progress_is_plain_lines(tiny_spec, sqlite_url, workers):
    """Into a file or a pipe a redrawn bar would repeat itself in every state: progress is a
    line every tenth of the budget (or 30 s) and one at the end, never a carriage return."""
    spec = tiny_spec(name="lines", n_trials=20, epochs=2)
    r = hpo("run", str(spec), "--storage", sqlite_url, "--workers", workers)
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr and "%|" not in r.stderr
    lines = [x for x in r.stderr.splitlines() if x.startswith("progress: ")]
    assert lines and len(lines) <= 10, r.stderr
    best = optuna.load_study(study_name="lines", storage=sqlite_url).best_value
    assert re.fullmatch(rf"progress: 20/20 trials \(100%\) in \d+ s, best val acc {best:.3f}",
                        lines[-1]), lines[-1]
    done = [int(re.match(r"progress: (\d+)/", x).group(1)) for x in lines]
    assert done == sorted(set(done))  # each line says something new
    quiet = hpo("run", str(spec), "--storage", sqlite_url, "-q", "--n-trials", "22")
    assert quiet.returncode == 0, quiet.stderr
    # -q keeps warnings only (an edge warning may come): no study line, no progress
    assert all(x.startswith("hpo run: warning: ") for x in quiet.stderr.splitlines()), \
        quiet.stderr
