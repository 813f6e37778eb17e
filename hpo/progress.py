"""The progress bar of a long run: finished trials of the budget, and the best value so far."""

from __future__ import annotations

import sys
import time

import optuna

from hpo.trials import count

__all__ = ["Progress", "best_value"]


class Progress:
    """A progress bar over the study's finished trials with the best value so far (stderr)."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="trial", file=sys.stderr,
                            dynamic_ncols=True, leave=True)
        self.n = initial
        self._last = 0.0

    def update(self, done: int, best: float | None) -> None:
        if self.bar is None:
            return
        if done > self.n:
            self.bar.update(min(done, self.bar.total) - self.n)
            self.n = done
        if best is not None:
            self.bar.set_postfix_str(f"best val acc {best:.3f}", refresh=False)
        self.bar.refresh()

    def on_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """After each trial: the count and the best value are two storage reads, so they are
        re-read at most every 0.5 s (:meth:`refresh` brings the bar up to date at the end)."""
        now = time.monotonic()
        if now - self._last >= 0.5:
            self._last = now
            self.refresh(study)

    def refresh(self, study: optuna.Study) -> None:
        if self.bar is not None:
            self.update(count(study)[0], best_value(study))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def best_value(study: optuna.Study) -> float | None:
    """The study's best value, or ``None`` before its first COMPLETE trial."""
    try:
        return study.best_value
    except ValueError:
        return None
