"""`hpo compare` on a small grid: files written, numbers match the studies in the storage."""

import json

import numpy as np
import optuna
import pytest

from hpo.db.storage import study_spec
from hpo.engine.compare import study_name
from hpo.report.compare import (
    Arm,
    Grid,
    StudyRun,
    _fmt_q,
    best_so_far_figure,
    grid_from_summary,
)
from tests.conftest import hpo, trial_states

SAMPLERS = ["narrowing", "random", "tpe"]


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    spec = tmp / "cmp.toml"
    spec.write_text('''
name = "cmp"
[data]
dataset = "digits"
train_size = 300
[model]
hidden = [16, 16]
epochs = 4
batch_size = 50
[search.lr]
low = 1e-3
high = 0.5
log = true
[search.weight_decay]
low = 1e-8
high = 1e-4
log = true
[sampler]
name = "narrowing"
stage_trials = 8
keep_top = 3
''')
    url = f"sqlite:///{tmp / 'c.db'}"
    out = tmp / "out"
    r = hpo("compare", str(spec), "--storage", url, "--samplers", ",".join(SAMPLERS),
            "--n-trials", "16", "--seeds", "2", "--target", "0.5", "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    return url, out, r


def _best_curve(url, name):
    study = optuna.load_study(study_name=name, storage=url)
    trials = sorted(study.trials, key=lambda t: t.number)
    return np.maximum.accumulate([t.value for t in trials]), study


def test_no_startup_note_when_tpe_models(grid):
    """16 trials > TPE's 10 start-up trials: no note; the narrowing and random arms have none."""
    _, out, r = grid
    assert "note:" not in r.stderr and "**Note:**" not in (out / "summary.md").read_text()


def test_files_and_one_study_per_cell(grid):
    url, out, _ = grid
    assert (out / "best_so_far.png").stat().st_size > 10_000
    assert (out / "summary.md").exists() and (out / "summary.json").exists()
    names = {s.study_name for s in optuna.get_all_study_summaries(url)}
    assert names == {study_name("cmp", s, k) for s in SAMPLERS for k in range(2)}
    for name in names:
        study = optuna.load_study(study_name=name, storage=url)
        assert sum(t.state.name == "COMPLETE" for t in study.trials) == 16
        assert "hpo:test" in study.user_attrs  # the chosen trial was evaluated on test, once


def test_same_split_different_seeds(grid):
    url, _, _ = grid
    specs = [study_spec(optuna.load_study(study_name=study_name("cmp", s, k), storage=url))
             for s in SAMPLERS for k in range(2)]
    assert len({json.dumps(s["data"], sort_keys=True) for s in specs}) == 1
    assert {s["seed"] for s in specs} == {0, 1}
    assert specs[0]["sampler"]["stage_trials"] == 8  # the spec's own narrowing options


def test_table_cells_recomputed_from_storage(grid):
    url, out, r = grid
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in r.stdout.splitlines() if line.startswith("| ") and "sampler" not in line}
    for s in SAMPLERS:
        curves, tests = [], []
        for k in range(2):
            curve, study = _best_curve(url, study_name("cmp", s, k))
            curves.append(curve)
            tests.append(study.user_attrs["hpo:test"]["test_acc"])
        assert rows[s][0] == _fmt_q([c[9] for c in curves])  # best val @10
        assert rows[s][1] == _fmt_q([c[15] for c in curves])  # best val @16
        reached = sum(bool((c >= 0.5).any()) for c in curves)
        assert rows[s][4] == f"{reached}/2"
        assert rows[s][-1] == _fmt_q(tests)


@pytest.mark.slow  # about 7-22 s on a 2-core machine: CI's slow step
def test_rerun_resumes_without_new_trials(grid, tmp_path):
    url, out, first = grid
    spec = out.parent / "cmp.toml"
    args = ["compare", str(spec), "--storage", url, "--samplers", ",".join(SAMPLERS),
            "--n-trials", "16", "--seeds", "2", "--target", "0.5", "--out", str(tmp_path),
            "--quiet"]
    refused = hpo(*args)  # the studies exist: continuing them must be asked for
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "pass --resume" in refused.stderr and "6 of this comparison's 6 studies" in \
        refused.stderr
    assert not (tmp_path / "summary.md").exists()
    r = hpo(*args, "--resume")
    assert r.returncode == 0, r.stderr
    assert r.stdout == first.stdout  # nothing re-run, test accuracies reused
    for s in SAMPLERS:
        study = optuna.load_study(study_name=study_name("cmp", s, 0), storage=url)
        assert len(study.trials) == 16


def test_bad_sampler_name(tmp_path, tiny_spec):
    r = hpo("compare", str(tiny_spec()), "--samplers", "random,annealing",
            "--storage", f"sqlite:///{tmp_path / 'x.db'}")
    assert r.returncode == 2 and "'annealing' is not available" in r.stderr
    assert not (tmp_path / "x.db").exists()


def test_several_specs_as_arms_with_confirmation(tmp_path, tiny_spec):
    a = tiny_spec(name="arm-a", sampler="random")
    b = tiny_spec(name="arm-b", sampler="tpe")
    url = f"sqlite:///{tmp_path / 'arms.db'}"
    r = hpo("compare", str(a), str(b), "--storage", url, "--n-trials", "6", "--seeds", "2",
            "--confirm", "2", "--confirm-seeds", "2", "--out", str(tmp_path / "o"), "--quiet")
    assert r.returncode == 0, r.stderr
    assert "chosen: confirmed val acc" in r.stdout and "U-test p vs arm-a" in r.stdout
    for name, sampler in (("arm-a", "random"), ("arm-b", "tpe")):
        study = optuna.load_study(study_name=f"{name}/{sampler}/seed1", storage=url)
        confirmed = study.user_attrs["hpo:confirm"]
        assert len(confirmed["rows"]) == 2 and confirmed["n_seeds"] == 2
        assert study.user_attrs["hpo:test"]["trial"] == confirmed["winner"]


def test_specs_on_different_splits_are_refused(tmp_path, tiny_spec):
    a = tiny_spec(name="split-a")
    b = tmp_path / "split-b.toml"
    b.write_text(a.read_text().replace('name = "split-a"', 'name = "split-b"')
                 .replace("train_size = 300", "train_size = 200"))
    r = hpo("compare", str(a), str(b), "--storage", f"sqlite:///{tmp_path / 'x.db'}")
    assert r.returncode == 2 and "needs the same split" in r.stderr


@pytest.mark.slow  # about 7-22 s on a 2-core machine: CI's slow step
def test_two_forked_workers_per_cell_keep_the_exact_budget(tmp_path, tiny_spec):
    url = f"sqlite:///{tmp_path / 'w.db'}"
    r = hpo("compare", str(tiny_spec(name="w")), "--storage", url, "--samplers", "random,tpe",
            "--n-trials", "6", "--seeds", "2", "--workers", "2", "--no-test",
            "--out", str(tmp_path / "o"), "--quiet")
    assert r.returncode == 0, r.stderr
    for sampler in ("random", "tpe"):
        for k in range(2):
            study = optuna.load_study(study_name=study_name("w", sampler, k), storage=url)
            states = [t.state.name for t in study.get_trials(deepcopy=False)
                      if "hpo:surplus" not in t.system_attrs]
            assert states == ["COMPLETE"] * 6, (sampler, k, states)
    # 6 trials < TPE's 10 start-up trials: TPE equals random search here, and the run says so
    note = ("tpe: 6 trials per study are no more than its 10 random start-up trials "
            "(n_startup_trials), so it never used its model and its row measures random search; "
            "give --n-trials above 10")
    assert r.stderr.splitlines().count(f"hpo compare: note: {note}") == 1
    assert f"**Note:** {note}" in (tmp_path / "o" / "summary.md").read_text()
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["notes"] == [note]


@pytest.mark.slow  # about 7-22 s on a 2-core machine: CI's slow step
def test_sigterm_during_a_two_worker_compare_exits_143_with_nothing_running(tmp_path, tiny_spec):
    """`hpo compare --workers 2` supervises its forked workers as `hpo run` does: a SIGTERM
    reaches them, each fails its running trial, and the command exits 143."""
    import signal
    import subprocess
    import sys
    import time

    spec = tiny_spec("cmpterm", n_trials=10, epochs=200)
    url = f"sqlite:///{tmp_path / 'term.db'}"
    proc = subprocess.Popen([sys.executable, "-m", "hpo", "compare", str(spec), "--storage", url,
                             "--samplers", "random,tpe", "--n-trials", "400", "--seeds", "1",
                             "--workers", "2", "--out", str(tmp_path / "out"), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def running_or_done() -> int:
        states = trial_states(url)  # read only: compare may be creating the storage
        return states.get("RUNNING", 0) + states.get("COMPLETE", 0)

    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and running_or_done() < 3 and proc.poll() is None:
        time.sleep(0.3)
    assert proc.poll() is None, proc.communicate()[1]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 143, err
    storage = optuna.storages.RDBStorage(url, skip_table_creation=True)
    states = [t.state.name for s in storage.get_all_studies()
              for t in storage.get_all_trials(s._study_id, deepcopy=False)]
    assert "RUNNING" not in states and states.count("COMPLETE") >= 1, states
    time.sleep(1.5)  # a worker left behind would go on adding trials
    again = [t.state.name for s in storage.get_all_studies()
             for t in storage.get_all_trials(s._study_id, deepcopy=False)]
    assert again == states
    assert not (tmp_path / "out").exists()  # interrupted: no summary written


@pytest.mark.slow
def test_own_storage_under_out_and_resume_only_when_asked(tmp_path, tiny_spec):
    """Without --storage the studies go to <out>/compare.db, never ./hpo.db or $HPO_STORAGE;
    a second run refuses to continue them without --resume (exit 2, nothing written) and
    refuses another comparison's --out even with it."""
    spec = tiny_spec(name="own")
    out = tmp_path / "cmp"
    args = ["compare", str(spec), "--samplers", "random,tpe", "--n-trials", "3", "--seeds", "1",
            "--no-test", "--out", str(out), "--quiet"]
    elsewhere = f"sqlite:///{tmp_path / 'env.db'}"
    r = hpo(*args, cwd=tmp_path, env={"HPO_STORAGE": elsewhere})
    assert r.returncode == 0, r.stderr
    assert f"studies in sqlite:///{out / 'compare.db'}" in r.stderr
    assert not (tmp_path / "hpo.db").exists() and not (tmp_path / "env.db").exists()
    url = f"sqlite:///{out / 'compare.db'}"
    names = {s.study_name for s in optuna.get_all_study_summaries(url)}
    assert names == {"own/random/seed0", "own/tpe/seed0"}
    summary = (out / "summary.md").read_bytes()

    again = hpo(*args, "--n-trials", "4", cwd=tmp_path)
    assert again.returncode == 2, again.stderr
    assert again.stderr.strip().splitlines() == [
        f"hpo compare: error: --out {out} already holds this comparison (2 of its 2 studies in "
        f"{url}); pass --resume to continue it, or choose another --out"]
    assert (out / "summary.md").read_bytes() == summary
    for name in names:  # nothing ran
        assert len(optuna.load_study(study_name=name, storage=url).trials) == 3

    resumed = hpo(*args, "--n-trials", "4", "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    for name in names:
        trials = optuna.load_study(study_name=name, storage=url).trials
        assert len(trials) == 4
        # the resumed cell drew a new point, not its first one again
        assert trials[3].params["lr"] not in {t.params["lr"] for t in trials[:3]}, name

    other = tiny_spec(name="other")
    for extra in ([], ["--resume"]):
        r = hpo("compare", str(other), "--samplers", "random", "--n-trials", "2", "--seeds", "1",
                "--no-test", "--out", str(out), "--quiet", *extra, cwd=tmp_path)
        assert r.returncode == 2 and "holds another comparison" in r.stderr, r.stderr
    assert {s.study_name for s in optuna.get_all_study_summaries(url)} == names


def _run(label: str, seed: int, curve: list[float]) -> StudyRun:
    return StudyRun(label, seed, f"x/{label}/seed{seed}", curve,
                    [float(i + 1) for i in range(len(curve))])


def test_plot_keeps_equal_arms_visible_with_whole_trial_ticks(tmp_path):
    """Two arms with the same median (the narrowing arms share their first stage) are drawn in
    different line styles; trial ticks are whole numbers; the title names every arm; the plot
    can be redrawn from summary.json alone."""
    from hpo.report.compare import write_outputs

    same = [0.1, 0.5, 0.5, 0.6, 0.7, 0.7, 0.8]
    grid = Grid("two specs", [Arm("a", None), Arm("b", None), Arm("c", None)], 2, len(same),
                0.75, runs={s: [_run(s, k, same if s != "c" else [0.2] * 7) for k in range(2)]
                            for s in ("a", "b", "c")})
    fig = best_so_far_figure(grid)
    trials_ax = fig.axes[0]
    medians = [ln for ln in trials_ax.get_lines() if ln.get_label() in
               ("a (n=2)", "b (n=2)", "c (n=2)")]
    assert len(medians) == 3
    assert list(medians[0].get_ydata()) == list(medians[1].get_ydata())  # they coincide...
    styles = {(ln.get_linestyle(), ln.get_marker()) for ln in medians}
    assert len(styles) == 3  # ...and still look different
    ticks = [t for t in trials_ax.get_xticks() if 1 <= t <= len(same)]
    assert ticks and all(float(t).is_integer() for t in ticks)
    title = fig._suptitle.get_text()
    assert title.startswith("two specs: a, b, c\n")

    paths = write_outputs(grid, str(tmp_path), "hpo compare x")
    again = grid_from_summary(paths["json"])
    assert again.labels == grid.labels and again.runs["a"][1].best_so_far == same
    with open(paths["json"]) as fh:  # a book comparison's file names no metric: as before
        assert not {"metric", "direction"} & set(json.load(fh))


def test_a_minimize_grid_ranks_and_reaches_its_target_downward(tmp_path):
    """A user's objective that minimizes a loss: the lower final best ranks first, a target is
    reached at or below it, the table and the figure name the metric, summary.json keeps it."""
    from hpo.report.compare import mean_ranks, table, write_outputs
    from hpo.report.metric import Metric

    low, high = [0.9, 0.5, 0.2, 0.1], [0.9, 0.8, 0.7, 0.6]
    grid = Grid("loss", [Arm("a", None), Arm("b", None)], 2, 4, 0.3,
                runs={s: [_run(s, k, low if s == "a" else high) for k in range(2)]
                      for s in ("a", "b")}, metric=Metric("loss", "minimize"))
    assert mean_ranks(grid) == {"a": 1.0, "b": 2.0}
    assert grid.runs["a"][0].trials_to(0.3, "minimize") == 3
    assert grid.runs["b"][0].trials_to(0.3, "minimize") is None
    assert grid.runs["b"][0].trials_to(0.3) == 1  # the book's direction: at or above
    head = table(grid).splitlines()[0]
    assert head.startswith("| sampler | best loss @4 | trials to 0.30 |")
    assert fig_ylabel(grid) == "best loss so far"
    paths = write_outputs(grid, str(tmp_path), "hpo compare x")
    assert grid_from_summary(paths["json"]).metric == Metric("loss", "minimize")
    book = json.loads((tmp_path / "summary.json").read_text())
    assert (book["metric"], book["direction"]) == ("loss", "minimize")


def fig_ylabel(grid) -> str:
    return best_so_far_figure(grid).axes[0].get_ylabel()
