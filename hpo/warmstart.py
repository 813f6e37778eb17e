"""Warm start, the book's "search again" across studies: a new study begins with the best
configurations of an earlier one (``hpo run SPEC --warm-start STUDY``).

The earlier study's best ``top`` COMPLETE trials are enqueued in the new study as its first
trials (Optuna's ``enqueue_trial``; WAITING until a worker runs them, and they count toward the
budget like any trial). Only the params the new spec searches are carried over, and only values
inside its ranges; the others are sampled as usual. Each enqueued trial records where it came
from (user attribute ``hpo:warm_start``: ``"STUDY#N"``), and the new study records the whole
warm start (user attribute ``hpo:warm_start``). A study that already holds trials is not warm
started again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from hpo.listing import ranked
from hpo.spec import Param, Spec

WARM_ATTR = "hpo:warm_start"
#: How many of the earlier study's best configurations ``--warm-start`` carries by default.
WARM_TOP = 5


def fits(p: Param, value: Any) -> bool:
    """Whether ``value`` is one the new spec's param ``p`` can take."""
    if p.type == "categorical":
        return value in p.choices
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    assert p.low is not None and p.high is not None
    if p.type == "int" and not float(value).is_integer():
        return False
    return p.low <= value <= p.high


def carried(spec: Spec, trial: FrozenTrial) -> dict[str, Any]:
    """The params of ``trial`` that the new spec searches, with values inside its ranges."""
    space = {p.name: p for p in spec.suggest_space()}
    return {k: v for k, v in trial.params.items() if k in space and fits(space[k], v)}


def best_configs(source: optuna.Study, top: int) -> list[FrozenTrial]:
    """The best ``top`` COMPLETE trials of ``source``, best first."""
    return ranked(source.get_trials(deepcopy=False))[:top]


def warm_start(study: optuna.Study, spec: Spec, source_name: str,
               configs: Sequence[FrozenTrial]) -> list[int]:
    """Enqueue ``configs`` (trials of the study ``source_name``) as the first trials of a study
    that holds none yet; returns the source trial numbers enqueued (none when the study already
    has trials)."""
    if study.get_trials(deepcopy=False):
        return []
    done = []
    for t in configs:
        params = carried(spec, t)
        if not params:
            continue
        study.enqueue_trial(params, user_attrs={WARM_ATTR: f"{source_name}#{t.number}"},
                            skip_if_exists=True)
        done.append(t.number)
    study.set_user_attr(WARM_ATTR, {"study": source_name, "trials": done,
                                    "values": [float(t.value) for t in configs
                                               if t.number in done]})
    return done
