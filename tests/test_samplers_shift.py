"""Edge-aware narrowing: ranges move towards a crowded edge, never outside the distribution.

The objective asks Optuna for the hard bounds (the distribution); ``initial`` is where stage 0
starts. The spec side: ``[sampler.bounds]``, ``Spec.suggest_space`` and the runner's ``initial``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState, create_trial
from scipy import stats

from hpo.samplers import NarrowingSampler
from hpo.samplers.narrowing import EDGE_WARNING_ATTR, RANGES_ATTR, SHIFTED_ATTR, STAGE_ATTR
from hpo.spec import SpecError, from_dict, load_spec
from tests.conftest import STUDIES, hpo

optuna.logging.set_verbosity(optuna.logging.WARNING)

# The distributions the objective asks for: the hard bounds.
LR = FloatDistribution(1e-6, 1.0, log=True)
WD = FloatDistribution(1e-12, 1e-4, log=True)
DISTS: dict[str, BaseDistribution] = {"lr": LR, "weight_decay": WD}
# Where the search starts: the book's ranges.
INITIAL = {"lr": (1e-6, 1e-2), "weight_decay": (1e-8, 1e-4)}


def suggest(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, log=dist.log, step=dist.step)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, log=dist.log, step=dist.step)
    assert isinstance(dist, CategoricalDistribution)
    return trial.suggest_categorical(name, dist.choices)


def add(study: optuna.Study, params: dict[str, Any], value: float,
        dists: dict[str, BaseDistribution]) -> None:
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=value, params=params,
                                 distributions={k: dists[k] for k in params}))


def attrs(study: optuna.Study, number: int) -> dict[str, Any]:
    trial = study.get_trials(deepcopy=False)[number]
    return study._storage.get_trial_system_attrs(trial._trial_id)


def stage1(best: dict[str, float], dists: dict[str, BaseDistribution] | None = None,
           initial: dict[str, tuple[float, float]] | None = None) -> dict[str, Any]:
    """Stage 0 (30 trials, minimised): ``best``, a runner-up inside, poor padding; then all of
    stage 1. Returns stage 1's attributes and draws."""
    dists = dists or DISTS
    sampler = NarrowingSampler(stage_trials=30, keep_top=2, seed=0, shift=True,
                               initial=INITIAL if initial is None else initial)
    study = optuna.create_study(sampler=sampler)
    add(study, best, 0.1, dists)
    add(study, {"lr": 1e-4, "weight_decay": 1e-6}, 0.2, dists)
    while len(study.trials) < 30:
        add(study, {"lr": 1e-5, "weight_decay": 1e-5}, 5.0, dists)
    draws = []
    for _ in range(30):
        trial = study.ask()
        for name, dist in dists.items():
            suggest(trial, name, dist)
        draws.append(trial.params)
        study.tell(trial, 1.0)
    assert_inside_distributions(study)
    return {"attrs": attrs(study, 30), "draws": draws}


def assert_inside_distributions(study: optuna.Study) -> None:
    for t in study.trials:
        for name, value in t.params.items():
            dist = t.distributions[name]
            assert dist._contains(dist.to_internal_repr(value)), (t.number, name, value, dist)


def log_range(a: dict[str, Any], name: str) -> tuple[float, float]:
    lo, hi = a[RANGES_ATTR][name]
    return math.log10(lo), math.log10(hi)


# ------------------------------------------------------------------------------ the shift rule


def test_best_crowding_the_upper_edge_moves_the_range_up() -> None:
    out = stage1({"lr": 9e-3, "weight_decay": 1e-6})
    a = out["attrs"]
    assert a[STAGE_ATTR] == 1 and a[SHIFTED_ATTR] == ["lr"]
    centre = math.log10(9e-3)
    assert log_range(a, "lr") == pytest.approx((centre - 2, centre + 2))  # stage 0's width
    assert max(d["lr"] for d in out["draws"]) > 1e-2  # beyond the initial range
    assert a[EDGE_WARNING_ATTR] == (
        "lr=0.009 sits at the upper edge of its original range [1e-06, 0.01]"
    )


def test_a_shift_never_goes_beyond_the_distribution() -> None:
    dists = {"lr": FloatDistribution(1e-6, 0.05, log=True), "weight_decay": WD}
    out = stage1({"lr": 9.9e-3, "weight_decay": 1e-6}, dists)
    lo, hi = out["attrs"][RANGES_ATTR]["lr"]
    assert hi == pytest.approx(0.05) and math.log10(lo) == pytest.approx(math.log10(9.9e-3) - 2)
    assert all(d["lr"] <= 0.05 for d in out["draws"])


def test_best_inside_narrows_as_before() -> None:
    a = stage1({"lr": 1e-3, "weight_decay": 1e-6})["attrs"]
    assert SHIFTED_ATTR not in a and EDGE_WARNING_ATTR not in a
    assert a[RANGES_ATTR]["lr"] == pytest.approx([1e-4, 1e-3])
    assert a[RANGES_ATTR]["weight_decay"] == pytest.approx([1e-6, 1e-6], rel=0.2)


def test_two_params_at_different_edges_move_each_its_own_way() -> None:
    out = stage1({"lr": 9e-3, "weight_decay": 1.5e-8})
    a = out["attrs"]
    assert a[SHIFTED_ATTR] == ["lr", "weight_decay"]
    assert log_range(a, "lr")[1] > -2  # up
    centre = math.log10(1.5e-8)
    assert log_range(a, "weight_decay") == pytest.approx((centre - 2, centre + 2))  # down
    assert min(d["weight_decay"] for d in out["draws"]) < 1e-8
    assert max(d["lr"] for d in out["draws"]) > 1e-2
    # One at an edge, the other inside: only the first moves.
    a = stage1({"lr": 9e-3, "weight_decay": 1e-6})["attrs"]
    assert a[SHIFTED_ATTR] == ["lr"]
    assert a[RANGES_ATTR]["weight_decay"][1] <= 1e-4


def test_an_edge_at_the_distributions_limit_does_not_move() -> None:
    # Without initial the starting range is the distribution: nothing to move into.
    book = {"lr": FloatDistribution(1e-6, 1e-2, log=True), "weight_decay": WD}
    a = stage1({"lr": 9e-3, "weight_decay": 1e-6}, book, initial={})["attrs"]
    assert SHIFTED_ATTR not in a
    assert a[RANGES_ATTR]["lr"] == pytest.approx([1e-4, 9e-3])
    # Inside the distribution, at the edge of a narrowed stage range: moves, within it.
    sampler = NarrowingSampler(stage_trials=2, keep_top=2, seed=0, shift=True)
    study = optuna.create_study(sampler=sampler)
    for lr, value in [(1e-4, 0.1), (1e-3, 0.2), (9.5e-4, 0.1), (5e-4, 0.2)]:
        add(study, {"lr": lr}, value, book)  # stage 1 is [1e-4, 1e-3]; its best crowds 1e-3
    lo, hi = np.log10(sampler.stage_ranges(study, 2)["lr"])
    assert (lo, hi) == pytest.approx((math.log10(9.5e-4) - 0.5, math.log10(9.5e-4) + 0.5))


def test_int_and_stepped_params_shift_on_their_grid_inside_the_distribution() -> None:
    dists: dict[str, BaseDistribution] = {
        "units": IntDistribution(16, 512, step=16),
        "dropout": FloatDistribution(0.0, 0.9, step=0.1),
    }
    sampler = NarrowingSampler(stage_trials=20, keep_top=1, seed=0, shift=True,
                               initial={"units": (16, 128), "dropout": (0.0, 0.5)})
    study = optuna.create_study(sampler=sampler)
    add(study, {"units": 128, "dropout": 0.5}, 0.1, dists)
    while len(study.trials) < 20:
        add(study, {"units": 32, "dropout": 0.1}, 0.9, dists)
    ranges = sampler.stage_ranges(study, 1)
    # Recentred on the best with the width of [16, 128], rounded outward to the grid of 16:
    # [128 - 56, 128 + 56] -> [64, 192]. Dropout: [0.5 - 0.25, 0.5 + 0.25] -> [0.2, 0.8].
    assert ranges["units"] == [64, 192]
    assert ranges["dropout"] == pytest.approx([0.2, 0.8])
    for _ in range(20):  # all of stage 1
        trial = study.ask()
        units, dropout = suggest(trial, "units", dists["units"]), suggest(
            trial, "dropout", dists["dropout"])
        assert units % 16 == 0 and 64 <= units <= 192
        assert dropout * 10 == pytest.approx(round(dropout * 10))
        assert 0.2 - 1e-9 <= dropout <= 0.8 + 1e-9
        study.tell(trial, 1.0)
    assert_inside_distributions(study)


# ------------------------------------------------------------------------------ stage 0


def test_stage0_draws_only_from_initial() -> None:
    dists: dict[str, BaseDistribution] = {
        "lr": LR,
        "units": IntDistribution(8, 1024, log=True),
        "dropout": FloatDistribution(0.0, 0.9, step=0.1),
        "opt": CategoricalDistribution(["sgd", "adam"]),
    }
    initial = {"lr": (1e-4, 1e-2), "units": (16, 64), "dropout": (0.05, 0.5), "opt": (0, 1)}
    sampler = NarrowingSampler(stage_trials=10_000, seed=1, shift=True, initial=initial)
    study = optuna.create_study(sampler=sampler)
    for _ in range(600):
        trial = study.ask()
        for name, dist in dists.items():
            suggest(trial, name, dist)
        study.tell(trial, 0.0)
    p = [t.params for t in study.trials]
    x = np.log10([q["lr"] for q in p])
    assert x.min() >= -4 and x.max() <= -2
    assert stats.kstest(x, stats.uniform(loc=-4, scale=2).cdf).pvalue > 0.01
    assert {q["units"] for q in p} <= set(range(16, 65))
    assert {round(q["dropout"], 9) for q in p} == {0.1, 0.2, 0.3, 0.4, 0.5}  # inward to the grid
    assert {q["opt"] for q in p} == {"sgd", "adam"}  # initial has no say over a categorical
    assert attrs(study, 0)[RANGES_ATTR] == {
        "lr": [1e-4, 1e-2], "units": [16, 64], "dropout": pytest.approx([0.1, 0.5]),
        "opt": ["sgd", "adam"],
    }
    assert_inside_distributions(study)


# ------------------------------------------------------------------------------ whole studies


def objective(trial: optuna.Trial) -> float:
    """Maximised at lr = 0.2 (outside the initial range) and weight decay = 1e-6."""
    lr = trial.suggest_float("lr", LR.low, LR.high, log=True)
    wd = trial.suggest_float("weight_decay", WD.low, WD.high, log=True)
    units = trial.suggest_int("units", 16, 512, step=16)
    return -((math.log10(lr) + 0.7) ** 2) - 0.1 * (math.log10(wd) + 6) ** 2 - 1e-4 * units


SHIFT_KW: dict[str, Any] = {
    "stage_trials": 15, "keep_top": 3, "seed": 5, "shift": True,
    "initial": {**INITIAL, "units": (16, 128)},
}


def test_a_shifted_study_stays_inside_its_distributions_and_copies() -> None:
    study = optuna.create_study(direction="maximize", sampler=NarrowingSampler(**SHIFT_KW))
    study.optimize(objective, n_trials=90)
    assert_inside_distributions(study)
    assert any(SHIFTED_ATTR in attrs(study, n) for n in range(15, 90, 15))
    assert study.best_params["lr"] > 1e-2  # the shift found the better region
    highs = [attrs(study, n)[RANGES_ATTR]["lr"][1] for n in range(0, 90, 15)]
    assert highs[0] == pytest.approx(1e-2) and max(highs) > 1e-2 and max(highs) <= 1.0
    storage = optuna.storages.InMemoryStorage()
    optuna.copy_study(from_study_name=study.study_name, from_storage=study._storage,
                      to_storage=storage)  # refuses a value outside its distribution
    copy = optuna.load_study(study_name=study.study_name, storage=storage)
    assert len(copy.trials) == 90
    assert [t.params for t in copy.trials] == [t.params for t in study.trials]
    again = optuna.create_study(direction="maximize")
    again.add_trials(study.trials)


def test_one_or_two_workers_draw_the_same_params(tmp_path: Path) -> None:
    kw = {**SHIFT_KW, "stage_trials": 6, "keep_top": 2}
    one = optuna.create_study(direction="maximize", sampler=NarrowingSampler(**kw))
    one.optimize(objective, n_trials=30)
    url = f"sqlite:///{tmp_path / 'two.db'}"
    a = optuna.create_study(study_name="s", storage=url, direction="maximize",
                            sampler=NarrowingSampler(**kw))
    b = optuna.load_study(study_name="s", storage=url, sampler=NarrowingSampler(**kw))
    for _ in range(15):  # pairs never straddle a stage boundary: no waiting
        ta, tb = a.ask(), b.ask()
        b.tell(tb, objective(tb))
        a.tell(ta, objective(ta))
    assert {t.number: t.params for t in a.trials} == {t.number: t.params for t in one.trials}
    assert any(SHIFTED_ATTR in attrs(a, n) for n in range(6, 30, 6))
    for n in range(0, 30, 6):
        assert attrs(a, n)[RANGES_ATTR] == attrs(one, n)[RANGES_ATTR]
        assert attrs(a, n + 1) == attrs(one, n + 1)  # b's trials: the same attributes


# ------------------------------------------------------------------------------ spec


def _raw(sampler: dict[str, Any] | None = None, **search: Any) -> dict[str, Any]:
    return {
        "name": "x",
        "search": {
            "lr": {"low": 1e-4, "high": 1e-2, "log": True},
            "dropout": {"low": 0.1, "high": 0.5, "step": 0.1},
            "hidden_width": {"type": "int", "low": 16, "high": 64},
            "optimizer": {"type": "categorical", "choices": ["sgd", "adam"]},
            **search,
        },
        "sampler": {"name": "narrowing", "shift": True, **(sampler or {})},
    }


def _bounds(**bounds: Any) -> dict[str, Any]:
    return _raw({"bounds": bounds})


@pytest.mark.parametrize(
    "raw, match",
    [
        (_raw({"name": "tpe", "bounds": {"lr": [1e-6, 1.0]}}),
         r"sampler.bounds: only the narrowing sampler takes bounds, not 'tpe'"),
        (_raw({"bounds": [1e-6, 1.0]}), r"sampler.bounds: must be a table"),
        (_raw({"shift": False, "bounds": {"lr": [1e-6, 1.0]}}), r"sampler.bounds: needs shift"),
        (_bounds(weight_decay=[0, 1]),
         r"sampler.bounds.weight_decay: not a parameter of \[search\]; searched: lr, dropout"),
        (_bounds(optimizer=["sgd", "adam"]), r"sampler.bounds.optimizer: a categorical"),
        (_bounds(lr=[1e-6]), r"sampler.bounds.lr: must be \[low, high\] of two finite numbers"),
        (_bounds(lr=["a", "b"]), r"sampler.bounds.lr: must be \[low, high\]"),
        (_bounds(lr=1.0), r"sampler.bounds.lr: must be \[low, high\]"),
        (_bounds(lr=[1.0, 1e-6]), r"sampler.bounds.lr: low must be < high"),
        (_bounds(lr=[0.0, 1.0]), r"sampler.bounds.lr: a log parameter needs low > 0, got low=0"),
        (_bounds(lr=[1e-3, 1.0]),
         r"sampler.bounds.lr: must contain the search range \[0.0001, 0.01\], got \[0.001, 1.0\]"),
        (_bounds(lr=[1e-6, 1e-3]), r"sampler.bounds.lr: must contain the search range"),
        (_bounds(hidden_width=[8.0, 128.0]), r"sampler.bounds.hidden_width: .* two integers"),
        (_bounds(hidden_width=[0, 128]), r"sampler.bounds.hidden_width: 0 is not allowed"),
        (_bounds(dropout=[0.05, 0.5]), r"sampler.bounds.dropout: must lie on the step grid"),
        (_bounds(dropout=[0.0, 1.0]), r"sampler.bounds.dropout: 1.0 is not allowed; allowed"),
    ],
)
def test_bad_bounds_are_one_line_errors_naming_file_and_key(raw: dict, match: str) -> None:
    with pytest.raises(SpecError, match=r"^studies/x.toml: " + match) as e:
        from_dict(raw, source="studies/x.toml")
    assert "\n" not in str(e.value)


def test_suggest_space_widens_search_to_the_bounds() -> None:
    spec = from_dict(_bounds(lr=[1e-6, 1], hidden_width=[8, 128], dropout=[0.0, 0.9]))
    space = {p.name: p for p in spec.suggest_space()}
    assert (space["lr"].low, space["lr"].high, space["lr"].log) == (1e-6, 1.0, True)
    assert (space["hidden_width"].low, space["hidden_width"].high) == (8, 128)
    assert isinstance(space["hidden_width"].low, int)
    assert (space["dropout"].low, space["dropout"].high, space["dropout"].step) == (0.0, 0.9, 0.1)
    assert space["optimizer"] == spec.search[3]
    assert [p.name for p in spec.suggest_space()] == [p.name for p in spec.search]
    assert spec.search[0].high == 1e-2  # [search] itself is unchanged
    assert from_dict(json.loads(spec.to_json())) == spec
    plain = from_dict(_raw())
    assert plain.suggest_space() is plain.search


def test_runner_passes_search_as_initial_and_objective_asks_for_the_bounds() -> None:
    from hpo.engine.loop import build_sampler_and_pruner as _build_sampler_and_pruner
    from hpo.objectives.book import suggest as objective_suggest

    spec = load_spec(STUDIES / "narrowing-shift.toml")
    sampler, _ = _build_sampler_and_pruner(spec)
    assert isinstance(sampler, NarrowingSampler) and sampler._shift
    assert sampler._initial == {"lr": (1e-6, 1e-2), "weight_decay": (1e-8, 1e-4)}
    study = optuna.create_study(sampler=sampler)
    trial = study.ask()
    objective_suggest(trial, spec.suggest_space())
    assert trial.distributions["lr"] == FloatDistribution(1e-6, 1.0, log=True)
    assert 1e-6 <= trial.params["lr"] <= 1e-2  # stage 0 starts in the book's range
    book, _ = _build_sampler_and_pruner(load_spec(STUDIES / "book-narrowing.toml"))
    assert isinstance(book, NarrowingSampler) and book._initial == {}


def test_shipped_shift_and_wide_specs() -> None:
    shift = load_spec(STUDIES / "narrowing-shift.toml")
    book = load_spec(STUDIES / "book-narrowing.toml")
    assert (shift.data, shift.model, shift.search) == (book.data, book.model, book.search)
    assert shift.n_trials == 300 and shift.sampler == "narrowing"
    opts = shift.sampler_options
    assert (opts["stage_trials"], opts["keep_top"], opts["shift"]) == (100, 10, True)
    assert opts["bounds"] == {"lr": [1e-6, 1.0]}
    wide = load_spec(STUDIES / "tpe-wide.toml")
    assert (wide.data, wide.model, wide.sampler, wide.n_trials) == (book.data, book.model,
                                                                     "tpe", 300)
    lr, wd = wide.search
    assert (lr.low, lr.high, lr.log) == (1e-6, 1.0, True) and wd == book.search[1]


# ------------------------------------------------------------------------------ end to end


@pytest.mark.slow  # about 7-22 s on a 2-core machine: CI's slow step
def test_hpo_run_moves_lrs_range_up_across_stages(tiny_spec, sqlite_url: str) -> None:
    # Digits, 50 epochs: validation accuracy climbs with lr up to ~0.1-0.5, so a search started
    # in [1e-4, 1e-2] finds its best at the upper edge and must move up.
    path = tiny_spec("shift", sampler="narrowing", n_trials=40, epochs=50, sampler_options=(
        "stage_trials = 10\nkeep_top = 3\nshift = true\n[sampler.bounds]\nlr = [1e-4, 1.0]"
    ))
    text = path.read_text()
    assert "low = 1e-3\nhigh = 0.5\n" in text
    path.write_text(text.replace("low = 1e-3\nhigh = 0.5\n", "low = 1e-4\nhigh = 1e-2\n"))
    r = hpo("run", str(path), "--storage", sqlite_url, "--quiet")
    assert r.returncode == 0, r.stderr
    study = optuna.load_study(study_name="shift", storage=sqlite_url)
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 40
    assert_inside_distributions(study)
    assert {t.distributions["lr"] for t in trials} == {FloatDistribution(1e-4, 1.0, log=True)}
    assert all(1e-4 <= t.params["lr"] <= 1e-2 for t in trials[:10])  # stage 0: [search]
    ranges = [t.system_attrs[RANGES_ATTR]["lr"] for t in (trials[10], trials[20])]
    assert max(high for _, high in ranges) > 1e-2
    assert any(SHIFTED_ATTR in t.system_attrs and "lr" in t.system_attrs[SHIFTED_ATTR]
               for t in trials[10:30])
