"""Every bad input: one clear line, exit 2, nothing written, never a traceback, never a hang.

Property-based (hypothesis): valid specs and flag sets are mutated — wrong types, NaN, inf,
negatives, zeros, huge values, unknown keys, empty tables, a byte-order mark, bytes that are not
UTF-8, cut-off files — and each mutant goes through the real command line (``hpo.cli.main``, in
this process, on a real SQLite file). Whatever the mutant, the command either runs (exit 0) or
refuses it with exit 2 and one line on stderr, and a refused input leaves the folder as it was.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpo.cli import main

BASE: dict[str, Any] = {
    "name": "mut",
    "seed": 1,
    "data": {"dataset": "digits", "train_size": 200, "validation_rate": 0.2, "seed": 0},
    "model": {"hidden": [8], "epochs": 2, "batch_size": 50, "eval_every": 1},
    "search": {"lr": {"type": "float", "low": 1e-3, "high": 0.5, "log": True},
               "weight_decay": {"type": "float", "low": 1e-8, "high": 1e-4, "log": True}},
    "sampler": {"name": "tpe", "n_startup_trials": 1},
    "pruner": {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 1,
               "interval_steps": 1},
    "budget": {"n_trials": 2},
}
SAMPLER_VARIANTS = [
    {"name": "narrowing", "stage_trials": 1, "keep_top": 1, "margin": 0.0},
    {"name": "tpe", "n_startup_trials": 1, "multivariate": True},
    {"name": "random"},
    {"name": "qmc", "scramble": True},
]
PRUNER_VARIANTS = [
    {"name": "none"},
    {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 1, "interval_steps": 1},
    {"name": "hyperband", "min_resource": 1, "reduction_factor": 2},
    {"name": "successive-halving", "min_resource": 1, "reduction_factor": 2},
]
BAD_VALUES = st.sampled_from([
    "5", "", "nan", True, False, [1], [], {}, {"a": 1}, math.nan, math.inf, -math.inf, -1, 0,
    -1.5, 0.0, 10**9, 2**63 - 1, 1e308, -(10**9), "x" * 300, [[1]], {"lr": [1, "a"]},
])


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f'"{k}" = {toml_value(x)}' for k, x in v.items()) + "}"
    raise TypeError(type(v))


def to_toml(spec: dict[str, Any]) -> str:
    """A small TOML writer: scalars first, then one inline table per table key."""
    lines = [f'"{k}" = {toml_value(v)}' for k, v in spec.items() if not isinstance(v, dict)]
    lines += [f'"{k}" = {toml_value(v)}' for k, v in spec.items() if isinstance(v, dict)]
    return "\n".join(lines) + "\n"


def paths(d: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for k, v in d.items():
        out.append(prefix + (k,))
        if isinstance(v, dict):
            out += paths(v, prefix + (k,))
    return out


@st.composite
def mutants(draw) -> bytes:
    import copy

    spec = copy.deepcopy(BASE)
    spec["sampler"] = dict(draw(st.sampled_from(SAMPLER_VARIANTS)))
    spec["pruner"] = dict(draw(st.sampled_from(PRUNER_VARIANTS)))
    for _ in range(draw(st.integers(1, 2))):
        where = draw(st.sampled_from(paths(spec)))
        parent = spec
        for key in where[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["value", "value", "value", "delete", "unknown", "empty"]))
        if action == "value":
            parent[where[-1]] = draw(BAD_VALUES)
        elif action == "delete":
            del parent[where[-1]]
        elif action == "unknown":
            parent[where[-1] + "_x"] = draw(BAD_VALUES)
        else:
            parent[where[-1]] = {}
    data = to_toml(spec).encode()
    form = draw(st.sampled_from(["plain", "plain", "plain", "bom", "latin", "cut", "empty"]))
    if form == "bom":
        data = b"\xef\xbb\xbf" + data
    elif form == "latin":
        data = data.replace(b'"mut"', b'"m\xe9t"')
    elif form == "cut":
        data = data[: draw(st.integers(0, len(data)))]
    elif form == "empty":
        data = b""
    return data


def listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def run_cli(argv: list[str], cwd: Path) -> tuple[int, str, float]:
    """``hpo ARGV`` in this process, in ``cwd``: (exit code, stderr, seconds)."""
    err = io.StringIO()
    old_cwd = os.getcwd()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    start = time.monotonic()
    try:
        os.chdir(cwd)
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main(argv)
            except SystemExit as e:  # argparse
                code = e.code if isinstance(e.code, int) else 1
    finally:
        os.chdir(old_cwd)
        for s, h in handlers.items():
            signal.signal(s, h)
    return code, err.getvalue(), time.monotonic() - start


def assert_refused_or_ran(code: int, stderr: str, before: set[str], after: set[str]) -> None:
    assert "Traceback" not in stderr, stderr
    assert code in (0, 2), (code, stderr)
    if code == 2:
        lines = [line for line in stderr.strip().splitlines() if not line.startswith("usage:")]
        assert len(lines) == 1 and "error:" in lines[0], stderr
        assert after == before, (sorted(after - before), stderr)


SETTINGS = settings(max_examples=int(os.environ.get("HPO_BAD_INPUT_EXAMPLES", "60")),
                    deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


@SETTINGS
@given(mutants())
def test_a_mutated_spec_runs_or_is_refused_in_one_line(tmp_path_factory, data: bytes) -> None:
    folder = tmp_path_factory.mktemp("spec")
    (folder / "s.toml").write_bytes(data)
    before = listing(folder)
    code, err, seconds = run_cli(["run", "s.toml", "--storage", "sqlite:///s.db", "--quiet",
                                  "--top", "1"], folder)
    assert_refused_or_ran(code, err, before, listing(folder))
    assert seconds < 120, seconds  # a mutant never hangs the command


FLAG_VALUES = st.sampled_from(["nan", "inf", "-inf", "-1", "0", "-0.5", "1e309", "abc", "",
                               "99999999999999999999", "0x10", "1.5", " 3", "1e-400"])
#: command argv prefix -> flags that take a value (each refused or run within seconds)
COMMANDS = {
    ("run", "SPEC"): ["--n-trials", "--workers", "--seed", "--data-seed", "--timeout", "--top",
                      "--heartbeat-interval", "--grace-period", "--study"],
    ("init", "SPEC"): ["--n-trials", "--study"],
    ("worker",): ["--n-trials", "--timeout", "--heartbeat-interval", "--grace-period"],
    ("best", "mut"): ["--top", "--max-gap"],
    ("report", "mut"): ["--top", "--max-gap"],
    ("test", "mut"): ["--trial"],
    ("confirm", "mut"): ["--top", "--seeds"],
    ("compare", "SPEC"): ["--n-trials", "--seeds", "--workers", "--target", "--confirm",
                          "--confirm-seeds", "--samplers", "--title"],
    ("dashboard",): ["--port"],
    ("proxy",): ["--port", "--pool-size"],
    ("experiment", "overfit"): ["--epochs", "--seed"],
}


@st.composite
def flag_sets(draw) -> list[str]:
    command = draw(st.sampled_from(sorted(COMMANDS)))
    flags = draw(st.lists(st.sampled_from(COMMANDS[command]), min_size=1, max_size=2,
                          unique=True))
    argv = list(command)
    if command[0] == "worker":
        argv += ["--study", "mut"]
    for flag in flags:
        argv += [flag, draw(FLAG_VALUES)]
    return argv


@SETTINGS
@given(flag_sets())
@pytest.mark.slow  # about 7-22 s on a 2-core machine: CI's slow step
def test_mutated_flags_run_or_are_refused_in_one_line(tmp_path_factory, argv: list[str]) -> None:
    folder = tmp_path_factory.mktemp("flags")
    (folder / "s.toml").write_text(to_toml(BASE))
    argv = ["s.toml" if a == "SPEC" else a for a in argv]
    if argv[0] == "compare":  # keep a valid grid small: the mutated flags come after
        argv[2:2] = ["--n-trials", "1", "--seeds", "1", "--samplers", "random", "--no-test",
                     "--quiet"]
    before = listing(folder)
    code, err, seconds = run_cli(with_storage(argv), folder)
    assert_refused_or_ran(code, err, before, listing(folder))
    assert seconds < 120, seconds


def with_storage(argv: list[str]) -> list[str]:
    """``argv`` on the folder's SQLite file (every command but ``experiment`` takes one). The
    file does not exist: commands that only read it refuse at once, so the dashboard and the
    proxy never start serving whatever their flags."""
    return argv if argv[0] == "experiment" else [*argv, "--storage", "sqlite:///s.db"]


@pytest.mark.parametrize("argv, message", [
    (["run", "s.toml", "--timeout", "nan"], "hpo run: error: --timeout must be a finite number"),
    (["best", "mut", "--top", "0"], "hpo best: error: --top must be >= 1, got 0"),
    (["run", "s.toml", "--heartbeat-interval", "0"], "--heartbeat-interval must be >= 1"),
    (["dashboard", "--port", "70000"], "--port must be in 0..65535, got 70000"),
    (["run", "s.toml", "--study", "x<img src=x onerror=alert(1)>"], "--study may hold only"),
    (["run", "s.toml", "--study", "../../etc"], "--study may hold only"),
    (["report", "mut", "--out", "s.toml"], "--out s.toml: exists and is not a folder"),
    (["experiment", "overfit", "--out", "s.toml"], "--out s.toml: exists and is not a folder"),
])
def test_examples_name_the_flag(tmp_path, argv, message):
    (tmp_path / "s.toml").write_text(to_toml(BASE))
    before = listing(tmp_path)
    code, err, _ = run_cli(with_storage(argv), tmp_path)
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert_refused_or_ran(code, err, before, listing(tmp_path))


@pytest.mark.parametrize("change, message", [
    ({"sampler": {"name": "tpe", "n_startup_trials": "5"}},
     "s.toml: sampler.n_startup_trials: must be an integer"),
    ({"pruner": {"name": "median", "n_warmup_steps": "5"}},
     "s.toml: pruner.n_warmup_steps: must be an integer"),
    ({"pruner": {"name": "hyperband", "reduction_factor": 1}},
     "s.toml: pruner.reduction_factor: must be an integer in [2, 100], got 1"),
    ({"pruner": {"name": "hyperband", "min_resource": 0}}, "s.toml: pruner.min_resource"),
    ({"sampler": {"name": "narrowing", "stage_trials": 5, "keep_top": 10}},
     "s.toml: sampler.keep_top: must be <= stage_trials (5), got 10"),
    ({"name": "x<img src=x onerror=alert(1)>"}, "s.toml: name: may hold only"),
    ({"budget": {"timeout": math.nan}}, "s.toml: budget.timeout: must be a finite number"),
    ({"model": {"hidden": [10**9]}}, "s.toml: model.hidden: must be a list of positive"),
    ({"model": {"epochs": 10**9}}, "s.toml: model.epochs: must be <= 100000"),
    ({"sampler": {"name": "cmaes", "x0": {"colour": 1.0}}},
     "s.toml: sampler.x0.colour: not a numeric parameter"),
])
def test_spec_examples_name_the_file_and_key(tmp_path, change, message):
    spec = {**BASE, **change}
    if "model" in change:
        spec["model"] = {**BASE["model"], **change["model"]}
    (tmp_path / "s.toml").write_text(to_toml(spec))
    before = listing(tmp_path)
    code, err, _ = run_cli(["run", "s.toml", "--storage", "sqlite:///s.db"], tmp_path)
    assert code == 2 and message in err, err
    assert_refused_or_ran(code, err, before, listing(tmp_path))


def test_an_unexpected_error_is_one_line_and_the_traceback_is_on_request(tmp_path, monkeypatch):
    import hpo.commands.studies as studies_module

    def broken(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(studies_module, "studies", broken)
    code, err, _ = run_cli(["studies"], tmp_path)
    assert code == 1 and err.strip().splitlines() == [
        "hpo studies: error: ZeroDivisionError: a bug (run with --debug for the traceback)"]
    code, err, _ = run_cli(["studies", "--debug"], tmp_path)
    assert code == 1 and "Traceback" in err and "ZeroDivisionError: a bug" in err
