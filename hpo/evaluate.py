"""The test split, touched once: ``hpo test``.

The book's rule (6.5.1): hyperparameters are judged on validation data; test data measures
generalisation once, at the very end. ``hpo test STUDY`` retrains the chosen trial's network with
its recorded ``model_seed`` on the same training split (bit-identical to the trial: the retrained
validation accuracy must equal the stored value, and is checked), evaluates it on the test split
once, and stores the result in the study's user attribute ``hpo:test``. A second call refuses
unless ``--force``, and says when the first one ran.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

TEST_ATTR = "hpo:test"
CONFIRM_ATTR = "hpo:confirm"


class AlreadyTested(RuntimeError):
    """The study's test split was already used; pass force=True to use it again."""


def choose_trial(study: optuna.Study, number: int | None = None) -> FrozenTrial:
    """The trial to evaluate: ``number`` if given, else the confirmed winner (``hpo confirm``)
    when there is one, else the best COMPLETE trial."""
    from hpo.report import ranked

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
    best = ranked(trials)
    if not best:
        raise ValueError(f"study {study.study_name!r} has no COMPLETE trial to evaluate")
    return best[0]


def evaluate_on_test(study: optuna.Study, trial: FrozenTrial, *, force: bool = False
                     ) -> dict[str, Any]:
    """Retrain ``trial`` and measure it on the test split once; store and return the result."""
    from hpo.data import load_search, load_test
    from hpo.objective import fit, make_config
    from hpo.spec import from_dict
    from hpo.storage import SPEC_ATTR

    previous = study.user_attrs.get(TEST_ATTR)
    if previous and not force:
        raise AlreadyTested(
            f"study {study.study_name!r} was already evaluated on the test split at "
            f"{previous['at']} (trial {previous['trial']}, test acc {previous['test_acc']:.4f}); "
            "use --force to evaluate again"
        )
    spec = from_dict(study.user_attrs[SPEC_ATTR], source=f"study {study.study_name!r}")
    d = spec.data
    data = load_search(d.dataset, train_size=d.train_size, validation_rate=d.validation_rate,
                       seed=d.seed, data_dir=d.data_dir)
    seed = trial.user_attrs.get("model_seed")
    if seed is None:
        raise ValueError(f"trial {trial.number} has no model_seed: it was not made by hpo")
    config = make_config(spec.model, trial.params, data.n_features, data.n_classes)
    net, result = fit(config, data, int(seed), eval_epochs=())  # final accuracies only
    test = load_test(d.dataset, seed=d.seed, data_dir=d.data_dir)  # the one read of the test split
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
        "runs": int(previous.get("runs", 1)) + 1 if previous else 1,
    }
    study.set_user_attr(TEST_ATTR, record)
    return record


def evaluate_cmd(args: argparse.Namespace) -> int:
    from hpo.cli import UsageError
    from hpo.report import _open
    from hpo.storage import load_study_spec

    storage = _open(args)
    load_study_spec(storage, args.study)
    study = optuna.load_study(study_name=args.study, storage=storage)
    try:
        trial = choose_trial(study, args.trial)
        record = evaluate_on_test(study, trial, force=args.force)
    except (AlreadyTested, ValueError) as e:
        raise UsageError(str(e)) from None
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    print(f"trial {record['trial']} | val acc {record['val_acc']:.4f} | "
          f"train acc {record['train_acc']:.4f} | test acc {record['test_acc']:.4f} "
          f"({record['n_test']} test images)")
    if not record["reproduced"]:
        print(f"warning: the retrained network's validation accuracy "
              f"{record['retrained_val_acc']:.4f} differs from the stored "
              f"{record['val_acc']:.4f}", file=sys.stderr)
    return 0


# --- noise-aware choice: hpo confirm ------------------------------------------------------------


def confirm_seed(spec_seed: int, trial_number: int, j: int) -> int:
    """The j-th fresh initialisation seed for re-training a trial (never its own model_seed)."""
    import numpy as np

    return int(np.random.SeedSequence([spec_seed, trial_number, j, 0xC0F1]).generate_state(1)[0])


def confirm(study: optuna.Study, *, top: int = 5, seeds: int = 5) -> dict[str, Any]:
    """Retrain the ``top`` best configurations with ``seeds`` fresh initialisation seeds each, on
    the same train/validation split, and rank them by mean validation accuracy.

    With 100 validation images one accuracy has a standard error of about 0.04, so the best of
    many trials is partly the luckiest initialisation (the winner's curse); the mean over fresh
    seeds is not. The test split is not read. The result is stored in the study's user attribute
    ``hpo:confirm``; ``hpo test`` then evaluates the confirmed winner.
    """
    import numpy as np

    from hpo.data import load_search
    from hpo.objective import fit, make_config
    from hpo.report import ranked
    from hpo.spec import from_dict
    from hpo.storage import SPEC_ATTR

    if top < 1 or seeds < 2:
        raise ValueError(f"confirm needs --top >= 1 and --seeds >= 2, got {top} and {seeds}")
    spec = from_dict(study.user_attrs[SPEC_ATTR], source=f"study {study.study_name!r}")
    candidates = ranked(study.get_trials(deepcopy=False))[:top]
    if not candidates:
        raise ValueError(f"study {study.study_name!r} has no COMPLETE trial to confirm")
    d = spec.data
    data = load_search(d.dataset, train_size=d.train_size, validation_rate=d.validation_rate,
                       seed=d.seed, data_dir=d.data_dir)
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
    rows.sort(key=lambda r: (-r["mean"], r["trial"]))
    record = {
        "top": top,
        "n_seeds": seeds,
        "winner": rows[0]["trial"],
        "rows": rows,
        # the noise floor: how much one configuration's validation accuracy moves across seeds
        "noise_floor_std": float(np.median([r["std"] for r in rows])),
        "n_val": int(len(data.t_val)),
        "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    study.set_user_attr(CONFIRM_ATTR, record)
    return record


def format_confirm(record: dict[str, Any]) -> str:
    from hpo.report import BOOK_NAMES

    lines = [f"Confirmed over {record['n_seeds']} fresh seeds each (mean ± standard error; "
             f"noise floor: one configuration's val acc moves by ±{record['noise_floor_std']:.3f}"
             f" (std) across seeds on {record['n_val']} validation images):"]
    for i, r in enumerate(record["rows"], 1):
        params = ", ".join(f"{BOOK_NAMES.get(k, k)}:{v:.4g}" if isinstance(v, float)
                           else f"{BOOK_NAMES.get(k, k)}:{v}" for k, v in r["params"].items())
        lines.append(f"Confirmed-{i}(val acc:{r['mean']:.3f} ± {r['sem']:.3f}) | {params} | "
                     f"search val acc:{r['search_val_acc']:.2f}  [trial {r['trial']}]")
    return "\n".join(lines)


def confirm_cmd(args: argparse.Namespace) -> int:
    from hpo.cli import UsageError
    from hpo.report import _open
    from hpo.runner import pin_blas_threads
    from hpo.storage import load_study_spec

    if args.top < 1:
        raise UsageError(f"--top must be >= 1, got {args.top}")
    if args.seeds < 2:
        raise UsageError(f"--seeds must be >= 2 (a standard error needs two), got {args.seeds}")
    storage = _open(args)
    load_study_spec(storage, args.study)
    study = optuna.load_study(study_name=args.study, storage=storage)
    pin_blas_threads()
    try:
        record = confirm(study, top=args.top, seeds=args.seeds)
    except ValueError as e:
        raise UsageError(str(e)) from None
    print(json.dumps(record, indent=2) if args.json else format_confirm(record))
    return 0
