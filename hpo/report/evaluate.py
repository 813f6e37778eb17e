"""The test split, touched once (``hpo test``), and the winner confirmed with fresh seeds
(``hpo confirm``).

The book's rule (6.5.1): hyperparameters are judged on validation data; test data measures
generalisation once, at the very end. ``hpo test STUDY`` retrains the chosen trial's network with
its recorded ``model_seed`` on the same training split (bit-identical to the trial: the retrained
validation accuracy must equal the stored value, and is checked), evaluates it on the test split
once, and stores the result in the study's user attribute ``hpo:test``. A second call refuses
unless ``--force``, and says when the first one ran.

A study of a user's own objective (``[objective]``, docs/objectives.md) is confirmed and tested
through :meth:`hpo.objectives.user.UserObjective.rerun`: ``hpo confirm`` re-runs the function
with fresh seeds (only a function that takes ``seed``: without one every re-run would repeat
the trial), ``hpo test`` runs the spec's ``[objective] test`` function once on the chosen
trial's params (with its ``model_seed`` when it takes ``seed``). The function is loaded only
from the folders the operator allows (``--code-dir`` / ``$HPO_CODE_DIR``), as a worker's is.
Their records carry the metric's name and the study's direction (``metric``, ``direction``).
"""

from __future__ import annotations

import datetime
import math
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

import hpo.nn.data as hpo_data
from hpo.db.storage import study_spec as stored_study_spec
from hpo.errors import RuntimeFailure, SpecError
from hpo.objectives.book import fit, make_config, search_data
from hpo.objectives.user import TrialFailed, UserObjective, load_function
from hpo.report.listing import CONFIRM_ATTR, TEST_ATTR, n_finished, ranked, state_names
from hpo.report.metric import metric_of
from hpo.samplers.ranking import direction_sign
from hpo.spec import Spec, from_dict

__all__ = ["CONFIRM_ATTR", "TEST_ATTR", "AlreadyTested", "choose_trial", "confirm",
           "confirm_seed", "evaluate_on_test", "study_spec", "user_objective"]


class AlreadyTested(RuntimeError):
    """The study's test split was already used; pass force=True to use it again."""


def study_spec(study: optuna.Study, data_dir: str | None = None) -> Spec:
    """The spec an hpo study was made with (reading the dataset's files from ``data_dir`` when
    given: a path on this machine, see :func:`hpo.spec.Spec.with_data_dir`)."""
    spec = from_dict(stored_study_spec(study) or {}, source=f"study {study.study_name!r}",
                     stored=True)
    return spec.with_data_dir(data_dir)


def choose_trial(study: optuna.Study, number: int | None = None) -> FrozenTrial:
    """The trial to evaluate: ``number`` if given, else the confirmed winner (``hpo confirm``)
    when there is one, else the best COMPLETE trial (in the study's direction)."""
    trials = study.get_trials(deepcopy=False)
    if number is None:
        confirmed = study.user_attrs.get(CONFIRM_ATTR, {}).get("winner")
        number = confirmed
    if number is not None:
        match = [t for t in trials if t.number == number]
        if not match:
            raise ValueError(f"study {study.study_name!r} has no trial {number}")
        if match[0].state != TrialState.COMPLETE:
            raise ValueError(f"trial {number} is {match[0].state.name}, not COMPLETE")
        return match[0]
    best = ranked(trials, study.direction)
    if not best:
        raise ValueError(f"study {study.study_name!r} has no COMPLETE trial to evaluate")
    return best[0]


def evaluate_on_test(study: optuna.Study, trial: FrozenTrial, *, force: bool = False,
                     data_dir: str | None = None,
                     code_dirs: list[str] | None = None) -> dict[str, Any]:
    """Retrain ``trial`` and measure it on the test split once; store and return the result.
    ``data_dir``: where this machine keeps the dataset's files (``--data-dir``). A user's
    objective: its ``[objective] test`` function run once on the trial's params, loaded from
    ``code_dirs`` (``--code-dir`` / ``$HPO_CODE_DIR``)."""
    previous = study.user_attrs.get(TEST_ATTR)
    if previous and not force:
        shown = (f"test acc {previous['test_acc']:.4f}" if "test_acc" in previous else
                 f"test {previous.get('metric', 'value')} {previous.get('test_value', 0):.4g}")
        raise AlreadyTested(
            f"study {study.study_name!r} was already evaluated on the test split at "
            f"{previous['at']} (trial {previous['trial']}, {shown}); "
            "use --force to evaluate again"
        )
    spec = study_spec(study, data_dir)
    if spec.objective is not None:
        obj = user_objective(study, code_dirs, test=True)
        return _store_user_test(study, obj, trial, previous)
    finished = n_finished(state_names(study.get_trials(deepcopy=False)))
    d = spec.data
    data = search_data(spec)
    seed = trial.user_attrs.get("model_seed")
    if seed is None:
        raise ValueError(f"trial {trial.number} has no model_seed: it was not made by hpo")
    config = make_config(spec.model, trial.params, data.n_features, data.n_classes)
    net, result = fit(config, data, int(seed), eval_epochs=())  # final accuracies only
    # the one read of the test split
    test = hpo_data.load_test(d.dataset, seed=d.seed, data_dir=d.data_dir)
    test_acc = float(net.accuracy(test.x_test, test.t_test))
    record = {
        "trial": trial.number,
        "params": dict(trial.params),
        "val_acc": float(trial.value),
        "retrained_val_acc": float(result.val_acc),
        "reproduced": math.isclose(float(result.val_acc), float(trial.value), abs_tol=1e-9),
        "train_acc": float(result.train_acc),
        "test_acc": test_acc,
        "n_test": int(len(test.t_test)),
        "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        # what the study held when this was made: listings mark the result STALE after more
        "n_finished": finished,
        "runs": int(previous.get("runs", 1)) + 1 if previous else 1,
    }
    study.set_user_attr(TEST_ATTR, record)
    return record


# --- noise-aware choice: hpo confirm ------------------------------------------------------------


def confirm_seed(spec_seed: int, trial_number: int, j: int) -> int:
    """The j-th fresh initialisation seed for re-training a trial (never its own model_seed)."""
    return int(np.random.SeedSequence([spec_seed, trial_number, j, 0xC0F1]).generate_state(1)[0])


def confirm(study: optuna.Study, *, top: int = 5, seeds: int = 5,
            data_dir: str | None = None, code_dirs: list[str] | None = None) -> dict[str, Any]:
    """Retrain the ``top`` best configurations with ``seeds`` fresh initialisation seeds each, on
    the same train/validation split, and rank them by mean validation accuracy.

    With 100 validation images one accuracy has a standard error of about 0.04, so the best of
    many trials is partly the luckiest initialisation (the winner's curse); the mean over fresh
    seeds is not. The test split is not read. The result is stored in the study's user attribute
    ``hpo:confirm``; ``hpo test`` then evaluates the confirmed winner.

    A user's objective (loaded from ``code_dirs``) is re-run through
    :meth:`~hpo.objectives.user.UserObjective.rerun` with the fresh seeds instead
    (:func:`confirm_user`).
    """
    if top < 1 or seeds < 2:
        raise ValueError(f"confirm needs --top >= 1 and --seeds >= 2, got {top} and {seeds}")
    spec = study_spec(study, data_dir)
    if spec.objective is not None:
        return confirm_user(study, user_objective(study, code_dirs), top=top, seeds=seeds)
    trials = study.get_trials(deepcopy=False)
    candidates = ranked(trials, study.direction)[:top]
    if not candidates:
        raise ValueError(f"study {study.study_name!r} has no COMPLETE trial to confirm")
    data = search_data(spec)
    rows = []
    for t in candidates:
        config = make_config(spec.model, t.params, data.n_features, data.n_classes)
        used = [confirm_seed(spec.seed, t.number, j) for j in range(seeds)]
        accs = [float(fit(config, data, s, eval_epochs=())[1].val_acc) for s in used]
        a = np.asarray(accs)
        rows.append({
            "trial": t.number,
            "params": dict(t.params),
            "search_val_acc": float(t.value),
            "seeds": used,
            "val_accs": accs,
            "mean": float(a.mean()),
            "std": float(a.std(ddof=1)),
            "sem": float(a.std(ddof=1) / np.sqrt(len(a))),
        })
    sign = direction_sign(study.direction)  # best mean first, as the study ranks its values
    rows.sort(key=lambda r: (sign * r["mean"], r["trial"]))
    record = {
        "top": top,
        "n_seeds": seeds,
        "winner": rows[0]["trial"],
        "rows": rows,
        # the noise floor: how much one configuration's validation accuracy moves across seeds
        "noise_floor_std": float(np.median([r["std"] for r in rows])),
        "n_val": int(len(data.t_val)),
        "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "n_finished": n_finished(state_names(trials)),
    }
    study.set_user_attr(CONFIRM_ATTR, record)
    return record


# --- a user's own objective ---------------------------------------------------------------------


def user_objective(study: optuna.Study, code_dirs: list[str] | None = None, *,
                   test: bool = False) -> UserObjective:
    """The study's own objective, ready to re-run: its function (and with ``test`` its
    ``[objective] test`` function) loaded from ``code_dirs`` only. Bad input (exit 2, one line,
    nothing written): no test function named (``test``), no allowed folder, a function that
    cannot be loaded, or (confirm) a function without ``seed``."""
    spec = study_spec(study)
    o = spec.objective
    assert o is not None
    if test and not o.test:
        raise SpecError(f"study {study.study_name!r}: objective.test: not set, so there is "
                        "nothing to measure once; name a test function in the spec's "
                        "[objective] table, e.g. test = 'objective.py:test'")
    fn = load_function(spec, "function", code_dirs)
    test_fn = load_function(spec, "test", code_dirs) if test else None
    obj = UserObjective(spec, fn, test_fn=test_fn)
    if not test and "seed" not in obj.takes:
        raise SpecError(f"study {study.study_name!r}: objective.function: {o.function!r} takes "
                        "no `seed`, and hpo confirm needs fresh seeds (without one every "
                        "re-run repeats the trial); give the function a `seed` parameter "
                        "(docs/objectives.md)")
    return obj


def _rerun(obj: UserObjective, t: FrozenTrial, seed: int | None, test: bool = False) -> float:
    try:
        return obj.rerun(t.params, seed, test=test)
    except TrialFailed as e:
        fn = obj.spec.objective.test if test else obj.name  # type: ignore[union-attr]
        raise RuntimeFailure(f"{fn} failed on trial {t.number}'s params"
                             + (f" with seed {seed}" if seed is not None else "")
                             + f": {e}") from e


def confirm_user(study: optuna.Study, obj: UserObjective, *, top: int = 5,
                 seeds: int = 5) -> dict[str, Any]:
    """:func:`confirm` for a user's objective: the ``top`` best configurations (in the study's
    direction) re-run with ``seeds`` fresh seeds each, ranked by their mean in that direction;
    stored in ``hpo:confirm`` with the metric's name and the direction."""
    spec = obj.spec
    metric = metric_of(spec.to_dict(), study.direction)
    trials = study.get_trials(deepcopy=False)
    candidates = ranked(trials, study.direction)[:top]
    if not candidates:
        raise ValueError(f"study {study.study_name!r} has no COMPLETE trial to confirm")
    rows = []
    for t in candidates:
        used = [confirm_seed(spec.seed, t.number, j) for j in range(seeds)]
        values = [_rerun(obj, t, s) for s in used]
        a = np.asarray(values)
        rows.append({"trial": t.number, "params": dict(t.params),
                     "search_value": float(t.value),  # type: ignore[arg-type]
                     "seeds": used, "values": values, "mean": float(a.mean()),
                     "std": float(a.std(ddof=1)),
                     "sem": float(a.std(ddof=1) / np.sqrt(len(a)))})
    sign = direction_sign(study.direction)
    rows.sort(key=lambda r: (sign * r["mean"], r["trial"]))
    record = {
        "metric": metric.name, "direction": metric.direction, "top": top, "n_seeds": seeds,
        "winner": rows[0]["trial"], "rows": rows,
        "noise_floor_std": float(np.median([r["std"] for r in rows])),
        "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "n_finished": n_finished(state_names(trials)),
    }
    study.set_user_attr(CONFIRM_ATTR, record)
    return record


def _store_user_test(study: optuna.Study, obj: UserObjective, trial: FrozenTrial,
                     previous: dict[str, Any] | None) -> dict[str, Any]:
    """``hpo test`` of a user's objective: its test function once on ``trial``'s params (with
    the trial's ``model_seed`` when it takes ``seed``); stored in ``hpo:test``."""
    metric = metric_of(obj.spec.to_dict(), study.direction)
    seed = trial.user_attrs.get("model_seed")
    value = _rerun(obj, trial, None if seed is None else int(seed), test=True)
    record = {
        "trial": trial.number, "params": dict(trial.params), "metric": metric.name,
        "direction": metric.direction, "value": float(trial.value),  # type: ignore[arg-type]
        "test_value": value, "seed": seed, "function": obj.spec.objective.test,  # type: ignore
        "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "n_finished": n_finished(state_names(study.get_trials(deepcopy=False))),
        "runs": int(previous.get("runs", 1)) + 1 if previous else 1,
    }
    study.set_user_attr(TEST_ATTR, record)
    return record
