"""``hpo experiment overfit|weight-decay|dropout``: section 6.4 (:mod:`hpo.nn.experiment`)."""

from __future__ import annotations

import argparse
import logging
import os

from hpo.commands.common import output_dir
from hpo.engine.procs import pin_blas_threads
from hpo.errors import UsageError
from hpo.nn.experiment import plot, run_experiment

log = logging.getLogger("hpo.experiment")

def experiment(args: argparse.Namespace) -> int:
    """``hpo experiment NAME``: one of section 6.4's experiments, printed and plotted."""
    if args.epochs is not None and args.epochs < 1:
        raise UsageError(f"--epochs must be >= 1, got {args.epochs}")
    output_dir("--out", args.out)
    pin_blas_threads()
    outcome = run_experiment(args.name, dataset=args.dataset, epochs=args.epochs, seed=args.seed,
                             data_dir=args.data_dir)
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
