"""The progress bar of `hpo run`: finished trials, best value, pruned trials, narrowing stage."""

from __future__ import annotations

import re

import optuna
import pytest

from hpo.progress import postfix, stage_of
from tests.conftest import hpo


def test_postfix_and_stage_arithmetic():
    assert postfix(0.7412) == "best val acc 0.741"
    assert postfix(0.7, pruned=12, stage=(2, 3)) == "best val acc 0.700, pruned 12, stage 2/3"
    assert postfix(None, pruned=0) == "pruned 0"
    # 300 trials in stages of 100: trials 0-99 are stage 1 of 3, the last finished one stays 3
    assert [stage_of(d, 300, 100) for d in (0, 99, 100, 299, 300)] == \
        [(1, 3), (1, 3), (2, 3), (3, 3), (3, 3)]
    assert stage_of(7, 10, 4) == (2, 3)  # a last, shorter stage counts


@pytest.mark.parametrize("workers", ["1", "2"])
def test_bar_shows_pruned_trials_and_the_stage(tiny_spec, sqlite_url, workers):
    spec = tiny_spec(name="bar", sampler="narrowing", n_trials=8, epochs=4, sampler_options=(
        "stage_trials = 4\nkeep_top = 2\n[pruner]\nname = \"median\"\nn_startup_trials = 2\n"
        "n_warmup_steps = 1\ninterval_steps = 1"))
    r = hpo("run", str(spec), "--storage", sqlite_url, "--workers", workers)
    assert r.returncode == 0, r.stderr
    frames = [f for f in re.split(r"[\r\n]", r.stderr) if "%|" in f]
    assert frames, r.stderr
    last = frames[-1]
    study = optuna.load_study(study_name="bar", storage=sqlite_url)
    pruned = sum(t.state.name == "PRUNED" for t in study.trials)
    assert "8/8" in last and f"pruned {pruned}, stage 2/2" in last, last
    assert f"best val acc {study.best_value:.3f}" in last
    quiet = hpo("run", str(spec), "--storage", sqlite_url, "--quiet")
    assert "%|" not in quiet.stderr and not re.search(r"pruned \d", quiet.stderr)
