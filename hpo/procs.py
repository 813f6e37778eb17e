"""Worker processes forked from an ``hpo`` process that has already imported everything.

A fresh ``python -m hpo worker`` pays ~0.9 s before its first trial (interpreter, NumPy, Optuna,
SQLAlchemy, Alembic imports), which is several trials of the book's task. ``hpo run --workers N``
and ``hpo compare`` instead fork their workers: the child starts with the modules in memory, runs
the very same ``hpo worker`` command line (:func:`hpo.cli.main`), and exits with its code.

Rules that make forking safe here:

* the parent holds no database connection across the fork: callers dispose of their engine's pool
  first (:func:`fork_worker` takes the engines to dispose), and the child opens its own storage;
* the child resets the signal handlers and hpo's stop state it inherited, sends its output to its
  own log file, and leaves with ``os._exit`` so it never runs the parent's cleanup;
* gRPC clients are not fork-safe: ``grpc://`` storages keep starting fresh interpreters
  (:func:`can_fork`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any


def can_fork(url: str) -> bool:
    """Whether workers for ``url`` may be forked (POSIX, and not a gRPC proxy client)."""
    return hasattr(os, "fork") and not url.startswith("grpc://")


class ForkedWorker:
    """A forked worker, with the part of :class:`subprocess.Popen`'s interface callers use."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"hpo worker (pid {self.pid})", timeout)
            time.sleep(0.02)
        return self.returncode  # type: ignore[return-value]

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)


def fork_worker(
    argv: Sequence[str], env: dict[str, str], log_path: str | None,
    dispose: Iterable[Any] = (),
) -> ForkedWorker:
    """Fork a child that runs ``hpo <argv>`` with environment ``env`` and writes its stdout and
    stderr to ``log_path`` (``None``: discarded). ``dispose``: SQLAlchemy engines of this process,
    whose pooled connections are closed first so that no connection is shared with the child."""
    for engine in dispose:
        engine.dispose()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return ForkedWorker(pid)
    code = 1
    try:  # the child: it never returns into the parent's stack
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.environ.clear()
        os.environ.update(env)
        fd = os.open(log_path or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        from hpo.cli import main
        from hpo.runner import _STOP

        _STOP.signum, _STOP.in_objective = None, False
        code = main(list(argv))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001 - whatever happened, the child ends here
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
