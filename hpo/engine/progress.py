"""The progress of a long run: finished trials of the budget, the best value so far, how many
trials were pruned (with a pruner) and the narrowing stage (narrowing sampler).

On a terminal (stderr is a TTY) it is a tqdm bar, redrawn in place::

    41%|████      | 123/300 [00:41<00:58, 3.0trial/s, best val acc 0.760, stage 2/3]

Anywhere else (a log file, ``docker compose logs``, a pipe) a redrawn bar would repeat itself
in every state, so progress is a plain log line (``hpo.progress``, INFO) every
:data:`LINE_EVERY_FRACTION` of the budget or :data:`LINE_EVERY_SECONDS` seconds, whichever
comes first, and one at the end::

    progress: 123/300 trials (41%) in 41 s, best val acc 0.760, stage 2/3
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time

import optuna
from optuna.trial import TrialState
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from hpo.db.storage import state_counts, study_spec
from hpo.engine.loop import FINISHED
from hpo.report.metric import BOOK, Metric, metric_of
from hpo.spec import from_dict

__all__ = ["LINE_EVERY_FRACTION", "LINE_EVERY_SECONDS", "Progress", "best_value", "postfix"]

#: Without a terminal: a progress line each time another tenth of the budget is finished...
LINE_EVERY_FRACTION = 0.1
#: ... or this many seconds passed since the last line, whichever comes first.
LINE_EVERY_SECONDS = 30.0
log = logging.getLogger("hpo.progress")


def postfix(best: float | None, pruned: int | None = None,
            stage: tuple[int, int] | None = None, metric: Metric = BOOK) -> str:
    """The bar's text after the counts: ``best val acc 0.760, pruned 12, stage 2/3`` (another
    metric by its name, to 4 significant digits: ``best loss 0.2447``)."""
    if best is None:
        parts = []
    elif metric.book:
        parts = [f"best {metric.label} {best:.3f}"]
    else:
        parts = [f"best {metric.label} {best:.4g}"]
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
    """Progress over the study's finished trials with the best value so far (stderr); with a
    pruner it counts the pruned trials, with the narrowing sampler it names the stage. A tqdm
    bar on a terminal (``bar``), else plain lines (``lines``); nothing when not ``enabled``.
    Another ``unit`` counts other work (``hpo experiment``'s epochs)."""

    def __init__(self, total: int, initial: int, enabled: bool, *,
                 terminal: bool | None = None, unit: str = "trial") -> None:
        self.bar = None
        self.enabled = enabled
        if terminal is None:
            terminal = _isatty(sys.stderr)
        self.lines = enabled and not terminal
        self._redirect: contextlib.ExitStack | None = None
        if enabled and terminal:

            self.bar = tqdm(total=total, initial=initial, unit=unit, file=sys.stderr,
                            dynamic_ncols=True, leave=True)
            # log lines (-v's trial lines, warnings) printed above the bar, not through it
            self._redirect = contextlib.ExitStack()
            self._redirect.enter_context(logging_redirect_tqdm([logging.getLogger()]))
        self.total = total
        self.unit = unit
        self.n = initial
        self._last = 0.0
        #: (pruned?, stage_trials, the metric), read once from the study's spec
        self._shown: tuple[bool, int | None, Metric] | None = None
        self._start = time.monotonic()
        self._line_at = (initial, self._start)  # (done, when) of the last plain line
        self._text = ""

    def update(self, done: int, best: float | None, pruned: int | None = None,
               stage: tuple[int, int] | None = None, metric: Metric = BOOK, *,
               text: str | None = None) -> None:
        """``done`` of the total; the text after the counts is ``text`` when given, else made
        from the best value, the pruned count and the stage (:func:`postfix`)."""
        if not self.enabled:
            return
        if text is None:
            text = postfix(best, pruned, stage, metric)
        if self.bar is None:
            self.n = max(self.n, min(done, self.total))
            self._text = text or self._text
            last_done, last_time = self._line_at
            step = max(1, math.ceil(self.total * LINE_EVERY_FRACTION))
            now = time.monotonic()
            if self.n > last_done and (self.n - last_done >= step or self.n >= self.total
                                       or now - last_time >= LINE_EVERY_SECONDS):
                self._line(now)
            return
        if text:
            self.bar.set_postfix_str(text, refresh=False)
        if done > self.n:
            self.bar.update(min(done, self.bar.total) - self.n)
            self.n = done
        self.bar.refresh()

    def _line(self, now: float) -> None:
        pct = 100 * self.n // max(1, self.total)
        tail = f", {self._text}" if self._text else ""
        log.info("progress: %d/%d %ss (%d%%) in %.0f s%s", self.n, self.total, self.unit, pct,
                 now - self._start, tail)
        self._line_at = (self.n, now)

    def on_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """After each trial: the counts and the best value are two storage reads, so they are
        re-read at most every 0.5 s (:meth:`refresh` brings the bar up to date at the end)."""
        now = time.monotonic()
        if now - self._last >= 0.5:
            self._last = now
            self.refresh(study)

    def refresh(self, study: optuna.Study) -> None:
        """Bring the bar up to date: one count query, the best value (and the spec, once)."""
        if not self.enabled:
            return
        if self._shown is None:
            self._shown = _what_to_show(study)
        show_pruned, stage_trials, metric = self._shown
        counts = state_counts(study)
        done = sum(counts.get(s, 0) for s in FINISHED)
        self.update(done, best_value(study),
                    pruned=counts.get(TrialState.PRUNED, 0) if show_pruned else None,
                    stage=stage_of(done, self.total, stage_trials) if stage_trials else None,
                    metric=metric)

    def close(self) -> None:
        if self.lines and self.n > self._line_at[0]:  # where it stopped (a timeout, Ctrl-C)
            self._line(time.monotonic())
        if self.bar is not None:
            self.bar.close()
        if self._redirect is not None:
            self._redirect.close()
            self._redirect = None


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _what_to_show(study: optuna.Study) -> tuple[bool, int | None, Metric]:
    """From the spec stored in the study: whether it prunes, the narrowing stage size and the
    study's metric."""
    stored = study_spec(study)
    try:
        spec = from_dict(stored or {}, source=f"study {study.study_name!r}", stored=True)
    except Exception:  # noqa: BLE001 - not an hpo study: show only the counts
        return False, None, BOOK
    stage_trials = None
    if spec.sampler == "narrowing":
        stage_trials = spec.sampler_kwargs().get("stage_trials")
    return spec.pruner != "none", stage_trials, metric_of(stored, study.direction)


def best_value(study: optuna.Study) -> float | None:
    """The study's best value, or ``None`` before its first COMPLETE trial."""
    try:
        return study.best_value
    except ValueError:
        return None
