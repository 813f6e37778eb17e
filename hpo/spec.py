"""Study spec files: parse, validate, defaults. No Optuna objects are built here.

A spec is a TOML file (see ``studies/``) with these tables; every key has a default except the
search space::

    name = "book-random"                    # default study name
    seed = 0                                # sampler seed; model seeds derive from it
    [data]     dataset, train_size, validation_rate, seed (the split seed), data_dir
    [model]    hidden, init, batchnorm, dropout, optimizer, epochs, batch_size, sampling, dtype,
               eval_every
    [search.<param>]  type = "float" | "int" | "categorical", low/high/log/step or choices
    [sampler]  name, and the sampler's options as further keys
    [pruner]   name, and the pruner's options as further keys
    [budget]   n_trials, timeout (seconds, 0 = none)
    [tracking] mlflow (an MLflow tracking URI: one MLflow run per finished trial)
    [objective] a user's own function instead of the book's MLP: docs/objectives.md

Every name and option is checked against :mod:`hpo.catalog`, the one declaration of what
exists. Errors name the file, the key and what is allowed (:class:`SpecError`, one line).
A validated spec hands out ready keyword arguments for its sampler and pruner
(:meth:`Spec.sampler_kwargs`, :meth:`Spec.pruner_kwargs`).
"""

from __future__ import annotations

import json
import logging
import math
import sys
from dataclasses import asdict, dataclass, field, replace
from dataclasses import replace as replace_data
from pathlib import Path
from typing import Any

from hpo import catalog
from hpo.catalog import shown
from hpo.errors import SpecError
from hpo.spec_checks import MAX_CHOICES, ObjectiveSpec, Validator, long_integer, objective_table

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["DataSpec", "ModelSpec", "ObjectiveSpec", "Param", "Spec", "SpecError", "from_dict",
           "from_json", "load_spec"]

# The catalog's names, under the names this module has always exported.
DATASETS = tuple(catalog.DATASETS)
INITS = catalog.INITS
OPTIMIZERS = catalog.OPTIMIZERS
SAMPLINGS = catalog.SAMPLINGS
DTYPES = catalog.DTYPES
SAMPLERS = catalog.SAMPLER_NAMES
PRUNERS = catalog.PRUNER_NAMES
PARAM_TYPES = catalog.PARAM_TYPES
SEARCHABLE = {name: p.help for name, p in catalog.SEARCH_PARAMS.items()}


@dataclass(frozen=True)
class Param:
    """One search-space dimension."""

    name: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.type}
        if self.type == "categorical":
            d["choices"] = list(self.choices)
        else:
            d.update(low=self.low, high=self.high, log=self.log)
            if self.step is not None:
                d["step"] = self.step
        return d


@dataclass(frozen=True)
class DataSpec:
    dataset: str = catalog.DEFAULT_DATASET
    train_size: int = catalog.DEFAULT_TRAIN_SIZE
    validation_rate: float = catalog.DEFAULT_VALIDATION_RATE
    seed: int = 0
    data_dir: str | None = None


@dataclass(frozen=True)
class ModelSpec:
    hidden: tuple[int, ...] = (100, 100, 100, 100, 100, 100)
    init: str = "he"
    batchnorm: bool = False
    dropout: float = 0.0
    optimizer: str = "sgd"
    lr: float = 0.01
    weight_decay: float = 0.0
    epochs: int = 50
    batch_size: int = 100
    sampling: str = "replacement"
    dtype: str = "float32"
    eval_every: int = 1  # accuracy every k epochs (and the last, and the pruner steps)


@dataclass(frozen=True)
class Spec:
    """A validated study spec."""

    name: str
    search: tuple[Param, ...]
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    sampler: str = "random"
    sampler_options: dict[str, Any] = field(default_factory=dict)
    pruner: str = "none"
    pruner_options: dict[str, Any] = field(default_factory=dict)
    n_trials: int = 100
    timeout: float | None = None
    seed: int = 0
    description: str = ""
    mlflow: str | None = None  # [tracking] mlflow: an MLflow tracking URI (hpo.tracking)
    objective: ObjectiveSpec | None = None  # [objective]: a user's function; None: the book's MLP
    source: str = field(default="spec", compare=False)  # the file (or study) it was read from

    @property
    def direction(self) -> str:  # "maximize" (the book's val acc), or the objective's
        return self.objective.direction if self.objective else catalog.DEFAULT_DIRECTION

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain data, the same shape as the TOML file (round-trips via from_dict)."""
        d: dict[str, Any] = {"name": self.name, "seed": self.seed}
        if self.description:
            d["description"] = self.description
        if self.objective is not None:
            d["objective"] = self.objective.to_dict()
        else:
            data = asdict(self.data)
            if data["data_dir"] is None:
                del data["data_dir"]
            d["data"] = data
            model = asdict(self.model)
            model["hidden"] = list(self.model.hidden)
            d["model"] = model
        d["search"] = {p.name: p.to_dict() for p in self.search}
        d["sampler"] = {"name": self.sampler, **self.sampler_options}
        d["pruner"] = {"name": self.pruner, **self.pruner_options}
        d["budget"] = {"n_trials": self.n_trials, "timeout": self.timeout or 0}
        if self.mlflow is not None:
            d["tracking"] = {"mlflow": self.mlflow}
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def suggest_space(self) -> tuple[Param, ...]:
        """The space the objective asks Optuna for.

        ``search`` with each numeric param's low/high widened to the narrowing sampler's
        ``[sampler.bounds]``: the distributions are the hard limits of a ``shift = true``
        search, and ``search`` is where its stage 0 starts (``initial``). Without bounds,
        ``search`` itself.
        """
        bounds = self.sampler_options.get("bounds") if self.sampler == "narrowing" else None
        if not bounds:
            return self.search

        space = []
        for p in self.search:
            if p.name in bounds and p.type != "categorical":
                low, high = bounds[p.name]
                conv = int if p.type == "int" else float
                p = replace(p, low=conv(low), high=conv(high))
            space.append(p)
        return tuple(space)

    def replace(self, **changes: Any) -> Spec:

        return replace(self, **changes)

    def with_data_dir(self, data_dir: str | None) -> Spec:
        """This spec reading its dataset's files from ``data_dir`` (``--data-dir``: a path on
        the machine that runs it; the study keeps the spec as written). Only ``mnist`` reads
        files: with another dataset the folder is not used, and a warning says so."""
        if data_dir is None:
            return self
        if self.data.dataset != "mnist":

            logging.getLogger("hpo").warning(
                "warning: --data-dir %s is not used: dataset %r ships with hpo (only 'mnist' "
                "reads files)", data_dir, self.data.dataset)
            return self
        from hpo.nn.data import DataDir  # an error about the folder names the flag

        return self.replace(data=replace_data(self.data, data_dir=DataDir(data_dir, "--data-dir")))

    def sampler_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the sampler's class (without ``seed``): hpo's defaults, then
        the spec's options. A narrowing spec with ``[sampler.bounds]`` starts stage 0 in
        ``[search]`` (``initial``) while the objective asks for the bounds
        (:meth:`suggest_space`); ``bounds`` itself is enforced by those distributions."""
        kwargs = {**catalog.SAMPLERS[self.sampler].defaults(), **self.sampler_options}
        bounds = kwargs.pop("bounds", None)
        if self.sampler == "narrowing" and bounds:
            kwargs["initial"] = {p.name: (p.low, p.high) for p in self.search
                                 if p.type != "categorical"}
        return kwargs

    def pruner_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the pruner's class: hpo's defaults (hyperband's largest
        resource is the trial's epochs), then the spec's options."""
        return catalog.pruner_kwargs(self.pruner, self.pruner_options, self.model.epochs)


def load_spec(path: str | Path) -> Spec:
    """Read and validate a TOML spec file (UTF-8, a byte-order mark allowed, at most 1 MB)."""
    p = Path(path)
    return from_dict(read_table(p), str(p), p.stem, base=str(p.resolve().parent))


def read_table(path: str | Path) -> dict[str, Any]:
    """A spec file's TOML table, read and parsed but not validated (one-line errors)."""
    p = Path(path)
    try:
        if p.is_dir():
            raise SpecError(f"{p}: is a directory, not a spec file (TOML)")
        if not p.exists():
            raise SpecError(f"{p}: spec file not found")
        if not p.is_file():
            raise SpecError(f"{p}: is not a regular file; a spec is a TOML file")
        size = p.stat().st_size
        if size > catalog.MAX_SPEC_BYTES:
            raise SpecError(f"{p}: is {size} bytes; a spec is a TOML file of at most "
                            f"{catalog.MAX_SPEC_BYTES} bytes")
        data = p.read_bytes()
    except OSError as e:
        raise SpecError(f"{p}: cannot read: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise SpecError(f"{p}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset "
                        f"{e.start}); save the spec as UTF-8") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{p}: not valid TOML: {str(e).splitlines()[0]}") from None
    except (RecursionError, ValueError) as e:  # pathological nesting, huge numbers
        what = long_integer(text, tomllib.loads) if isinstance(e, ValueError) else None
        raise SpecError(f"{p}: {what or f'not valid TOML: {type(e).__name__}'}") from None
    return raw


def from_json(text: str, source: str = "stored spec") -> Spec:
    return from_dict(json.loads(text), source=source, stored=True)


def from_dict(raw: dict[str, Any], source: str = "spec", default_name: str = "study",
              base: str | None = None, stored: bool = False) -> Spec:
    """Validate plain data (parsed TOML or stored JSON) into a :class:`Spec`. ``base``: the
    folder of the spec file (a user objective's file is relative to it). ``stored``: a study's
    own spec, read as earlier versions wrote it (checks added since are not applied)."""
    v = _Validator(source)
    v.stored = stored
    v.keys("", raw, {"name", "description", "seed", "data", "model", "search", "sampler",
                     "pruner", "budget", "tracking", "objective"})
    objective = objective_table(v, raw["objective"], base) if "objective" in raw else None
    for table in ("data", "model") if objective else ():
        if table in raw:
            raise v.fail(table, "a spec with [objective] takes no [data] nor [model]: they "
                                "belong to the book's MLP (put fixed settings in "
                                "[objective.config])")
    v.free = objective is not None
    name = v.string("name", raw.get("name", default_name))
    problem = catalog.name_problem(name)
    if problem:
        where = "name" if "name" in raw else "name (from the file's name)"
        raise SpecError(f"{source}: {where}: {problem}")
    seed = v.integer("seed", raw.get("seed", 0), minimum=0, maximum=catalog.MAX_SEED)

    d = v.table("data", raw.get("data", {}))
    v.keys("data", d, {"dataset", "train_size", "validation_rate", "seed", "data_dir"})
    data_defaults = DataSpec()
    data = DataSpec(
        dataset=v.choice("data.dataset", d.get("dataset", data_defaults.dataset), DATASETS),
        train_size=v.integer("data.train_size", d.get("train_size", data_defaults.train_size),
                             minimum=2),
        validation_rate=v.number("data.validation_rate",
                                 d.get("validation_rate", data_defaults.validation_rate),
                                 low=0.0, high=1.0, open_=True),
        seed=v.integer("data.seed", d.get("seed", 0), minimum=0, maximum=catalog.MAX_SEED),
        data_dir=v.folder("data.data_dir", d["data_dir"]) if "data_dir" in d else None,
    )

    m = v.table("model", raw.get("model", {}))
    defaults = ModelSpec()
    v.keys("model", m, set(asdict(defaults)))
    hidden = m.get("hidden", list(defaults.hidden))
    if (not isinstance(hidden, list) or len(hidden) > catalog.MAX_LAYERS or not all(
            _int(h) and 0 < h <= catalog.MAX_WIDTH for h in hidden)):
        raise SpecError(f"{source}: model.hidden: must be a list of positive integers (at most "
                        f"{catalog.MAX_LAYERS} layers of at most {catalog.MAX_WIDTH} units), "
                        f"got {catalog.shown(hidden)}")
    model = ModelSpec(
        hidden=tuple(hidden),
        init=v.choice("model.init", m.get("init", defaults.init), INITS),
        batchnorm=v.boolean("model.batchnorm", m.get("batchnorm", defaults.batchnorm)),
        dropout=v.number("model.dropout", m.get("dropout", defaults.dropout), low=0.0, high=1.0,
                         open_high=True),
        optimizer=v.choice("model.optimizer", m.get("optimizer", defaults.optimizer), OPTIMIZERS),
        lr=v.number("model.lr", m.get("lr", defaults.lr), low=0.0, open_=True),
        weight_decay=v.number("model.weight_decay", m.get("weight_decay", 0.0), low=0.0),
        epochs=v.integer("model.epochs", m.get("epochs", defaults.epochs), minimum=1,
                         maximum=catalog.MAX_EPOCHS),
        batch_size=v.integer("model.batch_size", m.get("batch_size", defaults.batch_size),
                             minimum=1, maximum=catalog.MAX_BATCH),
        sampling=v.choice("model.sampling", m.get("sampling", defaults.sampling), SAMPLINGS),
        dtype=v.choice("model.dtype", m.get("dtype", defaults.dtype), DTYPES),
        eval_every=v.integer("model.eval_every", m.get("eval_every", defaults.eval_every),
                             minimum=1, maximum=catalog.MAX_EPOCHS),
    )

    s = v.table("search", raw.get("search"))
    if not s and objective is None:
        raise SpecError(f"{source}: search: needs at least one parameter, e.g. [search.lr]")
    search = tuple(v.param(name, body) for name, body in s.items())

    sm = dict(v.table("sampler", raw.get("sampler", {})))
    sampler = v.choice("sampler.name", sm.pop("name", "random"), SAMPLERS)
    pr = dict(v.table("pruner", raw.get("pruner", {})))
    pruner = v.choice("pruner.name", pr.pop("name", "none"), PRUNERS)

    b = v.table("budget", raw.get("budget", {}))
    v.keys("budget", b, {"n_trials", "timeout"})
    n_trials = v.integer("budget.n_trials", b.get("n_trials", 100), minimum=1,
                         maximum=catalog.MAX_TRIALS)
    timeout = v.number("budget.timeout", b.get("timeout", 0), low=0.0, high=catalog.MAX_TIMEOUT)
    tr = v.table("tracking", raw.get("tracking", {}))
    v.keys("tracking", tr, {"mlflow"})
    mlflow = v.string("tracking.mlflow", tr["mlflow"]) if "mlflow" in tr else None
    if mlflow is not None and not mlflow.strip():
        raise v.fail("tracking.mlflow", "must be an MLflow tracking URI, e.g. "
                                        "'file:./mlruns' or 'sqlite:///mlflow.db', got ''")

    if objective is None:
        _check_split(source, data)
        for p in search:
            _check_values(source, p)
    if "bounds" in sm:
        _check_bounds(source, sampler, sm, search)
    sm = v.options("sampler", catalog.SAMPLERS[sampler], sm, {})
    pr = v.options("pruner", catalog.PRUNERS[pruner], pr,
                   {} if objective else {"epochs": model.epochs})
    if "x0" in sm:
        _check_x0(source, sm["x0"], search)
    return Spec(name=name, search=search, data=data, model=model, sampler=sampler,
                sampler_options=sm, pruner=pruner, pruner_options=pr, n_trials=n_trials,
                timeout=timeout or None, seed=seed,
                description=v.text("description", raw.get("description", "")), mlflow=mlflow,
                objective=objective, source=source)


def _check_split(source: str, data: DataSpec) -> None:
    from hpo.nn.data import DataError, validate_split

    try:
        validate_split(data.dataset, data.train_size, data.validation_rate)
    except DataError as e:
        raise SpecError(f"{source}: data: {e}") from None


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_values(source: str, p: Param) -> None:
    """Every value the search can draw must be one the objective accepts."""
    rule = catalog.SEARCH_PARAMS[p.name]
    values = p.choices if p.type == "categorical" else (p.low, p.high)
    if p.type not in rule.types:
        raise SpecError(f"{source}: search.{p.name}.type: must be "
                        f"{' or '.join(rule.types)}")
    for x in values:
        if not rule.ok(x):
            raise SpecError(f"{source}: search.{p.name}: {x!r} is not allowed; "
                            f"allowed: {rule.allowed}")


def _check_x0(source: str, x0: dict[str, Any], search: tuple[Param, ...]) -> None:
    """CMA-ES's initial mean: a value inside [search] for numeric params only."""
    params = {p.name: p for p in search}
    for name, value in x0.items():
        p = params.get(name)
        if p is None or p.type == "categorical":
            numeric = [q.name for q in search if q.type != "categorical"]
            raise SpecError(f"{source}: sampler.x0.{name}: not a numeric parameter of [search]; "
                            f"numeric ones: {', '.join(numeric) or 'none'}")
        assert p.low is not None and p.high is not None
        if not p.low <= value <= p.high:
            raise SpecError(f"{source}: sampler.x0.{name}: must lie in [{p.low}, {p.high}], "
                            f"got {shown(value)}")


def _check_bounds(
    source: str, sampler: str, options: dict[str, Any], search: tuple[Param, ...]
) -> None:
    """``[sampler.bounds]`` of a narrowing spec: ``param = [low, high]`` around its search range.

    The objective asks for the bounds (:meth:`Spec.suggest_space`), the sampler starts from
    ``[search]`` and, with ``shift = true``, may move out to the bounds."""
    if "bounds" not in options:
        return
    bounds = options["bounds"]

    def fail(key: str, msg: str) -> SpecError:
        return SpecError(f"{source}: sampler.bounds{key}: {msg}")

    if sampler != "narrowing":
        raise fail("", f"only the narrowing sampler takes bounds, not {sampler!r}")
    if not isinstance(bounds, dict):
        raise fail("", f"must be a table of param = [low, high], got {shown(bounds)}")
    # "needs shift = true" is the catalog's rule of the narrowing sampler (checked next)
    params = {p.name: p for p in search}
    for name, value in bounds.items():
        key = f".{name}"
        p = params.get(name)
        if p is None:
            raise fail(key, f"not a parameter of [search]; searched: {', '.join(params)}")
        if p.type == "categorical":
            raise fail(key, "a categorical parameter has no bounds; only float and int do")
        is_ok = _int if p.type == "int" else _num
        if (not isinstance(value, list) or len(value) != 2 or not all(map(is_ok, value))
                or not all(math.isfinite(x) for x in value)):
            kind = "integers" if p.type == "int" else "finite numbers"
            raise fail(key, f"must be [low, high] of two {kind}, got {shown(value)}")
        low, high = value
        if low >= high:
            raise fail(key, f"low must be < high, got low={low}, high={high}")
        if p.log and low <= 0:
            raise fail(key, f"a log parameter needs low > 0, got low={low}")
        assert p.low is not None and p.high is not None
        if low > p.low or high < p.high:
            raise fail(key, f"must contain the search range [{p.low}, {p.high}], "
                            f"got [{low}, {high}]")
        if p.step is not None:
            off = [(x - p.low) / p.step for x in (low, high)]
            if any(abs(k - round(k)) > 1e-9 * max(1.0, abs(k)) for k in off):
                raise fail(key, f"must lie on the step grid of search.{name} "
                                f"({p.low} + k * {p.step}), got [{low}, {high}]")
        rule = catalog.SEARCH_PARAMS.get(name)  # none for a user objective's params
        for x in (low, high) if rule else ():
            if not rule.ok(x):
                raise fail(key, f"{x!r} is not allowed; allowed: {rule.allowed}")


class _Validator(Validator):
    """The typed getters, plus the search space's parameters (``free``: any names, for a
    user objective; else the book's)."""

    free = False

    def param(self, name: str, body: Any) -> Param:
        key = f"search.{name}"
        if self.free and not 0 < len(name) <= 100:
            raise self.fail(key, "a parameter's name must have 1 to 100 characters")
        if name not in catalog.SEARCH_PARAMS and not self.free:
            raise self.fail(key, "unknown parameter; allowed: "
                                 + ", ".join(catalog.SEARCH_PARAMS))
        body = self.table(key, body)
        ptype = self.choice(f"{key}.type", body.get("type", "float"), PARAM_TYPES)
        if ptype == "categorical":
            self.keys(key, body, {"type", "choices"})
            choices = body.get("choices")
            if not isinstance(choices, list) or not choices or len(choices) > MAX_CHOICES:
                raise self.fail(f"{key}.choices", f"must be a list of 1 to {MAX_CHOICES} "
                                                  f"values, got {shown(choices)}")
            if len(set(map(repr, choices))) != len(choices):
                raise self.fail(f"{key}.choices", f"has duplicates: {shown(choices)}")
            return Param(name, ptype, choices=tuple(choices))
        self.keys(key, body, {"type", "low", "high", "log", "step"})
        for k in ("low", "high"):
            if k not in body:
                raise self.fail(f"{key}.{k}", "is required for a numeric parameter")
        conv = self.integer if ptype == "int" else self.number
        low, high = conv(f"{key}.low", body["low"]), conv(f"{key}.high", body["high"])
        log = self.boolean(f"{key}.log", body.get("log", False))
        step = body.get("step")
        if low >= high:
            raise self.fail(key, f"low must be < high, got low={low}, high={high}")
        if log and low <= 0:
            raise self.fail(f"{key}.low", f"a log range needs low > 0, got {low}")
        if step is not None:
            step = self.step(f"{key}.step", step, low, high, log, integer=ptype == "int")
        return Param(name, ptype, low=low, high=high, log=log, step=step)
