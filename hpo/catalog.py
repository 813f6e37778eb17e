"""Every name hpo knows, declared once: datasets, model choices, search parameters, samplers,
pruners and each sampler's and pruner's options (name, type, range, default).

Spec validation (:mod:`hpo.spec`), the sampler and pruner registries, ``hpo --help`` and the
README's tables all derive from these declarations. Standard library only, so that ``hpo
--help`` stays fast.

Example:

    .. code-block:: python

        from hpo import catalog

        print(catalog.SAMPLER_NAMES)          # ('narrowing', 'random', 'tpe', ...)
        tpe = catalog.SAMPLERS["tpe"]
        print(tpe.check({"n_startup_trials": 5}))  # {'n_startup_trials': 5}
        tpe.check({"n_startup_trials": "5"})  # ValueError: n_startup_trials: must be an integer ...
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: hpo's distribution on the package index (``pip install hpo-book``; "hpo" there is another
#: project). The command and the import are ``hpo``.
DIST = "hpo-book"

# --- data and model ------------------------------------------------------------------------

DATASETS: dict[str, str] = {
    "mnist5k": "5,000 real MNIST digits shipped inside hpo (offline)",
    "mnist": "the full 70,000 MNIST digits from the four IDX files (--data-dir or a download)",
    "digits": f"scikit-learn's 8x8 digits (1,797 images): fast tests; extra {DIST}[digits]",
}
DEFAULT_DATASET = "mnist5k"  # [data]'s and the loaders' defaults: the book's 500 samples,
DEFAULT_TRAIN_SIZE = 500
DEFAULT_VALIDATION_RATE = 0.2  # 20% of them held out (section 6.5)
EDGE_FRACTION = 0.1  # the edge rule: a best value within 10% of a range's width of an end
INITS = ("he", "xavier")
OPTIMIZERS = ("sgd", "momentum", "adagrad", "adam")
SAMPLINGS = ("replacement", "shuffle")
DTYPES = ("float32", "float64")
PARAM_TYPES = ("float", "int", "categorical")
# a user's objective ([objective]: hpo.objectives.user); the book's study maximizes val_acc
OBJECTIVE_KEYS = ("function", "direction", "metric", "config", "test", "max_failures")
DIRECTIONS = ("maximize", "minimize")
DEFAULT_DIRECTION = "maximize"  # the book's, and an [objective] that names none
DEFAULT_METRIC = "value"  # the metric name of a user objective that names none
MAX_FAILURES = 3  # a worker stops after this many consecutive failed trials (--max-failures)

#: Limits on what sizes a trial: beyond them one trial would take hours or all the memory.
MAX_EPOCHS = 100_000
MAX_WIDTH = 4096
MAX_LAYERS = 64
MAX_BATCH = 100_000
MAX_TRIALS = 100_000
MAX_TIMEOUT = 366 * 24 * 3600.0
MAX_SEED = 2**32 - 1  # Optuna's samplers seed NumPy's RandomState, which takes 32 bits
MAX_WORKERS = 128
MAX_HEARTBEAT = 3600  # seconds between heartbeats
MAX_GRACE = 86400  # seconds a silent trial may live
MAX_SPEC_BYTES = 1_000_000

#: A study name: letters, digits and ``-_.``, at most 64 characters, not starting with ``-``
#: or ``.``. Names hpo derives (``--seed``/``--data-seed``, ``hpo compare``) join such
#: segments with ``/``; names become file and folder names (``hpo report``), so nothing else.
NAME_CHARS = "ASCII letters, digits, '-', '_' and '.'"
MAX_NAME = 64


def name_problem(name: object, *, segments: bool = False) -> str | None:
    """Why ``name`` cannot be a study name (``None`` if it can). With ``segments``, ``/``
    may join several valid names (``book-random/seed3``), up to 4 x 64 characters."""
    if not isinstance(name, str):
        return f"must be a string, got {name!r}"
    parts = name.split("/") if segments else [name]
    limit = MAX_NAME * (4 if segments else 1)
    if not name or len(name) > limit:
        return f"must be 1 to {limit} characters, got {len(name)}"
    for part in parts:
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]*", part) or len(part) > MAX_NAME:
            what = f"{NAME_CHARS} (at most {MAX_NAME}, not starting with '-' or '.')"
            if segments:
                what += ", '/' joining such names"
            return f"may hold only {what}; got {shown(name)}"
    return None


def shown(value: object, limit: int = 60) -> str:
    """A value as a message shows it: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x: Any) -> bool:
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return False
    try:
        return math.isfinite(x)
    except OverflowError:  # an int too large for a float
        return False


@dataclass(frozen=True)
class SearchParam:
    """A hyperparameter the objective knows how to apply."""

    name: str
    help: str
    types: tuple[str, ...]  # allowed [search.<name>] types
    allowed: str  # what values are allowed, in words
    ok: Callable[[Any], bool]  # one value allowed?


SEARCH_PARAMS: dict[str, SearchParam] = {p.name: p for p in (
    SearchParam("lr", "optimizer learning rate", ("float", "categorical"), "positive numbers",
                lambda x: _is_num(x) and x > 0),
    SearchParam("weight_decay", "L2 weight decay (lambda)", ("float", "categorical"),
                "numbers >= 0",
                lambda x: _is_num(x) and x >= 0),
    SearchParam("dropout", "dropout ratio of every hidden layer", ("float", "categorical"),
                "numbers in [0, 1)", lambda x: _is_num(x) and 0 <= x < 1),
    SearchParam("hidden_width", "units in every hidden layer", ("int", "categorical"),
                f"integers in [1, {MAX_WIDTH}]", lambda x: _is_int(x) and 1 <= x <= MAX_WIDTH),
    SearchParam("hidden_layers", "number of hidden layers", ("int", "categorical"),
                f"integers in [0, {MAX_LAYERS}]", lambda x: _is_int(x) and 0 <= x <= MAX_LAYERS),
    SearchParam("batch_size", "minibatch size", ("int", "categorical"),
                f"integers in [1, {MAX_BATCH}]", lambda x: _is_int(x) and 1 <= x <= MAX_BATCH),
    SearchParam("optimizer", "optimizer name", ("categorical",), ", ".join(OPTIMIZERS),
                lambda x: x in OPTIMIZERS),
    SearchParam("init", "weight init", ("categorical",), ", ".join(INITS),
                lambda x: x in INITS),
    SearchParam("batchnorm", "BatchNorm after each hidden Affine", ("categorical",),
                "true, false", lambda x: isinstance(x, bool)),
)}

# --- options of samplers and pruners ----------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One keyword option of a sampler or pruner, as a spec file may set it.

    ``kind``: ``int``, ``float``, ``bool``, ``choice`` (one of ``choices``), ``int-or-auto``,
    ``pairs`` (a table of param = [low, high]) or ``numbers`` (a table of param = number).
    ``low``/``high`` bound numbers (``open_low``/``open_high``: the bound itself is excluded).
    ``default``: the value hpo uses when the option is absent (``None``: the class's own).
    ``in_spec``: whether a spec file may set it (some are set by hpo itself); ``in_class``:
    whether it is a keyword argument of the class (else hpo itself applies it).
    """

    name: str
    kind: str
    help: str
    default: Any = None
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    choices: tuple[str, ...] = ()
    in_spec: bool = True
    in_class: bool = True

    def allowed(self) -> str:
        """What values are allowed, in words."""
        if self.kind == "bool":
            return "true or false"
        if self.kind == "choice":
            return "one of " + ", ".join(self.choices)
        if self.kind == "pairs":
            return "a table of param = [low, high]"
        if self.kind == "numbers":
            return "a table of param = number"
        what = {"int": "an integer", "float": "a finite number",
                "int-or-auto": "an integer or \"auto\""}[self.kind]
        return what + bounds_text(self.low, self.high, open_low=self.open_low,
                                  open_high=self.open_high)

    def check(self, value: Any) -> Any:
        """``value`` if allowed (ints given for a float option stay as given), else ValueError
        with a one-line message: what is allowed and what was given."""
        ok = True
        if self.kind == "bool":
            ok = isinstance(value, bool)
        elif self.kind == "choice":
            ok = isinstance(value, str) and value in self.choices
        elif self.kind == "pairs":
            ok = isinstance(value, Mapping)
        elif self.kind == "numbers":
            ok = isinstance(value, Mapping) and all(_is_num(v) for v in value.values())
        elif self.kind == "int-or-auto" and value == "auto":
            ok = True
        else:
            number = _is_int(value) if self.kind in ("int", "int-or-auto") else _is_num(value)
            ok = number and in_bounds(value, self.low, self.high, open_low=self.open_low,
                                      open_high=self.open_high)
        if not ok:
            raise ValueError(f"must be {self.allowed()}, got {shown(value)}")
        return value


def num_text(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


def in_bounds(x: float, low: float | None = None, high: float | None = None, *,
              open_low: bool = False, open_high: bool = False) -> bool:
    """Whether ``x`` is within the bounds: the one check of a number (options, spec values)."""
    return not ((low is not None and (x <= low if open_low else x < low))
                or (high is not None and (x >= high if open_high else x > high)))


def bounds_text(low: float | None = None, high: float | None = None, *,
                open_low: bool = False, open_high: bool = False) -> str:
    """:func:`in_bounds`'s bounds in words: `` in (0, 0.5)``, `` >= 1``, `` < 1``, or ``""``."""
    if low is not None and high is not None:
        return f" in {'(['[not open_low]}{num_text(low)}, {num_text(high)}{')]'[not open_high]}"
    if low is not None:
        return f" {'>' if open_low else '>='} {num_text(low)}"
    if high is not None:
        return f" {'<' if open_high else '<='} {num_text(high)}"
    return ""


class OptionError(ValueError):
    """An option that is unknown, of the wrong type or out of range, or a broken rule between
    options: ``key`` names it, ``reason`` says what is allowed and what was given."""

    def __init__(self, key: str, reason: str, unknown: list[str] | None = None) -> None:
        super().__init__(f"{key}: {reason}")
        self.key, self.reason, self.unknown = key, reason, unknown or []


@dataclass(frozen=True)
class Component:
    """A sampler or pruner: its name, the class that implements it (imported only when built),
    its options, and the rules between options (``rules``: options -> a (key, message) pair
    for the first one broken, else ``None``)."""

    name: str
    target: str  # "module:Class"
    help: str
    options: tuple[Option, ...] = ()
    requires: tuple[str, str] | None = None  # (module that must be importable, how to install)
    rules: Callable[[Mapping[str, Any], dict[str, Any]], tuple[str, str] | None] | None = None
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def option_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.options)

    @property
    def spec_option_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.options if o.in_spec)

    def option(self, name: str) -> Option | None:
        return next((o for o in self.options if o.name == name), None)

    def check(self, options: Mapping[str, Any], *, spec: bool = False,
              context: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Validate ``options``: every name known (of those a spec may set, with ``spec``),
        every value allowed, every rule kept (``context``: e.g. the spec's ``epochs``).
        Raises :class:`OptionError` naming the option."""
        names = self.spec_option_names if spec else self.option_names
        unknown = [key for key in options if key not in names]
        if unknown:
            allowed = f"allowed: {', '.join(names) or 'none'}"
            if self.kind == "pruner":
                reason = f"pruner {self.name!r} has no option {unknown[0]!r}; {allowed}"
            else:
                reason = (f"unknown option(s) for {self.kind} {self.name!r}: "
                          f"{', '.join(unknown)}; {allowed}")
            raise OptionError(unknown[0], reason, unknown)
        checked = {}
        for key, value in options.items():
            try:
                checked[key] = self.option(key).check(value)  # type: ignore[union-attr]
            except ValueError as e:
                raise OptionError(key, str(e)) from None
        broken = self.rules(checked, dict(context or {})) if self.rules else None
        if broken:
            raise OptionError(*broken)
        return checked

    def defaults(self) -> dict[str, Any]:
        """hpo's defaults that differ from (or fix) the class's own."""
        return {o.name: o.default for o in self.options if o.default is not None}

    @property
    def kind(self) -> str:
        return self.extra.get("kind", "sampler")


def _narrowing_rules(o: Mapping[str, Any], ctx: dict[str, Any]) -> tuple[str, str] | None:
    stage, keep = o.get("stage_trials", 100), o.get("keep_top", 0)
    if keep > stage:
        return "keep_top", f"must be <= stage_trials ({stage}), got {keep}"
    if o.get("bounds") and o.get("shift") is not True:
        return "bounds", "needs shift = true (without it the ranges never leave [search])"
    return None


def _tpe_rules(o: Mapping[str, Any], ctx: dict[str, Any]) -> tuple[str, str] | None:
    if o.get("group") and not o.get("multivariate"):
        return "group", "needs multivariate = true"
    return None


def _cmaes_rules(o: Mapping[str, Any], ctx: dict[str, Any]) -> tuple[str, str] | None:
    if o.get("use_separable_cma") and o.get("with_margin"):
        return "with_margin", "cannot be combined with use_separable_cma = true"
    return None


def _rung_rules(o: Mapping[str, Any], ctx: dict[str, Any]) -> tuple[str, str] | None:
    """Successive halving and hyperband, for the rungs a spec sets: the first rung comes before
    the last epoch and before the largest resource, which is at most the trial's epochs."""
    epochs = ctx.get("epochs")
    low, top = o.get("min_resource", "auto"), o.get("max_resource", "auto")
    if top != "auto":
        if epochs is not None and top > epochs:
            return "max_resource", f"must be <= model.epochs ({epochs}), got {top}"
        if low != "auto" and low >= top:
            return "min_resource", f"must be < max_resource ({top}), got {low}"
    if epochs is not None and low != "auto" and low >= epochs:
        return "min_resource", f"must be < model.epochs ({epochs}), got {low}"
    return None


SAMPLERS: dict[str, Component] = {c.name: c for c in (
    Component(
        "narrowing", "hpo.samplers.narrowing:NarrowingSampler",
        "the book's search: random stages, each inside the ranges of the previous stage's best",
        (
            Option("stage_trials", "int", "trials per stage", 100, low=1, high=MAX_TRIALS),
            Option("keep_top", "int", "best trials of a stage that span the next ranges", 10,
                   low=1, high=MAX_TRIALS),
            Option("margin", "float", "widen each range by this fraction of its width per side",
                   0.0, low=0.0, high=100.0),
            Option("wait_timeout", "float", "longest wait (s) for the previous stage to finish",
                   600.0, low=0.0, high=MAX_TIMEOUT),
            Option("poll_interval", "float", "seconds between re-reads while waiting", 0.5,
                   low=0.0, high=60.0, open_low=True),
            Option("edge_fraction", "float", "width fraction that counts as 'at an edge'",
                   EDGE_FRACTION,
                   low=0.0, high=0.5, open_low=True, open_high=True),
            Option("shift", "bool", "move a range outward when its best crowds an edge", False),
            Option("initial", "pairs", "stage 0's ranges (hpo sets them from [search])",
                   in_spec=False),
            Option("bounds", "pairs", "hard limits of a shift = true search: param = [low, high]"
                   " around its [search] range", in_class=False),
        ),
        rules=_narrowing_rules),
    Component("random", "hpo.samplers.keyed:KeyedRandomSampler",
              "uniform (log-uniform) random search"),
    Component(
        "tpe", "optuna.samplers:TPESampler", "Optuna's Tree-structured Parzen Estimator",
        (
            Option("n_startup_trials", "int", "random trials before TPE models", low=0,
                   high=MAX_TRIALS),
            Option("n_ei_candidates", "int", "candidates scored per suggestion", low=1,
                   high=10_000),
            Option("multivariate", "bool", "model the params jointly"),
            Option("group", "bool", "multivariate per group of params seen together"),
            Option("constant_liar", "bool", "avoid parallel workers drawing the same point"),
            Option("consider_prior", "bool", "add a prior to the Parzen estimators"),
            Option("prior_weight", "float", "weight of the prior", low=0.0, high=1e6,
                   open_low=True),
            Option("consider_magic_clip", "bool", "clip the estimators' bandwidths"),
            Option("consider_endpoints", "bool", "use the range's ends in the bandwidths"),
            Option("warn_independent_sampling", "bool", "warn when a param is sampled alone"),
        ),
        rules=_tpe_rules),
    Component(
        "cmaes", "optuna.samplers:CmaEsSampler", "Optuna's CMA-ES (needs cmaes)",
        (
            Option("x0", "numbers", "initial mean: param = value"),
            Option("sigma0", "float", "initial step size", low=0.0, high=1e6, open_low=True),
            Option("n_startup_trials", "int", "random trials first", low=0, high=MAX_TRIALS),
            Option("popsize", "int", "population size", low=1, high=10_000),
            Option("inc_popsize", "int", "population growth at a restart (-1: none)", low=-1,
                   high=100),
            Option("restart_strategy", "choice", "restart when converged",
                   choices=("ipop", "bipop")),
            Option("consider_pruned_trials", "bool", "learn from pruned trials"),
            Option("use_separable_cma", "bool", "diagonal covariance"),
            Option("with_margin", "bool", "CMA-ES with margin (int and stepped params)"),
            Option("lr_adapt", "bool", "learning-rate adaptation"),
            Option("warn_independent_sampling", "bool", "warn when a param is sampled alone"),
        ),
        requires=("cmaes", "pip install cmaes"), rules=_cmaes_rules),
    Component(
        "qmc", "hpo.samplers.keyed:KeyedQMCSampler", "quasi-Monte Carlo points (scrambled Sobol')",
        (
            Option("qmc_type", "choice", "sequence", choices=("sobol", "halton")),
            Option("scramble", "bool", "randomise the sequence", True),
            Option("warn_asynchronous_seeding", "bool", "warn about an unseeded sequence"),
            Option("warn_independent_sampling", "bool", "warn when a param is sampled alone"),
        )),
    Component(
        "gp", "optuna.samplers:GPSampler", "Gaussian-process Bayesian optimization (needs torch)",
        (
            Option("n_startup_trials", "int", "random trials first", low=0, high=MAX_TRIALS),
            Option("deterministic_objective", "bool", "assume noise-free values"),
            Option("warn_independent_sampling", "bool", "warn when a param is sampled alone"),
        ),
        requires=("torch", f"pip install '{DIST}[gp]'")),
)}

_PRUNER = {"kind": "pruner"}

PRUNERS: dict[str, Component] = {c.name: c for c in (
    Component("none", "optuna.pruners:NopPruner", "no pruning: every trial trains to the end",
              extra=_PRUNER),
    Component(
        "median", "hpo.samplers.pruners:MedianPruner",
        "stop a trial below the median of earlier trials at the same epoch",
        (
            Option("n_startup_trials", "int", "trials never pruned first", 5, low=0,
                   high=MAX_TRIALS),
            Option("n_warmup_steps", "int", "epochs before pruning starts", 5, low=0,
                   high=MAX_EPOCHS),
            Option("interval_steps", "int", "epochs between pruning checks", 5, low=1,
                   high=MAX_EPOCHS),
            Option("n_min_trials", "int", "trials reported at a step before it prunes", low=1,
                   high=MAX_TRIALS),
        ),
        extra=_PRUNER),
    Component(
        "hyperband", "optuna.pruners:HyperbandPruner",
        "Hyperband: several successive-halving brackets",
        (
            Option("min_resource", "int", "epochs of the first rung", 5, low=1, high=MAX_EPOCHS),
            Option("max_resource", "int-or-auto", "epochs of a full trial (default: epochs)",
                   low=1, high=MAX_EPOCHS),
            Option("reduction_factor", "int", "keep 1 in this many at each rung", low=2,
                   high=100),
            Option("bootstrap_count", "int", "trials a rung needs before it prunes", low=0,
                   high=MAX_TRIALS),
        ),
        rules=_rung_rules, extra=_PRUNER),
    Component(
        "successive-halving", "optuna.pruners:SuccessiveHalvingPruner",
        "asynchronous successive halving",
        (
            Option("min_resource", "int-or-auto", "epochs of the first rung", 5, low=1,
                   high=MAX_EPOCHS),
            Option("reduction_factor", "int", "keep 1 in this many at each rung", low=2,
                   high=100),
            Option("min_early_stopping_rate", "int", "skip this many rungs", low=0, high=100),
            Option("bootstrap_count", "int", "trials a rung needs before it prunes", low=0,
                   high=MAX_TRIALS),
        ),
        rules=_rung_rules, extra=_PRUNER),
)}

SAMPLER_NAMES: tuple[str, ...] = tuple(SAMPLERS)


def pruner_kwargs(name: str, options: Mapping[str, Any], epochs: int) -> dict[str, Any]:
    """Keyword arguments of a pruner's class: hpo's defaults (hyperband's largest resource is
    the trial's epochs), then ``options``."""
    defaults = PRUNERS[name].defaults()
    if name == "hyperband":
        defaults["max_resource"] = epochs
    return {**defaults, **options}
PRUNER_NAMES: tuple[str, ...] = tuple(PRUNERS)


def markdown() -> str:
    """The README's tables of samplers, pruners and their options (tests keep them in step)."""
    lines = []
    for title, components in (("sampler", SAMPLERS), ("pruner", PRUNERS)):
        lines += [f"| {title} | what it is | options a spec may set (hpo's default) |",
                  "|---|---|---|"]
        for c in components.values():
            opts = [f"`{o.name}`" + (f" ({_value_text(o.default)})" if o.default is not None
                                     else "") for o in c.options if o.in_spec]
            lines.append(f"| `{c.name}` | {c.help} | {', '.join(opts) or '—'} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _value_text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(v) if isinstance(v, str) else f"{v:g}" if isinstance(v, float) else str(v)


if __name__ == "__main__":  # python -m hpo.catalog: the README's tables
    print(markdown(), end="")
