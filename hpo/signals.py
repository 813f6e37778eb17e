"""SIGTERM and Ctrl-C at safe points.

Where the process is when a signal comes decides what it does. Inside the objective the signal
raises at once (:class:`~hpo.errors.Terminated` or ``KeyboardInterrupt``): Optuna fails the
running trial and re-raises. Anywhere else, e.g. in the middle of a storage write, raising
could leave a trial RUNNING, so the signal is only noted, and the trial loop stops at its next
safe point (:func:`check_stop`).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

from hpo.errors import Terminated


class _StopState:
    signum: int | None = None
    in_objective: bool = False


_STOP = _StopState()


def _interrupt(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def install_signal_handlers() -> None:
    """SIGTERM and SIGINT stop this process cleanly (see the module docstring)."""

    def on_signal(signum, frame):  # noqa: ARG001
        _STOP.signum = signum
        if _STOP.in_objective:
            _STOP.in_objective = False
            raise _interrupt(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def reset() -> None:
    """Default handlers and no pending signal: what a forked child starts from."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    _STOP.signum, _STOP.in_objective = None, False


def check_stop() -> None:
    """Raise the pending SIGTERM/SIGINT, if any: call only at safe points."""
    if _STOP.signum is not None:
        raise _interrupt(_STOP.signum)


def stop_requested() -> bool:
    """Whether a SIGTERM/SIGINT is pending."""
    return _STOP.signum is not None


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """While inside, a signal raises at once (the objective runs here)."""
    _STOP.in_objective = True
    try:
        yield
    finally:
        _STOP.in_objective = False
