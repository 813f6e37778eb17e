"""The ``hpo`` command: argument parsing only. Each command is a module of :mod:`hpo.commands`,
imported only when it runs, so that ``hpo --help`` imports none of NumPy, Optuna or SQLAlchemy.

Exit codes (:mod:`hpo.errors`): 0 success, 1 runtime failure, 2 bad input (one line on stderr,
nothing written), 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from importlib import import_module

from hpo import catalog
from hpo.errors import EXIT_USAGE, run_command
from hpo.flags import FRACTION, PORT, SECONDS, SEED, TOP, TRIALS, Parser, count, study_name, title


def _storage_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", metavar="URL",
                   help="SQLAlchemy URL (default: $HPO_STORAGE, else sqlite:///hpo.db)")


def _heartbeat_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--heartbeat-interval", type=count(catalog.MAX_HEARTBEAT), default=None,
                   metavar="S", help="seconds between a running trial's heartbeats (default 10)")
    p.add_argument("--grace-period", type=count(catalog.MAX_GRACE, low=2), default=None,
                   metavar="S", help="a trial silent this long is failed and retried (default 60)")


SPEC_EPILOG = (f"A spec's [sampler] name is one of {', '.join(catalog.SAMPLER_NAMES)}; its "
               f"[pruner] name one of {', '.join(catalog.PRUNER_NAMES)}; their options: "
               "`python -m hpo.catalog` (the README's tables).")


#: hpo run, hpo best and hpo report list the same Best-N (hpo.listing.TOP).
TOP_HELP = "how many best trials to list (default 20, the book's figure)"
BUDGET_HELP = ("the study's budget: finished trials it should hold in total, recorded in the study "
               "(default: the spec's [budget]); nothing runs when it already holds that many")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="hpo",
        description="Hyperparameter optimization on Optuna, after chapter 6 of "
                    "'Deep Learning from Scratch'.",
    )
    parser.add_argument("--version", action="version", version="hpo 0.1.0")
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of an unexpected error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # `--debug` after the command too (the subparser's default must not reset it)
    debug = Parser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="print the traceback of an unexpected error")
    add_parser = sub.add_parser

    def add_command(*a, **kw):
        return add_parser(*a, parents=[debug], **kw)

    sub.add_parser = add_command  # type: ignore[method-assign]

    p = sub.add_parser("run", help="create or resume a study from a spec and run it",
                       description="Create (or resume) the study of SPEC, run W local worker "
                                   "processes until it holds N finished trials, print Best-N.",
                       epilog=SPEC_EPILOG)
    p.add_argument("spec", metavar="SPEC",
                   help="study spec file (TOML), e.g. studies/book-random.toml")
    _storage_arg(p)
    p.add_argument("--study", type=study_name, metavar="NAME",
                   help="study name (default: the spec's name)")
    p.add_argument("--n-trials", type=TRIALS, metavar="N", help=BUDGET_HELP)
    p.add_argument("--workers", type=count(catalog.MAX_WORKERS), default=1, metavar="W",
                   help="local worker processes")
    p.add_argument("--seed", type=SEED, metavar="S", help="sampler/model seed (default: spec's)")
    p.add_argument("--data-seed", type=SEED, metavar="D",
                   help="seed of the train/validation shuffle (default: the spec's data.seed)")
    p.add_argument("--timeout", type=SECONDS, metavar="S", help="stop after S seconds")
    p.add_argument("--top", type=TOP, metavar="K", help=TOP_HELP)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
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
    p.add_argument("--study", type=study_name, metavar="NAME",
                   help="study name (default: the spec's name)")
    p.add_argument("--n-trials", type=TRIALS, metavar="N",
                   help="the study's budget: finished trials it should hold in total, recorded "
                        "in the study for every worker (default: the spec's [budget])")

    p = sub.add_parser("worker", help="join an existing study and run trials",
                       description="Join study NAME (its spec is stored in it) and run trials "
                                   "until the study holds its budget of finished trials.")
    p.add_argument("--study", type=study_name, required=True, metavar="NAME")
    _storage_arg(p)
    p.add_argument("--n-trials", type=TRIALS, metavar="N",
                   help="run at most N trials in this worker (default: no cap of its own); "
                        "never changes the study's budget, which `hpo run` / `hpo init` record")
    p.add_argument("--timeout", type=SECONDS, metavar="S", help="stop after S seconds")
    p.add_argument("--quiet", action="store_true", help="no per-trial lines")
    _heartbeat_args(p)

    p = sub.add_parser("best", help="the book's Best-N listing of a study")
    p.add_argument("study", type=study_name, metavar="NAME", nargs="?",
                   help="the study (may be left out when the storage holds only one)")
    _storage_arg(p)
    p.add_argument("--top", type=TOP, metavar="K", help=TOP_HELP)
    p.add_argument("--max-gap", type=FRACTION, metavar="G",
                   help="also rank the trials whose train-validation gap is below G")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("studies", help="list the studies in the storage")
    _storage_arg(p)
    p.add_argument("--json", action="store_true")

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
    p.add_argument("study", type=study_name, metavar="NAME")
    _storage_arg(p)
    p.add_argument("--trial", type=count(2**31, low=0), metavar="N",
                   help="trial number (default: the best)")
    p.add_argument("--force", action="store_true", help="evaluate again although done before")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("confirm", help="retrain the top K configurations with fresh seeds",
                       description="Retrain the top K trials' configurations with S fresh "
                                   "initialisation seeds each (same train/validation split) and "
                                   "rank them by mean validation accuracy with its standard "
                                   "error; `hpo test` then uses the confirmed winner.")
    p.add_argument("study", type=study_name, metavar="NAME")
    _storage_arg(p)
    p.add_argument("--top", type=count(1000), default=5, metavar="K")
    p.add_argument("--seeds", type=count(1000, low=2), default=5, metavar="S")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("compare", help="compare samplers fairly across seeds",
                       description="One study per (sampler, seed), named <spec>/<sampler>/seed<k>,"
                                   " on the same data split; best-so-far plots and a table. With "
                                   "several specs (same [data]), each spec is an arm with its own "
                                   "sampler and space.")
    p.add_argument("spec", metavar="SPEC", nargs="+")
    p.add_argument("--storage", metavar="URL",
                   help="SQLAlchemy URL of the comparison's studies (default: "
                        "sqlite:///DIR/compare.db under --out; $HPO_STORAGE is not used)")
    p.add_argument("--samplers", metavar="LIST",
                   help="with one spec: comma-separated sampler names, of "
                        + ",".join(catalog.SAMPLER_NAMES))
    p.add_argument("--confirm", type=count(1000, low=0), default=0, metavar="K",
                   help="retrain each study's top K with fresh seeds and test the winner")
    p.add_argument("--confirm-seeds", type=count(1000, low=2), default=5, metavar="S")
    p.add_argument("--title", type=title, default="comparison", help="title with several specs")
    p.add_argument("--n-trials", type=TRIALS, default=100, metavar="N")
    p.add_argument("--seeds", type=count(1000), default=5, metavar="K")
    p.add_argument("--workers", type=count(catalog.MAX_WORKERS), default=1, metavar="W")
    p.add_argument("--target", type=FRACTION, default=0.80, help="accuracy to reach (0.80)")
    p.add_argument("--out", default="out/compare", metavar="DIR",
                   help="table, plot and the comparison's own storage "
                        "(DIR/compare.db unless --storage) go here (out/compare)")
    p.add_argument("--resume", action="store_true",
                   help="continue the studies an earlier run of this comparison left")
    p.add_argument("--no-test", action="store_true", help="skip the test-set evaluation")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("report", help="figures and an HTML page for a study",
                       description="The book's Best-20 learning-curve grid, accuracy against lr "
                                   "and weight decay, a contour, narrowing stages; PNG + HTML, "
                                   "and the same figures in optuna-dashboard.")
    p.add_argument("study", type=study_name, metavar="NAME")
    _storage_arg(p)
    p.add_argument("--out", metavar="DIR", help="where the files go (out/report/<NAME>)")
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
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=count(65535, span=True), default=13000)
    p.add_argument("--pool-size", type=count(1000), default=4, metavar="N",
                   help="database connections the proxy may hold (4)")

    p = sub.add_parser("experiment", help="reproduce section 6.4: overfitting and its cures",
                       description="Train the book's 784-100x6-10 net on 300 samples and plot "
                                   "train vs test accuracy per epoch.")
    p.add_argument("name", choices=["overfit", "weight-decay", "dropout"])
    p.add_argument("--out", default="out", metavar="DIR", help="where the PNG goes (out/)")
    p.add_argument("--epochs", type=count(catalog.MAX_EPOCHS), metavar="N",
                   help="override the book's epoch count")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--dataset", default="mnist5k", choices=list(catalog.DATASETS),
                   help="mnist5k (default), mnist, digits")
    p.add_argument("--data-dir", metavar="DIR", help="folder with the four MNIST IDX .gz files")
    return parser


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
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    module, func = COMMANDS[args.command]
    handler: Callable[[argparse.Namespace], int] = getattr(import_module(module), func)
    return run_command(f"hpo {args.command}", lambda: handler(args), debug=args.debug)


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
