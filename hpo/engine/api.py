"""hpo from Python: :func:`run` is ``hpo run`` for a notebook or a script.

    import hpo

    def objective(trial):
        x = trial.suggest_float("x", -5, 5)
        return (x - 1) ** 2

    study = hpo.run({"name": "quadratic", "budget": {"n_trials": 40},
                     "objective": {"direction": "minimize", "metric": "loss"}},
                    objective=objective, storage="sqlite:///hpo.db")
    print(study.best_params)

It runs the study through the same engine as the command line (:mod:`hpo.engine.study`): the
exact budget across workers, heartbeats, retries, the spec's sampler and pruner; the study is
an ordinary Optuna study in ``storage`` that ``hpo best``, ``hpo report`` and
``hpo dashboard`` read.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import optuna

from hpo import catalog, signals
from hpo.db import optuna_private as oc
from hpo.db.storage import resolve_url
from hpo.engine.study import RunRequest, run_study
from hpo.errors import RuntimeFailure, UsageError
from hpo.spec import Spec, from_dict, load_spec, read_table


def run(spec: str | os.PathLike | Mapping[str, Any] | Spec,
        objective: Callable[[optuna.Trial], float] | None = None, *,
        storage: str | None = None, study_name: str | None = None,
        n_trials: int | None = None, seed: int | None = None, workers: int = 1,
        timeout: float | None = None, progress: bool = False) -> optuna.Study:
    """Create or resume the study of ``spec`` and run it until it holds its budget of finished
    trials; return the study.

    ``spec``: a TOML file's path, the same table as a dict, or a loaded :class:`~hpo.spec.Spec`.
    ``objective``: your own ``objective(trial) -> float`` (define-by-run is fine; the spec's
    ``[search]`` params are suggested first with the spec's bounds). Without it, the spec's
    ``[objective] function``, else the book's MLP. ``storage``: a SQLAlchemy URL (default
    ``$HPO_STORAGE``, ``$OPTUNA_STORAGE``, else ``sqlite:///hpo.db``). ``workers`` > 1 runs
    forked worker processes; they need ``objective`` importable (defined at the top level of a
    module), so that any worker, here or elsewhere, can run it.

    The function runs as a spec's ``[objective] function`` does: a trial whose function
    raises (``sys.exit`` included) or returns no finite number is FAIL with its reason, and
    ``max_failures`` in a row (the spec's, else 3) raise :class:`hpo.errors.RuntimeFailure`.
    Ctrl-C and SIGTERM stop it with no trial left RUNNING (``KeyboardInterrupt``); the
    process's signal handlers are as they were once it returns.

    Bad input raises :class:`hpo.errors.BadInput` (nothing written); a failure at run time
    :class:`hpo.errors.RuntimeFailure`."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise UsageError(f"workers must be an integer >= 1, got {workers!r}")
    if timeout is not None and (isinstance(timeout, bool)
                                or not isinstance(timeout, (int, float))
                                or not 0 < timeout < float("inf")):
        raise UsageError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")
    if storage is not None and (not isinstance(storage, str) or not storage.strip()):
        raise UsageError(f"storage must be a database URL (sqlite:///FILE, "
                         f"postgresql://USER@HOST/DB), got {storage!r}")
    if study_name is not None and (problem := catalog.name_problem(study_name, segments=True)):
        raise UsageError(f"study_name {problem}")
    s = _spec(spec, objective)
    if n_trials is not None:
        if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
            raise UsageError(f"n_trials must be an integer >= 1, got {n_trials!r}")
        s = s.replace(n_trials=n_trials)
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise UsageError(f"seed must be an integer >= 0, got {seed!r}")
        s = s.replace(seed=seed)
    if objective is not None and workers > 1:
        _check_importable(objective)
    req = RunRequest(study_name or s.name, resolve_url(storage), s, workers=workers,
                     timeout=timeout, objective=objective, progress=progress,
                     who="hpo.run")
    with signals.kept():  # the caller's handlers back once the study is over
        outcome = run_study(req)
    if outcome.short:
        raise _failure(f"hpo.run: {outcome.failed_workers} worker(s) failed and the study "
                       f"holds {outcome.finished} of its {s.n_trials} trials")
    return optuna.load_study(study_name=req.study_name, storage=oc.storage_of(outcome.study))


def _spec(spec: Any, objective: Callable[..., float] | None) -> Spec:
    if isinstance(spec, Spec):
        if objective is None:
            return spec
        raw = spec.to_dict()  # the function joins it as its [objective]; the book's net's
        for table in ("data", "model"):  # data and model are not the function's
            raw.pop(table, None)
        return _from_table(raw, objective, spec.source, spec.name, os.getcwd())
    if isinstance(spec, (str, os.PathLike)):
        if objective is None:
            return load_spec(spec)
        p = Path(spec)  # the file's table; the function given here joins it
        return _from_table(read_table(p), objective, str(p), p.stem, str(p.resolve().parent))
    if isinstance(spec, Mapping):
        return _from_table(dict(spec), objective, "spec", "study", os.getcwd())
    raise UsageError(f"spec must be a TOML file's path, a dict or a Spec, got "
                     f"{type(spec).__name__}")


def _from_table(raw: dict[str, Any], objective: Callable[..., float] | None, source: str,
                default_name: str, base: str) -> Spec:
    if objective is not None:  # the function given here is the spec's objective
        table = dict(raw.get("objective") or {})
        table["function"] = _reference(objective)
        raw = {**raw, "objective": table}
    return from_dict(raw, source=source, default_name=default_name, base=base)


def _reference(fn: Callable[..., float]) -> str:
    """``module:qualname`` of ``fn`` as the study records it (what a worker elsewhere loads)."""
    if not callable(fn):
        raise UsageError(f"objective must be callable, got {type(fn).__name__}")
    module = getattr(fn, "__module__", None) or "__main__"
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or "objective"
    name = "".join(c if c.isalnum() or c == "_" else "_" for c in name).strip("_") or "objective"
    return f"{module}:{name}"


def _check_importable(fn: Callable[..., float]) -> None:
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    where = f"{module}.{qualname}" if module else repr(fn)
    ok = module not in (None, "__main__") and "<" not in qualname and "." not in qualname
    if ok:
        try:
            ok = getattr(importlib.import_module(module), qualname, None) is fn
        except ImportError:
            ok = False
    if not ok:
        raise UsageError(f"workers > 1 need an importable objective (a function at the top "
                         f"level of a module, not in __main__, a notebook cell or another "
                         f"function); got {where}: move it into a .py file and import it")


def _failure(message: str) -> Exception:
    return RuntimeFailure(message)
