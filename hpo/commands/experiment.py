"""``hpo experiment overfit|weight-decay|dropout``: section 6.4 (:mod:`hpo.nn.experiment`)."""

from __future__ import annotations

import argparse
import logging
import os

from hpo import catalog
from hpo.commands import flags
from hpo.commands.common import output_dir
from hpo.errors import UsageError

log = logging.getLogger("hpo.experiment")

HELP = "reproduce section 6.4: overfitting and its cures"


def add_arguments(p: flags.Parser) -> None:
    p.description = ("Train the book's 784-100x6-10 net on 300 samples and plot train vs test "
                     "accuracy per epoch.")
    p.add_argument("name", choices=["overfit", "weight-decay", "dropout"],
                   help="which experiment: overfit, weight-decay or dropout")
    flags.folders(p.add_argument("--out", type=flags.filled("a folder"), default="out",
                                 metavar="DIR",
                                 help="where the PNG goes"))
    p.add_argument("--epochs", type=flags.count(catalog.MAX_EPOCHS), metavar="N",
                   help="override the book's epoch count")
    p.add_argument("--seed", type=flags.SEED, default=0, help="the network's seed")
    p.add_argument("--dataset", default=catalog.DEFAULT_DATASET, choices=list(catalog.DATASETS),
                   help="mnist5k (default), mnist, digits")
    flags.data_dir(p, help="folder with the four MNIST IDX .gz files")


def experiment(args: argparse.Namespace) -> int:
    """``hpo experiment NAME``: one of section 6.4's experiments, printed and plotted."""
    from hpo.engine.procs import pin_blas_threads
    from hpo.engine.progress import Progress
    from hpo.nn.data import DataDir
    from hpo.nn.experiment import EXPERIMENTS, plot, run_experiment

    output_dir("--out", args.out)
    pin_blas_threads()
    epochs = args.epochs or EXPERIMENTS[args.name][2]
    progress = Progress(epochs, 0, enabled=not args.quiet, unit="epoch")

    def each_epoch(epoch: int, train_acc: float, test_acc: float) -> None:
        progress.update(epoch, None, text=f"train acc {train_acc:.3f}, test acc {test_acc:.3f}")

    try:
        outcome = run_experiment(args.name, dataset=args.dataset, epochs=epochs, seed=args.seed,
                                 data_dir=args.data_dir and DataDir(args.data_dir, "--data-dir"),
                                 callback=each_epoch)
    finally:
        progress.close()
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create --out {args.out}: {e.strerror}") from None
    path = os.path.join(args.out, f"{args.name}.png")
    plot(outcome, path)
    print(f"{args.name}: train acc {outcome.train_acc:.3f}, test acc {outcome.test_acc:.3f}, "
          f"gap {outcome.gap:+.3f} ({len(outcome.train_curve)} epochs)")
    log.info("wrote %s", path)
    return 0
