"""NarrowingSampler: the book's "random search, then narrow around the best" as a sampler."""

from __future__ import annotations

import math
import pickle
import threading
import time
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
from optuna.trial import FrozenTrial, TrialState, create_trial
from scipy import stats

from hpo.samplers import NarrowingSampler, edge_warnings
from hpo.samplers.narrowing import (
    EDGE_WARNING_ATTR,
    MIN_WIDTH_FRACTION,
    PARTIAL_ATTR,
    RANGES_ATTR,
    STAGE_ATTR,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

LR = FloatDistribution(1e-6, 1e-2, log=True)
WD = FloatDistribution(1e-8, 1e-1, log=True)
DISTS: dict[str, BaseDistribution] = {"lr": LR, "weight_decay": WD}


def book_objective(trial: optuna.Trial) -> float:
    lr = trial.suggest_float("lr", 1e-6, 1e-2, log=True)
    wd = trial.suggest_float("weight_decay", 1e-8, 1e-1, log=True)
    return -((math.log10(lr) + 2.5) ** 2) - 0.01 * (math.log10(wd) + 6) ** 2


def make_study(sampler: NarrowingSampler, direction: str = "minimize", **kw: Any) -> optuna.Study:
    return optuna.create_study(direction=direction, sampler=sampler, **kw)


def another_worker(study: optuna.Study, **kw: Any) -> optuna.Study:
    """The same study as seen by another worker: its own sampler on the same storage (a trial
    asked here is not the calling thread's own, which the sampler would not wait for)."""
    return optuna.load_study(study_name=study.study_name, storage=study._storage,
                             sampler=NarrowingSampler(**kw))


def add(
    study: optuna.Study,
    params: dict[str, Any],
    value: float | None,
    dists: dict[str, BaseDistribution] | None = None,
    state: TrialState = TrialState.COMPLETE,
) -> None:
    dists = dists or DISTS
    study.add_trial(
        create_trial(
            state=state,
            value=value,
            params=params,
            distributions={k: dists[k] for k in params},
        )
    )


def pad(
    study: optuna.Study,
    n: int,
    params: dict[str, Any],
    dists: dict[str, BaseDistribution] | None = None,
    value: float = 5.0,
) -> None:
    """Fill the study up to ``n`` trials with poor ones."""
    while len(study.trials) < n:
        add(study, params, value, dists)


def attrs(study: optuna.Study, number: int) -> dict[str, Any]:
    trial = study.get_trials(deepcopy=False)[number]
    return study._storage.get_trial_system_attrs(trial._trial_id)


def ask_and_suggest(
    study: optuna.Study, dists: dict[str, BaseDistribution] | None = None
) -> tuple[optuna.Trial, dict[str, Any]]:
    trial = study.ask()
    for name, dist in (dists or DISTS).items():
        suggest(trial, name, dist)
    return trial, attrs(study, trial.number)


def suggest(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, log=dist.log, step=dist.step)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, log=dist.log, step=dist.step)
    assert isinstance(dist, CategoricalDistribution)
    return trial.suggest_categorical(name, dist.choices)


# ------------------------------------------------------------------------------ constructor


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"stage_trials": 0}, "stage_trials"),
        ({"stage_trials": 2.5}, "stage_trials"),
        ({"keep_top": 0}, "keep_top"),
        ({"margin": -0.1}, "margin"),
        ({"margin": math.inf}, "margin"),
        ({"edge_fraction": 0.0}, "edge_fraction"),
        ({"edge_fraction": 0.5}, "edge_fraction"),
        ({"wait_timeout": -1}, "wait_timeout"),
        ({"poll_interval": 0}, "poll_interval"),
        ({"seed": "x"}, "seed"),
        ({"shift": "yes"}, "shift"),
        ({"initial": {"lr": (1.0, 0.1)}}, "initial"),
        ({"initial": {"lr": 3}}, "initial"),
        ({"initial": [("lr", 1e-6, 1e-2)]}, "initial"),
    ],
)
def test_invalid_arguments_raise(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NarrowingSampler(**kwargs)


def test_multi_objective_is_refused() -> None:
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=NarrowingSampler())
    with pytest.raises(ValueError, match="multi-objective"):
        study.ask()


def test_pickles() -> None:
    sampler = NarrowingSampler(seed=3, stage_trials=4)
    study = make_study(sampler)
    study.optimize(book_objective, n_trials=6)
    clone = pickle.loads(pickle.dumps(sampler))
    assert clone.stage_trials == 4
    assert clone.stage_ranges(study, 1) == sampler.stage_ranges(study, 1)


# ------------------------------------------------------------------------------ stage 0


def test_stage_follows_trial_number() -> None:
    sampler = NarrowingSampler(stage_trials=3, seed=0)
    study = make_study(sampler)
    study.optimize(book_objective, n_trials=8)
    assert [attrs(study, n)[STAGE_ATTR] for n in range(8)] == [n // 3 for n in range(8)]
    assert [sampler.stage_of(n) for n in (0, 2, 3, 5, 6)] == [0, 0, 1, 1, 2]


def test_stage0_is_log_uniform_over_the_full_range() -> None:
    study = make_study(NarrowingSampler(stage_trials=10_000, seed=1))
    study.optimize(lambda t: t.suggest_float("lr", 1e-6, 1e-2, log=True), n_trials=2000)
    x = np.log10([t.params["lr"] for t in study.trials])
    assert x.min() >= -6 and x.max() <= -2
    assert stats.kstest(x, stats.uniform(loc=-6, scale=4).cdf).pvalue > 0.01
    assert attrs(study, 0)[RANGES_ATTR] == {"lr": [1e-6, 1e-2]}


def test_storage_writes_per_trial(tmp_path: Any) -> None:
    """A stage-0 trial writes two system attributes (its stage when it starts, its ranges once
    when it is told), not one more per param; a later stage writes stage and ranges at the start.
    What a reader sees once the trial is finished is unchanged."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'w.db'}")
    writes: list[tuple[int, str]] = []
    original = storage.set_trial_system_attr

    def counted(trial_id: int, key: str, value: Any) -> None:
        writes.append((trial_id, key))
        original(trial_id, key, value)

    storage.set_trial_system_attr = counted  # type: ignore[method-assign]
    sampler = NarrowingSampler(stage_trials=4, keep_top=2, seed=0)
    study = optuna.create_study(storage=storage, sampler=sampler)
    trial = study.ask()
    suggest(trial, "lr", LR)
    suggest(trial, "weight_decay", WD)
    suggest(trial, "opt", CategoricalDistribution(["sgd", "adam"]))
    assert [k for _, k in writes] == [STAGE_ATTR]  # stage 0: the ranges wait for the tell
    study.tell(trial, 1.0)
    assert [k for _, k in writes] == [STAGE_ATTR, RANGES_ATTR]
    assert attrs(study, 0)[RANGES_ATTR] == {
        "lr": [1e-6, 1e-2], "weight_decay": [1e-8, 1e-1], "opt": ["sgd", "adam"]}
    assert attrs(study, 0)[STAGE_ATTR] == 0
    study.optimize(book_objective, n_trials=2)  # stage 0 without "opt"
    assert attrs(study, 2)[RANGES_ATTR] == {"lr": [1e-6, 1e-2], "weight_decay": [1e-8, 1e-1]}
    failed = study.ask()  # a FAIL trial is told too: its ranges are recorded
    suggest(failed, "lr", LR)
    study.tell(failed, state=TrialState.FAIL)
    assert attrs(study, 3)[RANGES_ATTR] == {"lr": [1e-6, 1e-2]}
    del writes[:]
    study.optimize(book_objective, n_trials=1)  # stage 1: stage and ranges, at the start
    assert [k for _, k in writes] == [STAGE_ATTR, RANGES_ATTR]
    assert attrs(study, 4)[STAGE_ATTR] == 1 and set(attrs(study, 4)[RANGES_ATTR]) == {
        "lr", "weight_decay", "opt"}
    assert len(storage.get_all_trials(study._study_id)) == 5


def test_stage0_honours_step_int_log_and_categorical() -> None:
    def objective(trial: optuna.Trial) -> float:
        trial.suggest_float("dropout", 0.0, 0.5, step=0.1)
        trial.suggest_int("units", 16, 256, step=16)
        trial.suggest_int("batch", 8, 512, log=True)
        trial.suggest_float("x", -1.0, 1.0)
        trial.suggest_categorical("opt", ["sgd", "momentum", "adagrad", "adam"])
        return 0.0

    study = make_study(NarrowingSampler(stage_trials=1000, seed=2))
    study.optimize(objective, n_trials=400)
    p = [t.params for t in study.trials]
    assert {round(q["dropout"], 9) for q in p} == {0.0, 0.1, 0.2, 0.3, 0.4, 0.5}
    assert {q["units"] for q in p} <= set(range(16, 257, 16)) and len({q["units"] for q in p}) > 12
    batch = np.array([q["batch"] for q in p])
    assert batch.min() >= 8 and batch.max() <= 512
    assert np.median(batch) < 128  # log-uniform: median near sqrt(8 * 512) = 64
    assert all(-1.0 <= q["x"] <= 1.0 for q in p)
    assert {q["opt"] for q in p} == {"sgd", "momentum", "adagrad", "adam"}


def test_draws_depend_on_seed_number_and_name_not_on_ask_order() -> None:
    def run(order: list[str], seed: int) -> list[dict[str, Any]]:
        study = make_study(NarrowingSampler(stage_trials=100, seed=seed))
        study.optimize(
            lambda t: sum(math.log10(t.suggest_float(n, 1e-6, 1e-2, log=True)) for n in order),
            n_trials=5,
        )
        return [t.params for t in study.trials]

    assert run(["a", "b"], seed=7) == run(["b", "a"], seed=7)
    assert run(["a", "b"], seed=7) != run(["a", "b"], seed=8)


# ------------------------------------------------------------------------------ narrowing


STAGE0 = [  # (lr, weight_decay, value) -- minimised
    (1e-4, 1e-5, 0.10),
    (3e-3, 1e-7, 0.20),
    (1e-3, 1e-2, 0.30),
    (1e-6, 1e-8, 0.90),
    (5e-3, 1e-3, 0.80),
    (2e-5, 1e-4, 0.70),
]


def stage0_study(sampler: NarrowingSampler, direction: str = "minimize") -> optuna.Study:
    study = make_study(sampler, direction)
    for lr, wd, value in STAGE0:
        add(study, {"lr": lr, "weight_decay": wd}, value)
    return study


def test_stage1_ranges_are_the_log_hull_of_the_top_trials() -> None:
    study = stage0_study(NarrowingSampler(stage_trials=6, keep_top=3, seed=0))
    trial, a = ask_and_suggest(study)
    assert a[STAGE_ATTR] == 1
    assert a[RANGES_ATTR]["lr"] == pytest.approx([1e-4, 3e-3])
    assert a[RANGES_ATTR]["weight_decay"] == pytest.approx([1e-7, 1e-2])
    assert PARTIAL_ATTR not in a and EDGE_WARNING_ATTR not in a
    assert 1e-4 <= trial.params["lr"] <= 3e-3
    assert 1e-7 <= trial.params["weight_decay"] <= 1e-2


def test_maximize_takes_the_largest_values() -> None:
    study = stage0_study(NarrowingSampler(stage_trials=6, keep_top=2, seed=0), "maximize")
    _, a = ask_and_suggest(study)
    assert a[RANGES_ATTR]["lr"] == pytest.approx([1e-6, 5e-3])  # values 0.9 and 0.8


def test_margin_widens_in_log_space_and_is_clipped() -> None:
    study = stage0_study(NarrowingSampler(stage_trials=6, keep_top=3, margin=0.5, seed=0))
    _, a = ask_and_suggest(study)
    lo, hi = math.log10(1e-4), math.log10(3e-3)
    span = hi - lo
    assert a[RANGES_ATTR]["lr"][0] == pytest.approx(10 ** (lo - 0.5 * span))
    assert a[RANGES_ATTR]["lr"][1] == pytest.approx(1e-2)  # 10**(hi + span/2) > 1e-2: clipped
    # weight decay: hull [1e-7, 1e-2], span 5 decades -> [10**-9.5, 10**0.5], clipped to WD
    assert a[RANGES_ATTR]["weight_decay"] == pytest.approx([1e-8, 1e-1])


def test_ties_go_to_the_lower_trial_number() -> None:
    study = make_study(NarrowingSampler(stage_trials=3, keep_top=1, seed=0))
    add(study, {"lr": 1e-5, "weight_decay": 1e-5}, 0.5)
    add(study, {"lr": 1e-3, "weight_decay": 1e-5}, 0.5)
    add(study, {"lr": 1e-4, "weight_decay": 1e-5}, 0.9)
    _, a = ask_and_suggest(study)
    lo, hi = a[RANGES_ATTR]["lr"]
    assert lo <= 1e-5 <= hi and hi < 1e-4


def test_pruned_and_failed_trials_do_not_span_the_range() -> None:
    study = make_study(NarrowingSampler(stage_trials=6, keep_top=5, seed=0))
    add(study, {"lr": 1e-4, "weight_decay": 1e-5}, 0.5)
    add(study, {"lr": 2e-4, "weight_decay": 1e-5}, 0.6)
    add(study, {"lr": 1e-6, "weight_decay": 1e-5}, None, state=TrialState.PRUNED)
    add(study, {"lr": 1e-2, "weight_decay": 1e-5}, None, state=TrialState.FAIL)
    add(study, {"lr": 4e-4, "weight_decay": 1e-5}, 0.7)
    add(study, {"lr": 9e-3, "weight_decay": 1e-5}, None, state=TrialState.PRUNED)
    _, a = ask_and_suggest(study)
    assert a[RANGES_ATTR]["lr"] == pytest.approx([1e-4, 4e-4])


def test_a_stage_without_complete_trials_keeps_the_previous_ranges() -> None:
    study = make_study(NarrowingSampler(stage_trials=2, keep_top=2, seed=0))
    add(study, {"lr": 1e-4, "weight_decay": 1e-5}, 0.5)
    add(study, {"lr": 2e-4, "weight_decay": 1e-4}, 0.6)
    add(study, {"lr": 1e-6, "weight_decay": 1e-5}, None, state=TrialState.PRUNED)
    add(study, {"lr": 1e-3, "weight_decay": 1e-5}, None, state=TrialState.FAIL)
    _, a = ask_and_suggest(study)
    assert a[STAGE_ATTR] == 2
    assert a[RANGES_ATTR]["lr"] == pytest.approx([1e-4, 2e-4])


def test_degenerate_range_gets_the_minimum_width() -> None:
    study = stage0_study(NarrowingSampler(stage_trials=6, keep_top=1, seed=0))
    _, a = ask_and_suggest(study)
    lo, hi = np.log10(a[RANGES_ATTR]["lr"])
    assert hi - lo == pytest.approx(MIN_WIDTH_FRACTION * 4)  # 1 % of 4 decades
    assert (lo + hi) / 2 == pytest.approx(-4)
    # At the edge of the previous range: clipped, not shifted.
    study = make_study(NarrowingSampler(stage_trials=1, keep_top=1, seed=0))
    add(study, {"lr": 1e-2, "weight_decay": 1e-5}, 0.0)
    _, a = ask_and_suggest(study)
    lo, hi = np.log10(a[RANGES_ATTR]["lr"])
    assert hi == pytest.approx(-2) and hi - lo == pytest.approx(MIN_WIDTH_FRACTION * 2)


def test_ranges_never_grow_even_with_a_large_margin() -> None:
    sampler = NarrowingSampler(stage_trials=10, keep_top=3, margin=10.0, seed=4)
    study = make_study(sampler, "maximize")
    study.optimize(book_objective, n_trials=60)
    previous = {"lr": [1e-6, 1e-2], "weight_decay": [1e-8, 1e-1]}
    for stage in range(6):
        ranges = attrs(study, stage * 10)[RANGES_ATTR]
        for name, (lo, hi) in ranges.items():
            assert previous[name][0] <= lo <= hi <= previous[name][1]
        for t in study.trials[stage * 10 : stage * 10 + 10]:
            for name, value in t.params.items():
                assert ranges[name][0] <= value <= ranges[name][1]
        previous = ranges


def test_int_ranges_are_rounded_outward_on_the_step_grid() -> None:
    dists: dict[str, BaseDistribution] = {
        "units": IntDistribution(16, 256, step=16),
        "batch": IntDistribution(8, 512, log=True),
        "dropout": FloatDistribution(0.0, 0.5, step=0.1),
    }
    study = make_study(NarrowingSampler(stage_trials=4, keep_top=3, margin=0.1, seed=0))
    for units, batch, dropout, value in [
        (48, 32, 0.1, 0.1),
        (80, 64, 0.2, 0.2),
        (112, 40, 0.1, 0.3),
        (256, 512, 0.5, 0.9),
    ]:
        add(study, {"units": units, "batch": batch, "dropout": dropout}, value, dists)
    trial, a = ask_and_suggest(study, dists)
    # units: hull [48, 112] + 10 % of 64 each side = [41.6, 118.4] -> grid of 16 from 16
    assert a[RANGES_ATTR]["units"] == [32, 128]
    # batch, log10 space: [1.505, 1.806] + 0.0301 each side -> [29.9, 68.6] -> [29, 69]
    assert a[RANGES_ATTR]["batch"] == [29, 69]
    # dropout: [0.1, 0.2] + 0.01 each side -> outward on the 0.1 grid
    assert a[RANGES_ATTR]["dropout"] == pytest.approx([0.0, 0.3])
    assert isinstance(trial.params["units"], int) and trial.params["units"] % 16 == 0
    assert 32 <= trial.params["units"] <= 128 and 29 <= trial.params["batch"] <= 69


def test_categorical_keeps_the_best_choices_in_original_order() -> None:
    opt = CategoricalDistribution(["sgd", "momentum", "adagrad", "adam"])
    lr = LR
    dists: dict[str, BaseDistribution] = {"opt": opt, "lr": lr}
    study = make_study(NarrowingSampler(stage_trials=50, keep_top=2, seed=0))
    add(study, {"opt": "adam", "lr": 1e-3}, 0.1, dists)
    add(study, {"opt": "sgd", "lr": 1e-2}, 0.2, dists)
    add(study, {"opt": "momentum", "lr": 1e-4}, 0.5, dists)
    pad(study, 50, {"opt": "adagrad", "lr": 1e-4}, dists)
    seen = set()
    for _ in range(40):
        trial, a = ask_and_suggest(study, dists)
        seen.add(trial.params["opt"])
        study.tell(trial, 1.0)
    assert a[STAGE_ATTR] == 1 and a[RANGES_ATTR]["opt"] == ["sgd", "adam"]
    assert seen == {"sgd", "adam"}


def test_conditional_param_not_in_the_best_keeps_its_previous_range() -> None:
    opt = CategoricalDistribution(["sgd", "adam"])
    mom = FloatDistribution(0.5, 0.99)
    dists: dict[str, BaseDistribution] = {"opt": opt, "lr": LR, "momentum": mom}
    study = make_study(NarrowingSampler(stage_trials=4, keep_top=2, seed=0))
    add(study, {"opt": "adam", "lr": 1e-3}, 0.1, dists)
    add(study, {"opt": "adam", "lr": 2e-3}, 0.2, dists)
    add(study, {"opt": "sgd", "lr": 1e-4, "momentum": 0.9}, 0.5, dists)
    add(study, {"opt": "sgd", "lr": 1e-4, "momentum": 0.6}, 0.6, dists)
    trial = study.ask()
    trial.suggest_float("momentum", 0.5, 0.99)  # asked although the best never had it
    a = attrs(study, trial.number)
    assert a[RANGES_ATTR]["momentum"] == [0.5, 0.99]
    assert a[RANGES_ATTR]["opt"] == ["adam"]
    assert a[RANGES_ATTR]["lr"] == pytest.approx([1e-3, 2e-3])


def test_a_param_new_in_a_later_stage_uses_its_full_distribution() -> None:
    study = stage0_study(NarrowingSampler(stage_trials=6, keep_top=3, seed=0))
    trial = study.ask()
    value = trial.suggest_float("momentum", 0.5, 0.99)
    assert 0.5 <= value <= 0.99
    assert attrs(study, trial.number)[RANGES_ATTR]["momentum"] == [0.5, 0.99]


def test_objective_asking_a_narrower_distribution_is_respected() -> None:
    study = stage0_study(NarrowingSampler(stage_trials=6, keep_top=3, seed=0))
    trial = study.ask()  # stage-1 range of lr: [1e-4, 3e-3]
    value = trial.suggest_float("lr", 1e-3, 1e-2, log=True)
    assert 1e-3 <= value <= 3e-3
    assert attrs(study, trial.number)[RANGES_ATTR]["lr"] == pytest.approx([1e-3, 3e-3])


def test_stage_ranges_helper() -> None:
    sampler = NarrowingSampler(stage_trials=6, keep_top=3, seed=0)
    study = stage0_study(sampler)
    assert sampler.stage_ranges(study, 0) == {}
    assert sampler.stage_ranges(study, 1)["lr"] == pytest.approx([1e-4, 3e-3])


# ------------------------------------------------------------------------------ edge warnings


def test_edge_warning_when_the_best_lr_sits_at_the_upper_edge() -> None:
    study = make_study(NarrowingSampler(stage_trials=3, keep_top=2, seed=0), "maximize")
    add(study, {"lr": 0.0095, "weight_decay": 1e-5}, 0.93)
    add(study, {"lr": 1e-4, "weight_decay": 1e-5}, 0.80)
    add(study, {"lr": 1e-6, "weight_decay": 1e-5}, 0.10)
    _, a = ask_and_suggest(study)
    assert a[EDGE_WARNING_ATTR] == (
        "lr=0.0095 sits at the upper edge of its original range [1e-06, 0.01]"
    )


def test_no_edge_warning_when_the_best_is_in_the_middle() -> None:
    study = make_study(NarrowingSampler(stage_trials=3, keep_top=2, seed=0), "maximize")
    add(study, {"lr": 1e-4, "weight_decay": 1e-5}, 0.93)
    add(study, {"lr": 0.0095, "weight_decay": 1e-5}, 0.80)
    add(study, {"lr": 1e-6, "weight_decay": 1e-5}, 0.10)
    _, a = ask_and_suggest(study)
    assert EDGE_WARNING_ATTR not in a


def test_edge_warnings_helper() -> None:
    study = optuna.create_study(direction="maximize")
    add(study, {"lr": 0.0095, "weight_decay": 2e-8}, 0.93)
    add(study, {"lr": 1e-4, "weight_decay": 1e-5}, 0.80)
    expected = [
        "lr=0.0095 sits at the upper edge of its original range [1e-06, 0.01]",
        "weight_decay=2e-08 sits at the lower edge of its original range [1e-08, 0.1]",
    ]
    assert edge_warnings(study) == expected
    assert edge_warnings(study.trials, direction="maximize") == expected
    assert edge_warnings(study.trials[1]) == []
    assert edge_warnings(study.trials, direction="minimize") == []
    wider = {"lr": FloatDistribution(1e-6, 1.0, log=True)}
    assert edge_warnings(study, wider) == [expected[1]]
    assert edge_warnings(optuna.create_study()) == []
    with pytest.raises(ValueError, match="direction"):
        edge_warnings(study.trials)


# ------------------------------------------------------------------------------ workers


def _params_by_number(study: optuna.Study) -> dict[int, dict[str, Any]]:
    return {t.number: t.params for t in study.trials if t.state == TrialState.COMPLETE}


def _one_worker(n_trials: int, **kw: Any) -> dict[int, dict[str, Any]]:
    study = make_study(NarrowingSampler(**kw), "maximize")
    study.optimize(book_objective, n_trials=n_trials)
    return _params_by_number(study)


def test_two_interleaved_workers_on_sqlite_match_one_worker(tmp_path: Any) -> None:
    kw = {"stage_trials": 6, "keep_top": 2, "seed": 11}
    url = f"sqlite:///{tmp_path / 'study.db'}"
    a = optuna.create_study(
        study_name="s", storage=url, direction="maximize", sampler=NarrowingSampler(**kw)
    )
    b = optuna.load_study(study_name="s", storage=url, sampler=NarrowingSampler(**kw))
    for _ in range(9):  # pairs never straddle a stage boundary: no waiting
        ta, tb = a.ask(), b.ask()
        b.tell(tb, book_objective(tb))
        a.tell(ta, book_objective(ta))
    assert len(a.trials) == 18
    assert _params_by_number(a) == _one_worker(18, **kw)
    assert attrs(a, 12)[RANGES_ATTR] == attrs(b, 13)[RANGES_ATTR]


def test_two_threaded_workers_with_their_own_samplers_match_one_worker() -> None:
    kw = {"stage_trials": 8, "keep_top": 3, "seed": 5, "poll_interval": 0.002}
    storage = optuna.storages.InMemoryStorage()
    optuna.create_study(study_name="s", storage=storage, direction="maximize")

    def worker() -> None:
        study = optuna.load_study(study_name="s", storage=storage, sampler=NarrowingSampler(**kw))
        study.optimize(book_objective, n_trials=16)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    study = optuna.load_study(study_name="s", storage=storage)
    assert len(study.trials) == 32
    assert not any(PARTIAL_ATTR in t.system_attrs for t in study.trials)
    assert _params_by_number(study) == _one_worker(32, **kw)


def test_a_restarted_worker_carries_on(tmp_path: Any) -> None:
    kw = {"stage_trials": 5, "keep_top": 2, "seed": 3}
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(
        study_name="s", storage=url, direction="maximize", sampler=NarrowingSampler(**kw)
    )
    study.optimize(book_objective, n_trials=7)
    study = optuna.load_study(study_name="s", storage=url, sampler=NarrowingSampler(**kw))
    study.optimize(book_objective, n_trials=8)
    assert _params_by_number(study) == _one_worker(15, **kw)
    assert attrs(study, 14)[STAGE_ATTR] == 2


# ------------------------------------------------------------------------------ waiting


class Clock:
    """The sampler's clock, watched: its time moves only when it sleeps (each sleep also
    really sleeps, so other threads move on), so what is checked is whether and how long the
    sampler chose to wait, never the machine's speed."""

    def __init__(self) -> None:
        self.slept: list[float] = []
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        time.sleep(seconds)

    def take(self) -> float:
        """Seconds slept since the last call."""
        total, self.slept = sum(self.slept), []
        return total


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    import hpo.samplers.narrowing as module

    watched = Clock()
    monkeypatch.setattr(module, "time", watched)
    return watched


def test_waits_for_a_running_trial_then_narrows_partially(clock: Clock, tmp_path: Any) -> None:
    sampler = NarrowingSampler(
        stage_trials=2, keep_top=1, seed=0, wait_timeout=0.2, poll_interval=0.01
    )
    # on a database: the other worker could be another process (an in-memory study with no
    # other thread could have nobody else finishing it, and the sampler would not wait)
    study = make_study(sampler, storage=f"sqlite:///{tmp_path / 'w.db'}")
    t0 = study.ask()
    t0.suggest_float("lr", 1e-6, 1e-2, log=True)
    study.tell(t0, 0.5)
    other = another_worker(study, stage_trials=2, keep_top=1, seed=0)
    running = other.ask()  # trial 1, stage 0, another worker's, left RUNNING
    running.suggest_float("lr", 1e-6, 1e-2, log=True)

    t2 = study.ask()  # stage 1
    waited = clock.take()
    assert waited >= 0.2 - 1e-9
    a = attrs(study, t2.number)
    assert a[PARTIAL_ATTR] is True and a[STAGE_ATTR] == 1
    lo, hi = np.log10(a[RANGES_ATTR]["lr"])
    assert lo <= math.log10(t0.params["lr"]) <= hi and hi - lo < 0.1
    study.tell(t2, 1.0)

    t3 = study.ask()  # same stage, trial 1 still running: this instance does not wait again
    assert clock.take() == 0
    assert attrs(study, t3.number)[PARTIAL_ATTR] is True
    study.tell(t3, 1.0)
    other.tell(running, 0.1)  # the stage finishes: ranges are final from now on

    t4 = study.ask()  # stage 2, stage 1 finished: no wait, not partial
    assert clock.take() == 0
    a = attrs(study, t4.number)
    assert PARTIAL_ATTR not in a and a[STAGE_ATTR] == 2
    # Trial 1 was the best of stage 0: stage 1's final ranges (and so stage 2's) surround it.
    lo, hi = a[RANGES_ATTR]["lr"]
    assert lo <= running.params["lr"] <= hi


def test_wait_ends_when_the_other_worker_finishes(clock: Clock) -> None:
    sampler = NarrowingSampler(
        stage_trials=2, keep_top=1, seed=0, wait_timeout=30, poll_interval=0.01
    )
    study = make_study(sampler)
    study.enqueue_trial({"lr": 1e-3})
    study.enqueue_trial({"lr": 1e-4})
    t0 = study.ask()
    study.tell(t0, t0.suggest_float("lr", 1e-6, 1e-2, log=True))
    worker = another_worker(study, stage_trials=2, keep_top=1, seed=0)
    running = worker.ask()
    running.suggest_float("lr", 1e-6, 1e-2, log=True)

    def finish() -> None:
        time.sleep(0.3)
        worker.tell(running, 1e-4)

    other = threading.Thread(target=finish)
    other.start()
    trial = study.ask()
    waited = clock.take()
    other.join()
    assert 0 < waited < 30  # it waited, and not until its 30 s timeout
    a = attrs(study, trial.number)
    assert PARTIAL_ATTR not in a
    lo, hi = a[RANGES_ATTR]["lr"]
    assert lo <= 1e-4 <= hi and hi < 1e-3  # from the trial that finished while we waited


def test_no_wait_once_the_previous_stage_has_finished(clock: Clock) -> None:
    sampler = NarrowingSampler(stage_trials=3, keep_top=1, seed=0, wait_timeout=60)
    study = make_study(sampler)
    study.optimize(book_objective, n_trials=3)
    study.optimize(book_objective, n_trials=3)
    assert clock.take() == 0
    assert all(PARTIAL_ATTR not in attrs(study, n) for n in range(6))


# ------------------------------------------------------------------------------ shift mode
# Edge-aware mode (shift=True, initial=...) is tested in tests/test_samplers_shift.py.


# ------------------------------------------------------------------------------ end to end


def test_end_to_end_ranges_shrink_stage_by_stage() -> None:
    sampler = NarrowingSampler(stage_trials=30, keep_top=5, seed=0)
    study = make_study(sampler, "maximize")
    study.optimize(book_objective, n_trials=90)

    def width(stage: int) -> float:
        lo, hi = attrs(study, stage * 30)[RANGES_ATTR]["lr"]
        return math.log10(hi) - math.log10(lo)

    assert 4.0 == pytest.approx(width(0)) and width(0) > width(1) > width(2)
    lo, hi = attrs(study, 60)[RANGES_ATTR]["lr"]
    assert lo <= study.best_params["lr"] <= hi
    assert [attrs(study, n)[STAGE_ATTR] for n in (0, 29, 30, 59, 60, 89)] == [0, 0, 1, 1, 2, 2]


def test_frozen_trials_recorded_by_the_sampler_stay_valid() -> None:
    study = make_study(NarrowingSampler(stage_trials=5, keep_top=2, seed=0), "maximize")
    study.optimize(book_objective, n_trials=15)
    copy = optuna.create_study(direction="maximize")
    copy.add_trials(study.trials)  # every value lies inside its distribution
    assert all(isinstance(t, FrozenTrial) for t in copy.trials)


def test_a_trial_that_never_finishes_only_makes_ranges_provisional() -> None:
    sampler = NarrowingSampler(stage_trials=2, keep_top=1, seed=0, wait_timeout=0)
    study = make_study(sampler)
    study.enqueue_trial({"lr": 1e-3})
    study.enqueue_trial({"lr": 1e-5})
    first = study.ask()
    study.tell(first, first.suggest_float("lr", 1e-6, 1e-2, log=True))
    stuck = study.ask()  # trial 1: a worker that died holding it
    stuck.suggest_float("lr", 1e-6, 1e-2, log=True)
    for _ in range(3):  # trials 2, 3 (stage 1) and 4 (stage 2)
        trial = study.ask()
        trial.suggest_float("lr", 1e-6, 1e-2, log=True)
        study.tell(trial, 1.0)
    assert all(attrs(study, n)[PARTIAL_ATTR] is True for n in (2, 3, 4))
    lo, hi = np.log10(attrs(study, 4)[RANGES_ATTR]["lr"])  # inside stage 1's, around 1e-3
    assert -3.0201 <= lo <= hi <= -2.9799
    study.tell(stuck, 1e-5)  # it finishes after all, as the best of stage 0
    trial = study.ask()  # trial 5, stage 2: final ranges, around the late trial
    trial.suggest_float("lr", 1e-6, 1e-2, log=True)
    a = attrs(study, 5)
    assert PARTIAL_ATTR not in a
    assert a[RANGES_ATTR]["lr"][0] <= 1e-5 <= a[RANGES_ATTR]["lr"][1]


def test_n_jobs_threads_sharing_one_seeded_sampler_match_one_worker() -> None:
    kw = {"stage_trials": 6, "keep_top": 2, "seed": 9, "poll_interval": 0.002}
    study = make_study(NarrowingSampler(**kw), "maximize")
    study.optimize(book_objective, n_trials=18, n_jobs=2)  # calls reseed_rng in each thread
    assert _params_by_number(study) == _one_worker(18, **kw)


def test_reseed_rng_keeps_a_given_seed_and_changes_a_random_one() -> None:
    seeded, unseeded = NarrowingSampler(seed=1), NarrowingSampler()
    before = unseeded._seed
    seeded.reseed_rng()
    unseeded.reseed_rng()
    assert seeded._seed == 1 and unseeded._seed != before


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_waiting_fails_stale_trials_and_keeps_its_own_heartbeat(tmp_path: Any,
                                                                clock: Clock) -> None:
    storage = optuna.storages.RDBStorage(
        f"sqlite:///{tmp_path / 'hb.db'}", heartbeat_interval=1, grace_period=2
    )
    sampler = NarrowingSampler(
        stage_trials=2, keep_top=1, seed=0, wait_timeout=30, poll_interval=0.05
    )
    study = make_study(sampler, storage=storage)
    done = study.ask()
    study.tell(done, done.suggest_float("lr", 1e-6, 1e-2, log=True))
    dead = another_worker(study, stage_trials=2, keep_top=1, seed=0).ask()  # one heartbeat,
    # then its worker dies
    storage.record_heartbeat(dead._trial_id)
    beats: list[int] = []
    record = storage.record_heartbeat
    storage.record_heartbeat = lambda trial_id: (beats.append(trial_id), record(trial_id))[1]

    trial = study.ask()  # waits until the dead worker's trial is failed as stale
    waited = clock.take()
    assert 1.0 < waited < 30  # about the grace period, not the 30 s timeout
    assert study.trials[dead.number].state == TrialState.FAIL
    assert trial._trial_id in beats
    assert PARTIAL_ATTR not in attrs(study, trial.number)


def test_hyperband_bracket_studies_see_every_trial(clock: Clock) -> None:
    # Optuna hands samplers a per-bracket view of the study under HyperbandPruner; stages are
    # made of all trials, so the wait must not look at one bracket only.
    sampler = NarrowingSampler(
        stage_trials=6, keep_top=2, seed=0, wait_timeout=20, poll_interval=0.01
    )
    study = make_study(
        sampler,
        study_name="hyperband",
        pruner=optuna.pruners.HyperbandPruner(min_resource=1, max_resource=9),
    )
    first = study.ask()
    first.report(1.0, 0)
    first.should_prune()  # sets the pruner's brackets up
    first.suggest_float("lr", 1e-6, 1e-2, log=True)
    study.tell(first, 1.0)
    for lr in (1e-3, 2e-3, 1e-6, 3e-6):
        add(study, {"lr": lr}, lr)
    worker = another_worker(study, stage_trials=6, keep_top=2, seed=0)
    running = worker.ask()
    running.suggest_float("lr", 1e-6, 1e-2, log=True)
    other = threading.Thread(target=lambda: (time.sleep(0.3), worker.tell(running, 1.0)))
    other.start()
    trial = study.ask()
    waited = clock.take()
    other.join()
    brackets = {study.pruner._get_bracket_id(study, t) for t in study.trials[:6]}  # type: ignore
    assert len(brackets) > 1
    assert waited < 20  # it did not wait for its 20 s timeout
    assert PARTIAL_ATTR not in attrs(study, trial.number)
    assert attrs(study, trial.number)[RANGES_ATTR]["lr"] == pytest.approx([1e-6, 3e-6])


def test_dynamic_ranges_start_from_the_hull_of_the_asked_distributions() -> None:
    study = make_study(NarrowingSampler(stage_trials=3, keep_top=2, seed=0))
    add(study, {"lr": 1e-2}, 1.0, {"lr": FloatDistribution(1e-2, 1e-2, log=True)})
    add(study, {"lr": 1e-6}, 0.1, {"lr": FloatDistribution(1e-6, 1e-3, log=True)})
    add(study, {"lr": 3e-6}, 0.2, {"lr": FloatDistribution(1e-6, 1e-2, log=True)})
    _, a = ask_and_suggest(study)
    assert a[RANGES_ATTR]["lr"] == pytest.approx([1e-6, 3e-6])
