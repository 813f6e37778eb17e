"""The progress bar of a long run: finished trials of the budget, the best value so far, how
many trials were pruned (with a pruner) and the narrowing stage (narrowing sampler), e.g.

``41%|████      | 123/300 [00:41<00:58, 3.0trial/s, best val acc 0.760, stage 2/3]``
"""

from __future__ import annotations

import math
import sys
import time

import optuna
from optuna.trial import TrialState

from hpo.storage import state_counts, study_spec
from hpo.trials import FINISHED

__all__ = ["Progress", "best_value", "postfix"]


def postfix(best: float | None, pruned: int | None = None,
            stage: tuple[int, int] | None = None) -> str:
    """The bar's text after the counts: ``best val acc 0.760, pruned 12, stage 2/3``."""
    parts = [] if best is None else [f"best val acc {best:.3f}"]
    if pruned is not None:
        parts.append(f"pruned {pruned}")
    if stage is not None:
        parts.append(f"stage {stage[0]}/{stage[1]}")
    return ", ".join(parts)


def stage_of(done: int, total: int, stage_trials: int) -> tuple[int, int]:
    """(stage being run, 1-based; number of stages) of a narrowing study with ``done`` finished
    trials out of ``total``; trial n belongs to stage n // ``stage_trials``."""
    n_stages = max(1, math.ceil(total / stage_trials))
    return min(done, total - 1) // stage_trials + 1, n_stages


class Progress:
    """A progress bar over the study's finished trials with the best value so far (stderr);
    with a pruner it counts the pruned trials, with the narrowing sampler it names the stage."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="trial", file=sys.stderr,
                            dynamic_ncols=True, leave=True)
        self.total = total
        self.n = initial
        self._last = 0.0
        self._shown: tuple[bool, int | None] | None = None  # (pruned?, stage_trials), read once

    def update(self, done: int, best: float | None, pruned: int | None = None,
               stage: tuple[int, int] | None = None) -> None:
        if self.bar is None:
            return
        text = postfix(best, pruned, stage)
        if text:
            self.bar.set_postfix_str(text, refresh=False)
        if done > self.n:
            self.bar.update(min(done, self.bar.total) - self.n)
            self.n = done
        self.bar.refresh()

    def on_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """After each trial: the counts and the best value are two storage reads, so they are
        re-read at most every 0.5 s (:meth:`refresh` brings the bar up to date at the end)."""
        now = time.monotonic()
        if now - self._last >= 0.5:
            self._last = now
            self.refresh(study)

    def refresh(self, study: optuna.Study) -> None:
        """Bring the bar up to date: one count query, the best value (and the spec, once)."""
        if self.bar is None:
            return
        if self._shown is None:
            self._shown = _what_to_show(study)
        show_pruned, stage_trials = self._shown
        counts = state_counts(study)
        done = sum(counts.get(s, 0) for s in FINISHED)
        self.update(done, best_value(study),
                    pruned=counts.get(TrialState.PRUNED, 0) if show_pruned else None,
                    stage=stage_of(done, self.total, stage_trials) if stage_trials else None)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _what_to_show(study: optuna.Study) -> tuple[bool, int | None]:
    """From the spec stored in the study: whether it prunes, and the narrowing stage size."""
    from hpo.spec import from_dict

    try:
        spec = from_dict(study_spec(study) or {}, source=f"study {study.study_name!r}")
    except Exception:  # noqa: BLE001 - not an hpo study: show only the counts
        return False, None
    stage_trials = spec.sampler_kwargs().get("stage_trials") if spec.sampler == "narrowing" \
        else None
    return spec.pruner != "none", stage_trials


def best_value(study: optuna.Study) -> float | None:
    """The study's best value, or ``None`` before its first COMPLETE trial."""
    try:
        return study.best_value
    except ValueError:
        return None
