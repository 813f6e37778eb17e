"""Spec values that only fail once the study would run, refused like every other bad spec:
exit 2, one line naming the spec file and the key (or the flag), nothing written."""

from __future__ import annotations

import pytest

from hpo.nn.data import DataDir, DataError, load_search, load_test
from tests.test_bad_input import assert_refused_or_ran, listing, run_cli

SPEC = """name = "s"
[data]
dataset = "{dataset}"
train_size = 100
validation_rate = 0.2
{data}
[model]
hidden = [8]
epochs = 1
batch_size = 20
[search.lr]
low = 0.01
high = 0.1
{search}
[sampler]
name = "random"
[budget]
n_trials = 1
"""


def refused(folder, spec: str, *flags: str) -> str:
    """``hpo run s.toml FLAGS`` in ``folder``: refused in one line, nothing written; the line."""
    (folder / "s.toml").write_text(spec)
    before = listing(folder)
    code, err, _ = run_cli(["run", "s.toml", "--storage", "sqlite:///s.db", *flags], folder)
    assert code == 2, (code, err)
    assert_refused_or_ran(code, err, before, listing(folder))
    return err.strip()


@pytest.mark.parametrize("search, key, message", [
    ("step = 0.04", "search.lr.step",
     "must divide high - low (0.09) evenly, got 0.04 (e.g. high = 0.09)"),
    ('[search.hidden_width]\ntype = "int"\nlow = 4\nhigh = 10\nstep = 4',
     "search.hidden_width.step", "must divide high - low (6) evenly, got 4 (e.g. high = 8)"),
])
def test_a_step_that_does_not_divide_the_range_is_refused(tmp_path, search, key, message):
    """Optuna would move high down to the step's grid and warn on every trial (two raw lines
    on stderr each time)."""
    err = refused(tmp_path, SPEC.format(dataset="digits", data="", search=search))
    assert err == f"hpo run: error: s.toml: {key}: {message}"


def test_a_missing_data_dir_names_the_spec_key(tmp_path):
    nope = tmp_path / "nope"
    spec = SPEC.format(dataset="mnist", data=f'data_dir = "{nope}"', search="")
    assert refused(tmp_path, spec) == (
        f"hpo run: error: s.toml: data.data_dir: MNIST data dir {nope} does not exist")
    (tmp_path / "file").write_text("")
    spec = SPEC.format(dataset="mnist", data=f'data_dir = "{tmp_path / "file"}"', search="")
    assert refused(tmp_path, spec).endswith(f"data dir {tmp_path / 'file'} is not a folder")


def test_a_missing_data_dir_flag_names_the_flag(tmp_path):
    """``--data-dir`` replaces the spec's data.data_dir: its folder is the one checked (a spec
    written on another machine runs here with the flag)."""
    nope, empty = tmp_path / "nope", tmp_path / "empty"
    empty.mkdir()
    spec = SPEC.format(dataset="mnist", data="", search="")
    assert refused(tmp_path, spec, "--data-dir", str(nope)) == (
        f"hpo run: error: --data-dir: MNIST data dir {nope} does not exist")
    spec = SPEC.format(dataset="mnist", data=f'data_dir = "{nope}"', search="")
    assert refused(tmp_path, spec, "--data-dir", str(empty)).startswith(
        f"hpo run: error: --data-dir: MNIST data dir {empty} lacks train-images-idx3-ubyte.gz")


def test_a_data_dir_names_where_it_was_given(tmp_path):
    where = DataDir(str(tmp_path / "nope"), "s.toml: data.data_dir")
    assert where == str(tmp_path / "nope") and where.where == "s.toml: data.data_dir"
    for load in (lambda d: load_search("mnist", data_dir=d),
                 lambda d: load_test("mnist", data_dir=d)):
        with pytest.raises(DataError, match=r"^s.toml: data.data_dir: MNIST data dir .* does not"):
            load(where)
        with pytest.raises(DataError, match=r"^MNIST data dir .* does not exist"):  # a plain path
            load(tmp_path / "nope")


def test_an_integer_too_long_to_read_is_refused_in_one_line(tmp_path):
    spec = SPEC.format(dataset="digits", data="", search="").replace("n_trials = 1",
                                                                      "n_trials = " + "9" * 5000)
    assert refused(tmp_path, spec) == (
        "hpo run: error: s.toml: budget.n_trials: an integer of 5000 digits on line 18 is too "
        "long to read (at most 4300 digits)")
