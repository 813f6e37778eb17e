"""A user's own objective function: find it (only where its operator allows), run it per trial.

A spec's ``[objective]`` table names the function (``function = "FILE.py:NAME"`` or
``"package.module:NAME"``); :func:`load_function` finds it, :class:`UserObjective` runs it as
hpo's objective. See docs/objectives.md.

**Whose code runs.** User code is looked for only inside *allowed folders* (``roots``):

* a spec given on the command line (``hpo run SPEC``, ``hpo init SPEC``): its own folder;
* a worker that reads the spec from the study (``hpo worker --study NAME``, and the workers
  ``hpo run`` starts): only the folders its operator names with ``--code-dir DIR`` or
  ``$HPO_CODE_DIR`` (``os.pathsep``-separated); without one it refuses (exit 2). Whoever can
  write to the database chooses no code: the study only names a file or module, and a file
  must resolve inside an allowed folder, a module must be found in one (``..``, absolute paths
  and symlinks that lead out are refused; so is a module already imported from elsewhere).

**The trial.** Params the spec's ``[search]`` declares are suggested first with the spec's
bounds, then the function runs with the trial (define-by-run: it may suggest more). Its
storage calls (``suggest_*``, ``report``, ``should_prune``, ``set_user_attr``) run
:func:`hpo.signals.deferred`, the rest of it where SIGTERM and Ctrl-C raise at once, as for the
book's training. When the function's signature takes ``seed``, it gets the trial's seed
(:func:`hpo.objectives.book.model_seed`, recorded as the user attribute ``model_seed``); when
it takes ``config``, a copy of ``[objective.config]``.

**Failures.** An exception, or a return that is not a finite number, fails that trial (state
FAIL, the user attribute ``fail_reason`` says why, one warning line) and the worker goes on: a
FAIL trial counts nowhere in the budget. After ``max_failures`` consecutive failures in one
worker (``--max-failures``, ``[objective] max_failures``, default
:data:`hpo.catalog.MAX_FAILURES`) it stops: :class:`TooManyFailures`, exit 1, one line naming
the function and the exception. With ``debug`` each failure's traceback goes to stderr too.
"""

from __future__ import annotations

import copy
import decimal
import importlib
import importlib.machinery
import importlib.util
import inspect
import logging
import math
import numbers
import os
import re
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna

from hpo import catalog
from hpo.db.retry import chain, finished_elsewhere, is_transient, refused
from hpo.errors import RuntimeFailure, SpecError, one_line
from hpo.objectives.book import model_seed, suggest
from hpo.signals import deferred
from hpo.spec import Spec

__all__ = ["CODE_DIR_ENV", "FAIL_REASON_ATTR", "TooManyFailures", "TrialFailed",
           "UserObjective", "code_dirs_from", "load_function"]

#: The operator's allowed folders for a worker that reads its spec from the study.
CODE_DIR_ENV = "HPO_CODE_DIR"
#: The user attribute that says why a user's trial failed.
FAIL_REASON_ATTR = "fail_reason"
#: The longest reason recorded on a trial.
MAX_REASON = 1000

log = logging.getLogger("hpo.objective")


class TrialFailed(Exception):
    """A user's trial failed (an exception, NaN, inf, not a number): the trial ends FAIL with
    its reason and the worker goes on (the trial loop catches it)."""


class TooManyFailures(RuntimeFailure):
    """``max_failures`` consecutive trials of one worker failed: the worker stops, exit 1."""


def code_dirs_from(flag: Sequence[str] | str | None) -> list[str] | None:
    """The allowed folders of a worker: ``--code-dir`` (repeatable), else ``$HPO_CODE_DIR``
    (``os.pathsep``-separated), else None (no user code allowed)."""
    if isinstance(flag, str):
        flag = [flag]
    if flag:
        return list(flag)
    env = [d for d in os.environ.get(CODE_DIR_ENV, "").split(os.pathsep) if d.strip()]
    return env or None


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


class _Loader:
    """Resolves ``FILE.py:NAME`` / ``package.module:NAME`` inside allowed folders."""

    _modules: dict[Path, Any] = {}  # a file loaded once per process, whatever names it

    def __init__(self, source: str, key: str, ref: str, roots: Sequence[str]) -> None:
        self.source, self.key, self.ref = source, key, ref
        self.roots = [Path(r).resolve() for r in roots]

    def fail(self, msg: str) -> SpecError:
        return SpecError(f"{self.source}: {self.key}: {msg}")

    def shown_roots(self) -> str:
        return ", ".join(str(r) for r in self.roots)

    def load(self) -> Callable[..., Any]:
        where, _, name = self.ref.rpartition(":")
        module = self._file(where) if where.endswith(".py") else self._module(where)
        obj: Any = module
        for part in name.split("."):
            if not hasattr(obj, part):
                raise self.fail(f"{where} has no {name!r}")
            obj = getattr(obj, part)
        if not callable(obj):
            raise self.fail(f"{self.ref} is not callable ({type(obj).__name__})")
        return obj

    def _file(self, where: str) -> Any:
        outside = None
        for root in self.roots:
            path = (root / where).resolve()
            if not _inside(path, root):
                outside = path
                continue
            if path.is_file():
                return self._exec_file(path, root)
        if outside is not None:
            raise self.fail(f"{where} lies outside the allowed folder(s) {self.shown_roots()}")
        raise self.fail(f"file {where} not found in {self.shown_roots()}")

    def _exec_file(self, path: Path, root: Path) -> Any:
        if path in self._modules:
            return self._modules[path]
        stem = re.sub(r"\W", "_", path.stem)
        name = f"_hpo_objective_{stem}_{len(self._modules)}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise self.fail(f"cannot load {path} as a Python file")
        module = importlib.util.module_from_spec(spec)
        _on_path(path.parent)  # the file's own imports of its neighbours
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except (Exception, SystemExit) as e:  # noqa: BLE001 - the user's module: one line
            del sys.modules[name]
            raise self.fail(f"loading {path.name} failed: {type(e).__name__}: "
                            f"{one_line(e)}") from None
        self._modules[path] = module
        return module

    def _module(self, dotted: str) -> Any:
        top = dotted.split(".")[0]
        for root in self.roots:
            found = importlib.machinery.PathFinder.find_spec(top, [str(root)])
            if found is None:
                continue
            loaded = sys.modules.get(top)
            if loaded is not None and not self._from(loaded, root):
                raise self.fail(f"module {top!r} is already imported from outside the allowed "
                                f"folder {root}; rename your package")
            _on_path(root)
            try:
                module = importlib.import_module(dotted)
            except ModuleNotFoundError as e:
                raise self.fail(f"no module {dotted!r} in {root} ({one_line(e)})") from None
            except (Exception, SystemExit) as e:  # noqa: BLE001 - the user's module
                raise self.fail(f"importing {dotted} failed: {type(e).__name__}: "
                                f"{one_line(e)}") from None
            if not self._from(module, root):
                raise self.fail(f"module {dotted!r} does not come from the allowed folder "
                                f"{root}")
            return module
        raise self.fail(f"no module {top!r} in the allowed folder(s) {self.shown_roots()}")

    @staticmethod
    def _from(module: Any, root: Path) -> bool:
        places = [getattr(module, "__file__", None),
                  *list(getattr(module, "__path__", []) or [])]
        places = [p for p in places if p]
        return bool(places) and all(_inside(Path(p).resolve(), root) for p in places)


def _on_path(folder: Path) -> None:
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))


def load_function(spec: Spec, key: str = "function",
                  code_dirs: Sequence[str] | None = None) -> Callable[..., Any]:
    """The callable that ``[objective] <key>`` names, from the allowed folders: ``code_dirs``
    when given (a worker's ``--code-dir`` / ``$HPO_CODE_DIR``), else the folder of the spec
    file given on the command line. One-line :class:`SpecError` (exit 2) when it cannot be
    found, loaded, or called, or when no folder is allowed."""
    o = spec.objective
    assert o is not None
    ref = getattr(o, key)
    roots = list(code_dirs) if code_dirs else ([o.base] if o.base else [])
    if not roots:
        raise SpecError(f"{o.source}: objective.{key}: {ref!r} is user code, run only from "
                        f"a folder this worker's operator allows: --code-dir DIR or "
                        f"${CODE_DIR_ENV}=DIR (the folder of the study's spec file)")
    missing = [r for r in roots if not Path(r).is_dir()]
    if missing:
        raise SpecError(f"--code-dir / ${CODE_DIR_ENV}: {missing[0]} is not a folder")
    return _Loader(o.source, f"objective.{key}", ref, roots).load()


def _keywords(fn: Callable[..., Any]) -> frozenset[str]:
    """Which of ``seed`` and ``config`` the function's signature takes."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return frozenset()
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return frozenset({"seed", "config"})
    return frozenset(k for k in ("seed", "config") if k in params
                     and params[k].kind in (params[k].KEYWORD_ONLY,
                                            params[k].POSITIONAL_OR_KEYWORD))


def bad_value(value: Any) -> str | None:
    """Why ``value`` is not a trial's result (None when it is a finite number: a real number
    or a ``Decimal``, as Optuna takes them)."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, decimal.Decimal)):
        hint = " (a tensor? return loss.item())" if hasattr(value, "item") else ""
        return f"returned {type(value).__name__}, not a number{hint}"
    try:
        as_float = float(value)
    except OverflowError:
        return f"returned a number too large for a float ({type(value).__name__})"
    if not math.isfinite(as_float):
        return f"returned {as_float}"
    return None


def _failure_reason(e: BaseException) -> str:
    """A trial's failure reason for what the user's code raised."""
    if isinstance(e, SystemExit):
        return f"called sys.exit({e.code!r}), which ends a trial here, not the worker"
    return f"{type(e).__name__}: {one_line(e)}"


_GUARDED = ("suggest_float", "suggest_int", "suggest_categorical", "suggest_uniform",
            "suggest_loguniform", "suggest_discrete_uniform", "report", "should_prune",
            "set_user_attr", "set_constraint")


class GuardedTrial(optuna.trial.Trial):
    """The trial a user's function gets: an :class:`optuna.Trial` whose storage calls run
    :func:`hpo.signals.deferred` (a signal never breaks a write half way). Everything else is
    the wrapped trial's."""

    def __init__(self, trial: optuna.trial.Trial, declared: frozenset[str] = frozenset()
                 ) -> None:  # no super().__init__: a view of ``trial``
        self._inner = trial
        self._declared = declared  # the spec's params: asked again with other bounds, quietly
        self.storage_error: BaseException | None = None

    def __getattr__(self, name: str) -> Any:
        if name == "_inner":  # not set yet (a copy being made): no recursion
            raise AttributeError(name)
        return getattr(self._inner, name)

    def __repr__(self) -> str:
        return f"<trial {self._inner.number}>"


def _guard(name: str) -> Callable[..., Any]:
    def method(self: GuardedTrial, *args: Any, **kwargs: Any) -> Any:
        quiet = name.startswith("suggest_") and bool(args) and args[0] in self._declared
        with deferred(), warnings.catch_warnings():
            if quiet:  # the spec's bounds win over the function's: that is the design
                warnings.filterwarnings("ignore", "Inconsistent parameter values",
                                        RuntimeWarning)
            try:
                return getattr(self._inner, name)(*args, **kwargs)
            except Exception as e:
                if (isinstance(e, RuntimeFailure) or is_transient(e) or finished_elsewhere(e)
                        or refused(e) is not None):
                    self.storage_error = e  # the storage's, not the user's: not a failure
                raise

    method.__name__ = name
    method.__doc__ = getattr(optuna.trial.Trial, name).__doc__
    return method


for _name in _GUARDED:
    if hasattr(optuna.trial.Trial, _name):
        setattr(GuardedTrial, _name, _guard(_name))


class UserObjective:
    """The objective every trial of a user's spec runs; build once per worker."""

    def __init__(self, spec: Spec, fn: Callable[..., Any], *, max_failures: int | None = None,
                 debug: bool = False, test_fn: Callable[..., Any] | None = None) -> None:
        assert spec.objective is not None
        self.spec = spec
        self.fn = fn
        self.test_fn = test_fn
        self.name = spec.objective.function
        self.max_failures = (max_failures or spec.objective.max_failures
                             or catalog.MAX_FAILURES)
        self.debug = debug
        self.takes = _keywords(fn)
        self.failures = 0  # consecutive, in this worker

    def kwargs(self, seed: int | None, fn: Callable[..., Any] | None = None) -> dict[str, Any]:
        """The keywords ``fn`` (default: the objective) takes: ``seed`` and ``config``."""
        takes = self.takes if fn is None else _keywords(fn)
        out: dict[str, Any] = {}
        if "seed" in takes and seed is not None:
            out["seed"] = seed
        if "config" in takes:
            out["config"] = copy.deepcopy(self.spec.objective.config)  # type: ignore[union-attr]
        return out

    def __call__(self, trial: optuna.Trial) -> float:
        space = self.spec.suggest_space()
        if space:
            with deferred():
                suggest(trial, space)
        seed = model_seed(self.spec.seed, trial.number) if "seed" in self.takes else None
        guarded = GuardedTrial(trial, frozenset(p.name for p in space))
        attrs: dict[str, Any] = {} if seed is None else {"model_seed": seed}
        try:
            value = self.fn(guarded, **self.kwargs(seed))
        except optuna.TrialPruned:
            self.failures = 0
            self._record(trial, attrs)
            raise
        except KeyboardInterrupt:  # Ctrl-C, SIGTERM (hpo.signals): the worker stops
            raise
        except BaseException as e:  # sys.exit() included: the user's code fails one trial
            if guarded.storage_error is not None and guarded.storage_error in chain(e):
                raise  # the storage failed, not the user's code: the trial loop handles it
            self._failed(trial, attrs, _failure_reason(e), e)
        problem = bad_value(value)
        if problem is not None:
            self._failed(trial, attrs, problem, None)
        self.failures = 0
        self._record(trial, attrs)
        return float(value)

    @staticmethod
    def _record(trial: optuna.Trial, attrs: dict[str, Any]) -> None:
        if attrs:
            with deferred():
                for k, v in attrs.items():
                    trial.set_user_attr(k, v)

    def _failed(self, trial: optuna.Trial, attrs: dict[str, Any], reason: str,
                error: BaseException | None) -> None:
        self.failures += 1
        reason = reason[:MAX_REASON]
        self._record(trial, {**attrs, FAIL_REASON_ATTR: reason})
        log.warning("warning: trial %d failed: %s (objective %s)", trial.number, reason,
                    self.name)
        if self.debug and error is not None:
            traceback.print_exception(error, file=sys.stderr)
        if self.failures >= self.max_failures:
            raise TooManyFailures(f"objective {self.name} failed {self.failures} trials in a "
                                  f"row (max failures {self.max_failures}); the last: "
                                  f"{reason}") from error
        raise TrialFailed(reason) from error

    def rerun(self, params: dict[str, Any], seed: int | None = None, *,
              test: bool = False) -> float:
        """The function (or, with ``test``, the spec's ``[objective] test`` function) run once
        with fixed ``params`` (an :class:`optuna.trial.FixedTrial`) and ``seed`` when it takes
        one: how ``hpo confirm`` re-runs a configuration with fresh seeds and ``hpo test``
        measures it. Raises :class:`TrialFailed` when it fails or returns no finite number."""
        fn = self.test_fn if test else self.fn
        if fn is None:
            raise SpecError(f"{self.spec.objective.source}: objective.test: "  # type: ignore
                            "not set; name a test function, e.g. test = 'objective.py:test'")
        try:
            value = fn(optuna.trial.FixedTrial(dict(params)), **self.kwargs(seed, fn))
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # the user's code (sys.exit() included): one line
            raise TrialFailed(_failure_reason(e)) from e
        if (problem := bad_value(value)) is not None:
            raise TrialFailed(problem)
        return float(value)
