"""The narrowing, keyed random and keyed QMC samplers against Optuna's own sampler contract.

Optuna ships its sampler test suite for other samplers to reuse
(``optuna.testing.pytest_samplers``): every distribution drawn inside its bounds and on its
grid, conditional and dynamic spaces, NaN objectives, partially fixed params, and multi-objective
studies refused with a ValueError.
"""

from __future__ import annotations

from collections.abc import Callable

import optuna
import pytest
from optuna.samplers import BaseSampler
from optuna.testing.pytest_samplers import BasicSamplerTestCase, SingleOnlySamplerTestCase

from hpo.samplers import NarrowingSampler
from hpo.samplers.keyed import KeyedQMCSampler, KeyedRandomSampler

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.mark.parametrize("kwargs", [{}, {"stage_trials": 3, "keep_top": 2, "seed": 0}],
                         ids=["defaults", "short-stages"])
class TestNarrowingSamplerContract(BasicSamplerTestCase, SingleOnlySamplerTestCase):
    @pytest.fixture
    def sampler(self, kwargs: dict) -> Callable[[], BaseSampler]:
        return lambda: NarrowingSampler(**kwargs)


@pytest.mark.parametrize("make", [lambda: KeyedRandomSampler(seed=0),
                                  lambda: KeyedQMCSampler(seed=0)], ids=["random", "qmc"])
class TestKeyedSamplersContract(BasicSamplerTestCase):
    """The keyed random and QMC samplers (hpo's "random" and "qmc"): the same contract."""

    @pytest.fixture
    def sampler(self, make) -> Callable[[], BaseSampler]:
        return make


def test_batch_ask_and_tell_from_one_thread_does_not_wait(monkeypatch) -> None:
    """Asking more than a stage of trials before telling any: the thread that would tell
    them is the one asking, so the sampler narrows at once from what has finished."""
    import hpo.samplers.narrowing as module

    slept: list[float] = []
    monkeypatch.setattr(module.time, "sleep", slept.append)
    study = optuna.create_study(sampler=NarrowingSampler(stage_trials=4, keep_top=2, seed=0))
    batch = [study.ask() for _ in range(12)]
    for t in batch:
        t.suggest_float("lr", 1e-6, 1e-2, log=True)
    for t in batch:
        study.tell(t, t.params["lr"])
    assert slept == []
    attrs = [t.system_attrs for t in study.trials]
    assert [a["narrowing:stage"] for a in attrs] == [n // 4 for n in range(12)]
    assert all(a.get("narrowing:partial") is True for a in attrs[4:])
    assert all("narrowing:partial" not in a for a in attrs[:4])
    # nothing had finished: the later stages drew from stage 0's ranges
    assert all(a["narrowing:ranges"]["lr"] == pytest.approx([1e-6, 1e-2]) for a in attrs)
