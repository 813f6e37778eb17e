"""What can go wrong, and the exit code each kind of failure gives. Imports nothing of hpo.

Every ``hpo`` command keeps one contract:

* **0** success;
* **2** bad input only (:class:`BadInput` and its kinds): one line on stderr naming the file and
  key, or the flag, and what is allowed; nothing has been written;
* **1** a runtime failure (:class:`RuntimeFailure`, or anything unexpected): one line, the
  traceback only with ``--debug``;
* **130** Ctrl-C, **143** SIGTERM (:class:`Terminated`), with no trial left RUNNING.

:func:`run_command` applies it; the CLI and every forked worker process go through it.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INT = 130
EXIT_TERM = 143


class BadInput(Exception):
    """Input that cannot be used: printed as one line, exit code 2, nothing written."""


class UsageError(BadInput):
    """A bad flag or argument of a command."""


class SpecError(BadInput, ValueError):
    """A spec that cannot be used; the message is one line naming the file and the key."""


class DataError(BadInput, ValueError):
    """Bad dataset input: unknown name, impossible split, missing or corrupt files."""


class StorageError(BadInput, RuntimeError):
    """The storage cannot be used as asked (bad URL, unknown study, no schema): one line,
    password masked."""


class RuntimeFailure(Exception):
    """Something failed at run time although the input was fine (a database that stays down, a
    full disk): one line, exit code 1."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is so that Optuna fails the running trial cleanly."""


def exit_code(e: BaseException) -> int:
    """The exit code for an exception that ended a command."""
    if isinstance(e, Terminated):
        return EXIT_TERM
    if isinstance(e, KeyboardInterrupt):
        return EXIT_INT
    if isinstance(e, BadInput):
        return EXIT_USAGE
    return EXIT_FAILURE


def one_line(e: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def run_command(prog: str, command: Callable[[], int], *, debug: bool = False) -> int:
    """Run ``command`` and turn what ends it into an exit code, printing at most one line on
    stderr (plus the traceback of an unexpected error with ``debug``)."""
    try:
        return command()
    except BrokenPipeError:  # `hpo best ... | head`
        try:
            sys.stderr.close()
        except OSError:  # pragma: no cover
            pass
        return EXIT_OK
    except Terminated:
        print(f"{prog.split()[0]}: terminated", file=sys.stderr)
        return EXIT_TERM
    except KeyboardInterrupt:
        print(f"{prog.split()[0]}: interrupted", file=sys.stderr)
        return EXIT_INT
    except BadInput as e:
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except RuntimeFailure as e:
        if debug:
            traceback.print_exc()
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as e:  # noqa: BLE001 - the contract: one line, the traceback on request
        if debug:
            traceback.print_exc()
        hint = "" if debug else " (run with --debug for the traceback)"
        print(f"{prog}: error: {type(e).__name__}: {one_line(e)}{hint}", file=sys.stderr)
        return EXIT_FAILURE
