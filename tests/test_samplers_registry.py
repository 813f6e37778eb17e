"""make_sampler: every sampler by name, seeded, with its options checked."""

from __future__ import annotations

from typing import Any

import optuna
import pytest

from hpo.samplers import (
    SAMPLER_NAMES,
    NarrowingSampler,
    available_samplers,
    make_sampler,
    registry,
)
from hpo.samplers.keyed import KeyedQMCSampler, KeyedRandomSampler, from_unit

optuna.logging.set_verbosity(optuna.logging.WARNING)

CLASSES = {
    "narrowing": NarrowingSampler,
    "random": KeyedRandomSampler,
    "tpe": optuna.samplers.TPESampler,
    "cmaes": optuna.samplers.CmaEsSampler,
    "qmc": KeyedQMCSampler,
    "gp": optuna.samplers.GPSampler,
}
SMALL_OPTIONS: dict[str, dict[str, Any]] = {
    "narrowing": {"stage_trials": 4, "keep_top": 2},
    "tpe": {"n_startup_trials": 4},
    "cmaes": {"n_startup_trials": 4},
    "gp": {"n_startup_trials": 4},
}


def objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -5.0, 5.0)
    lr = trial.suggest_float("lr", 1e-6, 1e-2, log=True)
    return (x - 1.0) ** 2 + lr


def run(name: str, seed: int | None, n_trials: int = 12) -> list[dict[str, Any]]:
    sampler = make_sampler(name, seed=seed, options=SMALL_OPTIONS.get(name))
    study = optuna.create_study(sampler=sampler)
    study.optimize(objective, n_trials=n_trials)
    return [t.params for t in study.trials]


def test_names() -> None:
    assert SAMPLER_NAMES == ("narrowing", "random", "tpe", "cmaes", "qmc", "gp")
    available = available_samplers()
    assert set(available) <= set(SAMPLER_NAMES)
    assert {"narrowing", "random", "tpe", "qmc"} <= set(available)


@pytest.mark.parametrize("name", available_samplers())
def test_every_available_name_builds_its_class(name: str) -> None:
    assert isinstance(make_sampler(name), CLASSES[name])


@pytest.mark.parametrize("name", [n for n in available_samplers() if n != "gp"])
def test_seed_gives_reproducible_draws(name: str) -> None:
    assert run(name, seed=42) == run(name, seed=42)
    assert run(name, seed=42) != run(name, seed=43)


def test_options_are_passed_through() -> None:
    tpe = make_sampler("tpe", options={"n_startup_trials": 20, "multivariate": True})
    assert isinstance(tpe, optuna.samplers.TPESampler)
    assert tpe._n_startup_trials == 20 and tpe._multivariate
    narrowing = make_sampler("narrowing", seed=1, options={"stage_trials": 30, "keep_top": 5})
    assert isinstance(narrowing, NarrowingSampler) and narrowing.stage_trials == 30


def test_qmc_is_scrambled_by_default() -> None:
    assert make_sampler("qmc", seed=0)._scramble is True  # type: ignore[attr-defined]
    unscrambled = make_sampler("qmc", options={"scramble": False})
    assert unscrambled._scramble is False  # type: ignore[attr-defined]


def test_unknown_name_lists_the_names() -> None:
    with pytest.raises(ValueError) as info:
        make_sampler("hyperband")
    message = str(info.value)
    assert "'hyperband'" in message and "\n" not in message
    assert all(name in message for name in SAMPLER_NAMES)


def test_unknown_option_lists_the_allowed_ones() -> None:
    with pytest.raises(ValueError) as info:
        make_sampler("tpe", options={"n_startup": 5})
    message = str(info.value)
    assert "n_startup" in message and "n_startup_trials" in message and "\n" not in message
    with pytest.raises(ValueError, match="stage_trials, keep_top"):
        make_sampler("narrowing", options={"stages": 3})
    with pytest.raises(ValueError, match="seed="):
        make_sampler("random", options={"seed": 1})


def test_narrowing_option_values_are_validated() -> None:
    with pytest.raises(ValueError, match="keep_top"):
        make_sampler("narrowing", options={"keep_top": 0})


def test_make_sampler_takes_the_specs_shift_and_bounds() -> None:
    sampler = make_sampler("narrowing", seed=0, options={
        "shift": True, "bounds": {"lr": [1e-6, 1.0]}, "initial": {"lr": (1e-6, 1e-2)},
    })
    assert isinstance(sampler, NarrowingSampler) and sampler._initial == {"lr": (1e-6, 1e-2)}
    with pytest.raises(ValueError, match="bounds needs initial") as e:
        make_sampler("narrowing", options={"shift": True, "bounds": {"lr": [1e-6, 1.0]}})
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="must lie inside bounds.lr"):
        make_sampler("narrowing", options={"bounds": {"lr": [1e-6, 1.0]},
                                           "initial": {"lr": (1e-7, 1e-2)}})
    with pytest.raises(ValueError, match=r"bounds.lr must be \[low, high\]"):
        make_sampler("narrowing", options={"bounds": {"lr": [1.0, 1e-6]},
                                           "initial": {"lr": (1e-6, 1e-2)}})
    with pytest.raises(ValueError, match="allowed: .*shift, initial, bounds"):
        make_sampler("narrowing", options={"bound": {}})
    with pytest.raises(ValueError, match="unknown option.*bounds"):
        make_sampler("tpe", options={"bounds": {"lr": [1e-6, 1.0]}})


def test_gp_without_torch_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_importable", lambda module: module != "torch")
    assert "gp" not in available_samplers()
    with pytest.raises(ValueError) as info:
        make_sampler("gp")
    assert str(info.value) == "sampler 'gp' needs torch: pip install 'hpo-book[gp]'"


def test_gp_and_cmaes_build_when_their_dependency_is_there(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Optuna imports torch and cmaes lazily: construction works without them.
    monkeypatch.setattr(registry, "_importable", lambda module: True)
    assert available_samplers() == SAMPLER_NAMES
    assert isinstance(make_sampler("gp", seed=0), optuna.samplers.GPSampler)
    assert isinstance(make_sampler("cmaes", seed=0), optuna.samplers.CmaEsSampler)


def test_cmaes_without_cmaes_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_importable", lambda module: module != "cmaes")
    with pytest.raises(ValueError, match="sampler 'cmaes' needs cmaes: pip install cmaes"):
        make_sampler("cmaes")


def test_spec_knows_the_registry_names():
    """hpo.spec keeps its own list (it must not import Optuna): keep the two in step."""
    from hpo.samplers import SAMPLER_NAMES
    from hpo.spec import SAMPLERS

    assert tuple(SAMPLERS) == tuple(SAMPLER_NAMES)


@pytest.mark.parametrize("name", ["random", "qmc"])
def test_keyed_draws_depend_on_seed_and_trial_number_only(name: str) -> None:
    """Trial n gets the same point whoever asks and in whatever order: two samplers built from
    one seed, asked for the trial numbers in opposite orders (as two workers would), agree;
    the points differ between trials and between seeds."""
    space = {"lr": optuna.distributions.FloatDistribution(1e-3, 0.5, log=True),
             "width": optuna.distributions.IntDistribution(16, 256, step=16),
             "opt": optuna.distributions.CategoricalDistribution(["sgd", "adam"])}

    def points(sampler, numbers):
        study = optuna.create_study(sampler=sampler)
        out = {}
        for n in numbers:
            params: dict[str, Any] = {}
            for p, dist in space.items():
                frozen = optuna.trial.create_trial(
                    state=optuna.trial.TrialState.RUNNING, params=dict(params),
                    distributions={k: space[k] for k in params})
                frozen.number = n
                params[p] = sampler.sample_independent(study, frozen, p, dist)
            out[n] = params
        return out

    a = points(make_sampler(name, seed=7), range(12))
    b = make_sampler(name, seed=7)
    b.reseed_rng()  # what every worker process does: a seeded keyed sampler keeps its seed
    b = points(b, reversed(range(12)))
    assert a == b
    assert len({round(p["lr"], 12) for p in a.values()}) == 12
    assert points(make_sampler(name, seed=8), range(12)) != a
    for params in a.values():
        assert 1e-3 <= params["lr"] <= 0.5 and params["width"] % 16 == 0
        assert params["opt"] in ("sgd", "adam")


def test_qmc_points_are_the_seeded_sobol_sequence() -> None:
    from scipy.stats import qmc

    sampler = make_sampler("qmc", seed=3)
    expected = qmc.Sobol(32, scramble=True, seed=3).random(8)
    for n in (5, 0, 7):
        assert list(sampler.point(n)) == list(expected[n])  # type: ignore[attr-defined]


def test_from_unit_covers_each_range_evenly() -> None:
    dist = optuna.distributions.IntDistribution(0, 3)
    assert [from_unit(dist, u) for u in (0.0, 0.24, 0.25, 0.5, 0.75, 0.999)] == [0, 0, 1, 2, 3, 3]
    log = optuna.distributions.FloatDistribution(1e-4, 1.0, log=True)
    assert abs(from_unit(log, 0.0) - 1e-4) < 1e-15 and abs(from_unit(log, 0.5) - 1e-2) < 1e-12
    assert from_unit(log, 1.0) <= 1.0
