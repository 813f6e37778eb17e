"""SIGTERM and Ctrl-C at safe points; workers that stop with their parent.

Where the process is when a signal comes decides what it does. Inside the objective's
computation the signal raises at once (:class:`~hpo.errors.Terminated` or
``KeyboardInterrupt``): Optuna fails the running trial and re-raises. Anywhere else, e.g. in
the middle of a storage write, raising could leave a trial RUNNING (an SQLite write
interrupted inside its commit kept the file's write lock, and the trial's FAIL then waited
for it until the worker was killed), so the signal is only noted, and it is raised at the next
safe point: when the storage call returns (:func:`deferred`, around the objective's own
storage calls) or at the trial loop's next :func:`check_stop`.

A worker started by ``hpo run`` / ``hpo compare`` (:mod:`hpo.engine.procs`) stops when that parent
dies, even by SIGKILL (:func:`watch_parent`): Linux sends it :data:`ORPHAN_SIGNAL` at once
(``prctl(PR_SET_PDEATHSIG)``), and every safe point also compares the parent's pid. It raises
:class:`Orphaned` like a SIGTERM, and the trial loop hands its running trial back (re-queued
with the same params, the trial failed with the reason) before the worker exits.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
from collections.abc import Iterator

from hpo.errors import Terminated

#: The signal Linux sends a worker whose parent died (any signal but SIGTERM/SIGINT would do:
#: it says why the worker stops).
ORPHAN_SIGNAL = signal.SIGUSR1
#: Environment variable holding the pid of the process that started a worker.
PARENT_ENV = "HPO_PARENT_PID"
_PR_SET_PDEATHSIG = 1


class Orphaned(Terminated):
    """The process that started this worker is gone: stop, and hand the running trial back."""


class _StopState:
    signum: int | None = None
    in_objective: bool = False
    parent: int | None = None  # the pid this worker stops without


_STOP = _StopState()


def _interrupt(signum: int) -> KeyboardInterrupt:
    if signum == ORPHAN_SIGNAL:
        return Orphaned(f"its parent (pid {_STOP.parent}) died")
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _on_signal(signum, frame):  # noqa: ARG001
    _STOP.signum = signum
    if _STOP.in_objective:
        _STOP.in_objective = False
        raise _interrupt(signum)


def install_signal_handlers() -> None:
    """SIGTERM and SIGINT stop this process cleanly (see the module docstring)."""
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)


def raise_at_once() -> None:
    """SIGTERM and SIGINT raise wherever the main thread is: for a process with no trial to
    protect (``hpo proxy``), so that it still exits 143 / 130 with its one line."""

    def on_signal(signum, frame):  # noqa: ARG001
        raise _interrupt(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


@contextlib.contextmanager
def kept() -> Iterator[None]:
    """The process's SIGTERM and SIGINT handlers as they were before the block, and no signal
    left pending after it (``hpo.run`` from a script or a notebook: the trial loop installs its
    own). Elsewhere than the main thread, where no handler can be set, nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        _STOP.signum, _STOP.in_objective = None, False


def reset() -> None:
    """Default handlers and no pending signal: what a forked child starts from."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(ORPHAN_SIGNAL, signal.SIG_DFL)
    _STOP.signum, _STOP.in_objective, _STOP.parent = None, False, None


def watch_parent(parent: int | None = None) -> bool:
    """Stop this process (as :class:`Orphaned`, at a safe point) when process ``parent`` dies:
    default, the pid in ``$HPO_PARENT_PID`` (set by :func:`hpo.engine.procs.start_workers`); nothing
    when there is none. Linux: ``prctl(PR_SET_PDEATHSIG, ORPHAN_SIGNAL)``; everywhere: the
    parent's pid compared at every :func:`check_stop`. True when watching."""
    if parent is None:
        value = os.environ.get(PARENT_ENV, "")
        if not value.isdigit():
            return False
        parent = int(value)
    _STOP.parent = parent
    signal.signal(ORPHAN_SIGNAL, _on_signal)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(ORPHAN_SIGNAL), 0, 0, 0)
    _orphan_check()  # the parent may have died before the prctl
    return True


def _orphan_check() -> None:
    if _STOP.parent is not None and _STOP.signum is None and os.getppid() != _STOP.parent:
        _STOP.signum = ORPHAN_SIGNAL


def check_stop() -> None:
    """Raise the pending SIGTERM/SIGINT (or the parent's death), if any: call only at safe
    points."""
    _orphan_check()
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


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Inside :func:`interruptible`, a stretch where a signal must not raise (a storage call of
    the objective): it is noted, and raised once the stretch is over, where the caller is
    interruptible again. Elsewhere it changes nothing."""
    outer = _STOP.in_objective
    _STOP.in_objective = False
    try:
        yield
    finally:
        _STOP.in_objective = outer
    if outer:
        check_stop()
