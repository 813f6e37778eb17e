"""The objective's measurement schedule: ``[model] eval_every`` skips evaluations, never
changes what is trained or the value a trial returns."""

from __future__ import annotations

from dataclasses import replace

import optuna
import pytest

from hpo.objectives.book import Objective
from hpo.spec import load_spec


def _trials(spec, n: int = 3) -> list[optuna.trial.FrozenTrial]:
    from hpo.samplers.pruners import make_pruner

    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.RandomSampler(seed=3),
        pruner=make_pruner(spec.pruner, spec.pruner_options, spec.model.epochs))
    study.optimize(Objective(spec), n_trials=n)
    return study.trials


@pytest.mark.parametrize("pruner", ["none", "median"])
def test_eval_every_measures_fewer_epochs_and_returns_the_same_values(tiny_spec, pruner):
    base = load_spec(tiny_spec(epochs=12))
    opts = {"n_startup_trials": 50, "n_warmup_steps": 2, "interval_steps": 5}  # never prunes
    base = base.replace(pruner=pruner, pruner_options=opts if pruner == "median" else {})
    every = _trials(base)
    some = _trials(base.replace(model=replace(base.model, eval_every=4)))
    measured = [4, 8, 12] if pruner == "none" else [2, 4, 7, 8, 12]  # + steps 2, 7, 12
    for a, b in zip(every, some, strict=True):
        assert a.params == b.params and a.value == b.value
        assert a.user_attrs["model_seed"] == b.user_attrs["model_seed"]
        assert "curve_epochs" not in a.user_attrs and len(a.user_attrs["val_acc_curve"]) == 12
        assert b.user_attrs["curve_epochs"] == measured
        assert b.user_attrs["val_acc_curve"] == [a.user_attrs["val_acc_curve"][e - 1]
                                                 for e in measured]
        # the pruner saw the same; each trial's intermediate values are its measured curve
        steps = {2, 7, 12} if pruner == "median" else set()
        assert {k: v for k, v in a.intermediate_values.items() if k in steps} == \
            {k: v for k, v in b.intermediate_values.items() if k in steps}
        assert a.intermediate_values == pytest.approx(
            dict(enumerate(a.user_attrs["val_acc_curve"], 1)), abs=1e-6)
        assert b.intermediate_values == pytest.approx(
            dict(zip(measured, b.user_attrs["val_acc_curve"], strict=True)), abs=1e-6)
