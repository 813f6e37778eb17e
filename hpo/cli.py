"""The ``hpo`` command: argument parsing only. Each command is a module of :mod:`hpo.commands`,
imported only when it runs, so that ``hpo --help`` imports none of NumPy, Optuna or SQLAlchemy.

Exit codes (:mod:`hpo.errors`): 0 success, 1 runtime failure, 2 bad input (one line on stderr,
nothing written), 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib import import_module

from hpo import catalog, logs
from hpo.commands.flags import (
    FRACTION,
    PORT,
    SECONDS,
    SEED,
    TOP,
    TRIALS,
    Parser,
    count,
    study_name,
    title,
)
from hpo.errors import EXIT_USAGE, BadInput, run_command


def _storage_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", metavar="URL",
                   help="SQLAlchemy URL (default: $HPO_STORAGE, else $OPTUNA_STORAGE, else "
                        "sqlite:///hpo.db)")


def _study_flag(p: argparse.ArgumentParser, **kw) -> None:
    """``--study NAME``, and Optuna's spelling ``--study-name NAME``."""
    p.add_argument("--study", "--study-name", type=study_name, metavar="NAME", **kw)


#: commands that name their study as an argument (``hpo best NAME``), or with ``--study NAME``
#: / ``--study-name NAME`` as ``hpo run`` and ``hpo worker`` do; {command: NAME required?}
STUDY_ARG = {"best": False, "test": True, "confirm": True, "report": True}


def _study_arg(p: argparse.ArgumentParser, help: str | None = None) -> None:
    p.add_argument("study_arg", type=study_name, metavar="NAME", nargs="?", help=help)
    _study_flag(p, help="the study, as a flag (as in hpo run, hpo worker and Optuna's CLI)")


def _mlflow_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mlflow-uri", metavar="URI",
                   help="log each finished trial as an MLflow run there, e.g. file:./mlruns "
                        "(default: the spec's [tracking] mlflow; needs the extra [mlflow])")


def _data_dir_arg(p: argparse.ArgumentParser) -> None:
    _dir(p.add_argument("--data-dir", metavar="DIR",
                        help="folder with the four MNIST IDX .gz files (dataset mnist; default: "
                             "the spec's data.data_dir, else downloaded once into ~/.cache/hpo)"))


def _max_failures_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-failures", type=count(1000), metavar="K",
                   help="a worker stops (exit 1) after K failed trials of a spec's own "
                        "objective in a row (default: the spec's, else 3)")


def _heartbeat_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--heartbeat-interval", type=count(catalog.MAX_HEARTBEAT), default=None,
                   metavar="S", help="seconds between a running trial's heartbeats (default 10)")
    p.add_argument("--grace-period", type=count(catalog.MAX_GRACE, low=2), default=None,
                   metavar="S", help="a trial silent this long is failed and retried (default 60)")


SPEC_EPILOG = (f"A spec's [sampler] name is one of {', '.join(catalog.SAMPLER_NAMES)}; its "
               f"[pruner] name one of {', '.join(catalog.PRUNER_NAMES)}; their options: "
               "`python -m hpo.catalog` (the README's tables).")


#: hpo run, hpo best and hpo report list the same Best-N (hpo.report.listing.TOP).
TOP_HELP = "how many best trials to list (default 20, the book's figure)"
BUDGET_HELP = ("the study's budget: finished trials it should hold in total, recorded in the study "
               "(default: the spec's [budget]); nothing runs when it already holds that many")


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
    add_parser = sub.add_parser

    def add_command(*a, **kw):
        return add_parser(*a, parents=[common], **kw)

    sub.add_parser = add_command  # type: ignore[method-assign]

    p = sub.add_parser("run", help="create or resume a study from a spec and run it",
                       description="Create (or resume) the study of SPEC, run W local worker "
                                   "processes until it holds N finished trials, print Best-N.",
                       epilog=SPEC_EPILOG)
    p.add_argument("spec", metavar="SPEC",
                   help="study spec file (TOML), e.g. studies/book-random.toml")
    _storage_arg(p)
    _study_flag(p, help="study name (default: the spec's name)")
    p.add_argument("--n-trials", type=TRIALS, metavar="N", help=BUDGET_HELP)
    p.add_argument("--workers", type=count(catalog.MAX_WORKERS), default=1, metavar="W",
                   help="local worker processes (forked; one BLAS thread each)")
    p.add_argument("--seed", type=SEED, metavar="S", help="sampler/model seed (default: spec's)")
    p.add_argument("--data-seed", type=SEED, metavar="D",
                   help="seed of the train/validation shuffle (default: the spec's data.seed)")
    p.add_argument("--timeout", type=SECONDS, metavar="S", help="stop after S seconds")
    p.add_argument("--top", type=TOP, metavar="K", help=TOP_HELP)
    _data_dir_arg(p)
    _mlflow_arg(p)
    _max_failures_arg(p)
    p.add_argument("--warm-start", type=study_name, metavar="STUDY",
                   help="begin a new study with the best configurations of STUDY (same storage)")
    p.add_argument("--warm-start-top", type=count(1000), metavar="K",
                   help="how many of STUDY's best configurations (default 5; needs --warm-start)")
    _heartbeat_args(p)

    p = sub.add_parser("init", help="create the schema and the study of a spec, run nothing",
                       description="Create the Optuna schema and the study of SPEC once, before "
                                   "any worker starts (the compose init service); safe to re-run.",
                       epilog=SPEC_EPILOG)
    p.add_argument("spec", metavar="SPEC", help="study spec file (TOML)")
    _storage_arg(p)
    _study_flag(p, help="study name (default: the spec's name)")
    p.add_argument("--n-trials", type=TRIALS, metavar="N",
                   help="the study's budget: finished trials it should hold in total, recorded "
                        "in the study for every worker (default: the spec's [budget])")

    p = sub.add_parser("worker", help="join an existing study and run trials",
                       description="Join study NAME (its spec is stored in it) and run trials "
                                   "until the study holds its budget of finished trials.")
    _study_flag(p, required=True, help="the study to join")
    _storage_arg(p)
    p.add_argument("--n-trials", type=TRIALS, metavar="N",
                   help="run at most N trials in this worker (default: no cap of its own); "
                        "never changes the study's budget, which `hpo run` / `hpo init` record")
    p.add_argument("--timeout", type=SECONDS, metavar="S", help="stop after S seconds")
    _data_dir_arg(p)
    _mlflow_arg(p)
    _heartbeat_args(p)
    _max_failures_arg(p)
    _dir(p.add_argument("--code-dir", metavar="DIR", action="append",
                        help="a folder this worker may run a study's own objective from "
                             "(repeatable; default $HPO_CODE_DIR; docs/objectives.md)"))

    p = sub.add_parser("best", help="the book's Best-N listing of a study")
    _study_arg(p, help="the study (may be left out when the storage holds only one)")
    _storage_arg(p)
    p.add_argument("--top", type=TOP, metavar="K", help=TOP_HELP)
    p.add_argument("--max-gap", type=FRACTION, metavar="G",
                   help="also rank the trials whose train-validation gap is below G")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("studies", help="list the studies in the storage")
    _storage_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("dashboard", help="serve optuna-dashboard on the storage (read-only)",
                       description="Serve optuna-dashboard on the storage with waitress, "
                                   "read-only unless --allow-writes. With HPO_DASHBOARD_USER and "
                                   "HPO_DASHBOARD_PASSWORD (or HPO_DASHBOARD_PASSWORD_FILE) set "
                                   "it asks for those credentials (HTTP basic auth); a --host "
                                   "beyond loopback needs them, or --no-auth.")
    _storage_arg(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; beyond loopback: credentials "
                        "or --no-auth)")
    p.add_argument("--port", type=PORT, default=8080, help="default 8080; 0 picks a free port")
    p.add_argument("--allow-writes", action="store_true",
                   help="let the dashboard create, rename, delete studies and write notes")
    p.add_argument("--artifact-dir", metavar="DIR", help="serve trial artifacts from DIR")
    p.add_argument("--no-auth", action="store_true",
                   help="listen beyond loopback without credentials (anyone who can reach it "
                        "reads every study)")

    p = sub.add_parser("test", help="evaluate a study's chosen trial on the test split, once",
                       description="Retrain the chosen configuration (best by default) with its "
                                   "seed on the training split and evaluate it on the test split "
                                   "once; the result is stored in the study.")
    _study_arg(p, help="the study")
    _storage_arg(p)
    p.add_argument("--trial", type=count(2**31, low=0), metavar="N",
                   help="trial number (default: the best)")
    p.add_argument("--force", action="store_true", help="evaluate again although done before")
    _data_dir_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("confirm", help="retrain the top K configurations with fresh seeds",
                       description="Retrain the top K trials' configurations with S fresh "
                                   "initialisation seeds each (same train/validation split) and "
                                   "rank them by mean validation accuracy with its standard "
                                   "error; `hpo test` then uses the confirmed winner.")
    _study_arg(p, help="the study")
    _storage_arg(p)
    p.add_argument("--top", type=count(1000), default=5, metavar="K",
                   help="how many of the best configurations to retrain")
    p.add_argument("--seeds", type=count(1000, low=2), default=5, metavar="S",
                   help="fresh initialisation seeds per configuration")
    _data_dir_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("compare", help="compare samplers fairly across seeds",
                       description="One study per (sampler, seed), named <spec>/<sampler>/seed<k>,"
                                   " on the same data split; best-so-far plots and a table. With "
                                   "several specs (same [data]), each spec is an arm with its own "
                                   "sampler and space.")
    p.add_argument("spec", metavar="SPEC", nargs="+", help="study spec file(s) (TOML)")
    p.add_argument("--storage", metavar="URL",
                   help="SQLAlchemy URL of the comparison's studies (default: "
                        "sqlite:///DIR/compare.db under --out; $HPO_STORAGE and "
                        "$OPTUNA_STORAGE are not used)")
    p.add_argument("--samplers", metavar="LIST",
                   help="with one spec: comma-separated sampler names, of "
                        + ",".join(catalog.SAMPLER_NAMES))
    p.add_argument("--confirm", type=count(1000, low=0), default=0, metavar="K",
                   help="retrain each study's top K with fresh seeds and test the winner")
    p.add_argument("--confirm-seeds", type=count(1000, low=2), default=5, metavar="S",
                   help="fresh seeds per configuration for --confirm")
    p.add_argument("--title", type=title, default="comparison", help="title with several specs")
    p.add_argument("--n-trials", type=TRIALS, default=100, metavar="N",
                   help="finished trials per study")
    p.add_argument("--seeds", type=count(1000), default=5, metavar="K",
                   help="studies per sampler, one per seed")
    p.add_argument("--workers", type=count(catalog.MAX_WORKERS), default=1, metavar="W",
                   help="worker processes per study")
    p.add_argument("--target", type=FRACTION, default=0.80, metavar="ACC",
                   help="validation accuracy to reach")
    p.add_argument("--out", default="out/compare", metavar="DIR",
                   help="table, plot and the comparison's own storage "
                        "(DIR/compare.db unless --storage) go here")
    p.add_argument("--resume", action="store_true",
                   help="continue the studies an earlier run of this comparison left")
    p.add_argument("--no-test", action="store_true", help="skip the test-set evaluation")

    p = sub.add_parser("report", help="figures and an HTML page for a study",
                       description="The book's Best-20 learning-curve grid, accuracy against lr "
                                   "and weight decay, a contour, narrowing stages; PNG + HTML, "
                                   "and the same figures in optuna-dashboard.")
    _study_arg(p, help="the study")
    _storage_arg(p)
    p.add_argument("--out", metavar="DIR", help="where the files go (default: out/report/<NAME>)")
    p.add_argument("--top", type=TOP, metavar="K", help=TOP_HELP)
    p.add_argument("--max-gap", type=FRACTION, metavar="G",
                   help="mark trials whose train-validation gap is below G")
    p.add_argument("--no-dashboard", action="store_true",
                   help="do not publish the figures and note to optuna-dashboard")
    p.add_argument("--artifact-dir", metavar="DIR",
                   help="also upload each top trial's learning curve as a trial artifact")

    p = sub.add_parser("proxy", help="Optuna's gRPC storage proxy in front of the database",
                       description="Serve the storage to workers over gRPC (workers use "
                                   "--storage grpc://HOST:PORT), so hundreds of workers share a "
                                   "few database connections.")
    _storage_arg(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=count(65535, span=True), default=13000,
                   help="port to listen on")
    p.add_argument("--pool-size", type=count(1000), default=4, metavar="N",
                   help="database connections the proxy may hold")

    p = sub.add_parser("experiment", help="reproduce section 6.4: overfitting and its cures",
                       description="Train the book's 784-100x6-10 net on 300 samples and plot "
                                   "train vs test accuracy per epoch.")
    p.add_argument("name", choices=["overfit", "weight-decay", "dropout"],
                   help="which experiment: overfit, weight-decay or dropout")
    p.add_argument("--out", default="out", metavar="DIR", help="where the PNG goes")
    p.add_argument("--epochs", type=count(catalog.MAX_EPOCHS), metavar="N",
                   help="override the book's epoch count")
    p.add_argument("--seed", type=SEED, default=0, help="the network's seed")
    p.add_argument("--dataset", default="mnist5k", choices=list(catalog.DATASETS),
                   help="mnist5k (default), mnist, digits")
    _dir(p.add_argument("--data-dir", metavar="DIR",
                        help="folder with the four MNIST IDX .gz files"))

    p = sub.add_parser("completion", help="print the shell's completion script for hpo",
                       description="Print the completion script of SHELL for hpo (generated "
                                   "by shtab from hpo's own flags). Bash: "
                                   "`hpo completion bash > ~/.local/share/bash-completion/"
                                   "completions/hpo`; zsh: `hpo completion zsh > "
                                   "\"${fpath[1]}/_hpo\"`.")
    p.add_argument("shell", choices=["bash", "zsh", "tcsh"], metavar="SHELL",
                   help="bash, zsh or tcsh")
    for command in _subparsers(parser).values():  # specs are files: complete file names there
        for a in command._actions:
            if a.dest == "spec":
                _file(a)
            elif a.dest in ("out", "artifact_dir"):
                _dir(a)
    return parser


# what shtab completes (shtab.FILE / shtab.DIRECTORY, spelled out: no import for --help)
def _file(action: argparse.Action) -> argparse.Action:
    action.complete = {"bash": "_shtab_compgen_files", "zsh": "_files", "tcsh": "f"}
    return action


def _dir(action: argparse.Action) -> argparse.Action:
    action.complete = {"bash": "_shtab_compgen_dirs", "zsh": "_files -/", "tcsh": "d"}
    return action


# command -> (module, function); modules are imported only when their command runs
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("hpo.commands.run", "run"),
    "init": ("hpo.commands.init", "init"),
    "worker": ("hpo.commands.worker", "worker"),
    "best": ("hpo.commands.best", "best"),
    "studies": ("hpo.commands.best", "studies"),
    "dashboard": ("hpo.commands.dashboard", "dashboard"),
    "test": ("hpo.commands.evaluate", "test_cmd"),
    "confirm": ("hpo.commands.evaluate", "confirm_cmd"),
    "compare": ("hpo.commands.compare", "compare"),
    "report": ("hpo.commands.report", "report"),
    "proxy": ("hpo.commands.proxy", "proxy"),
    "experiment": ("hpo.commands.experiment", "experiment"),
    "completion": ("hpo.commands.completion", "completion"),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    commands: dict[str, argparse.ArgumentParser] = _subparsers(parser)
    if args.command is None:
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        parser.print_help()
        return EXIT_USAGE
    here = commands[args.command]
    if extra:  # the command's usage, not the top-level one (`hpo best --stuff`)
        here.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command in STUDY_ARG:
        _one_study(here, args, required=STUDY_ARG[args.command])
    try:
        level, fmt = logs.settings(args)
    except BadInput as e:
        print(f"hpo {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    logs.configure(level, fmt)
    args.log_settings = (level, fmt)
    args.parser = parser  # hpo completion: the script of this very parser
    module, func = COMMANDS[args.command]
    handler: Callable[[argparse.Namespace], int] = getattr(import_module(module), func)
    return run_command(f"hpo {args.command}", lambda: handler(args), debug=args.debug)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Each command's own parser, by name."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _one_study(p: argparse.ArgumentParser, args: argparse.Namespace, required: bool) -> None:
    """``hpo best NAME`` and ``hpo best --study NAME`` (or ``--study-name``) are one thing."""
    given = args.study_arg
    del args.study_arg
    if given and args.study and given != args.study:
        p.error(f"the study is named twice: {given!r} and --study {args.study!r}")
    args.study = args.study or given
    if required and not args.study:
        p.error("the following arguments are required: NAME (or --study NAME)")


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
