"""Pruning: hopeless trials stop early, report only where the pruner can act while training; a
finished trial's whole validation curve is its intermediate values."""

import optuna
import pytest

from hpo.objectives.book import Objective
from hpo.report.listing import listing
from hpo.samplers.pruners import make_pruner, report_steps
from hpo.spec import load_spec
from tests.conftest import STUDIES, hpo

PRUNER = '''
[pruner]
name = "median"
n_startup_trials = 2
n_warmup_steps = 2
interval_steps = 2
'''


def test_report_steps():
    assert report_steps("none", {}, 50) == frozenset()
    assert report_steps("median", {}, 50) == frozenset(range(5, 51, 5))
    assert report_steps("median", {"n_warmup_steps": 2, "interval_steps": 3}, 10) == {2, 5, 8}
    assert report_steps("successive-halving", {"min_resource": 2, "reduction_factor": 3},
                        50) == {2, 6, 18}
    assert report_steps("hyperband", {}, 50) == {5, 15, 45}


def test_hopeless_trial_is_pruned_and_its_last_value_stored(tiny_spec):
    spec = load_spec(tiny_spec(epochs=8, extra=PRUNER))
    pruner = make_pruner(spec.pruner, spec.pruner_options, spec.model.epochs)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for _ in range(2):
        study.enqueue_trial({"lr": 0.3, "weight_decay": 1e-6})  # learns well
    study.enqueue_trial({"lr": 1e-3, "weight_decay": 1e-6})  # barely moves in 8 epochs
    study.optimize(Objective(spec), n_trials=3)
    good, _, hopeless = study.trials
    assert good.state.name == "COMPLETE"
    # the whole curve, once the trial ended (during it, only the pruner's steps 2, 4, 6, 8)
    assert good.intermediate_values == pytest.approx(
        dict(enumerate(good.user_attrs["val_acc_curve"], 1)), abs=1e-6)  # the attr is rounded
    assert hopeless.state.name == "PRUNED"
    last_step = max(hopeless.intermediate_values)
    assert last_step < 8
    assert hopeless.intermediate_values[last_step] < good.intermediate_values[last_step]
    assert "model_seed" in hopeless.user_attrs


def test_without_a_pruner_the_curve_is_reported_when_the_trial_ends(tiny_spec, sqlite_url):
    """No pruner: the validation curve is the trial's intermediate values at its end
    (optuna-dashboard's own charts draw it), held back and written in the transaction that
    finishes the trial (hpo's write-behind storage)."""
    from hpo.db.storage import get_storage

    spec = load_spec(tiny_spec(epochs=4))
    seen = []

    class Watch(Objective):
        def _report_curve(self, trial, result):
            super()._report_curve(trial, result)
            # reported, but held back: another connection sees none of it before the end
            other = optuna.load_study(study_name=trial.study.study_name, storage=sqlite_url)
            seen.append(other.trials[-1].intermediate_values)

    study = optuna.create_study(direction="maximize",
                                storage=get_storage(sqlite_url, create_schema=True))
    study.optimize(Watch(spec), n_trials=2)
    assert seen == [{}, {}]
    stored = optuna.load_study(study_name=study.study_name, storage=sqlite_url).trials
    for t in stored:
        assert t.intermediate_values == pytest.approx(
            dict(enumerate(t.user_attrs["val_acc_curve"], 1)), abs=1e-6)


def test_pruned_study_lists_best(tiny_spec, sqlite_url):
    spec = tiny_spec(n_trials=12, epochs=8, extra=PRUNER, sampler="tpe")
    r = hpo("run", str(spec), "--storage", sqlite_url, "--quiet")
    assert r.returncode == 0, r.stderr
    study = optuna.load_study(study_name="tiny", storage=sqlite_url)
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") + states.count("PRUNED") == 12
    assert r.stdout.startswith("Best-1(val acc:")
    assert listing(study).count("Best-") == states.count("COMPLETE")


def test_bad_pruner_option(tiny_spec, sqlite_url):
    spec = tiny_spec(extra='[pruner]\nname = "median"\npatience = 3\n')
    r = hpo("run", str(spec), "--storage", sqlite_url)
    assert r.returncode == 2 and "pruner 'median' has no option 'patience'" in r.stderr


@pytest.mark.parametrize("name", ["tpe-pruned.toml"])
def test_shipped_pruned_spec_builds(name):
    spec = load_spec(STUDIES / name)
    assert spec.pruner == "median"
    assert make_pruner(spec.pruner, spec.pruner_options, spec.model.epochs)


# --- hpo.samplers.pruners.MedianPruner: Optuna's decisions, one storage read per trial ---

MEDIAN = {"n_startup_trials": 3, "n_warmup_steps": 2, "interval_steps": 2}


def _curve_objective(log: list):
    """Reports at steps 0..9 a curve set by x (bad x: low curve), asks should_prune each time
    and logs (trial number, step, decision, storage reads made by should_prune)."""

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        backend = trial.study._storage._backend
        for step in range(10):
            value = x * (1 - 0.8 ** (step + 1)) + 0.01 * step
            trial.report(value, step)
            before = backend.reads
            pruned = trial.should_prune()
            log.append((trial.number, step, pruned, backend.reads - before))
            if pruned:
                raise optuna.TrialPruned()
        return value

    return objective


def _counted_study(url: str, name: str, pruner, sampler) -> optuna.Study:
    """A study on a real SQLite RDBStorage whose SQL reads of trials are counted."""
    storage = optuna.storages.RDBStorage(url)
    storage.reads = 0
    read = storage._get_trials

    def counted(*args, **kwargs):
        storage.reads += 1
        return read(*args, **kwargs)

    storage._get_trials = counted
    return optuna.create_study(storage=storage, study_name=name, direction="maximize",
                               pruner=pruner, sampler=sampler)


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_median_pruner_decides_as_optunas_with_one_read_per_trial(tmp_path, sampler):
    from hpo.samplers.pruners import MedianPruner

    def make_sampler():
        if sampler == "tpe":
            return optuna.samplers.TPESampler(seed=3, n_startup_trials=5)
        return optuna.samplers.RandomSampler(seed=3)

    pruner = make_pruner("median", MEDIAN, 10)
    assert isinstance(pruner, MedianPruner)
    url = f"sqlite:///{tmp_path / 'p.db'}"
    ours_log, optunas_log = [], []
    ours = _counted_study(url, "ours", pruner, make_sampler())
    optunas = _counted_study(url, "optunas", optuna.pruners.MedianPruner(**MEDIAN),
                             make_sampler())
    ours.optimize(_curve_objective(ours_log), n_trials=30)
    optunas.optimize(_curve_objective(optunas_log), n_trials=30)

    def decisions(log):
        return [(n, step, pruned) for n, step, pruned, _ in log]

    assert decisions(ours_log) == decisions(optunas_log)  # identical, step by step
    assert [t.state for t in ours.trials] == [t.state for t in optunas.trials]
    assert 5 < sum(t.state.name == "PRUNED" for t in ours.trials) < 25
    # reads made by should_prune: Optuna reads at every report, hpo's at most once per trial
    # (none when the sampler already read the trials for this trial, as TPE does)
    per_trial: dict[int, int] = {}
    for n, _, _, reads in ours_log:
        per_trial[n] = per_trial.get(n, 0) + reads
    assert max(per_trial.values()) <= 1
    assert all(reads == 1 for _, _, _, reads in optunas_log)
    assert sum(per_trial.values()) * 3 < len(optunas_log)


def test_median_pruner_snapshot_is_never_older_than_the_trial(tmp_path):
    """A study object whose per-trial cache predates the trial (it did not ask for it) does
    not make the pruner decide on stale trials: it reads them again."""
    from hpo.samplers.pruners import MedianPruner

    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(storage=url, study_name="s", direction="maximize",
                                pruner=MedianPruner(n_startup_trials=1))
    other = optuna.load_study(study_name="s", storage=url, pruner=study.pruner)
    assert other._get_trials(deepcopy=False, use_cache=True) == []  # cached: no trial at all
    for _ in range(3):
        good = study.ask()
        good.report(1.0, 0)
        study.tell(good, 1.0)
    bad = study.ask()
    bad.report(0.1, 0)
    frozen = bad._get_latest_trial()
    expected = optuna.pruners.MedianPruner(n_startup_trials=1).prune(other, frozen)
    assert bool(expected) is True
    assert bool(other.pruner.prune(other, frozen)) is True
    assert bool(study.pruner.prune(study, frozen)) is True


def test_median_pruner_pickles_and_keeps_optunas_options():
    import pickle

    pruner = make_pruner("median", {"n_startup_trials": 2, "n_min_trials": 3}, 20)
    clone = pickle.loads(pickle.dumps(pruner))
    assert (clone._n_startup_trials, clone._n_warmup_steps, clone._n_min_trials) == (2, 5, 3)
    with pytest.raises(ValueError, match="has no option 'percentile'"):
        make_pruner("median", {"percentile": 25.0}, 20)


def test_a_long_curve_is_thinned_to_curve_points(tiny_spec, monkeypatch):
    """A curve longer than CURVE_POINTS becomes that many intermediate values, evenly spaced,
    the last epoch kept (a 30,000-epoch spec behind `hpo proxy` made 30,000 calls a trial)."""
    from hpo.objectives import book as objective

    monkeypatch.setattr(objective, "CURVE_POINTS", 4)
    spec = load_spec(tiny_spec(epochs=10))
    study = optuna.create_study(direction="maximize")
    study.optimize(Objective(spec), n_trials=1)
    (t,) = study.trials
    assert sorted(t.intermediate_values) == [1, 4, 7, 10]
    assert t.intermediate_values[10] == pytest.approx(t.value)
