"""Worker processes: start them (forked, or fresh interpreters), supervise them, stop them.

``hpo run --workers N`` and ``hpo compare --workers N`` share this. A fresh ``python -m hpo
worker`` pays ~0.9 s before its first trial (interpreter, NumPy, Optuna, SQLAlchemy, Alembic
imports), which is several trials of the book's task, so workers are *forked* from a process
that has already imported everything; the child runs the worker's code and exits with its code.

Rules that make forking safe here:

* the parent holds no database connection across the fork: its engines' pools are disposed of
  first (:func:`start_workers` takes them), and the child opens its own storage;
* the child resets the signal handlers and stop state it inherited (:func:`hpo.signals.reset`),
  sends its output to its own log file, and leaves with ``os._exit`` so it never runs the
  parent's cleanup;
* gRPC clients are not fork-safe: ``grpc://`` storages start fresh interpreters instead
  (:func:`can_fork`).

Every worker gets this process's pid (``$HPO_PARENT_PID``) and stops when this process dies,
even by SIGKILL (:func:`hpo.signals.watch_parent`: Linux's parent-death signal, and the
parent's pid checked at every safe point); it hands its running trial back first (re-queued
with the same params, :func:`hpo.engine.loop.hand_back`), so an orphan never runs on to the budget.

Supervision (:func:`supervise`): the parent polls its workers, shows progress, and on SIGTERM or
Ctrl-C passes SIGTERM on to every worker still running and waits for them (each fails its own
running trial), so that nothing is left RUNNING, then re-raises.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from threadpoolctl import threadpool_limits

from hpo import signals
from hpo.errors import run_command

BLAS_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
#: How long a stopped worker may take to fail its trial and exit before it is killed.
STOP_GRACE = 60.0


def pin_blas_threads() -> None:
    """One BLAS thread per worker process: two workers with two OpenBLAS threads each on two
    cores run several times slower."""
    os.environ.update(BLAS_ENV)

    threadpool_limits(1)


def can_fork(url: str) -> bool:
    """Whether workers for ``url`` may be forked (POSIX, and not a gRPC proxy client)."""
    return hasattr(os, "fork") and not url.startswith("grpc://")


class Proc(Protocol):
    """What supervision needs of a worker process (:class:`subprocess.Popen` has it too)."""

    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...
    def send_signal(self, sig: int) -> None: ...


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


def fork_worker(target: Callable[[], int], env: dict[str, str], log_path: str | None,
                dispose: Iterable[Any] = ()) -> ForkedWorker:
    """Fork a child that runs ``target`` (an ``hpo worker``: its return value is the exit code)
    with environment ``env``, its stdout and stderr going to ``log_path`` (``None``: discarded).
    ``dispose``: SQLAlchemy engines of this process, whose pooled connections are closed first
    so that no connection is shared with the child."""
    for engine in dispose:
        engine.dispose()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return ForkedWorker(pid)
    code = 1
    try:  # the child: it never returns into the parent's stack
        signals.reset()
        os.environ.clear()
        os.environ.update(env)
        fd = os.open(log_path or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        code = run_command("hpo worker", target)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001 - whatever happened, the child ends here

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


@dataclass(frozen=True)
class WorkerJob:
    """How to start one worker of a study: ``target`` runs in a forked child, ``argv`` (the
    ``hpo`` command line) in a fresh interpreter where forking is not possible."""

    url: str
    target: Callable[[], int]
    argv: Sequence[str]
    env: dict[str, str] = field(default_factory=dict)


def start_workers(n: int, job: WorkerJob, log_dir: str | None,
                  dispose: Iterable[Any] = ()) -> list[Proc]:
    """Start ``n`` workers of ``job``, one BLAS thread each, logging to
    ``log_dir/worker-<i>.log`` (``None``: discarded)."""
    env = {**os.environ, **BLAS_ENV, **job.env, signals.PARENT_ENV: str(os.getpid())}
    logs = [os.path.join(log_dir, f"worker-{i}.log") if log_dir else None for i in range(n)]
    if can_fork(job.url):
        engines = list(dispose)
        return [fork_worker(job.target, env, log, dispose=engines) for log in logs]
    procs: list[Proc] = []
    for log in logs:
        cmd = [sys.executable, "-m", "hpo", *job.argv]
        with open(log or os.devnull, "w") as out:
            procs.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT))
    return procs


def stop_all(procs: Sequence[Proc], grace: float = STOP_GRACE) -> None:
    """SIGTERM every running worker, wait for each (killing one that outlives ``grace``)."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=10)


def supervise(procs: Sequence[Proc], on_tick: Callable[[], None], every: float = 0.5) -> None:
    """Wait for every worker to exit, calling ``on_tick`` every ``every`` seconds. A SIGTERM or
    Ctrl-C of this process (see :mod:`hpo.signals`) stops the workers (:func:`stop_all`) and is
    re-raised."""
    try:
        while any(p.poll() is None for p in procs):
            time.sleep(every)
            signals.check_stop()
            on_tick()
    except KeyboardInterrupt:
        stop_all(procs)
        raise


def failures(procs: Sequence[Proc], log_dir: str | None) -> list[str]:
    """One message per worker that exited with a non-zero code, with the last lines of its
    log (the log folder is temporary: the lines are copied into the message)."""
    out = []
    for i, p in enumerate(procs):
        if p.returncode in (0, None):
            continue
        code = p.returncode
        how = (f"was killed by {signal.Signals(-code).name}" if code < 0 and -code in
               signal.valid_signals() else f"exited with code {code}")
        text = f"worker {i} {how}"
        if log_dir:
            try:
                with open(os.path.join(log_dir, f"worker-{i}.log"), errors="replace") as fh:
                    tail = [line for line in fh.read().splitlines() if line.strip()][-5:]
            except OSError:
                tail = []
            if tail:
                text += "; its last lines:" + "".join(f"\n  {line}" for line in tail)
        out.append(text)
    return out
