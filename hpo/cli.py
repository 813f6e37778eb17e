"""The ``hpo`` command: the top-level parser and its global flags, each command's parser built
by its module of :mod:`hpo.commands` (``add_arguments``), and the dispatch to the command's action.

Exit codes (:mod:`hpo.errors`): 0 success, 1 runtime failure, 2 bad input (one line on stderr,
nothing written), 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib import import_module

from hpo import logs, signals
from hpo.commands.flags import Parser, one_study
from hpo.errors import EXIT_INT, EXIT_TERM, EXIT_USAGE, BadInput, Terminated, run_command

#: command -> (its module, the action there). Each module also holds ``add_arguments(parser)``,
#: the command's flags, description and epilog, and ``HELP``, its line in ``hpo --help``.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("hpo.commands.run", "run"),
    "init": ("hpo.commands.init", "init"),
    "worker": ("hpo.commands.worker", "worker"),
    "best": ("hpo.commands.best", "best"),
    "studies": ("hpo.commands.studies", "studies"),
    "dashboard": ("hpo.commands.dashboard", "dashboard"),
    "test": ("hpo.commands.evaluate", "test_cmd"),
    "confirm": ("hpo.commands.confirm", "confirm_cmd"),
    "compare": ("hpo.commands.compare", "compare"),
    "report": ("hpo.commands.report", "report"),
    "proxy": ("hpo.commands.proxy", "proxy"),
    "experiment": ("hpo.commands.experiment", "experiment"),
    "completion": ("hpo.commands.completion", "completion"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="hpo",
        description="Hyperparameter optimization on Optuna, after chapter 6 of "
                    "'Deep Learning from Scratch'.",
    )
    parser.add_argument("--version", action=_Version, help="print hpo's version and exit")
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of an unexpected error")
    logs.add_flags(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # `--debug` and the log flags after the command too (its defaults must not reset them)
    common = Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="print the traceback of an unexpected error")
    logs.add_flags(common, suppress=True)
    for name, (module, _) in COMMANDS.items():
        command = import_module(module)
        command.add_arguments(sub.add_parser(name, parents=[common], help=command.HELP))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # SIGTERM exits 143 and Ctrl-C 130, with their one line, from the start: commands that run
    # trials replace this with stops at safe points (hpo.signals.install_signal_handlers)
    signals.raise_at_once()
    try:
        return _main(argv)
    except Terminated:  # before the command's own handling began (parsing its flags)
        print("hpo: terminated", file=sys.stderr)
        return EXIT_TERM
    except KeyboardInterrupt:
        print("hpo: interrupted", file=sys.stderr)
        return EXIT_INT


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    commands: dict[str, argparse.ArgumentParser] = _subparsers(parser)
    if args.command is None:
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        parser.print_help()
        print(f"hpo: error: a command is required, one of: {', '.join(COMMANDS)}",
              file=sys.stderr)
        return EXIT_USAGE
    here = commands[args.command]
    if extra:  # the command's usage, not the top-level one (`hpo best --stuff`)
        here.error(f"unrecognized arguments: {' '.join(extra)}")
    if isinstance(here, Parser) and here.study_required is not None:  # NAME or --study NAME
        one_study(here, args)
    try:
        level, fmt = logs.settings(args)
    except BadInput as e:
        print(f"hpo {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    logs.configure(level, fmt)
    args.log_settings = (level, fmt)
    args.parser = parser  # hpo completion: the script of this very parser
    module, action = COMMANDS[args.command]
    handler: Callable[[argparse.Namespace], int] = getattr(import_module(module), action)
    return run_command(f"hpo {args.command}", lambda: handler(args), debug=args.debug)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Each command's own parser, by name."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


#: flags every command takes (the README lists them once)
COMMON_FLAGS = ("-h", "--debug", "-v", "-q", "--log-level", "--log-format")


def flag_rows(p: argparse.ArgumentParser) -> list[tuple[str, str]]:
    """(invocation, help) of each argument of ``p`` as its ``--help`` shows them, defaults
    included (``--study NAME, --study-name NAME``, ``... (default: 8080)``)."""
    formatter = p._get_formatter()
    rows = []
    for action in p._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
            continue
        invocation = formatter._format_action_invocation(action)
        text = formatter._expand_help(action) if action.help else ""
        rows.append((invocation, " ".join(text.split())))
    return rows


def reference_markdown() -> str:
    """The README's flag tables: the flags every command takes, then each command's own, as
    ``hpo COMMAND --help`` shows them (``python -m hpo.cli`` prints them;
    tests/test_readme.py compares the README with ``--help``)."""

    def table(rows: list[tuple[str, str]]) -> list[str]:
        out = ["| flag | what it does |", "|---|---|"]
        out += [f"| `{inv}` | {text.replace('|', chr(92) + '|')} |" for inv, text in rows]
        return out

    parser = build_parser()
    commands = _subparsers(parser)
    common = [r for r in flag_rows(commands["run"]) if r[0].split(",")[0].split()[0]
              in COMMON_FLAGS]
    lines = ["Every command takes:", "", *table(common)]
    for name, p in commands.items():
        own = [r for r in flag_rows(p) if r[0].split(",")[0].split()[0] not in COMMON_FLAGS]
        lines += ["", f"`hpo {name}`:", "", *table(own)]
    return "\n".join(lines) + "\n"


class _Version(argparse.Action):
    """``hpo --version``: the version of the installed distribution that provides ``hpo``,
    looked up only when asked (the lookup reads every installed distribution's metadata)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                 help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"hpo {logs.version()}")  # on stdout, as argparse's own version action
        parser.exit(0)


if __name__ == "__main__":  # pragma: no cover - `python -m hpo.cli`: the README's flag tables
    print(reference_markdown(), end="")
