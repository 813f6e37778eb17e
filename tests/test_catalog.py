"""The catalog is the one declaration of names and options: everything else agrees with it."""

from __future__ import annotations

import inspect
import math

import pytest

from hpo import catalog
from hpo.samplers.registry import load_class


@pytest.mark.parametrize("component", [*catalog.SAMPLERS.values(), *catalog.PRUNERS.values()],
                         ids=lambda c: c.name)
def test_every_declared_option_is_a_keyword_of_its_class(component):
    params = inspect.signature(load_class(component.target)).parameters
    for option in component.options:
        assert (option.name in params) == option.in_class, (component.name, option.name)
    for name, value in component.defaults().items():
        component.option(name).check(value)  # hpo's defaults pass their own checks


def test_names_agree_with_the_code_that_implements_them():
    from hpo.nn.data import DATASETS
    from hpo.nn.net import INITS
    from hpo.nn.optim import OPTIMIZERS

    assert tuple(catalog.DATASETS) == DATASETS
    assert catalog.INITS == INITS
    assert catalog.OPTIMIZERS == tuple(OPTIMIZERS)


@pytest.mark.parametrize("value, ok", [
    (5, True), (0, False), (True, False), (2.0, False), ("5", False), (None, False),
    (10**9, False),
])
def test_int_options_are_checked_for_type_and_range(value, ok):
    option = catalog.SAMPLERS["narrowing"].option("stage_trials")
    if ok:
        assert option.check(value) == value
    else:
        with pytest.raises(ValueError, match="must be an integer in"):
            option.check(value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -1.0, "0.1", True])
def test_float_options_refuse_nan_inf_and_strings(value):
    with pytest.raises(ValueError, match="must be a finite number"):
        catalog.SAMPLERS["narrowing"].option("margin").check(value)


def test_rules_between_options():
    narrowing = catalog.SAMPLERS["narrowing"]
    with pytest.raises(catalog.OptionError, match="keep_top: must be <= stage_trials"):
        narrowing.check({"stage_trials": 5, "keep_top": 6})
    hyperband = catalog.PRUNERS["hyperband"]
    with pytest.raises(catalog.OptionError) as e:
        hyperband.check({"min_resource": 20}, context={"epochs": 10})
    assert e.value.key == "min_resource" and "model.epochs (10)" in e.value.reason
    with pytest.raises(catalog.OptionError, match="reduction_factor"):
        hyperband.check({"reduction_factor": 1})
    assert hyperband.check({"max_resource": "auto"}) == {"max_resource": "auto"}
    with pytest.raises(catalog.OptionError, match="group: needs multivariate"):
        catalog.SAMPLERS["tpe"].check({"group": True})


def test_unknown_options_name_what_is_allowed():
    with pytest.raises(catalog.OptionError) as e:
        catalog.SAMPLERS["tpe"].check({"n_startup": 3})
    assert e.value.key == "n_startup" and "n_startup_trials" in e.value.reason
    with pytest.raises(catalog.OptionError, match="initial"):
        catalog.SAMPLERS["narrowing"].check({"initial": {"lr": [1, 2]}}, spec=True)
    assert catalog.SAMPLERS["narrowing"].check({"initial": {"lr": [1, 2]}})  # the library may
