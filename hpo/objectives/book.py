"""Spec + data -> an Optuna objective: suggest, train, report, record attributes.

Each trial trains the spec's MLP with the trial's suggestions on the training split and returns
the final validation accuracy. It records, as user attributes, ``train_acc`` (final),
``train_acc_curve`` and ``val_acc_curve`` (per epoch; with ``[model] eval_every = k > 1`` only at
the epochs listed in ``curve_epochs``), ``model_seed`` (so ``hpo test`` and ``hpo confirm`` can
retrain the very same network) and, when training blew up, ``diverged``.

Design decisions:

* **The validation curve is the trial's intermediate values**, with or without a pruner, so
  optuna-dashboard's own intermediate-value and learning-curve charts show it. While training,
  only the epochs at which the pruner can act are reported
  (:func:`hpo.samplers.pruners.report_steps`:
  none without a pruner); the rest of the curve is reported when the trial ends. hpo's storage
  writes intermediate values behind (:class:`hpo.db.writebehind.WriteBehindRDBStorage`): 50 of
  them cost one multi-row insert in the transaction that finishes the trial, not 50 round trips
  (through ``hpo proxy`` each is still its own call). A longer curve is thinned to
  :data:`CURVE_POINTS` epochs. A pruned trial keeps what it reported.
* **A diverging run is a COMPLETE trial** with the (chance-level) accuracy it reached and
  ``diverged = true``. Marking it FAIL would hide the region from the samplers (TPE and the
  narrowing sampler only learn from COMPLETE trials) and they would keep sampling there; as a
  low-scoring COMPLETE trial it teaches them to stay away. It never crashes a worker.
* **The test split is never read here**: only :func:`hpo.nn.data.load_search` is called.
* **Signals only interrupt training.** The trial loop runs the objective where SIGTERM and
  Ctrl-C raise at once (:func:`hpo.signals.interruptible`); the objective's own storage calls
  (suggest, report, should_prune, attributes) run :func:`hpo.signals.deferred`, so a signal
  never breaks a storage write half way and the trial can always be failed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna

from hpo.nn import MLP, TrainResult, make_optimizer, train
from hpo.nn.data import SearchData, load_search
from hpo.samplers.pruners import report_steps
from hpo.signals import deferred
from hpo.spec import ModelSpec, Param, Spec

#: At most this many points of a trial's validation curve become its intermediate values.
CURVE_POINTS = 200


def suggest(trial: optuna.Trial, space: tuple[Param, ...]) -> dict[str, Any]:
    """Ask the trial for every parameter of the search space."""
    out: dict[str, Any] = {}
    for p in space:
        if p.type == "float":
            out[p.name] = trial.suggest_float(p.name, p.low, p.high, log=p.log, step=p.step)
        elif p.type == "int":
            out[p.name] = trial.suggest_int(p.name, p.low, p.high, log=p.log, step=p.step or 1)
        else:
            out[p.name] = trial.suggest_categorical(p.name, list(p.choices))
    return out


@dataclass(frozen=True)
class Config:
    """One fully specified training run: the spec's model with a trial's params applied."""

    sizes: tuple[int, ...]
    init: str
    batchnorm: bool
    dropout: float
    optimizer: str
    lr: float
    weight_decay: float
    epochs: int
    batch_size: int
    sampling: str
    dtype: str


def make_config(
    model: ModelSpec, params: dict[str, Any], n_features: int, n_classes: int
) -> Config:
    width = params.get("hidden_width")
    n_layers = params.get("hidden_layers")
    hidden = list(model.hidden)
    if n_layers is not None:
        hidden = [width or (hidden[0] if hidden else 100)] * int(n_layers)
    if width is not None:
        hidden = [int(width)] * len(hidden)
    return Config(
        sizes=(n_features, *hidden, n_classes),
        init=params.get("init", model.init),
        batchnorm=bool(params.get("batchnorm", model.batchnorm)),
        dropout=float(params.get("dropout", model.dropout)),
        optimizer=params.get("optimizer", model.optimizer),
        lr=float(params.get("lr", model.lr)),
        weight_decay=float(params.get("weight_decay", model.weight_decay)),
        epochs=model.epochs,
        batch_size=int(params.get("batch_size", model.batch_size)),
        sampling=model.sampling,
        dtype=model.dtype,
    )


def model_seed(spec_seed: int, trial_number: int) -> int:
    """The network's seed for a trial: fixed by (spec seed, trial number), like the sampler's
    draws, so a study's results do not depend on which worker ran which trial."""
    return int(np.random.SeedSequence([spec_seed, trial_number, 0x6E6E]).generate_state(1)[0])


def fit(config: Config, data: SearchData, seed: int, callback=None,
        eval_epochs=None) -> tuple[MLP, TrainResult]:
    """Train one network of ``config`` with ``seed`` on the training split, measuring the
    validation split after each epoch (or only at ``eval_epochs`` and the last one). The same
    (config, data, seed) gives the same network, bit for bit, whatever is measured: that is how
    ``hpo test`` and ``hpo confirm`` retrain a trial's model."""
    rng = np.random.default_rng(seed)
    net = MLP(
        list(config.sizes),
        init=config.init,
        weight_decay=config.weight_decay,
        dropout=config.dropout,
        batchnorm=config.batchnorm,
        dtype=np.dtype(config.dtype).type,
        rng=rng,
    )
    opt = make_optimizer(config.optimizer, config.lr)
    result = train(
        net, opt, data.x_train, data.t_train, data.x_val, data.t_val,
        epochs=config.epochs, batch_size=config.batch_size, rng=rng, sampling=config.sampling,
        callback=callback, eval_epochs=eval_epochs,
    )
    return net, result


def search_data(spec: Spec) -> SearchData:
    """The training and validation splits of the spec's ``[data]`` (never the test split)."""
    d = spec.data
    return load_search(d.dataset, train_size=d.train_size, validation_rate=d.validation_rate,
                       seed=d.seed, data_dir=d.data_dir)


class Objective:
    """The objective every trial runs. Build once per worker; the data is loaded once."""

    def __init__(self, spec: Spec, data: SearchData | None = None) -> None:
        self.spec = spec
        self.data = data if data is not None else search_data(spec)
        self.steps = report_steps(spec.pruner, spec.pruner_kwargs(), spec.model.epochs)
        every, epochs = spec.model.eval_every, spec.model.epochs
        # None: every epoch (the book's Trainer); else the multiples of eval_every, the pruner's
        # report steps and (always, in train()) the last epoch
        self.eval_epochs = None if every == 1 else (
            frozenset(range(every, epochs + 1, every)) | self.steps)

    def __call__(self, trial: optuna.Trial) -> float:
        with deferred():
            params = suggest(trial, self.spec.suggest_space())
        config = make_config(self.spec.model, params, self.data.n_features, self.data.n_classes)
        seed = model_seed(self.spec.seed, trial.number)
        callback = self._pruning_callback(trial) if self.steps else None
        try:
            _, result = fit(config, self.data, seed, callback=callback,
                            eval_epochs=self.eval_epochs)
        except optuna.TrialPruned:
            with deferred():
                trial.set_user_attr("model_seed", seed)
            raise
        val = float(result.val_acc)
        attrs: dict[str, Any] = {
            "train_acc": float(result.train_acc),
            "train_acc_curve": [round(float(a), 6) for a in result.train_acc_curve],
            "val_acc_curve": [round(float(a), 6) for a in result.val_acc_curve],
            "model_seed": seed,
        }
        if self.eval_epochs is not None:
            attrs["curve_epochs"] = list(result.curve_epochs)
        if result.diverged or not math.isfinite(val):
            attrs["diverged"] = True
            val = val if math.isfinite(val) else 0.0
        with deferred():
            for key, value in attrs.items():
                trial.set_user_attr(key, value)
            self._report_curve(trial, result)
        return val

    def _report_curve(self, trial: optuna.Trial, result: TrainResult) -> None:
        """The validation curve as intermediate values (step = epoch), except the epochs the
        pruner was already given and non-finite values (a diverged run); a curve longer than
        :data:`CURVE_POINTS` is thinned to that many evenly spaced epochs (the last kept), so
        a 30,000-epoch spec does not make 30,000 storage writes per trial."""
        points = list(zip(result.curve_epochs, result.val_acc_curve, strict=False))
        if len(points) > CURVE_POINTS:
            keep = np.unique(np.linspace(0, len(points) - 1, CURVE_POINTS).round().astype(int))
            points = [points[i] for i in keep]
        for epoch, acc in points:
            if epoch not in self.steps and math.isfinite(acc):
                trial.report(float(acc), int(epoch))

    def _pruning_callback(self, trial: optuna.Trial):
        steps = self.steps

        def on_epoch(epoch: int, train_acc: float, val_acc: float) -> None:
            if epoch in steps:
                with deferred():
                    trial.report(float(val_acc), epoch)
                    prune = trial.should_prune()
                if prune:
                    raise optuna.TrialPruned(f"pruned at epoch {epoch} (val acc {val_acc:.3f})")

        return on_epoch
